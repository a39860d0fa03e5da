"""The view model of a comparison: its table, headline, charts and prose, built from a :class:`Comparison`.

Nothing here measures or re-runs anything; the recommendation comes from :mod:`greenmeter.comparison.recommend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greenmeter._version import __version__
from greenmeter.comparison.recommend import DEFAULT_TOLERANCE, Recommendation, recommend
from greenmeter.output.prose import (
    comparison_flags,
    comparison_methodology,
    comparison_model_card,
    comparison_sources,
    environment_items,
    source_constants,
)
from greenmeter.output.view import Cell, ChartView, Column, ReportView, Row, now, num, ratio

if TYPE_CHECKING:
    from greenmeter.records.comparison import Comparison, VariantResult

__all__ = ["comparison_view"]


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
        generated_at=generated_at or now(), summary=rec, headline=headline, charts=chart_views,
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
        num(None if v.metric is None else v.metric * scale, ".2f" if scale == 100.0 else ".4f"),
        num(None if d is None or d.metric_change is None else d.metric_change * scale,
             "+.2f" if scale == 100.0 else "+.4f"),
        num(None if e is None else e.mean * 1e3, ".4g"), ci,
        ratio(d.energy_ratio if d else None), p, signif,
        num(lb.p50_s * 1e3 if lb else None, ".3g"), num(lb.p95_s * 1e3 if lb else None, ".3g"),
        num(lb.p99_s * 1e3 if lb else None, ".3g"),
        num(v.latency_sample.p50_s * 1e3 if v.latency_sample else None, ".3g"),
        num(v.throughput_sps, ",.0f"), num(None if v.size_b is None else v.size_b / 1e3, ",.1f"),
        ratio(d.size_ratio if d else None), num(v.params_total, ",d" if v.params_total is not None else ""),
        num(v.params_nonzero, ",d" if v.params_nonzero is not None else ""), num(v.macs_per_sample, ",.0f"),
        num(v.carbon_per_million.co2e_g if v.carbon_per_million else None, ".3g"),
        num(v.making.energy_j if v.making else None, ".4g"),
        num(d.break_even_inferences if d else None, ",.0f"),
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
    from greenmeter.output.charts import (
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
