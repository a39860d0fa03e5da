"""The TOML file behind ``greenmeter compare CONFIG``: what to compare, on which data, how often.

Objects are named by import paths (``package.module:attribute``), files by paths relative to the
TOML file::

    name = "digits"

    [model]                                   # the baseline
    factory = "greenmeter.demo.digits:trained_digits_cnn"
    kwargs = { epochs = 20 }
    weights = "baseline.pt"                   # optional: a state_dict loaded into the factory's model
    output_fn = "mypkg.models:logits"         # optional: output_fn(model_output) -> the tensor the metric sees
    device = "cuda"                           # optional: where the baseline runs (default: where the factory put it)

    [data]
    eval = "greenmeter.demo.digits:eval_data"      # -> (inputs, targets) tensors, or an iterable of batches
    train = "greenmeter.demo.digits:train_data"    # optional, for recipes that train or calibrate
    val = "mypkg.data:validation"             # optional, (inputs, targets) for early-exit thresholds
    batch_size = 256
    target_key = "labels"                     # optional: the key of the targets in dict batches

    [training]
    function = "greenmeter.demo.digits:train_fn"   # optional: train_fn(model, loss_fn=None, epochs=None)

    [compare]
    baseline = "float"
    recipes = ["prune:0.5", "int8-dynamic"]   # each becomes a variant named after its spec
    repeats = 5
    warmup = 1
    seed = 0

    [compare.variants]                        # optional: named recipes
    small = "distill:0.5"

    [carbon]                                  # optional: one of country, cloud, intensity; and pue
    country = "FRA"
    pue = 1.1

A value that points to a callable is called (with ``kwargs`` for the model factory; with nothing for
data). Unknown keys are refused, so a typo is an error rather than a silent default. Every setting is
checked when the file is loaded, before anything is imported or built: the numbers against their ranges
(:func:`greenmeter.comparison.compare.check_settings`), the recipes' names and arguments
(:func:`greenmeter.comparison.recipes.check_recipe`). What goes wrong in the user's code that ``build()``
imports and calls (an import that fails, a factory that refuses its ``kwargs`` or raises, a weights file
that is not a state_dict) is a :class:`~greenmeter.ConfigError` naming the key, with the original
exception chained.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greenmeter._checks import text
from greenmeter._errors import ConfigError, GreenmeterError
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.comparison.batches import check_device
from greenmeter.comparison.compare import check_settings
from greenmeter.comparison.recipes import check_recipe

__all__ = ["CompareConfig", "load_compare_config", "load_optimize_config", "resolve_object"]

_SECTIONS: dict[str, set[str]] = {
    "": {"name", "model", "data", "training", "compare", "optimize", "carbon"},
    "model": {"factory", "kwargs", "weights", "name", "output_fn", "device"},
    "data": {"eval", "train", "val", "batch_size", "target_key"},
    "training": {"function"},
    "compare": {"baseline", "recipes", "variants", "repeats", "warmup", "seed", "min_repeat_s", "significance",
                "threads"},
    "carbon": {"country", "cloud", "intensity", "pue"},
    "optimize": {"max_drop", "max_latency_ratio", "max_size_ratio", "recipes", "time_budget_s", "screen_repeats",
                 "final_repeats", "finalists", "eta", "probes", "save_to"},
}


@dataclass(frozen=True)
class CompareConfig:
    """A parsed comparison config; ``build()`` imports and calls what it names."""

    path: Path
    name: str
    model_factory: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    device: str | None = None
    baseline: str = "baseline"
    recipes: Mapping[str, str] = field(default_factory=dict)
    eval_data: str = ""
    train_data: str | None = None
    val_data: str | None = None
    batch_size: int = 256
    train_fn: str | None = None
    target_key: str | None = None
    output_fn: str | None = None
    repeats: int = 5
    warmup: int = 1
    seed: int = 0
    min_repeat_s: float | None = None
    significance: str = "paired"
    threads: int | None = None
    carbon: Mapping[str, Any] = field(default_factory=dict)
    optimize: Mapping[str, Any] = field(default_factory=dict)

    def carbon_settings(self) -> Any:
        """The ``[carbon]`` table as validated :class:`~greenmeter.carbon.settings.CarbonSettings` (or ``None``)."""

        if not self.carbon:
            return None
        table = dict(self.carbon)
        if "intensity" in table:
            table["intensity_g_per_kwh"] = table.pop("intensity")
        return CarbonSettings(**table)

    def optimize_kwargs(self) -> dict[str, Any]:
        """Import everything and return keyword arguments for :func:`greenmeter.optimize` (``model``, ``data``...).

        The ``[optimize]`` table gives the search's settings (``save_to`` relative to the TOML file); ``[model]``,
        ``[data]``, ``[training]`` and ``[carbon]`` are read as for ``compare``, and from ``[compare]`` the
        ``seed``, ``min_repeat_s``, ``significance`` and ``threads``.
        """
        kwargs = self.build()
        variants = kwargs.pop("variants")
        out = {key: kwargs[key] for key in ("data", "seed", "batch_size", "name", "carbon", "min_repeat_s",
                                            "significance", "threads", "train_data", "val_data", "train_fn",
                                            "target_key", "output_fn")
               if key in kwargs}
        out["model"] = variants[self.baseline]
        table = dict(self.optimize)
        if "save_to" in table:
            table["save_to"] = self.path.parent / str(table["save_to"])
        if "probes" in table:
            table["probes"] = tuple(table["probes"])
        return {**out, **table}

    def build(self) -> dict[str, Any]:
        """Import everything and return keyword arguments for :func:`greenmeter.compare` (``variants``, ``data``...)."""
        import torch

        factory = resolve_object(self.model_factory, "model.factory", self.path)
        if not callable(factory):
            raise ConfigError(f"{self.path}: model.factory {self.model_factory!r} is not callable")
        kwargs = dict(self.model_kwargs)
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as err:
            raise ConfigError(f"{self.path}: model.kwargs do not fit model.factory {self.model_factory!r}: {err}; "
                              f"it takes {_signature(factory)}") from err
        except ValueError:  # no signature to inspect (some builtins): the call says
            pass
        model = _call(factory, "model.factory", self.model_factory, self.path, kwargs)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"{self.path}: model.factory returned a {type(model).__name__}, not a torch.nn.Module")
        if self.weights is not None:
            _load_weights(model, self.weights, self.path)
        if self.device is not None:
            model.to(self.device)
        variants: dict[str, Any] = {self.baseline: model}
        for key, spec in self.recipes.items():
            if key in variants:
                raise ConfigError(f"{self.path}: two variants are named {key!r}")
            variants[key] = spec
        kwargs: dict[str, Any] = {
            "variants": variants, "data": _data(self.eval_data, "data.eval", self.path), "baseline": self.baseline,
            "repeats": self.repeats, "warmup": self.warmup, "seed": self.seed, "batch_size": self.batch_size,
            "name": self.name, "carbon": self.carbon_settings(), "min_repeat_s": self.min_repeat_s,
            "significance": self.significance, "threads": self.threads,
        }
        if self.train_data:
            kwargs["train_data"] = _data(self.train_data, "data.train", self.path)
        if self.val_data:
            kwargs["val_data"] = _data(self.val_data, "data.val", self.path)
        if self.train_fn:
            fn = resolve_object(self.train_fn, "training.function", self.path)
            if not callable(fn):
                raise ConfigError(f"{self.path}: training.function {self.train_fn!r} is not callable")
            kwargs["train_fn"] = fn
        if self.target_key is not None:
            kwargs["target_key"] = self.target_key
        if self.output_fn:
            fn = resolve_object(self.output_fn, "model.output_fn", self.path)
            if not callable(fn):
                raise ConfigError(f"{self.path}: model.output_fn {self.output_fn!r} is not callable")
            kwargs["output_fn"] = fn
        return kwargs


def _data(spec: str, key: str, path: Path) -> Any:
    obj = resolve_object(spec, key, path)
    return _call(obj, key, spec, path, {}) if callable(obj) else obj


def _signature(fn: Callable[..., Any]) -> str:
    try:
        return f"{getattr(fn, '__name__', 'it')}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return "arguments that cannot be inspected"


def _call(fn: Callable[..., Any], key: str, spec: str, path: Path, kwargs: Mapping[str, Any]) -> Any:
    """Call the user's ``fn(**kwargs)`` named by ``key``; what it raises becomes a ConfigError naming the key."""
    try:
        return fn(**kwargs)
    except GreenmeterError:
        raise
    except Exception as err:  # the user's code failed: said in one line, the original chained
        raise ConfigError(f"{path}: {key} {spec!r} raised {type(err).__name__}: {err}") from err


def _load_weights(model: Any, weights: Path, path: Path) -> None:
    """Load the state_dict at ``weights`` into ``model`` (weights only: no code in the file is run)."""
    import torch

    where = f"{path}: model.weights {str(weights)!r}"
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ConfigError(f"{where} cannot be read: {err.strerror or err}") from err
    except Exception as err:  # torch.load's many ways to refuse a file that is not a checkpoint
        raise ConfigError(f"{where} is not a PyTorch state_dict that torch.load can read with weights_only=True "
                          f"({type(err).__name__}); save one with torch.save(model.state_dict(), path)") from err
    if not isinstance(state, Mapping):
        raise ConfigError(f"{where} holds a {type(state).__name__}, not a state_dict (parameter names mapped to "
                          "tensors); save one with torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as err:
        said = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # torch's: several lines
        raise ConfigError(f"{where} does not fit the model that model.factory makes: {said}") from err


def resolve_object(spec: str, key: str, path: Path | None = None) -> Any:
    """Import ``package.module:attribute`` (or ``package.module.attribute``); the TOML file's folder is searched first."""
    where = f"{path}: " if path is not None else ""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{where}{key} must be an import path such as 'package.module:name', not {spec!r}")
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}{key} {spec!r} is not an import path such as 'package.module:name'")
    if path is not None and str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where}{key}: cannot import {module_name!r} ({err}); check the path and that the "
                          "package is installed or next to the TOML file") from err
    except TypeError as err:  # a relative name (".models"): there is no package to be relative to
        raise ConfigError(f"{where}{key} {spec!r} is not an import path such as 'package.module:name' "
                          "(relative imports are not allowed)") from err
    except Exception as err:  # the module itself failed while it was imported (a SyntaxError, an exception)
        raise ConfigError(f"{where}{key}: importing {module_name!r} raised {type(err).__name__}: {err}") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}{key}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _check_keys(table: Mapping[str, Any], section: str, path: Path) -> None:
    unknown = set(table) - _SECTIONS[section]
    if unknown:
        label = f"[{section}]" if section else "the top level"
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} in {label}; allowed: "
                          f"{', '.join(sorted(_SECTIONS[section]))}")


def load_compare_config(path: str | Path) -> CompareConfig:
    """Read and check a comparison TOML file (the objects it names are imported only by ``build()``).

    Raises:
        ConfigError: the file is missing, is not UTF-8 TOML, or has a missing, unknown or wrong-typed key, a
            setting out of range, or a recipe that is unknown or whose argument it refuses.
    """
    return _load(path, "compare")


def load_optimize_config(path: str | Path) -> CompareConfig:
    """Read and check the TOML file of ``greenmeter optimize``: the comparison file's tables and ``[optimize]``.

    ``[optimize]`` takes ``max_drop``, ``max_latency_ratio``, ``max_size_ratio``, ``recipes`` (default: the
    candidates :func:`greenmeter.comparison.optimize.default_candidates` proposes), ``time_budget_s``,
    ``screen_repeats``, ``final_repeats``, ``finalists``, ``eta``, ``probes`` and ``save_to`` (a folder,
    relative to the TOML file); ``[compare]`` needs no recipes here.

    Raises:
        ConfigError: as :func:`load_compare_config`, and an ``[optimize]`` setting of the wrong type or range.
    """
    return _load(path, "optimize")


def _load(path: str | Path, purpose: str) -> CompareConfig:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read the comparison config {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}), so it is not a TOML file; "
                          "save it as UTF-8") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err
    _check_keys(doc, "", path)
    tables = {}
    for section in ("model", "data", "training", "compare", "carbon", "optimize"):
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        _check_keys(table, section, path)
        tables[section] = table
    model, data, compare_t = tables["model"], tables["data"], tables["compare"]
    if "factory" not in model:
        raise ConfigError(f"{path}: [model] needs factory = 'package.module:function' (the baseline model)")
    if "eval" not in data:
        raise ConfigError(f"{path}: [data] needs eval = 'package.module:function' (the evaluation data)")
    recipes: dict[str, str] = {}
    listed = compare_t.get("recipes", [])
    if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed):
        raise ConfigError(f"{path}: compare.recipes must be a list of recipe specs such as ['prune:0.5', 'int4']")
    recipes.update({r: r for r in listed})
    named = compare_t.get("variants", {})
    if not isinstance(named, dict) or not all(isinstance(v, str) for v in named.values()):
        raise ConfigError(f"{path}: [compare.variants] must map names to recipe specs")
    recipes.update(named)
    if not recipes and purpose == "compare":
        raise ConfigError(f"{path}: nothing to compare: give compare.recipes or [compare.variants]")
    for key, spec in recipes.items():
        try:
            check_recipe(spec)
        except ConfigError as err:
            where = "compare.recipes" if key == spec and spec in listed else f"compare.variants.{key}"
            raise ConfigError(f"{path}: {where}: {err}") from err
    kwargs = model.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{path}: model.kwargs must be a table of keyword arguments")
    weights = model.get("weights")
    if weights is not None:
        text(f"{path}: model.weights", weights)
    for key, table in (("target_key", data), ("output_fn", model)):
        if key in table:
            text(f"{path}: {'data' if table is data else 'model'}.{key}", table[key])
    if "device" in model:
        check_device(f"{path}: model.device", model["device"])
    given = {key: compare_t[key] for key in ("repeats", "warmup", "seed", "min_repeat_s", "significance", "threads")
             if key in compare_t}
    if "batch_size" in data:
        given["batch_size"] = data["batch_size"]
    settings = check_settings(**given,
                              label=lambda key: f"{path}: {'data' if key == 'batch_size' else 'compare'}.{key}")
    config = CompareConfig(
        path=path, name=str(doc.get("name", path.stem)), model_factory=model["factory"], model_kwargs=kwargs,
        weights=None if weights is None else (path.parent / str(weights)), device=model.get("device"),
        baseline=str(compare_t.get("baseline", model.get("name", "baseline"))), recipes=recipes,
        eval_data=data["eval"], train_data=data.get("train"), val_data=data.get("val"),
        train_fn=tables["training"].get("function"), target_key=data.get("target_key"),
        output_fn=model.get("output_fn"), carbon=tables["carbon"],
        optimize=_optimize_table(tables["optimize"], path), **settings,
    )
    config.carbon_settings()  # validate the carbon table now, before any work
    return config


def _optimize_table(table: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The ``[optimize]`` table, each setting checked as :func:`greenmeter.optimize` checks it, before any work."""
    from greenmeter._checks import number, whole_number

    def label(key: str) -> str:
        return f"{path}: optimize.{key}"

    out: dict[str, Any] = {}
    for key in ("max_drop", "max_latency_ratio", "max_size_ratio", "time_budget_s"):
        if key in table:
            out[key] = number(label(key), table[key], low=0, low_open=key != "max_drop")
    for key, low in (("screen_repeats", 2), ("final_repeats", 2), ("finalists", 1), ("eta", 2)):
        if key in table:
            out[key] = whole_number(label(key), table[key], minimum=low)
    for key in ("recipes", "probes"):
        if key in table:
            listed = table[key]
            if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed) or (
                    key == "recipes" and not listed):
                example = "['int8-static', 'channels:0.5+int8-static']" if key == "recipes" else (
                    "['int8', 'prune:0.5'] ([] skips the sensitivity)")
                raise ConfigError(f"{label(key)} must be a {'non-empty ' if key == 'recipes' else ''}list of strings "
                                  f"such as {example}")
            if key == "recipes":
                for spec in listed:
                    try:
                        check_recipe(spec)
                    except ConfigError as err:
                        raise ConfigError(f"{label(key)}: {err}") from err
            out[key] = list(listed)
    if "save_to" in table:
        out["save_to"] = text(label("save_to"), table["save_to"])
    return out
