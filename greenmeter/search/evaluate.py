"""Evaluating one candidate: build it, train it, score it on held-out data, measure its inference energy.

:class:`SearchTask` says what a candidate is trained on and scored on; :func:`digits_task` is the
bundled one. The private :class:`Evaluator` runs the steps under a :class:`~greenmeter.metering.meter.Meter` and
keeps every figure in the :class:`~greenmeter.search.cache.SearchCache`:

1. **Build** with ``torch.manual_seed(seed)``; count MACs per sample (the proxy) and parameters.
2. **Train** from scratch for the rung's epochs, in a meter window named ``search-train:<config>``.
3. **Score**: top-1 accuracy on the task's held-out data (not the test set a final comparison uses).
4. **Measure** (once per configuration): one untimed pass over the held-out inputs, then ``repeats``
   meter windows named ``search-measure:<config>``, each of as many passes as make it last
   ``min_window_s`` (by default 50 update periods of the slowest energy source, at least 0.2 s, as
   :func:`greenmeter.compare` does). Energy per sample is the median over the windows.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._checks import whole_number
from greenmeter._errors import ConfigError
from greenmeter.comparison.compare import default_repeat_s, passes_for
from greenmeter.comparison.facts import count_macs
from greenmeter.comparison.progress import progress_printer
from greenmeter.demo.digits import accuracy, load_digits_data, train_classifier
from greenmeter.search.cache import SearchCache, fingerprint_key, hardware_fingerprint
from greenmeter.search.space import SearchSpace, config_key

if TYPE_CHECKING:
    import torch
    from torch import nn

    from greenmeter.demo.digits import DigitsData
    from greenmeter.metering.meter import Meter

__all__ = ["SearchTask", "digits_task"]

TrainFn = Callable[["nn.Module", int, int], Any]
#: What the search's progress lines on stderr start with.
SEARCH_PREFIX = "[search] "


@dataclass(frozen=True, eq=False)  # compared by identity: it holds tensors and a function
class SearchTask:
    """What every candidate is trained on and scored on.

    Attributes:
        name: the task's name; part of the cache key, so change it when the training changes.
        train: ``train(model, epochs, seed)`` trains ``model`` in place from its initial weights.
        x_val, y_val: held-out inputs and labels: accuracy and inference energy are measured on them.
        batch_size: inference batch size for scoring and measuring.
    """

    name: str
    train: TrainFn
    x_val: torch.Tensor
    y_val: torch.Tensor
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not callable(self.train):
            raise ConfigError("SearchTask.train must be a callable train(model, epochs, seed)")
        if len(self.x_val) == 0 or len(self.x_val) != len(self.y_val):
            raise ConfigError(f"SearchTask needs non-empty held-out data of equal lengths, got "
                              f"{len(self.x_val)} inputs and {len(self.y_val)} labels")
        whole_number("batch_size", self.batch_size, minimum=1)

    def to_dict(self) -> dict[str, Any]:
        """The name, the held-out size and a checksum of the held-out data (what the cache keys by)."""
        digest = hashlib.sha256()
        for t in (self.x_val, self.y_val):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return {"name": self.name, "val_samples": len(self.x_val), "val_sha256": digest.hexdigest()[:16],
                "batch_size": self.batch_size}


def digits_task(data: DigitsData | None = None, *, validation_fraction: float = 0.2, lr: float = 3e-3,
                batch_size: int = 64) -> SearchTask:
    """The digits task for a search: train on the training split less its last ``validation_fraction``,
    score and measure on that held-out part (the test split stays unseen for the final comparison).

    Training is :func:`greenmeter.demo.digits.train_classifier` (Adam at ``lr``, cosine schedule, mini-batches
    of ``batch_size``), as the baseline CNN is trained.
    """

    full = data if data is not None else load_digits_data()
    train_part, val = full.validation_split(validation_fraction)

    def train(model: nn.Module, epochs: int, seed: int) -> None:
        train_classifier(model, train_part, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)

    return SearchTask(f"digits-val{validation_fraction:g}-adam{lr:g}-bs{batch_size}", train, val.x_test, val.y_test)


def _complete(entry: Mapping[str, Any] | None, epochs: int) -> bool:
    """Whether a cache entry already has the energy and a rung of ``epochs``."""
    return entry is not None and "energy" in entry and str(epochs) in entry["rungs"]


class Evaluator:
    """Evaluates candidates for one search through the cache (private to ``search_architectures``)."""

    def __init__(self, space: SearchSpace, task: SearchTask, cache: SearchCache, meter: Meter, *, seed: int,
                 min_window_s: float | None, repeats: int, progress: bool | Callable[[str], None]) -> None:

        self.space, self.task, self.cache, self.meter = space, task, cache, meter
        self.seed, self.repeats = seed, repeats
        self.hardware = hardware_fingerprint(meter)
        self.task_info = task.to_dict()  # hashes the held-out data: once per search
        self.setup = {"space": space.name, **self.task_info, "seed": seed}
        self.hw_key, self.setup_key = fingerprint_key(self.hardware), fingerprint_key(self.setup)
        self.min_window_s = default_repeat_s(meter) if min_window_s is None else float(min_window_s)
        self.show = progress_printer(progress, prefix=SEARCH_PREFIX)
        self.fresh = 0
        self.cached = 0

    def lookup(self, config: Mapping[str, Any], epochs: int) -> dict[str, Any] | None:
        """The cached entry when it already has this rung and the energy, else ``None``."""
        entry = self.cache.get(self.hw_key, self.setup_key, config_key(config))
        return entry if _complete(entry, epochs) else None

    def evaluate(self, config: Mapping[str, Any], epochs: int) -> tuple[dict[str, Any], bool]:
        """The cache entry for ``config`` with a rung of ``epochs``, evaluated now if not cached.

        Returns:
            ``(entry, cached)``: the entry (``macs_per_sample``, ``params``, ``energy``, ``rungs``) and
            whether it came from the cache without any new training or measurement.
        """
        import torch

        key = config_key(config)
        entry = self.cache.get(self.hw_key, self.setup_key, key)
        if _complete(entry, epochs):
            self.cached += 1
            return entry, True  # type: ignore[return-value]
        entry = entry or {"config": dict(config), "rungs": {}}
        torch.manual_seed(self.seed)
        model = self.space.build(config)
        if "macs_per_sample" not in entry:
            entry["macs_per_sample"] = count_macs(model, self.task.x_val[:8]).macs_per_sample
            entry["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        with self.meter.window(f"search-train:{key}") as w:
            self.task.train(model, epochs, self.seed)
        model.eval()
        m = w.measurement
        entry["rungs"][str(epochs)] = {
            "accuracy": accuracy(model, self.task.x_val, self.task.y_val, self.task.batch_size),
            "train_energy_j": m.energy_j, "train_duration_s": m.duration_s,
            "flags": [f for f in m.flags if "not resolved" in f]}
        if "energy" not in entry:
            entry["energy"] = self._measure(model, key)
        self.cache.put(self.hardware, self.setup, key, entry)
        self.fresh += 1
        return entry, False

    def _measure(self, model: nn.Module, key: str) -> dict[str, Any]:
        import torch

        x, bs = self.task.x_val, self.task.batch_size
        batches = [x[i:i + bs] for i in range(0, len(x), bs)]
        n = len(x)
        with torch.inference_mode():
            torch.manual_seed(self.seed)
            start = time.perf_counter()
            for b in batches:
                model(b)
            pass_s = time.perf_counter() - start
            passes = passes_for(self.min_window_s, pass_s)
            values, latencies, total, flags = [], [], 0.0, []
            for _ in range(self.repeats):
                with self.meter.window(f"search-measure:{key}", samples=n * passes) as w:
                    for _ in range(passes):
                        for b in batches:
                            model(b)
                m = w.measurement
                values.append(m.energy_j / (n * passes))
                latencies.append(m.duration_s / (n * passes))
                total += m.energy_j
                flags.extend(m.flags)
        return {"per_sample_j": statistics.median(values), "values_j": values,
                "latency_per_sample_s": statistics.median(latencies), "windows_energy_j": total,
                "flags": list(dict.fromkeys(flags))}
