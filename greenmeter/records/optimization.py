"""The record of :func:`greenmeter.optimize`: the variant chosen, the comparison that proves it, and every try.

An :class:`OptimizeResult` holds

* ``chosen``: the recipe spec of the variant with the lowest measured energy per sample whose metric stays
  within the budget (the baseline's name when none does), and ``reason`` in one sentence;
* ``comparison``: the final :class:`~greenmeter.records.comparison.Comparison` of the baseline, the
  finalists and the best one-step recipe, measured side by side with full repeats: the evidence;
* ``candidates``: one :class:`CandidateOutcome` per recipe considered, with how far it got and why it
  stopped there;
* ``rungs``: the screening rounds of successive halving (:class:`Rung`);
* ``sensitivity``: the per-layer sensitivity table the candidates were chosen from;
* ``versus_best_single``: the chosen stacked recipe's energy tested against the best one-step recipe's;
* ``saved``: the manifest of the saved model, when it was saved.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from greenmeter._text import text_table
from greenmeter.records.comparison import Comparison, change_text, measurable_saving
from greenmeter.records.encoding import check_record_version, finite_json, parse_record_json
from greenmeter.records.sensitivity import Sensitivity
from greenmeter.sources.band import RatioBand
from greenmeter.stats import Significance, describe_test

__all__ = ["OPTIMIZE_SCHEMA_VERSION", "CandidateOutcome", "OptimizeResult", "Rung", "ratio_band_text"]

OPTIMIZE_SCHEMA_VERSION = 1

#: How far a candidate got: ``chosen``; ``finalist`` (in the final comparison, not chosen); ``screened
#: out`` (dropped by successive halving on its energy); ``over budget`` (its metric left the budget, or a
#: latency or size limit was exceeded); ``failed`` (it could not be built or run); ``not tried`` (the time
#: budget ran out first).
CandidateStatus = Literal["chosen", "finalist", "screened out", "over budget", "failed", "not tried"]


@dataclass(frozen=True)
class CandidateOutcome:
    """One recipe the optimizer considered, and what became of it.

    Attributes:
        spec: the recipe spec (``"channels:0.5+int8-static[keep=classifier.2]"``).
        status: see ``CandidateStatus``.
        reason: why it stopped where it did, in one sentence.
        origin: why it was tried (``"user"``, or the rule of the default space that proposed it).
        rung: the last screening round it was measured in (0 = built and checked, not yet measured).
        metric: its metric on the selection data.
        metric_change: ``metric - baseline metric`` on the selection data.
        metric_low: the lower end of the 95% interval of that change (paired test), when there is one.
        energy_ratio: its energy per sample over the baseline's in the last comparison it was in.
        making_j, making_s: what building it cost (measured), when it was built.
    """

    spec: str
    status: CandidateStatus
    reason: str
    origin: str = "user"
    rung: int = 0
    metric: float | None = None
    metric_change: float | None = None
    metric_low: float | None = None
    energy_ratio: float | None = None
    making_j: float | None = None
    making_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CandidateOutcome:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Rung:
    """One screening round: the candidates measured, with how many repeats, and the ones kept."""

    index: int
    repeats: int
    measured: tuple[str, ...]
    kept: tuple[str, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "measured": list(self.measured), "kept": list(self.kept)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rung:
        return cls(int(data["index"]), int(data["repeats"]), tuple(data["measured"]), tuple(data["kept"]),
                   float(data["seconds"]))


@dataclass(frozen=True)
class OptimizeResult:
    """What :func:`greenmeter.optimize` found (see the module docstring)."""

    name: str
    created_at: str
    baseline: str
    metric_name: str
    max_drop: float
    chosen: str
    reason: str
    comparison: Comparison
    candidates: tuple[CandidateOutcome, ...]
    rungs: tuple[Rung, ...] = ()
    sensitivity: Sensitivity | None = None
    limits: Mapping[str, float] = None  # type: ignore[assignment]
    selection: str = "evaluation data"
    versus_best_single: tuple[str, Significance] | None = None
    time_budget_s: float | None = None
    duration_s: float | None = None
    flags: tuple[str, ...] = ()
    saved: Mapping[str, Any] | None = None
    schema_version: int = OPTIMIZE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.limits is None:
            object.__setattr__(self, "limits", {})

    @property
    def improved(self) -> bool:
        """Whether a variant was chosen over the baseline."""
        return self.chosen != self.baseline

    def time_text(self) -> str:
        """How long the search took against its budget, the final comparison (which always runs, past the budget
        if need be) apart: ``"45 s: 35 s of search (budget 60 s), then 10 s for the final comparison"``; ``"–"``
        when the duration is unknown."""
        if self.duration_s is None:
            return "–"
        final = self.comparison.duration_s
        if final is None or not 0 <= final <= self.duration_s:
            budget = "" if self.time_budget_s is None else f" of a {self.time_budget_s:.0f} s budget"
            return f"{self.duration_s:.0f} s{budget}"
        budget = "" if self.time_budget_s is None else f" (budget {self.time_budget_s:.0f} s)"
        return (f"{self.duration_s:.0f} s: {self.duration_s - final:.0f} s of search{budget}, then {final:.0f} s "
                "for the final comparison")

    def candidate(self, spec: str) -> CandidateOutcome:
        """The outcome of the candidate ``spec``."""
        for c in self.candidates:
            if c.spec == spec:
                return c
        raise KeyError(spec)

    def summary(self) -> str:
        """A few lines for a terminal: the choice, its figures against the baseline, and the search."""
        lines = [f"{self.name}: {self.chosen if self.improved else 'keep the baseline'} ({self.reason})"]
        if self.improved:
            v = self.comparison.variant(self.chosen)
            d = v.vs_baseline
            if d is not None and d.energy_ratio:
                lines.append(f"  energy per sample: {d.energy_ratio:.3f}x the baseline's ({1 / d.energy_ratio:.1f}x less)"
                             f"; {ratio_band_text(d.energy_ratio_band)}")
            if d is not None and d.metric_change is not None:
                test = d.metric_test
                band = "" if test is None or test.diff_low is None else (
                    f", 95% interval {change_text(self.metric_name, test.diff_low)} to "
                    f"{change_text(self.metric_name, test.diff_high)}")
                budget = f"{self.max_drop * 100:g} pp" if self.metric_name == "accuracy" else f"{self.max_drop:g}"
                lines.append(f"  {self.metric_name} change: {change_text(self.metric_name, d.metric_change)}{band} "
                             f"(budget {budget})")
        if self.versus_best_single is not None:
            single, test = self.versus_best_single
            verdict = "significantly lower" if measurable_saving(test) else "not significantly lower"
            p = "" if test.p_value is None else f", p = {test.p_value:.2g}"
            lines.append(f"  against the best one-step recipe ({single}): energy {verdict} "
                         f"({describe_test(test.test)}{p})")
        counts: dict[str, int] = {}
        for c in self.candidates:
            counts[c.status] = counts.get(c.status, 0) + 1
        lines.append("  candidates: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        if self.duration_s is not None:
            lines.append(f"  took {self.time_text()}; selection on the {self.selection}")
        if self.saved is not None:
            program = self.saved.get("program") or "no program: load the state dict into a model built by the recipe"
            lines.append(f"  saved to {self.saved.get('directory', '?')} ({program})")
        return "\n".join(line for line in lines if line)

    def table(self) -> str:
        """Every candidate: status, rung, metric change, energy ratio, making cost, and why."""
        rows = []
        for c in self.candidates:
            rows.append([
                c.spec, c.status, str(c.rung),
                "-" if c.metric_change is None else change_text(self.metric_name, c.metric_change),
                "-" if c.energy_ratio is None else f"x{c.energy_ratio:.3f}",
                "-" if c.making_j is None else f"{c.making_j:.3g} J",
                c.reason,
            ])
        return text_table([["candidate", "status", "rung", f"{self.metric_name} change", "energy", "making", "why"],
                           *rows], left=(0, 1, 6))

    def to_dict(self) -> dict[str, Any]:
        vs = self.versus_best_single
        return {
            "name": self.name, "created_at": self.created_at, "baseline": self.baseline,
            "metric_name": self.metric_name, "max_drop": self.max_drop, "chosen": self.chosen, "reason": self.reason,
            "comparison": self.comparison.to_dict(), "candidates": [c.to_dict() for c in self.candidates],
            "rungs": [r.to_dict() for r in self.rungs],
            "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict(),
            "limits": dict(self.limits), "selection": self.selection,
            "versus_best_single": None if vs is None else {"variant": vs[0], "test": vs[1].to_dict()},
            "time_budget_s": self.time_budget_s, "duration_s": self.duration_s, "flags": list(self.flags),
            "saved": None if self.saved is None else dict(self.saved), "schema_version": self.schema_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizeResult:
        check_record_version(data, OPTIMIZE_SCHEMA_VERSION, "optimize result")
        vs = data.get("versus_best_single")
        sens = data.get("sensitivity")
        return cls(
            name=data["name"], created_at=data["created_at"], baseline=data["baseline"],
            metric_name=data["metric_name"], max_drop=float(data["max_drop"]), chosen=data["chosen"],
            reason=data["reason"], comparison=Comparison.from_dict(data["comparison"]),
            candidates=tuple(CandidateOutcome.from_dict(c) for c in data["candidates"]),
            rungs=tuple(Rung.from_dict(r) for r in data.get("rungs", ())),
            sensitivity=None if sens is None else Sensitivity.from_dict(sens),
            limits=dict(data.get("limits") or {}), selection=data.get("selection", "evaluation data"),
            versus_best_single=None if vs is None else (vs["variant"], Significance.from_dict(vs["test"])),
            time_budget_s=data.get("time_budget_s"), duration_s=data.get("duration_s"),
            flags=tuple(data.get("flags", ())), saved=data.get("saved"),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """The record as JSON (non-finite numbers written as ``null``)."""
        return json.dumps(finite_json(self.to_dict()), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> OptimizeResult:
        return cls.from_dict(parse_record_json(text, "optimize result", "candidates"))


def ratio_band_text(band: RatioBand | None) -> str:
    """An energy ratio's band in words, saying when the shared model constants cancel in it."""
    if band is None:
        return "band not stated (a source states none, or the record is older than bands)"
    cancel = ": the shared model constants cancel in the ratio" if band.shared else ""
    return f"band {band.low:.3f}-{band.high:.3f}x (how far off the sources could make it{cancel})"
