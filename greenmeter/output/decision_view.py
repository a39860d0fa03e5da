"""The decision section of an optimize result's report, built from an :class:`OptimizeResult`.

:func:`decision_view` formats what :func:`greenmeter.optimize` decided and why: the question (metric budget,
limits, selection data, time budget), the choice with its figures against the baseline, every candidate and
how far it got, the screening rounds and the per-layer sensitivity the candidates came from. The report's
other sections are the final comparison's (:mod:`greenmeter.output.comparison_view`), the evidence.
Nothing here measures or re-runs anything.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from greenmeter.output.view import DecisionView, TableView
from greenmeter.records.optimization import ratio_band_text
from greenmeter.stats import describe_test

if TYPE_CHECKING:
    from greenmeter.records.optimization import OptimizeResult
    from greenmeter.records.sensitivity import Sensitivity

__all__ = ["decision_view"]

_LIMITS = {"max_latency_ratio": "latency per batch", "max_size_ratio": "serialized size"}
_NUMERIC_CANDIDATES = (False, False, True, True, True, True, True, False)


def _scale(metric_name: str) -> tuple[float, str]:
    """The display scale of a metric and the unit of its changes: accuracy in percentage points."""
    return (100.0, " pp") if metric_name == "accuracy" else (1.0, "")


def _change(value: float | None, metric_name: str) -> str:
    """A metric change or drop in the metric's display unit (``+0.44 pp``); ``–`` when there is none."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    scale, unit = _scale(metric_name)
    return f"{value * scale:+.2f}{unit}" if unit else f"{value:+.4f}"


def _times(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"×{value:.3f}"


def _question(r: OptimizeResult) -> tuple[tuple[str, str], ...]:
    scale, unit = _scale(r.metric_name)
    budget = f"{r.max_drop * scale:g}{unit}" if unit else f"{r.max_drop:g}"
    items = [("metric budget", f"{r.metric_name} at most {budget} below the baseline's, judged against the lower "
                               "end of the 95% interval of the change")]
    for key, value in r.limits.items():
        items.append((f"limit: {_LIMITS.get(key, key)}", f"at most {_times(value)} the baseline's"))
    items.append(("candidates chosen on", f"the {r.selection}"))
    if r.time_budget_s is not None or r.duration_s is not None:
        items.append(("search time", r.time_text()))
    return tuple(items)


def _figures(r: OptimizeResult) -> tuple[tuple[str, str], ...]:
    items: list[tuple[str, str]] = []
    chosen = next((v for v in r.comparison.variants if v.name == r.chosen), None) if r.improved else None
    d = chosen.vs_baseline if chosen is not None else None
    if d is not None and d.energy_ratio:
        items.append(("energy per sample", f"{_times(d.energy_ratio)} the baseline's "
                                           f"({1 / d.energy_ratio:.2f}× less)"))
        items.append(("energy band", ratio_band_text(d.energy_ratio_band)))
    if d is not None and d.metric_change is not None:
        test = d.metric_test
        band = "" if test is None or test.diff_low is None or test.diff_high is None else (
            f", 95% interval {_change(test.diff_low, r.metric_name)} to {_change(test.diff_high, r.metric_name)}")
        items.append((f"{r.metric_name} change", _change(d.metric_change, r.metric_name) + band))
    if d is not None and d.latency_ratio is not None:
        items.append(("latency per batch", f"{_times(d.latency_ratio)} the baseline's"))
    if d is not None and d.size_ratio is not None:
        items.append(("serialized size", f"{_times(d.size_ratio)} the baseline's"))
    if r.versus_best_single is not None:
        single, test = r.versus_best_single
        verdict = "significantly lower" if test.significant and test.diff_mean < 0 else "not significantly lower"
        p = "" if test.p_value is None else f", p = {test.p_value:.2g}"
        items.append((f"against the best one-step recipe ({single})",
                      f"energy {verdict} ({describe_test(test.test)}{p})"))
    counts: dict[str, int] = {}
    for c in r.candidates:
        counts[c.status] = counts.get(c.status, 0) + 1
    items.append(("candidates", ", ".join(f"{n} {s}" for s, n in counts.items()) or "none"))
    if r.saved is not None:
        items.append(("saved to", f"{r.saved.get('directory', '?')} ({r.saved.get('program_format', '?')})"))
    return tuple(items)


def _candidates(r: OptimizeResult) -> TableView:
    rows = tuple((
        c.spec, c.status, str(c.rung), _change(c.metric_change, r.metric_name), _change(c.metric_low, r.metric_name),
        _times(c.energy_ratio), "–" if c.making_j is None else f"{c.making_j:.4g} J", c.reason,
    ) for c in r.candidates)
    marks = tuple(c.status.replace(" ", "-") for c in r.candidates)
    return TableView(f"Every candidate, how far it got and why it stopped there (selection on the {r.selection})",
                     ("candidate", "status", "round", f"{r.metric_name} change", "95% low end",
                      "energy vs baseline", "making energy", "why"),
                     _NUMERIC_CANDIDATES, rows, marks)


def _rounds(r: OptimizeResult) -> TableView | None:
    if not r.rungs:
        return None
    rows = tuple((str(g.index), str(g.repeats), f"{len(g.measured)}: {', '.join(g.measured) or '–'}",
                  f"{len(g.kept)}: {', '.join(g.kept) or '–'}", f"{g.seconds:.1f} s") for g in r.rungs)
    return TableView("Screening rounds (successive halving on measured energy per sample)",
                     ("round", "repeats", "measured", "kept", "time"), (True, True, False, False, True), rows)


def _sensitivity(s: Sensitivity | None) -> tuple[TableView | None, str | None]:
    if s is None or not s.layers:
        return None, None
    _, unit = _scale(s.metric_name)
    total = sum(e.params for e in s.layers) or 1
    rows = []
    for e in s.layers:
        cells = [e.name, e.kind, f"{e.params:,}", f"{e.params / total:.1%}"]
        for p in s.probes:
            drop, changed = e.drops.get(p), e.changed.get(p)
            if drop is None:
                cells.append("n/a")
            else:
                cells.append(_change(drop, s.metric_name).lstrip("+") + ("" if changed is None else f" ({changed} changed)"))
        rows.append(tuple(cells))
    headers = ("layer", "kind", "params", "share", *(f"drop {p}" for p in s.probes))
    numeric = (False, False, True, True, *(True for _ in s.probes))
    note = (f"{s.metric_name} {s.baseline_metric * _scale(s.metric_name)[0]:.4g}{' %' if unit else ''} on "
            f"{s.samples:,} samples; drop = baseline minus the metric with that layer alone probed (positive is "
            f"worse), with the samples whose correctness changed; n/a: the probe does not apply to the layer; "
            f"int8 calibration: {s.calibration or 'not stated'}")
    return TableView("Per-layer sensitivity: the metric drop when one layer alone is quantized or pruned",
                     headers, numeric, tuple(rows)), note


def decision_view(result: OptimizeResult) -> DecisionView:
    """The decision section of ``result``'s report.

    Args:
        result: an optimize result, fresh or stored.

    Returns:
        The section's view: question, choice and reason, figures, candidates, rounds, sensitivity and flags.
    """
    sensitivity, note = _sensitivity(result.sensitivity)
    return DecisionView(
        question=_question(result), chosen=result.chosen if result.improved else None, baseline=result.baseline,
        reason=result.reason, figures=_figures(result), candidates=_candidates(result), rounds=_rounds(result),
        sensitivity=sensitivity, sensitivity_note=note, flags=tuple(result.flags),
    )
