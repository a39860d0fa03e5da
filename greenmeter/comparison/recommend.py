"""The recommendation: which measured variant is worth deploying, and why.

The recommended variant (:func:`recommend`) is the one with the lowest energy per sample among the
variants on the metric-versus-energy Pareto front whose metric is within ``tolerance`` of the
baseline's (1 percentage point of accuracy by default). Ties go to the lower energy per sample, which
the rule already prefers; exact ties keep the comparison's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._checks import number

if TYPE_CHECKING:
    from greenmeter.records.comparison import Comparison, VariantResult

__all__ = ["DEFAULT_TOLERANCE", "Recommendation", "check_tolerance", "recommend", "tolerance_text"]

#: Default metric tolerance of the recommendation: 0.01 of the metric (1 percentage point of accuracy).
DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Recommendation:
    """The variant worth deploying, and why; ``name`` is ``None`` when no variant qualifies."""

    name: str | None
    reason: str
    savings: tuple[tuple[str, str], ...] = ()


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
    """Pick the variant to deploy: on the Pareto front, metric within ``tolerance`` of the baseline, least energy.

    Args:
        comparison: the comparison to read.
        tolerance: how much worse than the baseline's metric is acceptable, in the metric's own unit
            (for accuracy, a fraction: 0.01 is one percentage point). ``>= 0``.

    Returns:
        A :class:`Recommendation`; the baseline itself when no variant on the front is both within the
        tolerance and cheaper, with a reason saying so.

    Raises:
        ConfigError: a negative or non-finite tolerance (:func:`check_tolerance`).
    """
    tolerance = check_tolerance(tolerance)
    base = comparison.variant(comparison.baseline)
    if not base.ok or base.metric is None or base.energy_per_sample_j is None:
        return Recommendation(None, "the baseline has no figures, so nothing can be recommended against it")
    floor = base.metric - tolerance
    candidates = [v for v in comparison.variants if v.ok and v.on_pareto_front and v.metric is not None
                  and v.energy_per_sample_j is not None and v.metric >= floor - 1e-12]
    tol_text = tolerance_text(comparison, tolerance)
    if not candidates:
        return Recommendation(None, f"no variant on the Pareto front keeps the {comparison.metric_name} within "
                                    f"{tol_text} of the baseline")
    best = min(candidates, key=lambda v: v.energy_per_sample_j.mean)  # type: ignore[union-attr]
    if best.name == base.name:
        return Recommendation(base.name, f"no variant within {tol_text} of the baseline's {comparison.metric_name} "
                                         f"uses less energy per sample: keep the baseline")
    return Recommendation(best.name, f"the least energy per sample on the Pareto front with the "
                                     f"{comparison.metric_name} within {tol_text} of the baseline",
                          _savings(comparison, base, best))


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
        scale, unit = (100, " pp") if comparison.metric_name == "accuracy" else (1, "")
        out.append((f"{comparison.metric_name} change", f"{d.metric_change * scale:{'+.2f' if unit else '+.4f'}}{unit}"))
    sig = d.energy_significance if d else None
    if sig is not None and sig.p_value is not None:
        out.append(("energy difference", f"{'significant' if sig.significant else 'not significant'} "
                                         f"({sig.test}, p = {sig.p_value:.2g})"))
    if d is not None and d.break_even_inferences is not None:
        out.append(("break-even", f"{d.break_even_inferences:,.0f} inferences repay its making energy"))
    return tuple(out)


def _energy_mj(joules: float) -> str:
    return f"{joules * 1e3:.3g} mJ"
