"""The records an architecture search produces: each :class:`Candidate`, and the :class:`SearchResult`.

All are frozen, carry the search's schema version, and round-trip through JSON. Units live in the field
names: joules (``_j``), seconds (``_s``); accuracy is a fraction in [0, 1] on the search's held-out data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter._text import text_table
from greenmeter.records.encoding import check_record_version, finite_json, parse_record_json
from greenmeter.records.measurement import HostInfo

__all__ = ["SEARCH_SCHEMA_VERSION", "Candidate", "Correlation", "RungResult", "SearchResult", "correlate"]

#: Version of the search record layout; ``from_dict`` refuses newer versions.
SEARCH_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RungResult:
    """A candidate trained from scratch for ``epochs`` epochs, and its accuracy on the held-out data.

    Attributes:
        epochs: training epochs.
        accuracy: top-1 accuracy on the search's held-out data, a fraction.
        train_energy_j: energy of the training window, in joules (as measured when it first ran).
        train_duration_s: its wall-clock duration, in seconds.
        cached: whether this search took it from the cache rather than training it.
    """

    epochs: int
    accuracy: float
    train_energy_j: float
    train_duration_s: float
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RungResult:
        return cls(int(data["epochs"]), float(data["accuracy"]), float(data["train_energy_j"]),
                   float(data["train_duration_s"]), bool(data.get("cached", False)))


@dataclass(frozen=True)
class Candidate:
    """One architecture the search evaluated.

    Attributes:
        id: its number, in the order the search first proposed it (0, 1, ...).
        config: the configuration (dimension -> choice).
        origin: ``"random"``, or ``"mutation of #3: width 16->32"``.
        parent: the id of the parent it was mutated from, if any.
        macs_per_sample: multiply-accumulates per sample (:func:`greenmeter.comparison.facts.count_macs`), the proxy.
        params: trainable parameters.
        energy_per_sample_j: measured inference energy per sample on the held-out data, in joules (the
            median of ``energy_values_j``).
        energy_values_j: joules per sample of each measured window.
        latency_per_sample_s: wall-clock seconds per sample over the same windows (median).
        rungs: each training length it was evaluated at, shortest first.
        reward: the objective's reward at its last rung (see :class:`~greenmeter.search.Objective`).
        on_pareto_front: no candidate has accuracy at least as high and energy at most as low, one strictly.
        flags: what a reader must know about its figures (an estimate, an unresolved window...).
    """

    id: int
    config: Mapping[str, Any]
    origin: str
    parent: int | None
    macs_per_sample: float | None
    params: int
    energy_per_sample_j: float
    energy_values_j: tuple[float, ...]
    latency_per_sample_s: float
    rungs: tuple[RungResult, ...]
    reward: float | None = None
    on_pareto_front: bool = False
    flags: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        """Accuracy at the longest training the candidate got (its last rung)."""
        return self.rungs[-1].accuracy

    @property
    def epochs(self) -> int:
        """Epochs of its last rung."""
        return self.rungs[-1].epochs

    def label(self) -> str:
        """``"depth=2 width=32 kernel=3"``: the config in one line."""
        return " ".join(f"{k}={v}" for k, v in self.config.items())

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(config=dict(self.config), energy_values_j=list(self.energy_values_j),
                   rungs=[r.to_dict() for r in self.rungs], flags=list(self.flags))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            id=int(data["id"]), config=dict(data["config"]), origin=data["origin"], parent=data.get("parent"),
            macs_per_sample=data.get("macs_per_sample"), params=int(data["params"]),
            energy_per_sample_j=float(data["energy_per_sample_j"]),
            energy_values_j=tuple(float(v) for v in data["energy_values_j"]),
            latency_per_sample_s=float(data["latency_per_sample_s"]),
            rungs=tuple(RungResult.from_dict(r) for r in data["rungs"]), reward=data.get("reward"),
            on_pareto_front=bool(data.get("on_pareto_front", False)), flags=tuple(data.get("flags", ())),
        )


@dataclass(frozen=True)
class Correlation:
    """How well the proxy (MACs per sample) tracks the measured energy per sample, over the candidates.

    Attributes:
        n: candidates with both figures.
        pearson_r, pearson_p: Pearson's linear correlation and its two-sided p-value (scipy.stats.pearsonr).
        spearman_rho, spearman_p: Spearman's rank correlation and its p-value (scipy.stats.spearmanr): does
            ranking by MACs rank by energy?
        log_pearson_r: Pearson's r of log(MACs) against log(energy): whether MACs predict energy *ratios*
            across orders of magnitude, where the raw r is carried by the few largest candidates.
        note: why a coefficient is missing (fewer than 3 candidates, a constant column), else ``None``.
    """

    n: int
    pearson_r: float | None
    pearson_p: float | None
    spearman_rho: float | None
    spearman_p: float | None
    log_pearson_r: float | None = None
    note: str | None = None

    def describe(self) -> str:
        """One line: ``MACs vs measured energy over 12 candidates: Pearson r=0.93 (p=1e-05), Spearman ...``."""
        if self.pearson_r is None:
            return f"MACs vs measured energy over {self.n} candidates: no correlation ({self.note})"
        return (f"MACs vs measured energy over {self.n} candidates: Pearson r={self.pearson_r:.3f} "
                f"(p={self.pearson_p:.2g}), Spearman rho={self.spearman_rho:.3f} (p={self.spearman_p:.2g}), "
                f"Pearson of the logs r={self.log_pearson_r:.3f}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Correlation:
        return cls(int(data["n"]), data.get("pearson_r"), data.get("pearson_p"), data.get("spearman_rho"),
                   data.get("spearman_p"), data.get("log_pearson_r"), data.get("note"))


def correlate(macs: Sequence[float], energy: Sequence[float]) -> Correlation:
    """Pearson and Spearman correlation of MACs against energy per sample (pairs with a missing value skipped)."""
    from scipy import stats

    pairs = [(float(m), float(e)) for m, e in zip(macs, energy)
             if m is not None and e is not None and math.isfinite(m) and math.isfinite(e)]
    n = len(pairs)
    if n < 3:
        return Correlation(n, None, None, None, None, note=f"{n} candidate(s) with both figures; at least 3 are needed")
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return Correlation(n, None, None, None, None, note="MACs or energy is the same for every candidate")
    pr = stats.pearsonr(xs, ys)
    sr = stats.spearmanr(xs, ys)
    logs = None
    if min(xs) > 0 and min(ys) > 0:
        logs = float(stats.pearsonr([math.log(x) for x in xs], [math.log(y) for y in ys]).statistic)
    return Correlation(n, float(pr.statistic), float(pr.pvalue), float(sr.statistic), float(sr.pvalue), logs)


@dataclass(frozen=True)
class SearchResult:
    """A finished (or budget-stopped) architecture search.

    Attributes:
        space: the space searched (``SearchSpace.to_dict()``).
        strategy: the strategy and its settings, as a dict (``{"name": "evolution", ...}``).
        budget: the budget, as a dict.
        objective: the objective, as a dict, with ``target_energy_j`` as used for the rewards.
        seed: the seed of the proposals and of every training run.
        task: the task's name and its held-out data size.
        hardware: the fingerprint the cache keyed the measurements by (cpu, torch, backends...).
        host: the machine.
        candidates: every candidate, by id.
        stopped_by: ``"complete"`` (the strategy finished), ``"max_candidates"``, ``"max_time_s"``, or
            ``"space exhausted"``.
        fresh_evaluations: training runs and energy measurements made by this call.
        cached_evaluations: those taken from the cache.
        search_energy_j: energy of every training and measurement window behind the candidates, in joules,
            counted once each as first measured (cached ones included): what the search cost.
        correlation: MACs against measured energy per sample over all candidates.
        sources: the energy sources' provenance, one line each.
        duration_s: wall-clock time of this call, in seconds.
    """

    space: Mapping[str, Any]
    strategy: Mapping[str, Any]
    budget: Mapping[str, Any]
    objective: Mapping[str, Any]
    seed: int
    task: Mapping[str, Any]
    hardware: Mapping[str, Any]
    host: HostInfo
    candidates: tuple[Candidate, ...]
    stopped_by: str
    fresh_evaluations: int
    cached_evaluations: int
    search_energy_j: float
    correlation: Correlation
    sources: tuple[str, ...] = ()
    duration_s: float | None = None
    schema_version: int = SEARCH_SCHEMA_VERSION

    @property
    def pareto_front(self) -> tuple[Candidate, ...]:
        """The candidates on the accuracy-energy front, most accurate first."""
        front = [c for c in self.candidates if c.on_pareto_front]
        return tuple(sorted(front, key=lambda c: (-c.accuracy, c.energy_per_sample_j, c.id)))

    @property
    def best(self) -> Candidate:
        """The candidate with the highest reward (ties: lower energy, then lower id)."""
        if not self.candidates:
            raise ConfigError("the search evaluated no candidate")
        return min(self.candidates, key=lambda c: (-(c.reward or 0.0), c.energy_per_sample_j, c.id))

    def candidate(self, id: int) -> Candidate:
        """The candidate numbered ``id``."""
        for c in self.candidates:
            if c.id == id:
                return c
        raise ConfigError(f"no candidate #{id}; ids run 0..{len(self.candidates) - 1}")

    def table(self, front_only: bool = False) -> str:
        """A plain-text table: id, config, epochs, accuracy %, mJ/sample, MACs, reward, front marker."""
        rows = [["#", "config", "epochs", "acc %", "mJ/sample", "MACs/sample", "reward", "front"]]
        for c in (self.pareto_front if front_only else self.candidates):
            rows.append([str(c.id), c.label(), str(c.epochs), f"{c.accuracy * 100:.2f}",
                         f"{c.energy_per_sample_j * 1e3:.4g}",
                         "-" if c.macs_per_sample is None else f"{c.macs_per_sample:,.0f}",
                         "-" if c.reward is None else f"{c.reward:.4f}", "*" if c.on_pareto_front else ""])
        return text_table(rows, left=1)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(space=dict(self.space), strategy=dict(self.strategy), budget=dict(self.budget),
                   objective=dict(self.objective), task=dict(self.task), hardware=dict(self.hardware),
                   host=self.host.to_dict(), candidates=[c.to_dict() for c in self.candidates],
                   correlation=self.correlation.to_dict(), sources=list(self.sources))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchResult:
        check_record_version(data, SEARCH_SCHEMA_VERSION, "search result")
        return cls(
            space=dict(data["space"]), strategy=dict(data["strategy"]), budget=dict(data["budget"]),
            objective=dict(data["objective"]), seed=int(data["seed"]), task=dict(data["task"]),
            hardware=dict(data["hardware"]), host=HostInfo.from_dict(data["host"]),
            candidates=tuple(Candidate.from_dict(c) for c in data["candidates"]), stopped_by=data["stopped_by"],
            fresh_evaluations=int(data["fresh_evaluations"]), cached_evaluations=int(data["cached_evaluations"]),
            search_energy_j=float(data["search_energy_j"]), correlation=Correlation.from_dict(data["correlation"]),
            sources=tuple(data.get("sources", ())), duration_s=data.get("duration_s"),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """The record as JSON (non-finite numbers written as ``null``)."""
        return json.dumps(finite_json(self.to_dict()), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> SearchResult:
        return cls.from_dict(parse_record_json(text, "search result", "candidates"))
