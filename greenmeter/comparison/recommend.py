"""The recommendation: which measured variant is worth deploying, and why.

The rule (:func:`recommend`, and docs/methodology.md, "The recommendation"):

1. **Measurable saving.** Only a variant whose energy per sample is significantly lower than the
   baseline's (the comparison's test, the paired test of per-round ratios by default, at 0.05) is a
   candidate; the others have "no measurable saving".
2. **Within the budget.** The metric change's paired test on the same samples (McNemar's exact test for
   accuracy, a paired bootstrap for other metrics) gives a 95% interval; the variant is within the budget
   when the interval's lower bound is no more than ``tolerance`` below zero: the drop is at most the
   budget at 95% confidence. A record without that test (written by an older greenmeter) is judged on
   the point estimate, and the recommendation says so.
3. **Least energy, ties ranked.** Among the candidates, the one with the least mean energy per sample,
   unless others are statistically tied with it (their energies not significantly different, by the
   same test): then the tied group is ranked by the metric (point estimate, higher first), then by the
   making energy (lower first; unknown last), then by mean energy. The recommendation names the tied
   variants and the rule that broke the tie.

When no variant qualifies, the baseline is kept, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._checks import number
from greenmeter.records.comparison import change_text, metric_text
from greenmeter.stats import Significance, describe_test, energy_test

if TYPE_CHECKING:
    from greenmeter.records.comparison import Comparison, VariantResult

__all__ = ["DEFAULT_TOLERANCE", "Recommendation", "check_tolerance", "recommend", "tolerance_text"]

#: Default metric tolerance of the recommendation: 0.01 of the metric (1 percentage point of accuracy).
DEFAULT_TOLERANCE = 0.01

#: metric values closer than this are equal when ranking a tie (accuracies are fractions of whole samples)
_SAME_METRIC = 1e-9


@dataclass(frozen=True)
class Recommendation:
    """The variant worth deploying, and why; ``name`` is ``None`` when the baseline has no figures.

    Attributes:
        name: the recommended variant (the baseline's name when no variant qualifies).
        reason: why, in one sentence.
        savings: ``(label, text)`` pairs of the chosen variant against the baseline.
        tied: the candidates statistically tied in energy with the one of least energy, the chosen one
            first, in the order the tie rule ranked them; empty when there was no tie.
        tie_rule: what chose among the tied: ``"metric"``, ``"making energy"`` or ``"energy per sample"``;
            ``None`` when there was no tie.
        notes: sentences a reader needs: the tie and how it was broken, the variants left out and why, and
            any fallback to point estimates.
    """

    name: str | None
    reason: str
    savings: tuple[tuple[str, str], ...] = ()
    tied: tuple[str, ...] = ()
    tie_rule: str | None = None
    notes: tuple[str, ...] = ()


def check_tolerance(tolerance: Any) -> float:
    """Check a recommendation's metric tolerance: a finite number >= 0, in the metric's own unit.

    Returns:
        The tolerance as a ``float``.

    Raises:
        ConfigError: not a number, NaN, infinite or negative: ``"tolerance must be a number >= 0 (...), not nan"``.
    """
    return number("tolerance", tolerance, low=0, note="in the metric's unit: 0.01 = 1 percentage point of accuracy")


def tolerance_text(comparison: Comparison, tolerance: float) -> str:
    """The tolerance in words: percentage points for accuracy, else the metric's own unit."""
    if comparison.metric_name == "accuracy":
        return f"{tolerance * 100:g} percentage point{'s' if tolerance != 0.01 else ''}"
    return f"{tolerance:g}"


def recommend(comparison: Comparison, tolerance: float = DEFAULT_TOLERANCE) -> Recommendation:
    """Pick the variant to deploy: a measurable saving, the metric within budget at 95%, least energy, ties ranked.

    See the module docstring for the rule.

    Args:
        comparison: the comparison to read.
        tolerance: how much worse than the baseline's metric is acceptable, in the metric's own unit
            (for accuracy, a fraction: 0.01 is one percentage point), judged against the lower bound of the
            95% interval of the change. ``>= 0``.

    Returns:
        A :class:`Recommendation`; the baseline itself when no variant qualifies, with a reason saying so.

    Raises:
        ConfigError: a negative or non-finite tolerance (:func:`check_tolerance`).
    """
    tolerance = check_tolerance(tolerance)
    base = comparison.variant(comparison.baseline)
    if not base.ok or base.metric is None or base.energy_per_sample_j is None:
        return Recommendation(None, "the baseline has no figures, so nothing can be recommended against it")
    metric, tol_text = comparison.metric_name, tolerance_text(comparison, tolerance)
    candidates, notes = [], []
    no_saving, over_budget, estimated = [], [], []
    for v in comparison.variants:
        if v is base or not v.ok or v.metric is None or v.energy_per_sample_j is None or v.vs_baseline is None:
            continue
        d = v.vs_baseline
        if not d.measurable_saving:
            sig = d.energy_significance
            no_saving.append(f"{v.name}" + ("" if sig is None or sig.p_value is None else f" (p = {sig.p_value:.2g})"))
            continue
        test = d.metric_test
        if test is not None and test.diff_low is not None:
            within = test.diff_low >= -tolerance - 1e-12
            if not within:
                over_budget.append(f"{v.name} (95% interval of the change from {change_text(comparison.metric_name, test.diff_low)})")
        else:
            within = v.metric >= base.metric - tolerance - 1e-12
            estimated.append(v.name)
            if not within:
                over_budget.append(f"{v.name} ({change_text(comparison.metric_name, v.metric - base.metric)})")
        if within:
            candidates.append(v)
    if no_saving:
        notes.append(f"no measurable saving (energy per sample not significantly lower than the baseline's): "
                     f"{', '.join(no_saving)}")
    if over_budget:
        notes.append(f"outside the budget of {tol_text}: {', '.join(over_budget)}")
    if estimated:
        notes.append(f"no paired test of the {metric} change is recorded for {', '.join(estimated)} (a comparison "
                     f"written by an older greenmeter, or a test that could not be computed): the budget was judged "
                     "on the point estimate")
    if not candidates:
        return Recommendation(base.name, f"no variant with a measurable energy saving keeps the {metric} within "
                                         f"{tol_text} of the baseline's: keep the baseline", notes=tuple(notes))
    best, tied, rule = _least_energy(candidates)
    reason = (f"the least energy per sample among the variants with a measurable saving whose {metric} change stays "
              f"within {tol_text} of the baseline at 95% confidence")
    if rule is not None:
        reason += (f"; tied in energy with {_names([v.name for v in tied if v is not best])}, it wins on "
                   f"{metric if rule == 'metric' else rule}")
        notes.insert(0, _tie_note(comparison, tied, rule))
    return Recommendation(best.name, reason, _savings(comparison, base, best), tuple(v.name for v in tied), rule,
                          tuple(notes))


def _least_energy(candidates: list[VariantResult]) -> tuple[VariantResult, list[VariantResult], str | None]:
    """The candidate of least energy, or the best of those statistically tied with it; the tied group and the rule."""
    lowest = min(candidates, key=lambda v: v.energy_per_sample_j.mean)  # type: ignore[union-attr]
    tied = [v for v in candidates if v is lowest or not _differs(lowest, v)]
    if len(tied) == 1:
        return lowest, [], None

    def making(v: VariantResult) -> float:
        return v.making.energy_j if v.making is not None else float("inf")

    def energy(v: VariantResult) -> float:
        return v.energy_per_sample_j.mean  # type: ignore[union-attr]

    def rank(v: VariantResult) -> tuple[float, float, float]:
        return (-round(v.metric / _SAME_METRIC) * _SAME_METRIC, making(v), energy(v))  # type: ignore[operator]

    ranked = sorted(tied, key=rank)
    first, second = ranked[0], ranked[1]
    if abs(first.metric - second.metric) > _SAME_METRIC:  # type: ignore[operator]
        rule = "metric"
    elif making(first) != making(second):
        rule = "making energy"
    else:
        rule = "energy per sample"
    return first, ranked, rule


def _differs(a: VariantResult, b: VariantResult) -> bool:
    """Whether two variants' energies per sample differ significantly, by the test the comparison used."""
    return bool(_energy_test(a, b).significant)


def _energy_test(a: VariantResult, b: VariantResult) -> Significance:
    sig = b.vs_baseline.energy_significance if b.vs_baseline else None
    return energy_test("welch" if sig is None else sig.test, a.energy_values_j, b.energy_values_j)


def _tie_note(comparison: Comparison, tied: list[VariantResult], rule: str) -> str:
    """The tie in words: who was tied with whom, by which test, and how each ranked."""
    lowest = min(tied, key=lambda v: v.energy_per_sample_j.mean)  # type: ignore[union-attr]
    tests = []
    for v in tied:
        if v is not lowest:
            t = _energy_test(lowest, v)
            tests.append(f"{v.name} p = {t.p_value:.2g}" if t.p_value is not None else f"{v.name} untested")
    ranked = "; ".join(
        f"{v.name}: {metric_text(comparison.metric_name, v.metric)}, "  # type: ignore[arg-type]
        f"making {'unknown' if v.making is None else f'{v.making.energy_j:.4g} J'}, "
        f"{v.energy_per_sample_j.mean * 1e3:.3g} mJ/sample" for v in tied)  # type: ignore[union-attr]
    by = {"metric": f"the higher {comparison.metric_name}", "making energy": "the lower making energy",
          "energy per sample": "the lower mean energy per sample (same metric and making energy)"}[rule]
    test = describe_test(_energy_test(lowest, tied[1] if tied[0] is lowest else tied[0]).test)
    return (f"energy tie: {_names([v.name for v in tied])} do not differ significantly in energy per sample "
            f"({test} against {lowest.name}, the least: {', '.join(tests)}); ranked by {comparison.metric_name}, "
            f"then making energy: {ranked}; {by} chose {tied[0].name}")


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _savings(comparison: Comparison, base: VariantResult, best: VariantResult) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    d = best.vs_baseline
    e_base, e_best = base.energy_per_sample_j.mean, best.energy_per_sample_j.mean  # type: ignore[union-attr]
    out.append(("energy per sample", f"{_energy_mj(e_best)} against {_energy_mj(e_base)} "
                                     f"({(1 - e_best / e_base) * 100:.0f}% less)" if e_base > 0 else "–"))
    if base.carbon_per_million and best.carbon_per_million:
        saved = base.carbon_per_million.co2e_g - best.carbon_per_million.co2e_g
        out.append(("carbon per million inferences", f"{saved:.3g} g CO2e saved "
                                                     f"({best.carbon_per_million.co2e_g:.3g} g against "
                                                     f"{base.carbon_per_million.co2e_g:.3g} g)"))
    if d is not None and d.latency_ratio is not None:
        out.append(("latency (p50 per batch)", f"{(1 - d.latency_ratio) * 100:.0f}% lower" if d.latency_ratio <= 1
                    else f"{(d.latency_ratio - 1) * 100:.0f}% higher"))
    if d is not None and d.size_ratio is not None:
        out.append(("model size", f"{1 / d.size_ratio:.2f}x smaller" if 0 < d.size_ratio <= 1
                    else f"{d.size_ratio:.2f}x larger"))
    if d is not None and d.metric_change is not None:
        out.append((f"{comparison.metric_name} change", change_text(comparison.metric_name, d.metric_change)))
        test = d.metric_test
        if test is not None and test.diff_low is not None and test.diff_high is not None:
            p = "" if test.p_value is None else f", p = {test.p_value:.2g}"
            out.append((f"{comparison.metric_name} change, 95% interval",
                        f"{change_text(comparison.metric_name, test.diff_low)} to {change_text(comparison.metric_name, test.diff_high)} "
                        f"({describe_test(test.test)} on the same samples{p})"))
    sig = d.energy_significance if d else None
    if sig is not None and sig.p_value is not None:
        out.append(("energy difference", f"{'significant' if sig.significant else 'not significant'} "
                                         f"({describe_test(sig.test)}, p = {sig.p_value:.2g})"))
    if d is not None and d.break_even_inferences is not None:
        out.append(("break-even", f"{d.break_even_inferences:,.0f} inferences repay its making energy"))
    return tuple(out)


def _energy_mj(joules: float) -> str:
    return f"{joules * 1e3:.3g} mJ"
