"""View models of a report: plain frozen records built from stored results, which templates render.

Nothing here measures or re-runs anything: :func:`comparison_view` reads a :class:`Comparison`,
:func:`run_view` a stored run with its windows and power samples. Every figure shown is formatted
here, once, so the HTML, Markdown and CSV outputs say the same thing.

The recommended variant (:func:`recommend`) is the one with the lowest energy per sample among the
variants on the metric-versus-energy Pareto front whose metric is within ``tolerance`` of the
baseline's (1 percentage point of accuracy by default). Ties go to the lower energy per sample, which
the rule already prefers; exact ties keep the comparison's order.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError
from greenmeter.report_text import (
    comparison_flags,
    comparison_methodology,
    comparison_model_card,
    comparison_sources,
    environment_items,
    group_flags,
    source_constants,
    tolerance_text,
)

if TYPE_CHECKING:
    from greenmeter.comparison import Comparison, VariantResult
    from greenmeter.records import Measurement
    from greenmeter.run_record import RunRecord

__all__ = [
    "DEFAULT_TOLERANCE", "Cell", "ChartView", "Column", "Recommendation", "ReportView", "Row", "comparison_view",
    "group_flags", "recommend", "run_view",
]

#: Default metric tolerance of the recommendation: 0.01 of the metric (1 percentage point of accuracy).
DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Cell:
    """One table cell: the text shown and the raw value the table sorts by (``None`` sorts last)."""

    text: str
    sort: float | str | None = None


@dataclass(frozen=True)
class Column:
    """A table column: its key (also the CSV header), its label and a tooltip saying what it holds."""

    key: str
    label: str
    title: str
    numeric: bool = True


@dataclass(frozen=True)
class Row:
    """A table row; ``marks`` are CSS classes such as ``baseline``, ``recommended``, ``front``, ``failed``; ``note``
    is a short line shown under the name and ``detail`` its longer text (a tooltip in HTML)."""

    name: str
    cells: tuple[Cell, ...]
    raw: tuple[Any, ...]
    marks: tuple[str, ...] = ()
    note: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ChartView:
    """A chart: title, a caption saying what is drawn, and the inline SVG (already escaped by matplotlib)."""

    key: str
    title: str
    caption: str
    svg: str


@dataclass(frozen=True)
class Recommendation:
    """The variant worth deploying, and why; ``name`` is ``None`` when no variant qualifies."""

    name: str | None
    reason: str
    savings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ReportView:
    """Everything a report shows, formatted. ``kind`` is ``"comparison"`` or ``"run"``."""

    kind: str
    title: str
    subtitle: str
    generated_at: str
    summary: Recommendation | None
    headline: tuple[tuple[str, str], ...]
    charts: tuple[ChartView, ...]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    environment: tuple[tuple[str, str], ...]
    sources: tuple[tuple[str, str], ...]
    constants: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    methodology: tuple[str, ...]
    model_card: str
    flags: tuple[str, ...]
    version: str


# ---- formatting -----------------------------------------------------------------------------------

def _num(value: float | None, spec: str, suffix: str = "") -> Cell:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Cell("–", None)
    return Cell(format(value, spec) + suffix, float(value))


def _ratio(value: float | None) -> Cell:
    """A variant/baseline ratio as a signed percentage change: 0.48 -> '−52%'."""
    if value is None or not math.isfinite(value):
        return Cell("–", None)
    change = (value - 1.0) * 100
    return Cell(f"{change:+.1f}%".replace("-", "−"), float(value))


def _energy_mj(joules: float) -> str:
    return f"{joules * 1e3:.3g} mJ"


# ---- recommendation -------------------------------------------------------------------------------

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
        ConfigError: a negative or non-finite tolerance.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or tolerance < 0:
        raise ConfigError(f"the metric tolerance must be a number >= 0 (0.01 = 1 percentage point of accuracy), "
                          f"not {tolerance!r}")
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


# ---- comparison -----------------------------------------------------------------------------------

_COMPARISON_COLUMNS = (
    Column("variant", "variant", "the variant's name", numeric=False),
    Column("recipe", "recipe", "the recipe that built it from the baseline", numeric=False),
    Column("metric", "{metric}", "the metric on the evaluation data, mean over repeats"),
    Column("metric_change", "Δ {metric}", "variant minus baseline"),
    Column("energy_per_sample_j", "mJ / sample", "mean energy per sample over the repeats, millijoules"),
    Column("energy_ci_j", "95% CI", "95% confidence interval of the mean energy per sample (t distribution)"),
    Column("energy_ratio", "Δ energy", "energy per sample against the baseline"),
    Column("p_value", "p", "p-value of the energy difference over the repeats (the test is named in the tooltip)"),
    Column("significant", "signif.", "whether the energy difference is significant at 5%", numeric=False),
    Column("batch_p50_s", "p50 ms", "median latency per batch, milliseconds"),
    Column("batch_p95_s", "p95 ms", "95th percentile latency per batch, milliseconds"),
    Column("batch_p99_s", "p99 ms", "99th percentile latency per batch, milliseconds"),
    Column("sample_p50_s", "ms / sample", "median latency per sample (batch time over batch size), milliseconds"),
    Column("throughput_sps", "samples / s", "throughput over the measured repeats"),
    Column("size_b", "size kB", "serialized state dict, kilobytes (1000 bytes)"),
    Column("size_ratio", "Δ size", "serialized size against the baseline"),
    Column("params_total", "params", "parameters (or stored weight elements for quantized models)"),
    Column("params_nonzero", "non-zero", "non-zero parameters or stored weight elements"),
    Column("macs_per_sample", "MACs / sample", "multiply-accumulates per sample (see the method in the tooltip)"),
    Column("co2e_g_per_million", "g CO2e / 1M", "grams of CO2e per million inferences"),
    Column("making_energy_j", "making J", "energy spent making the variant (training, calibration, conversion), joules"),
    Column("break_even_inferences", "break-even", "inferences for the energy saved to repay the making energy"),
    Column("pareto_front", "front", "on the metric-versus-energy Pareto front", numeric=False),
)


def comparison_view(comparison: Comparison, tolerance: float = DEFAULT_TOLERANCE, charts: bool = True,
                    generated_at: str | None = None) -> ReportView:
    """The view of a comparison (see the module docstring for the recommendation rule).

    Args:
        comparison: the stored or fresh comparison.
        tolerance: the recommendation's metric tolerance, in the metric's unit (0.01 = 1 pp of accuracy).
        charts: draw the charts (matplotlib); ``False`` for the text formats.
        generated_at: the report's timestamp (default: now, UTC).
    """
    from greenmeter import __version__

    rec = recommend(comparison, tolerance)
    accuracy = comparison.metric_name == "accuracy"
    scale = 100.0 if accuracy else 1.0
    metric_label = comparison.metric_name + (" %" if accuracy else "")
    columns = tuple(Column(c.key, c.label.format(metric=metric_label), c.title, c.numeric)
                    for c in _COMPARISON_COLUMNS)
    if accuracy:  # a change of a percentage is in percentage points
        columns = tuple(Column(c.key, "Δ pp", "accuracy change, variant minus baseline, percentage points")
                        if c.key == "metric_change" else c for c in columns)
    rows = tuple(_variant_row(v, comparison, rec, scale) for v in comparison.variants)
    ok = [v for v in comparison.variants if v.ok]
    total_making = sum(v.making.energy_j for v in comparison.variants if v.making)
    headline = (
        ("variants", f"{len(comparison.variants)} ({len(ok)} measured)"),
        ("baseline", comparison.baseline),
        ("repeats", f"{comparison.repeats} interleaved, {comparison.warmup} warm-up pass(es) each"),
        ("data", f"{comparison.samples_per_pass:,} samples per pass, {comparison.passes_per_repeat} pass(es) "
                 f"per repeat"),
        ("Pareto front", ", ".join(comparison.pareto_front) or "–"),
        ("making energy, all variants", f"{total_making:.4g} J"),
    )
    chart_views = _comparison_charts(comparison, rec, scale, metric_label) if charts else ()
    return ReportView(
        kind="comparison", title=f"Comparison: {comparison.name}",
        subtitle=f"{len(comparison.variants)} variants against {comparison.baseline!s}, "
                 f"measured {comparison.created_at[:19].replace('T', ' ')} UTC",
        generated_at=generated_at or _now(), summary=rec, headline=headline, charts=chart_views,
        columns=columns, rows=rows, environment=environment_items(comparison.host, comparison.backends, comparison.torch_threads),
        sources=comparison_sources(comparison), constants=source_constants(comparison.sources), methodology=comparison_methodology(comparison, tolerance),
        model_card=comparison_model_card(comparison, rec.name), flags=comparison_flags(comparison),
        version=__version__,
    )


def _variant_row(v: VariantResult, c: Comparison, rec: Recommendation, scale: float) -> Row:
    marks = tuple(m for m, on in (("baseline", v.name == c.baseline), ("recommended", v.name == rec.name),
                                  ("front", v.on_pareto_front), ("failed", not v.ok)) if on)
    if not v.ok:
        cells = (Cell(v.name, v.name), Cell(v.recipe or "–", v.recipe or "")) + tuple(
            Cell("–") for _ in _COMPARISON_COLUMNS[2:])
        return Row(v.name, cells, _raw(v), marks, note=f"failed: {v.error}")
    e, d = v.energy_per_sample_j, v.vs_baseline
    sig = d.energy_significance if d else None
    lb = v.latency_batch
    ci = Cell("–") if e is None or e.low is None else Cell(f"{e.low * 1e3:.3g} – {e.high * 1e3:.3g}", e.high - e.low)
    p = Cell("–") if sig is None or sig.p_value is None else Cell(f"{sig.p_value:.2g}", sig.p_value)
    signif = Cell("–") if sig is None or sig.significant is None else Cell(
        f"{'yes' if sig.significant else 'no'} ({sig.test})", int(sig.significant))
    cells = (
        Cell(v.name, v.name), Cell(v.recipe or "–", v.recipe or ""),
        _num(None if v.metric is None else v.metric * scale, ".2f" if scale == 100.0 else ".4f"),
        _num(None if d is None or d.metric_change is None else d.metric_change * scale,
             "+.2f" if scale == 100.0 else "+.4f"),
        _num(None if e is None else e.mean * 1e3, ".4g"), ci,
        _ratio(d.energy_ratio if d else None), p, signif,
        _num(lb.p50_s * 1e3 if lb else None, ".3g"), _num(lb.p95_s * 1e3 if lb else None, ".3g"),
        _num(lb.p99_s * 1e3 if lb else None, ".3g"),
        _num(v.latency_sample.p50_s * 1e3 if v.latency_sample else None, ".3g"),
        _num(v.throughput_sps, ",.0f"), _num(None if v.size_b is None else v.size_b / 1e3, ",.1f"),
        _ratio(d.size_ratio if d else None), _num(v.params_total, ",d" if v.params_total is not None else ""),
        _num(v.params_nonzero, ",d" if v.params_nonzero is not None else ""), _num(v.macs_per_sample, ",.0f"),
        _num(v.carbon_per_million.co2e_g if v.carbon_per_million else None, ".3g"),
        _num(v.making.energy_j if v.making else None, ".4g"),
        _num(d.break_even_inferences if d else None, ",.0f"),
        Cell("yes" if v.on_pareto_front else "no", int(v.on_pareto_front)),
    )
    counted = v.macs_method if v.macs_method != "flop-counter" else None  # only say so when it is not the plain count
    note = f"MACs: {counted}" if counted else ("MACs: see the note" if v.macs_note else None)
    return Row(v.name, cells, _raw(v), marks, note, v.macs_note)


def _raw(v: VariantResult) -> tuple[Any, ...]:
    """The row's values in SI units, for the CSV (same order as the columns)."""
    e, d = v.energy_per_sample_j, v.vs_baseline
    sig = d.energy_significance if d else None
    lb = v.latency_batch
    return (
        v.name, v.recipe, v.metric, d.metric_change if d else None, e.mean if e else None,
        None if e is None else (e.low, e.high), d.energy_ratio if d else None, sig.p_value if sig else None,
        sig.significant if sig else None, lb.p50_s if lb else None, lb.p95_s if lb else None,
        lb.p99_s if lb else None, v.latency_sample.p50_s if v.latency_sample else None, v.throughput_sps,
        v.size_b, d.size_ratio if d else None, v.params_total, v.params_nonzero, v.macs_per_sample,
        v.carbon_per_million.co2e_g if v.carbon_per_million else None, v.making.energy_j if v.making else None,
        d.break_even_inferences if d else None, v.on_pareto_front,
    )


def _comparison_charts(c: Comparison, rec: Recommendation, scale: float, metric_label: str) -> tuple[ChartView, ...]:
    from greenmeter.report_charts import (
        ChartPoint,
        LatencyBar,
        latency_svg,
        metric_energy_svg,
    )

    ok = [v for v in c.variants if v.ok and v.metric is not None and v.energy_per_sample_j is not None]
    if not ok:
        return ()
    points = [ChartPoint(v.name, v.metric, v.energy_per_sample_j.mean, v.energy_per_sample_j.low,  # type: ignore
                         v.energy_per_sample_j.high, v.on_pareto_front, v.name == c.baseline,  # type: ignore
                         v.name == rec.name) for v in ok]
    bars = [LatencyBar(v.name, v.latency_batch.p50_s, v.latency_batch.p95_s, v.latency_batch.p99_s)
            for v in ok if v.latency_batch is not None]
    charts = [ChartView("metric-energy", f"{c.metric_name.capitalize()} against energy per sample",
                        "Each point is a variant: mean energy per sample over the repeats with its 95% interval; "
                        "the line joins the Pareto front (no other variant is both better and cheaper).",
                        metric_energy_svg(points, metric_label.replace(" %", " (%)"), scale))]
    if bars:
        charts.append(ChartView("latency", "Latency per batch",
                                "p50, p95 and p99 of every measured batch of every repeat.", latency_svg(bars)))
    return tuple(charts)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---- runs -----------------------------------------------------------------------------------------

def run_view(run: RunRecord, windows: Sequence[Measurement], samples: Sequence[tuple[float, str, float]] = (),
             charts: bool = True, generated_at: str | None = None) -> ReportView:
    """The view of a stored run (a training loop, ``greenmeter run``...): see :mod:`greenmeter.report_run`."""
    from greenmeter.report_run import build_run_view

    return build_run_view(run, windows, samples, charts, generated_at or _now())
