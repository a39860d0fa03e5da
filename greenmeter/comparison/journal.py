"""The journal of an optimize search: what a resumed search reads back instead of doing again.

:func:`greenmeter.optimize` run with a store journals each step as it finishes, in the store's ``searches``
and ``search_steps`` tables (:meth:`greenmeter.store.database.Store.save_search_step`):

* ``sensitivity``: the per-layer sensitivity table;
* ``candidate:SPEC``: each candidate's outcome after it was built and checked (metric, making cost, or why it
  failed or left the budget), with the model it built when that model can be serialized (``torch.save``);
* ``round:N``: each screening round (who was measured, their energy ratios, who went on).

A search killed, interrupted or crashed before its final comparison leaves its journal behind; the same search
run again with ``resume=True`` (``greenmeter optimize CONFIG --resume``) reads it back and goes on where it
stopped: the sensitivity, the candidates built and the rounds done are taken from the journal, and the time
budget counts the seconds the search already spent. When the result is stored, the journal is deleted in the
same transaction.

"The same search" is decided by a :func:`fingerprint`: hashes of the baseline's weights, of the evaluation and
selection data and (where it is tensors) of the training data, and the search's settings; the time budget is not
part of it, so a resumed search may be given more time. A stored model is trusted only when, loaded back, it
gives the metric journaled for it on the selection data; one that cannot be stored or loaded (the FX-converted
int8 models of torch 2.13 cannot be unpickled) is rebuilt, its making energy measured again. A stack whose first
steps were journaled is rebuilt on their stored model, so only its last (cheap) step runs again.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SearchJournal", "data_hash", "fingerprint", "model_hash"]


def _update(digest: Any, value: Any) -> bool:
    """Feed ``value`` (tensors, and tuples, lists, dicts and plain values of them) to ``digest``; ``False`` when
    part of it cannot be hashed by content (an iterable that is not a sequence, an arbitrary object)."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_quantized:
            digest.update(f"q{t.qscheme()}".encode())
            t = t.int_repr()
        t = t.contiguous().reshape(-1)
        digest.update(f"{t.dtype}{tuple(value.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return True
    if isinstance(value, Mapping):
        ok = True
        for k in sorted(value, key=str):
            digest.update(str(k).encode())
            ok = _update(digest, value[k]) and ok
        return ok
    if isinstance(value, (tuple, list)):
        digest.update(f"[{len(value)}".encode())
        return all([_update(digest, v) for v in value])
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        digest.update(repr(value).encode())
        return True
    digest.update(type(value).__qualname__.encode())
    return False


def data_hash(data: Any) -> str | None:
    """A sha256 of the content of ``data`` (tensors and nested tuples, lists and dicts of them; a
    ``TensorDataset`` or a ``DataLoader`` over one by its tensors); ``None`` when it cannot be hashed by content."""
    dataset = getattr(data, "dataset", data)  # a DataLoader: its dataset
    tensors = getattr(dataset, "tensors", None)  # a TensorDataset: its tensors
    digest = hashlib.sha256()
    return digest.hexdigest() if _update(digest, tensors if tensors is not None else dataset) else None


def model_hash(model: Any) -> str:
    """A sha256 of ``model``'s class and state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        if not _update(digest, value):
            digest.update(repr(value).encode())
    return digest.hexdigest()


def fingerprint(model: Any, evaluation: Any, selection: Any, train_data: Any,
                settings: Mapping[str, Any]) -> dict[str, Any]:
    """What a resumed search must match: the hashes of the baseline's weights and of the data, and the settings.

    Args:
        model: the baseline.
        evaluation: the evaluation batches (``[(inputs, targets), ...]``).
        selection: the selection batches.
        train_data: the training data (``None`` when none); ``"unchecked"`` in the result when it cannot be
            hashed by content (a DataLoader over a dataset that is not a ``TensorDataset``).
        settings: the search's settings that change its answer (budget, recipes, repeats, seed...), JSON-able.
    """
    train = None if train_data is None else (data_hash(train_data) or f"unchecked ({type(train_data).__name__})")
    return {"model": model_hash(model), "evaluation data": data_hash(evaluation),
            "selection data": data_hash(selection), "training data": train, "settings": dict(settings)}


def _key(name: str, fp: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"name": name, **fp}, sort_keys=True, default=str).encode()).hexdigest()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words (``["the model", "settings: seed"]``)."""
    out = [what if what != "model" else "the model's weights" for what in ("model", "evaluation data",
                                                                           "selection data", "training data")
           if old.get(what) != new.get(what)]
    a, b = old.get("settings", {}), new.get("settings", {})
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        out.append("settings: " + ", ".join(changed))
    return out


def dump_model(model: Any) -> bytes | None:
    """``model`` serialized with ``torch.save``, or ``None`` when it cannot be."""
    import torch

    buffer = io.BytesIO()
    try:
        torch.save(model, buffer)
    except Exception:  # noqa: BLE001 - not storable: the resumed search rebuilds it, and says so
        return None
    return buffer.getvalue()


def load_model(blob: bytes) -> Any:
    """A model stored by :func:`dump_model` (raises what unpickling raises)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch's own deprecation notes about its storage classes
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(io.BytesIO(blob), weights_only=False)  # our own journal, written by this search


class SearchJournal:
    """One optimize search's journal in a store: read back on resume, written step by step.

    Args:
        store: the run store (``None``: nothing is journaled and nothing can be resumed).
        name: the search's name.
        fp: its :func:`fingerprint`.
        resume: read back the journal of the same search when there is one; when ``False`` an old journal of
            the same search is deleted and the search starts anew.
        show: where progress lines go.
    """

    def __init__(self, store: Any, name: str, fp: Mapping[str, Any], *, resume: bool,
                 show: Callable[[str], None]) -> None:
        self.store = store
        self.name = name
        self.fingerprint = dict(fp)
        self.key = _key(name, fp)
        self.spent_before_s = 0.0
        self.steps: dict[str, tuple[dict[str, Any], bytes | None]] = {}
        self.resumed = False
        self._started = time.perf_counter()
        self._show = show
        if store is None:
            return
        if not resume:
            store.drop_search(self.key)
            return
        found = store.search_journal(self.key)
        if found is None:
            others = [row for row in store.unfinished_searches() if row[1] == name]
            why = ("" if not others else f"; an unfinished search named {name!r} exists, but its "
                   f"{' and '.join(_differences(others[0][3], self.fingerprint)) or 'fingerprint'} differ")
            show(f"nothing to resume{why}: starting a new search")
            return
        header, self.steps = found
        self.spent_before_s = header["spent_s"]
        self.resumed = True
        show(f"resuming the search started {header['started_at']}: {self.summary()}, "
             f"{self.spent_before_s:.0f} s of its time budget spent")

    def summary(self) -> str:
        """What the journal holds, in words."""
        built = sum(1 for s in self.steps if s.startswith("candidate:"))
        rounds = sum(1 for s in self.steps if s.startswith("round:"))
        return (f"{'sensitivity, ' if 'sensitivity' in self.steps else ''}{built} candidate(s) checked, "
                f"{rounds} screening round(s) done")

    @property
    def spent_s(self) -> float:
        """Seconds of the search's time budget spent: before this run and in it."""
        return self.spent_before_s + (time.perf_counter() - self._started)

    def get(self, step: str) -> dict[str, Any] | None:
        """The journaled data of ``step``, or ``None``."""
        found = self.steps.get(step)
        return None if found is None else found[0]

    def model(self, step: str) -> Any:
        """The model journaled with ``step`` loaded back, or the reason it cannot be (a ``str``)."""
        found = self.steps.get(step)
        if found is None or found[1] is None:
            return "it could not be stored"
        try:
            return load_model(found[1])
        except Exception as err:  # noqa: BLE001 - rebuilt instead, and the reason shown
            return f"it could not be loaded back ({type(err).__name__})"

    def record(self, step: str, data: Mapping[str, Any], model: Any = None) -> None:
        """Journal ``step`` (with ``model`` serialized, when given and possible); a no-op without a store."""
        if self.store is None:
            return
        blob = None if model is None else dump_model(model)
        self.store.save_search_step(self.key, self.name, self.fingerprint, self.spent_s, step, data, blob)
