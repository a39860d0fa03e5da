"""Saving a variant where a user can deploy it, and loading the deployable program back.

:func:`save_model` writes one directory::

    state_dict.pt           torch.save(model.state_dict()): the weights, for a model built by the same recipe
    model.pt2               the program, by torch.export (any batch size: dimension 0 is exported dynamic) ...
    model.torchscript.pt    ... or, where torch.export cannot handle the model, TorchScript (traced, else scripted)
    manifest.json           what was saved and how (:class:`SavedModel`), with each file's sha256

The program formats are tried in order: ``torch.export``, then ``torchscript-trace`` (``torch.jit.trace``),
then ``torchscript-script`` (``torch.jit.script``). A trace that warns that it may be wrong (data-dependent
control flow: a tensor turned into a Python number or bool, as in early-exit inference) counts as failed, so
the script is tried next. Each program is written, loaded back from its file and run on ``example_input``; one
whose outputs differ from the model's counts as failed too. The manifest names the format written and, for
each format tried before it, why it failed (exception type and first line). If none works, no program is
written and the manifest says why: never silently. The model is exported in eval mode, without gradients,
which is how it is deployed (and how int4 layers take PyTorch's int4 kernel).

What each built-in recipe gets on torch 2.13 CPU (``tests/comparison/test_export.py`` checks it): float,
``prune``, ``channels``, ``distill`` and ``int4`` export with torch.export; the int8 recipes (``int8-dynamic``,
``int8-static``, ``qat`` and stacks ending in one) are traced to TorchScript, because torch.export cannot
flatten their packed-parameter objects; ``early-exit`` gets no program (its batched inference branches on the
data, so the trace would be wrong, and it cannot be scripted): reload it from its state dict.

:func:`load_model` returns the program as a module in eval mode, after checking every file's sha256 against
the manifest. The state dict needs the architecture, so it is loaded into a model built by the same recipe::

    variant = build_variant(saved.recipe, baseline, ctx)     # saved = read_manifest(directory)
    variant.load_state_dict(read_state_dict(directory))      # torch.load(..., weights_only=True)

ONNX (:func:`export_onnx`, :class:`OnnxModel`; ``pip install greenmeter[onnx]``): the variant is written as one
``.onnx`` file by ``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``: one self-contained file,
batch dimension dynamic), loaded back into an ONNX Runtime CPU session and checked against the model's outputs on
``example_input`` (the same tolerance as above). On torch 2.13 CPU float, ``prune``, ``channels``, ``distill`` and
``int8-static`` export (the static int8 model as QuantizeLinear/DequantizeLinear operators); ``int8-dynamic`` cannot
(ONNX has no operator for PyTorch's ``quantized::linear_dynamic`` kernel): export the float or pruned variant with
``quantize="dynamic"``, which quantizes the exported graph with ONNX Runtime's ``quantize_dynamic`` instead.
A model of several inputs exports too: ``example_input`` is a batch's inputs as ``compare`` reads them, a tuple
(``model(*inputs)``, inputs named after ``forward``'s parameters) or a dict (``model(**inputs)``, inputs named by its
keys), with dimension 1 of 2-D integer inputs (token ids, masks) dynamic as well. :class:`OnnxModel` wraps the
session as a ``torch.nn.Module`` (tensors in, by position or by name; tensors out), so
:func:`~greenmeter.comparison.compare.compare` measures it next to the PyTorch variants in one comparison, and it
counts its own facts from the graph: weights from the initializers, MACs from the shapes ``onnx.shape_inference``
gives (:meth:`OnnxModel.parameter_counts`, :meth:`OnnxModel.count_macs`).

Nothing here unpickles code: the state dict is read with ``weights_only=True``, the programs by
``torch.export.load`` and ``torch.jit.load``, which read their own formats. Nothing goes to the network.
This module imports torch (it is only about torch models); ``import greenmeter`` does not import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from greenmeter._checks import choice, text
from greenmeter._errors import ConfigError
from greenmeter._version import __version__
from greenmeter.comparison.batches import batch_size_of, describe, model_device, to_device
from greenmeter.comparison.facts import MacCount, ParamCounts
from greenmeter.compression.quantization import integer_modules
from greenmeter.records.encoding import check_record_version, finite_json, parse_record_json

import torch
from torch import nn

__all__ = ["PROGRAM_FORMATS", "ExportedModule", "OnnxModel", "SavedModel", "check_save_directory", "export_onnx",
           "load_model", "read_manifest", "read_state_dict", "save_model"]

#: The manifest's ``format``: what marks a directory as a greenmeter save.
FORMAT = "greenmeter-saved-model"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
STATE_DICT = "state_dict.pt"
#: The program formats, in the order :func:`save_model` tries them, and the file each writes.
PROGRAM_FORMATS = {"torch.export": "model.pt2", "torchscript-trace": "model.torchscript.pt",
                   "torchscript-script": "model.torchscript.pt"}
_OWN_FILES = frozenset({MANIFEST, STATE_DICT, *PROGRAM_FORMATS.values()})
# how close the reloaded program's outputs must be to the model's on example_input
_RTOL, _ATOL = 1e-3, 1e-5


@dataclass(frozen=True)
class SavedModel:
    """A saved variant's manifest (``manifest.json``) as a record.

    Attributes:
        recipe: the recipe spec the variant was built by (``"channels:0.5+int8-static"``), ``None`` if unknown.
        model_class: the model's class, ``module.QualName``.
        input_shape: the shape of the ``example_input`` it was saved with (the program takes any batch size
            where its format allows; ``torch.export`` programs do).
        input_dtype: that input's dtype (``"float32"``).
        program: the program format written (``"torch.export"``, ``"torchscript-trace"`` or
            ``"torchscript-script"``), ``None`` when none could be.
        program_file: its file name in the directory, ``None`` without a program.
        failures: each format tried before ``program`` (all of them when there is none) and why it failed:
            ``"ExceptionType: first line"``, in the order tried.
        max_abs_diff: the largest difference between the reloaded program's outputs and the model's on
            ``example_input`` (``None`` without a program).
        files: each file written (the manifest aside) and its sha256.
        compression: the compression method's ``{"method", "config", "details"}`` (``model.compression_info``),
            JSON-safe; ``None`` for a model no method made.
        metric: the metric given to :func:`save_model` (``{"name": "accuracy", "value": 0.98}``), as given.
        extra: anything else given to :func:`save_model`, JSON-safe.
        greenmeter_version: the greenmeter that saved it.
        torch_version: the torch that saved it (a program is best loaded by the same).
        saved_at: when, ISO 8601 UTC.
        schema_version: the manifest's schema version.
    """

    recipe: str | None
    model_class: str
    input_shape: tuple[int, ...]
    input_dtype: str
    program: str | None
    program_file: str | None
    failures: Mapping[str, str]
    max_abs_diff: float | None
    files: Mapping[str, str]
    compression: Mapping[str, Any] | None = None
    metric: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] | None = None
    greenmeter_version: str = __version__
    torch_version: str = ""
    saved_at: str = ""
    schema_version: int = SCHEMA_VERSION
    format: str = field(default=FORMAT, init=False)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON values."""
        return finite_json({
            "format": self.format, "schema_version": self.schema_version,
            "greenmeter_version": self.greenmeter_version, "torch_version": self.torch_version,
            "saved_at": self.saved_at, "recipe": self.recipe, "model_class": self.model_class,
            "input": {"shape": list(self.input_shape), "dtype": self.input_dtype},
            "program": self.program, "program_file": self.program_file, "failures": dict(self.failures),
            "max_abs_diff": self.max_abs_diff, "files": dict(self.files),
            "compression": None if self.compression is None else dict(self.compression),
            "metric": None if self.metric is None else dict(self.metric),
            "extra": None if self.extra is None else dict(self.extra),
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SavedModel:
        """Read a manifest written by :meth:`to_dict`.

        Raises:
            ConfigError: not a greenmeter saved-model manifest, a newer schema, or a field missing.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ConfigError(f"not a greenmeter saved-model manifest (its 'format' is not {FORMAT!r})")
        version = check_record_version(data, SCHEMA_VERSION, "saved-model manifest")
        try:
            return cls(
                recipe=data["recipe"], model_class=data["model_class"],
                input_shape=tuple(int(n) for n in data["input"]["shape"]), input_dtype=data["input"]["dtype"],
                program=data["program"], program_file=data["program_file"], failures=dict(data["failures"]),
                max_abs_diff=data["max_abs_diff"], files=dict(data["files"]), compression=data.get("compression"),
                metric=data.get("metric"), extra=data.get("extra"), greenmeter_version=data["greenmeter_version"],
                torch_version=data["torch_version"], saved_at=data.get("saved_at", ""), schema_version=version)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"a greenmeter saved-model manifest with a missing or malformed field: {err!r}") from err

    def describe(self) -> str:
        """One paragraph: what was saved, in which program format, why other formats failed, and its metric."""
        what = f"the {self.recipe!r} variant" if self.recipe else "a model"
        method = f" (method {self.compression['method']})" if self.compression and "method" in self.compression else ""
        shape = "x".join(str(n) for n in self.input_shape)
        parts = [f"{what}{method}, a {self.model_class.rsplit('.', 1)[-1]}, saved by greenmeter "
                 f"{self.greenmeter_version} with torch {self.torch_version} for {self.input_dtype} inputs of "
                 f"shape {shape}"]
        failed = "; ".join(f"{name} failed ({why})" for name, why in self.failures.items())
        if self.program is None:
            parts.append(f"no deployable program: {failed}; load {STATE_DICT} into a model built by the same recipe")
        else:
            parts.append(f"program {self.program_file} ({self.program}; it reproduced the model's outputs on the "
                         f"example input, largest difference {self.max_abs_diff:.3g})"
                         + (f", written after {failed}" if failed else ""))
            parts.append(f"weights in {STATE_DICT}")
        if self.metric:
            parts.append("metric " + ", ".join(f"{k} {v}" for k, v in self.metric.items()))
        paragraph = ". ".join(parts) + "."
        return paragraph[0].upper() + paragraph[1:]


class ExportedModule(nn.Module):
    """A ``torch.export`` program as a ``torch.nn.Module`` in eval mode (what :func:`load_model` returns for one).

    ``ExportedProgram.module()`` refuses ``.eval()`` and ``.train()``; this wrapper accepts ``.eval()`` (and
    ``.train(False)``), so code that switches a model to eval mode runs it unchanged, and refuses
    ``.train()`` with a ConfigError: the program was exported for inference.

    Attributes:
        program: the ``torch.export.ExportedProgram`` (for AOTInductor and other deployment tools).
        graph_module: ``program.module()``, which ``forward`` calls.
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.program = program
        self.graph_module = program.module()
        self.training = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedModule:
        """``train(False)`` (what ``.eval()`` calls) returns the module; ``train(True)`` raises ConfigError."""
        if mode:
            raise ConfigError("an exported program runs as it was exported, in eval mode, and cannot train: "
                              f"load {STATE_DICT} into a model built by the same recipe to train it")
        return self


# ------------------------------------------------------------------------------------------ saving

def save_model(model: nn.Module, directory: str | Path, *, example_input: torch.Tensor, recipe: str | None = None,
               metric: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> SavedModel:
    """Save ``model`` where a user can deploy it: its state dict, a program, and a manifest.

    Args:
        model: the variant (a ``build_variant`` result, or any ``torch.nn.Module``); it is exported in eval mode
            and without gradients, and left in the mode it was in.
        directory: where to write; created if missing. It must be empty or a previous greenmeter save (whose
            files are replaced; files of other names in it are left alone).
        example_input: one input batch ``[N, ...]``: exports and traces run on it, and the reloaded program must
            reproduce the model's outputs on it (within 1e-5 + 1e-3 x the largest output). The ``torch.export``
            program takes any batch size (a batch of one is exported as two copies, so as not to fix the size).
        recipe: the recipe spec to record; ``None``: ``model.recipe.spec`` when the model has one.
        metric: what the variant scored (``{"name": "accuracy", "value": 0.98}``), recorded as given (JSON-safe).
        extra: anything else to record (JSON-safe: other values are written as their text).

    Returns:
        The manifest written, as a :class:`SavedModel` (``describe()`` says what was saved and why).

    Raises:
        ConfigError: ``model`` is not a module, ``example_input`` not a tensor batch, ``recipe`` not a non-empty
            string, ``metric``/``extra`` not mappings, or ``directory`` a file or a non-empty directory that is
            not a greenmeter save.
    """
    from greenmeter.compression._core import plain_value

    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"save_model needs a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1 or len(example_input) < 1:
        raise ConfigError("save_model's example_input must be a tensor batch [N, ...] with N >= 1")
    if recipe is None:
        recipe = getattr(getattr(model, "recipe", None), "spec", None)
    else:
        text("save_model's recipe", recipe)
    for name, value in (("metric", metric), ("extra", extra)):
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"save_model's {name} must be a mapping (e.g. {{'name': 'accuracy', 'value': 0.98}}) "
                              f"or None, not {type(value).__name__}")
    root = _prepare(Path(directory))
    info = getattr(model, "compression_info", None)
    compression = None if info is None else plain_value(
        {"method": info.method, "config": dict(info.config), "details": dict(info.details)})

    torch.save(model.state_dict(), root / STATE_DICT)
    was_training = model.training
    model.eval()
    try:  # the program is exported on the model's device (a CUDA model's program runs on CUDA)
        program, failures, diff = _write_program(model, to_device(example_input, model_device(model)), root)
    finally:
        model.train(was_training)
    names = [STATE_DICT] + ([PROGRAM_FORMATS[program]] if program else [])
    saved = SavedModel(
        recipe=recipe, model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        input_shape=tuple(example_input.shape), input_dtype=str(example_input.dtype).removeprefix("torch."),
        program=program, program_file=PROGRAM_FORMATS[program] if program else None, failures=failures,
        max_abs_diff=diff, files={name: _sha256(root / name) for name in names}, compression=compression,
        metric=None if metric is None else plain_value(metric), extra=None if extra is None else plain_value(extra),
        torch_version=torch.__version__, saved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (root / MANIFEST).write_text(json.dumps(saved.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return saved


def check_save_directory(directory: str | Path) -> Path:
    """Check, before any work, that :func:`save_model` could write into ``directory``; nothing is changed.

    The directory may be new (its nearest existing parent must be a directory), empty, or a previous greenmeter
    save (whose files a new save replaces).

    Returns:
        The directory as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``directory`` is a file, a non-empty directory that is not a previous save, or below a file.
    """
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"cannot save a model into {root}: it is a file, not a directory")
    if root.is_dir() and any(root.iterdir()):
        manifest = root / MANIFEST
        try:
            read_manifest(root)
        except (ConfigError, OSError) as err:
            why = "it has no manifest.json" if not manifest.exists() else f"its manifest.json is not one ({err})"
            raise ConfigError(f"cannot save a model into {root}: the directory is not empty and is not a previous "
                              f"greenmeter save ({why}); choose an empty or new directory") from err
    parent = root.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot save a model into {root}: {parent} is a file, not a directory")
    return root


def _prepare(root: Path) -> Path:
    """The directory to write into, created; a previous save's files removed; anything else refused."""
    check_save_directory(root)
    if root.is_dir() and any(root.iterdir()):
        for name in _OWN_FILES:
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_program(model: nn.Module, example: torch.Tensor, root: Path) -> tuple[str | None, dict[str, str],
                                                                                   float | None]:
    """Try each program format in turn; the first that writes, reloads and reproduces the outputs is kept."""
    failures: dict[str, str] = {}
    with torch.no_grad():
        expected = model(example)
        for fmt, name in PROGRAM_FORMATS.items():
            path = root / name
            try:
                _WRITERS[fmt](model, example, path)
                diff = _max_abs_diff(expected, _load_program(fmt, path)(example))
            except Exception as err:  # every failure is recorded in the manifest: never hidden
                path.unlink(missing_ok=True)
                failures[fmt] = _first_line(err)
                continue
            if diff is None or not diff <= _ATOL + _RTOL * _max_abs(expected):
                path.unlink(missing_ok=True)
                failures[fmt] = ("ProgramMismatch: the reloaded program's outputs differ from the model's on "
                                 "example_input" + ("" if diff is None else f" by up to {diff:.3g}"))
                continue
            return fmt, failures, diff
    return None, failures, None


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    if len(example) == 1:  # a batch of one would be specialised to size 1: export on two copies of it
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, path)


def _trace(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (example,))
    doubts = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for w in caught:  # the others are not ours to keep
        if not issubclass(w.category, torch.jit.TracerWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if doubts:  # a tensor turned into a Python value: the trace froze the path this example took
        first = str(doubts[0].message).strip().split(". ")[0].rstrip(".")
        raise _TraceDoubt(f"torch.jit.trace warned that the trace may be wrong for other inputs: {first}")
    torch.jit.save(traced, path)


def _script(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.jit.save(torch.jit.script(model), path)


class _TraceDoubt(Exception):
    """torch.jit.trace warned that the trace may be wrong (named ``UnreliableTrace`` in the manifest)."""


_TraceDoubt.__name__ = "UnreliableTrace"
_WRITERS = {"torch.export": _export, "torchscript-trace": _trace, "torchscript-script": _script}


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else '(no message)'}"


def _leaves(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _leaves(item)]
    if isinstance(out, Mapping):
        return [leaf for key in sorted(out) for leaf in _leaves(out[key])]
    return [out]


def _max_abs_diff(expected: Any, got: Any) -> float | None:
    """The largest absolute difference of two outputs' tensors; ``None`` when their structure differs."""
    want, have = _leaves(expected), _leaves(got)
    if len(want) != len(have):
        return None
    worst = 0.0
    for a, b in zip(want, have):
        if not isinstance(a, torch.Tensor):
            if a != b:
                return None
            continue
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return None
        if a.numel():
            worst = max(worst, float((a.double() - b.double()).abs().max()))
    return worst if math.isfinite(worst) else None


def _max_abs(out: Any) -> float:
    return max((float(t.double().abs().max()) for t in _leaves(out) if isinstance(t, torch.Tensor) and t.numel()),
               default=0.0)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ loading

def read_manifest(directory: str | Path) -> SavedModel:
    """The manifest of a directory :func:`save_model` wrote.

    Raises:
        ConfigError: the directory has no ``manifest.json``, or it is not a greenmeter saved-model manifest
            (or one of a newer schema than this greenmeter reads).
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{directory} is not a greenmeter saved model: it has no {MANIFEST}")
    return SavedModel.from_dict(parse_record_json(path.read_text(encoding="utf-8"), "saved-model manifest", "format"))


def load_model(directory: str | Path, *, prefer: str = "program") -> nn.Module:
    """Load the deployable program :func:`save_model` wrote, in eval mode, after checking every file's sha256.

    Args:
        directory: the directory :func:`save_model` wrote.
        prefer: ``"program"``: whichever program was written; ``"torch.export"`` or ``"torchscript"``: only that
            format (a deployment whose runtime needs one), a ConfigError if the save holds the other.

    Returns:
        A callable module in eval mode: an :class:`ExportedModule` for a ``torch.export`` program, a
        ``torch.jit.ScriptModule`` for TorchScript.

    Raises:
        ConfigError: not a greenmeter save, a file missing or changed since it was saved (its sha256 differs from
            the manifest's), no program in the save (the message gives the manifest's reasons and says to load
            the state dict into a model built by the same recipe), or a program of another format than
            ``prefer``.
    """
    choice("load_model's prefer", prefer, ("program", "torch.export", "torchscript"))
    root = Path(directory)
    saved = read_manifest(root)
    _check_files(root, saved)
    if saved.program is None:
        why = "; ".join(f"{fmt}: {reason}" for fmt, reason in saved.failures.items())
        raise ConfigError(f"{root} holds no deployable program ({why}); load {STATE_DICT} into a model built by "
                          f"recipe {saved.recipe!r} instead (see read_state_dict)")
    if prefer != "program" and not saved.program.startswith(prefer):
        raise ConfigError(f"{root} holds a {saved.program} program, not {prefer}: it was saved as {saved.program} "
                          f"because {'; '.join(saved.failures.values()) or 'that format was tried first'}")
    with torch.no_grad():
        return _load_program(saved.program, root / str(saved.program_file))


def read_state_dict(directory: str | Path) -> dict[str, Any]:
    """The saved state dict, after checking its sha256, read with ``torch.load(..., weights_only=True)``.

    Load it into a model built by the same recipe: ``variant.load_state_dict(read_state_dict(directory))``.

    Raises:
        ConfigError: not a greenmeter save, or the state dict missing or changed since it was saved.
    """
    root = Path(directory)
    _check_files(root, read_manifest(root), only=STATE_DICT)
    return torch.load(root / STATE_DICT, map_location="cpu", weights_only=True)


def _check_files(root: Path, saved: SavedModel, only: str | None = None) -> None:
    for name, digest in saved.files.items():
        if only is not None and name != only:
            continue
        path = root / name
        if not path.is_file():
            raise ConfigError(f"{path} is missing: the saved model in {root} is incomplete; save it again")
        if _sha256(path) != digest:
            raise ConfigError(f"{path} was changed after it was saved (its sha256 differs from {MANIFEST}'s): "
                              "do not load it; save the model again")


def _load_program(fmt: str, path: Path) -> nn.Module:
    if fmt == "torch.export":
        return ExportedModule(torch.export.load(path))
    return torch.jit.load(path, map_location="cpu").eval()


# ------------------------------------------------------------------------------------------ ONNX

def _onnx_runtime() -> Any:
    """``onnxruntime``, after checking that ``onnx`` (which torch's exporter needs) is installed too."""
    from greenmeter.integrations import import_framework

    import_framework(("onnx",), "onnx")
    return import_framework(("onnxruntime",), "onnx")


def _onnx_inputs(model: nn.Module, example_input: Any) -> tuple[tuple[Any, ...], dict[str, Any], list[str],
                                                                  list[torch.Tensor]]:
    """How ``export_onnx`` passes a batch's inputs to the exporter: ``(args, kwargs, input names, tensors)``.

    A tensor is one input named ``input``; a tuple or list, positional inputs named after the parameters of the
    model's ``forward`` (``input_<i>`` where it has none to name them); a mapping, keyword inputs named by its
    keys (``model(**inputs)``, as :func:`~greenmeter.comparison.batches.call_model` calls it).
    """
    if isinstance(example_input, torch.Tensor):
        args, kwargs, names = (example_input,), {}, ["input"]
    elif isinstance(example_input, (tuple, list)) and example_input:
        args, kwargs = tuple(example_input), {}
        try:
            params = [p.name for p in inspect.signature(model.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):  # no signature to read: numbered names
            params = []
        names = params[:len(args)] if len(params) >= len(args) else [f"input_{i}" for i in range(len(args))]
    elif isinstance(example_input, Mapping) and example_input:
        args, kwargs = (), dict(example_input)
        names = list(kwargs)
        if not all(isinstance(k, str) and k for k in names):
            raise ConfigError(f"export_onnx's example_input keys must be the model's argument names, not {names!r}")
    else:
        raise ConfigError("export_onnx's example_input must be a tensor batch [N, ...] with N >= 1, a tuple of them "
                          f"(model(*inputs)) or a dict of them (model(**inputs)), not {describe(example_input)}")
    tensors = [*args, *kwargs.values()]
    for name, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor) or t.dim() < 1 or len(t) < 1:
            raise ConfigError(f"export_onnx's example_input {name!r} must be a tensor batch [N, ...] with N >= 1, "
                              f"not {describe(t)}")
    if len({len(t) for t in tensors}) > 1:
        raise ConfigError("export_onnx's example_input tensors must share their batch size (dimension 0), not "
                          + ", ".join(f"{name} {len(t)}" for name, t in zip(names, tensors)))
    return args, kwargs, names, tensors


def _dynamic_axes(names: list[str], tensors: list[torch.Tensor]) -> dict[str, dict[int, str]]:
    """Dimension 0 of every input is the batch; dimension 1 of a 2-D integer (or bool) input is the sequence
    (token ids, attention masks: dynamic padding gives each batch its own length)."""
    return {name: {0: "batch", 1: "sequence"} if t.dim() == 2 and not t.is_floating_point() else {0: "batch"}
            for name, t in zip(names, tensors)}


def export_onnx(model: nn.Module, example_input: Any, path: str | Path, *, quantize: str | None = None,
                opset: int | None = None) -> Path:
    """Write ``model`` to one ONNX file and check it under ONNX Runtime (CPU) against the model's outputs.

    Args:
        model: the variant (a ``build_variant`` result or any ``torch.nn.Module``); exported in eval mode without
            gradients, and left in the mode it was in.
        example_input: one batch's inputs, as ``compare`` reads them
            (:mod:`greenmeter.comparison.batches`): a tensor ``[N, ...]`` (ONNX input ``input``), a tuple of
            tensors passed as ``model(*inputs)`` (inputs named after ``forward``'s parameters), or a dict passed as
            ``model(**inputs)`` (inputs named by its keys: ``input_ids``, ``attention_mask``). The export traces
            it, and the ONNX Runtime session must reproduce the model's outputs on it (within 1e-5 + 1e-3 x the
            largest output; 0.1 x the largest with ``quantize``, whose int8 weights change the outputs, and for a
            model that runs int8 kernels already, ``int8-static``, as ONNX Runtime's int8 kernels round
            activations differently from PyTorch's).
            Dimension 0 of every input and output (the batch) is exported dynamic, and dimension 1 of a 2-D
            integer or bool input (a sequence of token ids or its mask), so batches padded to their own
            longest sentence run too.
        path: the ``.onnx`` file to write (its directory is created; an existing file is replaced).
        quantize: ``None`` (write the model as it is) or ``"dynamic"``: quantize the exported float graph's
            weights to int8 with ``onnxruntime.quantization.quantize_dynamic``, the int8 path for models whose
            PyTorch int8 kernels cannot export.
        opset: the ONNX opset (default: torch's).

    Returns:
        The path written.

    Raises:
        ConfigError: ``onnx``/``onnxruntime`` are not installed (``pip install greenmeter[onnx]``), ``model`` is
            not a module, ``example_input`` not a tensor batch (or a tuple or dict of them sharing one batch
            size), ``quantize`` not one of the choices, the exporter cannot handle the model (the message names
            its compression method and what to export instead), or the exported model's outputs differ from the
            model's.
    """
    ort = _onnx_runtime()
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"export_onnx needs a torch.nn.Module, not {type(model).__name__}")
    args, kwargs, names, tensors = _onnx_inputs(model, example_input)
    if quantize is not None:
        choice("export_onnx's quantize", quantize, ("dynamic",))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    info = getattr(model, "compression_info", None)
    method = getattr(info, "method", None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
            expected = model(*args, **kwargs)
            outputs = _leaves(expected)
            output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
            axes = {**_dynamic_axes(names, tensors), **{name: {0: "batch"} for name in output_names}}
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # it prints its whole graph when it fails
                    torch.onnx.export(model, args, str(target), kwargs=kwargs or None, dynamo=False,
                                      opset_version=opset, input_names=names, output_names=output_names,
                                      dynamic_axes=axes)
            except Exception as err:
                target.unlink(missing_ok=True)
                recipe = getattr(getattr(model, "recipe", None), "spec", None)
                what = (f"a model made by the {method!r} method" + (f" (recipe {recipe!r})" if recipe else "")
                        if method else f"this {type(model).__name__}")
                raise ConfigError(
                    f"torch.onnx.export cannot export {what} ({_first_line(err)}): export the float, pruned "
                    "('prune', 'channels') or distilled variant instead, with quantize='dynamic' for int8 weights "
                    "(ONNX Runtime's quantize_dynamic), or 'int8-static', which exports") from err
    finally:
        model.train(was_training)
    if quantize == "dynamic":
        from onnxruntime.quantization import quantize_dynamic

        float_file = target.with_name(target.name + ".float.tmp")
        target.replace(float_file)
        try:
            quantize_dynamic(str(float_file), str(target))
        finally:
            float_file.unlink(missing_ok=True)
    got = OnnxModel(target, runtime=ort)(*args, **kwargs)
    diff = _max_abs_diff(expected, got)
    # int8 outputs: ONNX Runtime's int8 kernels round activations differently from PyTorch's, a step here and there
    int8 = quantize is not None or bool(integer_modules(model))
    bound = (0.1 if int8 else _RTOL) * _max_abs(expected) + _ATOL
    if diff is None or not diff <= bound:
        raise ConfigError(f"the ONNX model written to {target} does not reproduce the model's outputs on "
                          f"example_input" + ("" if diff is None else f" (they differ by up to {diff:.3g})")
                          + ": do not deploy it; export the float variant instead")
    return target


class OnnxModel(nn.Module):
    """An ONNX file run by an ONNX Runtime CPU session, as a ``torch.nn.Module``: tensors in, tensors out.

    Usable wherever a model is: as a variant in :func:`~greenmeter.comparison.compare.compare`, beside the
    PyTorch model it was exported from, fed the same batches (a tensor, ``model(*inputs)`` for a tuple,
    ``model(**inputs)`` for a dict: the session's inputs by position or by name). It runs in eval mode only. Its
    weights are in the session, so it has no torch parameters: its state dict holds the ONNX file's bytes (buffer
    ``onnx_file``, uint8), which makes a comparison's size the file's size (plus torch's container), and it counts
    its own facts from the graph (:meth:`parameter_counts`, :meth:`count_macs`), which ``compare`` reports.

    Attributes:
        path: the ONNX file.
        session: the ``onnxruntime.InferenceSession``.
        input_names: the session's inputs, in order.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, runtime: Any = None) -> None:
        """Open ``path`` in an ONNX Runtime CPU session.

        Args:
            path: an ONNX file (as :func:`export_onnx` writes).
            threads: the session's intra-op threads (default: ONNX Runtime's, or ``torch.get_num_threads()``
                so it runs on as many threads as the PyTorch models it is compared with).
            runtime: the ``onnxruntime`` module (default: imported here).

        Raises:
            ConfigError: ``onnxruntime`` is not installed, or ``path`` is not a file.
        """
        super().__init__()
        ort = runtime if runtime is not None else _onnx_runtime()
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"{self.path} is not a file: give the .onnx file export_onnx wrote")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.register_buffer("onnx_file", torch.frombuffer(bytearray(self.path.read_bytes()), dtype=torch.uint8))
        self.training = False

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> Any:
        """Run the session: positional tensors feed its inputs in order, keyword tensors the inputs of that name.

        Returns:
            The output tensor, or a tuple of them when the graph has several outputs.

        Raises:
            ConfigError: more positional inputs than the graph has, a name it has no input of, or an input
                left unfed (the message lists the graph's inputs).
        """
        if len(inputs) > len(self.input_names):
            raise ConfigError(f"{self.path.name} takes {len(self.input_names)} input(s) "
                              f"({', '.join(self.input_names)}), not {len(inputs)}")
        feeds = dict(zip(self.input_names, inputs))
        for name, value in named.items():
            if name not in self.input_names or name in feeds:
                why = "given twice" if name in feeds else "not an input of the graph"
                raise ConfigError(f"{self.path.name}: {name!r} is {why}; its inputs are {', '.join(self.input_names)}")
            feeds[name] = value
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise ConfigError(f"{self.path.name} needs input(s) {', '.join(missing)} too; its inputs are "
                              f"{', '.join(self.input_names)}")
        arrays = {name: t.detach().cpu().contiguous().numpy() for name, t in feeds.items()}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, arrays)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def train(self, mode: bool = True) -> OnnxModel:
        """``train(False)`` (what ``.eval()`` calls) returns the module; ``train(True)`` raises ConfigError."""
        if mode:
            raise ConfigError("an ONNX Runtime session runs inference only and cannot train: train the PyTorch "
                              "model and export it again")
        return self

    def parameter_counts(self) -> ParamCounts:
        """The graph's weights, from its initializers (what :func:`~greenmeter.comparison.facts.parameter_counts`
        reports for this model).

        Counted: every initializer that is a weight: floating-point tensors and integer weights (int8/uint8
        codes, int32 biases) of any rank >= 1. Not counted: int64 initializers (shapes, axes, indices), 0-d
        constants, and the scales and zero points of quantization operators (``QuantizeLinear``,
        ``DequantizeLinear``, ``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``). So a float
        graph counts what the model's parameters held, except what the exporter folded away: a batch norm after a
        convolution is folded into that convolution's weight and bias, so its scale and shift are not counted
        apart. Non-zero: a float element ``!= 0``; an integer weight code ``!=`` its zero point (per tensor or
        per channel) where the graph gives one, else ``!= 0``.

        Returns:
            ``kind="parameters"`` for a float graph, ``"stored weight elements"`` when it holds integer weights.
        """
        return _onnx_parameter_counts(self._graph())

    def count_macs(self, example_input: Any) -> MacCount:
        """Multiply-accumulates per sample of the graph on ``example_input`` (what
        :func:`~greenmeter.comparison.facts.count_macs` reports for this model).

        The graph's input shapes are set to those of ``example_input`` (a tensor, a tuple or a dict, as
        :meth:`forward` takes it) and ``onnx.shape_inference`` gives every other shape; then ``Conv``,
        ``ConvInteger`` and ``QLinearConv`` count output elements x weight elements per output channel
        (``in_channels / groups`` x the kernel), and ``Gemm``, ``MatMul``, ``MatMulInteger`` and ``QLinearMatMul``
        output elements x the inner dimension, as the flop counter counts the PyTorch model (bias additions,
        activations, normalisation and pooling are not counted); divided by the batch size.

        Returns:
            ``method="onnx graph shapes"``; when the graph runs an op that does multiply-accumulates greenmeter
            cannot count (``ConvTranspose``, ``LSTM``, ``Attention``, ONNX Runtime's fused ``com.microsoft`` ops,
            a subgraph holding one) or an op whose shapes inference could not tell, ``macs_per_sample`` is
            ``None``, ``method="unavailable"`` and the note names those ops, with the MACs counted in the rest.

        Raises:
            ConfigError: ``example_input`` holds no tensor with a batch dimension, or it does not fit the graph's
                inputs (see :meth:`forward`).
        """
        batch = batch_size_of(example_input)
        if not batch:
            raise ConfigError(f"count_macs needs a non-empty example batch, not {describe(example_input)}")
        if isinstance(example_input, Mapping):
            shapes = {name: tuple(t.shape) for name, t in example_input.items()}
        else:
            items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
            shapes = {name: tuple(t.shape) for name, t in zip(self.input_names, items)}
        unknown = sorted(set(shapes) - set(self.input_names))
        if unknown:
            raise ConfigError(f"{self.path.name} has no input(s) {', '.join(unknown)}; its inputs are "
                              f"{', '.join(self.input_names)}")
        return _onnx_macs(self._graph(), shapes, batch)

    def _graph(self) -> Any:
        """The ONNX ``ModelProto`` of the file (read when the facts are asked for)."""
        import onnx

        return onnx.load(str(self.path))


# ONNX facts: weights from the initializers, MACs from the inferred shapes --------------------------------------

#: The MAC-counting ops: op type -> (kind, index of the data input, index of the weight input).
_MAC_OPS = {
    "Conv": ("conv", 0, 1), "ConvInteger": ("conv", 0, 1), "QLinearConv": ("conv", 0, 3),
    "MatMul": ("matmul", 0, 1), "MatMulInteger": ("matmul", 0, 1), "QLinearMatMul": ("matmul", 0, 3),
    "Gemm": ("gemm", 0, 1),
}
#: Inputs that hold quantization parameters (scales, zero points), not weights, by op type.
_QUANT_PARAM_SLOTS = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7), "ConvInteger": (2, 3), "MatMulInteger": (2, 3),
}
#: (weight input, its zero point input, the zero point's default axis) of the ops whose integer weights have one.
_WEIGHT_ZERO_POINTS = {
    "DequantizeLinear": (0, 2, 1), "QLinearConv": (3, 5, 0), "QLinearMatMul": (3, 5, -1),
    "ConvInteger": (1, 3, 0), "MatMulInteger": (1, 3, -1),
}
#: Name parts of op types that do multiply-accumulates: such an op outside ``_MAC_OPS`` cannot be counted.
_MAC_OP_WORDS = ("Conv", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "Attention", "Einsum")


def _onnx_parameter_counts(model: Any) -> ParamCounts:
    """:meth:`OnnxModel.parameter_counts` of a ``ModelProto``."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    quant_params = {node.input[i] for node in graph.node for i in _QUANT_PARAM_SLOTS.get(node.op_type, ())
                    if i < len(node.input)}
    arrays = {init.name: init for init in graph.initializer}
    zero_points: dict[str, tuple[str, int]] = {}
    for node in graph.node:
        slots = _WEIGHT_ZERO_POINTS.get(node.op_type)
        if slots and len(node.input) > slots[1] and node.input[slots[1]] in arrays:
            axis = next((a.i for a in node.attribute if a.name == "axis"), slots[2])
            zero_points[node.input[slots[0]]] = (node.input[slots[1]], axis)
    total = nonzero = 0
    integer = False
    for name, init in arrays.items():
        if name in quant_params or init.data_type == TensorProto.INT64 or not init.dims:
            continue
        values = numpy_helper.to_array(init)
        if values.dtype.kind not in "fiu":  # bool, strings: not weights
            continue
        total += values.size
        if values.dtype.kind in "iu":
            integer = True
            zero = np.zeros(1, dtype=values.dtype)
            if name in zero_points:
                zp_name, axis = zero_points[name]
                zero = numpy_helper.to_array(arrays[zp_name])
                if zero.size > 1:  # per channel: along the quantization axis
                    shape = [1] * values.ndim
                    shape[axis] = -1
                    zero = zero.reshape(shape)
            nonzero += int(np.count_nonzero(values != zero))
        else:
            nonzero += int(np.count_nonzero(values))
    return ParamCounts(total, nonzero, "stored weight elements" if integer else "parameters")


def _onnx_macs(model: Any, input_shapes: Mapping[str, tuple[int, ...]], batch: int) -> MacCount:
    """:meth:`OnnxModel.count_macs` of a ``ModelProto`` whose inputs get ``input_shapes``."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes: dict[str, tuple[int, ...] | None] = {init.name: tuple(init.dims) for init in inferred.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        known = tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim)
        shapes.setdefault(value.name, tuple(d.dim_value for d in tensor.shape.dim) if known else None)
    macs = 0
    uncounted: dict[str, str] = {}
    for node in inferred.graph.node:
        if node.op_type in _MAC_OPS:
            counted = _node_macs(node, shapes)
            if counted is None:
                uncounted.setdefault(node.op_type, "its shapes could not be inferred")
            else:
                macs += counted
        elif any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            inner = [n.op_type for a in node.attribute for g in [*([a.g] if a.HasField("g") else []), *a.graphs]
                     for n in g.node if n.op_type in _MAC_OPS or any(w in n.op_type for w in _MAC_OP_WORDS)]
            if inner:
                uncounted.setdefault(node.op_type, f"a subgraph running {', '.join(sorted(set(inner)))}")
        elif any(word in node.op_type for word in _MAC_OP_WORDS):
            where = f"{node.domain} op" if node.domain else "op"
            uncounted.setdefault(node.op_type, f"an {where} greenmeter has no MAC formula for")
    if uncounted:
        named = "; ".join(f"{op} ({why})" for op, why in sorted(uncounted.items()))
        return MacCount(None, "unavailable", f"the ONNX graph runs ops whose MACs greenmeter cannot count: {named}; "
                                             f"it counted {macs / batch:g} MACs per sample in the rest")
    return MacCount(macs / batch, "onnx graph shapes")


def _node_macs(node: Any, shapes: Mapping[str, tuple[int, ...] | None]) -> int | None:
    """Multiply-accumulates of one Conv/Gemm/MatMul-like node from its shapes; ``None`` when one is unknown."""
    kind, data, weight = _MAC_OPS[node.op_type]
    if len(node.input) <= weight:
        return None
    a, w, out = shapes.get(node.input[data]), shapes.get(node.input[weight]), shapes.get(node.output[0])
    if a is None or w is None or out is None:
        return None
    if kind == "conv":  # each output element: a dot product over in_channels / groups x the kernel
        return math.prod(out) * math.prod(w[1:])
    if kind == "gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(out) * (a[0] if trans_a else a[-1])
    return math.prod(out) * a[-1]  # MatMul: the inner dimension (a 1-D left operand's only one)
