"""The view model of a comparison: its table, headline, charts and prose, built from a :class:`Comparison`.

Nothing here measures or re-runs anything; the recommendation comes from :mod:`greenmeter.comparison.recommend`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from greenmeter._version import __version__
from greenmeter.comparison.recommend import DEFAULT_TOLERANCE, Recommendation, recommend
from greenmeter.output.charts import ChartPoint, LatencyBar, latency_svg, metric_energy_svg
from greenmeter.output.prose import (
    comparison_flags,
    comparison_methodology,
    comparison_model_card,
    comparison_sources,
    environment_items,
    source_constants,
)
from greenmeter.output.view import Cell, ChartView, Column, ReportView, Row, now, num, ratio
from greenmeter.stats import describe_test

if TYPE_CHECKING:
    from greenmeter.records.comparison import BaselineDelta, Comparison, VariantResult
    from greenmeter.records.measurement import LatencyStats
    from greenmeter.stats import Interval, Significance

__all__ = ["comparison_view"]


@dataclass(frozen=True)
class _Line:
    """A variant as its table row reads it: the variant and the metric's display scale (100 for accuracy,
    shown in percent; 1 otherwise)."""

    v: VariantResult
    scale: float

    @property
    def d(self) -> BaselineDelta | None:
        return self.v.vs_baseline

    @property
    def sig(self) -> Significance | None:
        return self.d.energy_significance if self.d else None

    @property
    def mt(self) -> Significance | None:
        """The paired test of the metric change."""
        return self.d.metric_test if self.d else None

    @property
    def e(self) -> Interval | None:
        return self.v.energy_per_sample_j

    @property
    def lb(self) -> LatencyStats | None:
        return self.v.latency_batch


def _measured(column: Column[_Line]) -> Column[_Line]:
    """A column of a measured figure: its cell is ``–`` in the row of a variant that failed (the CSV keeps
    whatever the record holds)."""
    cell = column.cell
    return replace(column, cell=lambda x: cell(x) if x.v.ok else Cell("–"))


def _metric_cell(x: _Line) -> Cell:
    return num(None if x.v.metric is None else x.v.metric * x.scale, ".2f" if x.scale == 100.0 else ".4f")


def _metric_change_cell(x: _Line) -> Cell:
    change = x.d.metric_change if x.d else None
    return num(None if change is None else change * x.scale, "+.2f" if x.scale == 100.0 else "+.4f")


def _metric_ci_cell(x: _Line) -> Cell:
    t = x.mt
    if t is None or t.diff_low is None or t.diff_high is None:
        return Cell("–")
    spec = "+.2f" if x.scale == 100.0 else "+.4f"
    return Cell(f"{t.diff_low * x.scale:{spec}} – {t.diff_high * x.scale:{spec}}", t.diff_low * x.scale)


def _metric_p_cell(x: _Line) -> Cell:
    t = x.mt
    if t is None or t.p_value is None:
        return Cell("–")
    return Cell(f"{t.p_value:.2g} ({describe_test(t.test)})", t.p_value)


def _saving_cell(x: _Line) -> Cell:
    d = x.d
    if d is None:
        return Cell("–")
    if d.measurable_saving:
        return Cell("yes", 1)
    p = x.sig.p_value if x.sig else None
    return Cell("no measurable saving" + ("" if p is None else f" (p = {p:.2g})"), 0)


def _ci_cell(x: _Line) -> Cell:
    e = x.e
    if e is None or e.low is None or e.high is None:
        return Cell("–")
    return Cell(f"{e.low * 1e3:.3g} – {e.high * 1e3:.3g}", e.high - e.low)


def _band_cell(x: _Line) -> Cell:
    b = x.v.energy_band
    if b is None:
        return Cell("not stated")
    return Cell(f"{b.low_j * 1e3:.3g} – {b.high_j * 1e3:.3g}", b.high_j - b.low_j)


def _ratio_band_cell(x: _Line) -> Cell:
    r = x.d.energy_ratio_band if x.d else None
    if r is None:
        return Cell("–" if x.d is None else "not stated")
    return Cell(f"×{r.low:.3g} – ×{r.high:.3g}", r.high - r.low)


def _p_cell(x: _Line) -> Cell:
    sig = x.sig
    return Cell("–") if sig is None or sig.p_value is None else Cell(f"{sig.p_value:.2g}", sig.p_value)


def _significant_cell(x: _Line) -> Cell:
    sig = x.sig
    if sig is None or sig.significant is None:
        return Cell("–")
    return Cell(f"{'yes' if sig.significant else 'no'} ({sig.test})", int(sig.significant))


def _ms(seconds: float) -> float:
    return seconds * 1e3


#: The comparison table, one column per entry: heading, tooltip, the cell shown and the SI value of the CSV.
#: ``{metric}`` in a label is the metric's name.
_COMPARISON_COLUMNS: tuple[Column[_Line], ...] = (
    Column("variant", "variant", "the variant's name", lambda x: Cell(x.v.name, x.v.name), lambda x: x.v.name,
           numeric=False),
    Column("recipe", "recipe", "the recipe that built it from the baseline",
           lambda x: Cell(x.v.recipe or "–", x.v.recipe or ""), lambda x: x.v.recipe, numeric=False),
    _measured(Column("metric", "{metric}", "the metric on the evaluation data, mean over repeats",
                     _metric_cell, lambda x: x.v.metric)),
    _measured(Column("metric_change", "Δ {metric}", "variant minus baseline",
                     _metric_change_cell, lambda x: x.d.metric_change if x.d else None)),
    _measured(Column.quantity("energy_per_sample_j", "mJ / sample",
                              "mean energy per sample over the repeats, millijoules",
                              lambda x: x.e.mean if x.e else None, ".4g", _ms)),
    _measured(Column("energy_ci_j", "95% CI",
                     "95% confidence interval of the mean energy per sample (t distribution)",
                     _ci_cell, lambda x: None if x.e is None else (x.e.low, x.e.high))),
    _measured(Column("energy_band_j", "band",
                     "systematic band of the energy per sample, millijoules: how far off the energy sources could be "
                     "(their constants and resolution), apart from the run-to-run 95% CI",
                     _band_cell, lambda x: None if x.v.energy_band is None else (x.v.energy_band.low_j,
                                                                                 x.v.energy_band.high_j))),
    _measured(Column("energy_ratio", "Δ energy", "energy per sample against the baseline",
                     lambda x: ratio(x.d.energy_ratio if x.d else None),
                     lambda x: x.d.energy_ratio if x.d else None)),
    _measured(Column("energy_ratio_band", "Δ energy band",
                     "systematic band of the energy ratio: the model constants both figures share cancel, so on one "
                     "machine it is much narrower than each figure's band",
                     _ratio_band_cell, lambda x: None if x.d is None or x.d.energy_ratio_band is None
                     else (x.d.energy_ratio_band.low, x.d.energy_ratio_band.high))),
    _measured(Column("p_value", "p",
                     "p-value of the energy difference over the repeats (the test is named in the tooltip)",
                     _p_cell, lambda x: x.sig.p_value if x.sig else None)),
    _measured(Column("significant", "signif.", "whether the energy difference is significant at 5%",
                     _significant_cell, lambda x: x.sig.significant if x.sig else None, numeric=False)),
    _measured(Column("saving", "saving",
                     "measurable when the energy per sample is significantly lower than the baseline's (p < 0.05); "
                     "only measurable savings get a place on the front and a break-even",
                     _saving_cell, lambda x: x.d.measurable_saving if x.d else None, numeric=False)),
    _measured(Column("metric_change_ci", "Δ 95% CI",
                     "95% interval of the change on the same samples (McNemar's exact test for accuracy, a paired "
                     "bootstrap for other metrics); the budget is judged against its lower end",
                     _metric_ci_cell, lambda x: None if x.mt is None else (x.mt.diff_low, x.mt.diff_high))),
    _measured(Column("metric_p", "p (Δ)", "p-value of the paired test of the change (the test is named)",
                     _metric_p_cell, lambda x: x.mt.p_value if x.mt else None)),
    _measured(Column.quantity("batch_p50_s", "p50 ms", "median latency per batch, milliseconds",
                              lambda x: x.lb.p50_s if x.lb else None, ".3g", _ms)),
    _measured(Column.quantity("batch_p95_s", "p95 ms", "95th percentile latency per batch, milliseconds",
                              lambda x: x.lb.p95_s if x.lb else None, ".3g", _ms)),
    _measured(Column.quantity("batch_p99_s", "p99 ms", "99th percentile latency per batch, milliseconds",
                              lambda x: x.lb.p99_s if x.lb else None, ".3g", _ms)),
    _measured(Column.quantity("sample_p50_s", "ms / sample",
                              "median latency per sample (batch time over batch size), milliseconds",
                              lambda x: x.v.latency_sample.p50_s if x.v.latency_sample else None, ".3g", _ms)),
    _measured(Column.quantity("throughput_sps", "samples / s", "throughput over the measured repeats",
                              lambda x: x.v.throughput_sps, ",.0f")),
    _measured(Column.quantity("size_b", "size kB", "serialized state dict, kilobytes (1000 bytes)",
                              lambda x: x.v.size_b, ",.1f", lambda b: b / 1e3)),
    _measured(Column("size_ratio", "Δ size", "serialized size against the baseline",
                     lambda x: ratio(x.d.size_ratio if x.d else None), lambda x: x.d.size_ratio if x.d else None)),
    _measured(Column.quantity("params_total", "params",
                              "parameters (or stored weight elements for quantized models)",
                              lambda x: x.v.params_total, ",d")),
    _measured(Column.quantity("params_nonzero", "non-zero", "non-zero parameters or stored weight elements",
                              lambda x: x.v.params_nonzero, ",d")),
    _measured(Column.quantity("macs_per_sample", "MACs / sample",
                              "multiply-accumulates per sample (see the method in the tooltip)",
                              lambda x: x.v.macs_per_sample, ",.0f")),
    _measured(Column.quantity("co2e_g_per_million", "g CO2e / 1M", "grams of CO2e per million inferences",
                              lambda x: x.v.carbon_per_million.co2e_g if x.v.carbon_per_million else None, ".3g")),
    _measured(Column.quantity("making_energy_j", "making J",
                              "energy spent making the variant (training, calibration, conversion), joules",
                              lambda x: x.v.making.energy_j if x.v.making else None, ".4g")),
    _measured(Column.quantity("break_even_inferences", "break-even",
                              "inferences for the energy saved to repay the making energy (measurable savings only)",
                              lambda x: x.d.break_even_inferences if x.d else None, ",.0f")),
    _measured(Column("pareto_front", "front",
                     "on the metric-versus-energy Pareto front of the baseline and the measurable savings",
                     lambda x: Cell("yes" if x.v.on_pareto_front else "no", int(x.v.on_pareto_front)),
                     lambda x: x.v.on_pareto_front, numeric=False)),
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
    columns = tuple(replace(c, label=c.label.format(metric=metric_label)) for c in _COMPARISON_COLUMNS)
    if accuracy:  # a change of a percentage is in percentage points
        columns = tuple(replace(c, label="Δ pp", title="accuracy change, variant minus baseline, percentage points")
                        if c.key == "metric_change" else replace(c, label="Δ pp 95% CI")
                        if c.key == "metric_change_ci" else c for c in columns)
    rows = tuple(_variant_row(v, comparison, rec, scale, columns) for v in comparison.variants)
    ok = [v for v in comparison.variants if v.ok]
    total_making = sum(v.making.energy_j for v in comparison.variants if v.making)
    headline = (
        ("variants", f"{len(comparison.variants)} ({len(ok)} measured)"),
        ("baseline", comparison.baseline),
        ("repeats", f"{comparison.repeats} interleaved, {comparison.warmup} warm-up pass(es) each"),
        ("data", f"{comparison.samples_per_pass:,} samples per pass, {comparison.passes_per_repeat} pass(es) "
                 f"per repeat"),
        ("Pareto front (baseline and measurable savings)", ", ".join(comparison.pareto_front) or "–"),
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


def _variant_row(v: VariantResult, c: Comparison, rec: Recommendation, scale: float,
                 columns: tuple[Column[_Line], ...]) -> Row:
    marks = tuple(m for m, on in (("baseline", v.name == c.baseline), ("recommended", v.name == rec.name),
                                  ("front", v.on_pareto_front), ("failed", not v.ok)) if on)
    line = _Line(v, scale)
    cells = tuple(col.cell(line) for col in columns)
    raw = tuple(col.raw(line) for col in columns)
    if not v.ok:
        return Row(v.name, cells, raw, marks, note=f"failed: {v.error}")
    counted = v.macs_method if v.macs_method != "flop-counter" else None  # only say so when it is not the plain count
    macs = f"MACs: {counted}" if counted else ("MACs: see the note" if v.macs_note else None)
    steps = v.making.steps if v.making is not None else ()  # a stacked recipe: each step's making energy
    making = "making: " + " + ".join(f"{s.recipe} {s.energy_j:.4g} J" for s in steps) if steps else None
    note = "; ".join(part for part in (macs, making) if part) or None
    return Row(v.name, cells, raw, marks, note, v.macs_note)


def _comparison_charts(c: Comparison, rec: Recommendation, scale: float, metric_label: str) -> tuple[ChartView, ...]:
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
