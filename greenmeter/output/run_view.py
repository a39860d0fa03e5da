"""The view model of a stored run (a training loop under ``@greenmeter.track``, ``greenmeter run``...).

Built from what the store holds and nothing else: the run record, its windows and its power samples.
The power timeline comes from the stored samples when the run has them (``greenmeter run`` records
them); otherwise it is drawn from the windows themselves, each window's mean power over its span, and
the caption says so.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from greenmeter._errors import ConfigError
from greenmeter._version import __version__
from greenmeter.output.charts import epoch_energy_svg, power_timeline_svg
from greenmeter.output.export import render_model_card
from greenmeter.output.formats import ExportOptions
from greenmeter.output.prose import carbon_lines, environment_items, group_flags, source_constants
from greenmeter.sources.band import sum_bands
from greenmeter.output.view import Cell, ChartView, Column, ReportView, Row, now

if TYPE_CHECKING:
    from greenmeter.records.measurement import Measurement
    from greenmeter.records.run import RunRecord

__all__ = ["run_view"]

@dataclass(frozen=True)
class _WindowLine:
    """A window as its table row reads it: the window and its start, in seconds from the run's start."""

    w: Measurement
    start_s: float | None

    @property
    def kinds(self) -> str:
        """The provenance kinds of the domains in its total: ``"measured"``, ``"estimated"`` or both."""
        return ", ".join(sorted({d.provenance.kind for d in self.w.domains if d.in_total}))


#: The window table, one column per entry: heading, tooltip, the cell shown and the SI value of the CSV.
def _wall_j(m: Measurement) -> float | None:
    """The window's external-meter energy (the ``wall`` domain ``greenmeter calibrate`` adds), if it has one."""
    return next((d.energy_j for d in m.domains if d.kind == "wall"), None)


def _band_cell(m: Measurement) -> Cell:
    band = m.energy_band
    return Cell("not stated") if band is None else Cell(f"{band.low_j:.4g} – {band.high_j:.4g}", band.high_j - band.low_j)


def _band_value(m: Measurement) -> tuple[float, float] | None:
    band = m.energy_band
    return None if band is None else (band.low_j, band.high_j)


_WINDOW_COLUMNS: tuple[Column[_WindowLine], ...] = (
    Column("window", "window", "the measured window's name", lambda x: Cell(x.w.name, x.w.name),
           lambda x: x.w.name, numeric=False),
    Column("status", "status", "ok, or failed when the measured block raised", lambda x: Cell(x.w.status, x.w.status),
           lambda x: x.w.status, numeric=False),
    Column.quantity("start_s", "start s", "seconds from the run's start", lambda x: x.start_s, ".3g"),
    Column.quantity("duration_s", "duration s", "wall-clock duration, seconds", lambda x: x.w.duration_s, ".4g"),
    Column.quantity("energy_j", "energy J", "total energy over the window, joules", lambda x: x.w.energy_j, ".4g"),
    Column("energy_band_j", "band J",
           "systematic band of the window's energy: how far off its sources could be (their constants and "
           "resolution), joules", lambda x: _band_cell(x.w), lambda x: _band_value(x.w)),
    Column.quantity("wall_j", "wall meter J",
                    "the external meter's energy over the window (added by greenmeter calibrate), joules: the whole "
                    "machine at the wall, kept apart from the device domains and not in the total",
                    lambda x: _wall_j(x.w), ".4g"),
    Column.quantity("power_w", "power W", "mean power, watts",
                    lambda x: x.w.power_w if x.w.duration_s > 0 else None, ".3g"),
    Column.quantity("samples", "samples", "samples processed, when given", lambda x: x.w.samples, ",d"),
    Column.quantity("j_per_sample", "J / sample", "energy per sample, joules",
                    lambda x: x.w.energy_j / x.w.samples if x.w.samples else None, ".3g"),
    Column.quantity("steps", "steps", "steps marked inside the window", lambda x: x.w.steps, "d"),
    Column.quantity("step_p50_s", "step p50 ms", "median step latency, milliseconds (exact, or within the "
                    "record's latency.relative_error when the window kept only its quantile sketch)",
                    lambda x: None if x.w.latency is None else x.w.latency.p50_s, ".3g", lambda s: s * 1e3),
    Column.quantity("epochs", "epochs", "epochs marked inside the window", lambda x: len(x.w.epochs), "d"),
    Column.quantity("co2e_g", "g CO2e", "the window's energy as grams of CO2e",
                    lambda x: x.w.carbon.co2e_g if x.w.carbon else None, ".3g"),
    Column("source", "source", "measured (a counter) or estimated (a model)", lambda x: Cell(x.kinds or "–", x.kinds),
           lambda x: x.kinds, numeric=False),
)


def _parse(ts: str | None) -> _dt.datetime | None:
    if not ts:
        return None
    try:
        return _dt.datetime.fromisoformat(ts)
    except ValueError:
        return None


def _offset(ts: str | None, start: _dt.datetime | None) -> float | None:
    t = _parse(ts)
    if t is None or start is None:
        return None
    if (t.tzinfo is None) != (start.tzinfo is None):
        return None
    return (t - start).total_seconds()


def run_view(run: RunRecord, windows: Sequence[Measurement], samples: Sequence[tuple[float, str, float]] = (),
             charts: bool = True, generated_at: str | None = None) -> ReportView:
    """The view of a stored run (a training loop, ``greenmeter run``...) with its windows and power samples.

    Args:
        run: the stored run.
        windows: its measured windows, in order.
        samples: its power samples ``(seconds since start, domain key, watts)``, if any.
        charts: draw the charts (matplotlib); ``False`` for the text formats.
        generated_at: the report's timestamp (default: now, UTC).
    """
    generated_at = generated_at or now()

    # time zero: the run's start, or an earlier window's (greenmeter run opens its window just before it
    # stores the run, so that a command that cannot start leaves no run behind)
    starts = [t for t in (_parse(run.started_at), *(_parse(w.started_at) for w in windows)) if t is not None]
    start = min(starts, default=None) if len({t.tzinfo is None for t in starts}) <= 1 else _parse(run.started_at)
    rows = tuple(_window_row(w, _offset(w.started_at, start)) for w in windows)
    m = run.measurement
    headline: list[tuple[str, str]] = [("status", run.display_status), ("started", run.started_at[:19] + " UTC")]
    if run.command:
        headline.append(("command", " ".join(run.command)))
    if m is not None:
        headline += [("duration", f"{m.duration_s:.4g} s"), ("energy", f"{m.energy_j:.4g} J "
                                                                      f"({m.energy_j / 3.6e6:.3g} kWh)"),
                     ("band", m.band_note()), ("mean power", f"{m.power_w:.3g} W")]
    elif windows:
        outer = _outermost(windows, start)
        total = sum(w.energy_j for w in outer)
        headline.append(("energy in windows", f"{total:.4g} J over {len(outer)} window(s) that no other window "
                                              f"contains ({sum(w.duration_s for w in outer):.4g} s)"))
        band = sum_bands(w.energy_band for w in outer)
        headline.append(("band", "not stated (a window has none)" if band is None else band.describe()))
    if run.carbon is not None:
        headline.append(("carbon", run.carbon.describe()))
    headline.append(("windows", str(len(windows))))
    epochs = [(f"{w.name} #{e.index + 1}", e.energy_j) for w in windows for e in w.epochs]
    if epochs:
        band = sum_bands(e.band for w in windows for e in w.epochs)
        headline.append(("epochs", f"{len(epochs)}, {sum(e for _, e in epochs):.4g} J in all, "
                                   + ("band not stated" if band is None else band.describe())))
    chart_views = _charts(run, windows, samples, start, epochs) if charts else ()
    flags = list(m.flags) if m is not None else []
    if not run.complete:
        flags.insert(0, "this run never finished (still running, or its process was killed): its whole-run "
                        "figures are missing and only the stored windows are shown")
    flags += group_flags([(w.name, f) for w in windows for f in w.flags], len(windows))
    return ReportView(
        kind="run", title=f"Run: {run.name}", subtitle=f"run {run.id[:12]} ({run.kind}) on "
                                                      f"{run.host.hostname if run.host else 'an unknown host'}",
        generated_at=generated_at, summary=None, headline=tuple(headline), charts=chart_views,
        columns=_WINDOW_COLUMNS, rows=rows,
        environment=environment_items(run.host, m.backends if m else tuple(dict.fromkeys(
            b for w in windows for b in w.backends))),
        sources=_sources(run, windows), constants=_constants(run, windows), methodology=_methodology(bool(samples)),
        model_card=_model_card(run), flags=tuple(dict.fromkeys(flags)), version=__version__,
    )


def _window_row(w: Measurement, start_s: float | None) -> Row:
    line = _WindowLine(w, start_s)
    cells = tuple(col.cell(line) for col in _WINDOW_COLUMNS)
    raw = tuple(col.raw(line) for col in _WINDOW_COLUMNS)
    return Row(w.name, cells, raw, ("failed",) if w.status != "ok" else (), w.error)


def _outermost(windows: Sequence[Measurement], start: _dt.datetime | None) -> list[Measurement]:
    """Windows not inside an earlier one (by start offset and duration), in time order."""
    timed = sorted(((_offset(w.started_at, start), w) for w in windows), key=lambda p: (p[0] is None, p[0] or 0.0))
    out: list[Measurement] = []
    end = float("-inf")
    for t0, w in timed:
        if t0 is None:
            out.append(w)
            continue
        if t0 < end - 1e-9:
            continue
        out.append(w)
        end = t0 + w.duration_s
    return out


def _timeline_from_windows(windows: Sequence[Measurement], start: _dt.datetime | None,
                           ) -> dict[str, list[tuple[float, float]]]:
    """Each top-level window as its mean power held over its span (a step line), in seconds from the start."""
    points: list[tuple[float, float]] = []
    for w in _outermost(windows, start):
        t0 = _offset(w.started_at, start)
        if t0 is None or w.duration_s <= 0:
            continue
        if w.epochs:  # finer: each epoch's mean power over its own span (epoch marks read the counters)
            t = t0
            for e in w.epochs:
                if e.duration_s > 0:
                    power = e.energy_j / e.duration_s
                    points += [(t, power), (t + e.duration_s, power)]
                t += e.duration_s
        else:
            points += [(t0, w.power_w), (t0 + w.duration_s, w.power_w)]
    return {"all domains (epoch or window means)": points} if len(points) >= 2 else {}


def _charts(run: RunRecord, windows: Sequence[Measurement], samples: Sequence[tuple[float, str, float]],
            start: _dt.datetime | None, epochs: list[tuple[str, float]]) -> tuple[ChartView, ...]:

    out = []
    series: dict[str, list[tuple[float, float]]] = {}
    for t, domain, watts in samples:
        series.setdefault(domain, []).append((t, watts))
    series = {k: v for k, v in series.items() if len(v) >= 2}
    caption = "Power of each energy domain, sampled during the run, and the cumulative energy (trapezoid rule)."
    if not series:
        series = _timeline_from_windows(windows, start)
        caption = ("No power samples were stored for this run, so each epoch's (or, without epochs, each "
                   "window's) mean power is drawn over its span (nested windows are covered by their outer "
                   "window), with the cumulative energy.")
    if series:
        out.append(ChartView("power", "Power and cumulative energy over time", caption, power_timeline_svg(series)))
    if epochs:
        out.append(ChartView("epochs", "Energy per epoch", "Energy of each epoch marked with meter.epoch().",
                             epoch_energy_svg(epochs)))
    return tuple(out)


def _sources(run: RunRecord, windows: Sequence[Measurement]) -> tuple[tuple[str, str], ...]:
    measurements = [run.measurement] if run.measurement is not None else list(windows)
    walls = [d for w in windows for d in w.domains if d.kind == "wall"]  # added to the windows by calibrate
    lines = dict.fromkeys((d.provenance.kind, f"{d.key}: {d.provenance.describe()}")
                          for d in [*(d for m in measurements for d in m.domains), *walls])
    out = list(lines)
    out += carbon_lines(run.carbon or next((w.carbon for w in windows if w.carbon), None))
    return tuple(out)


def _constants(run: RunRecord, windows: Sequence[Measurement]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    measurements = [run.measurement] if run.measurement is not None else list(windows)
    seen: dict[str, dict[str, object]] = {}
    for m in measurements:
        for d in m.domains:
            seen.setdefault(d.key, {"key": d.key, **d.provenance.to_dict()})
    return source_constants(list(seen.values()))


def _methodology(sampled: bool) -> tuple[str, ...]:
    timeline = ("The power timeline is the stored power samples of each domain." if sampled else
                "This run stored no power samples; the timeline shows each window's mean power.")
    return (
        "A window's energy is the difference of two readings of each energy source, taken at the window's "
        "edges (after synchronising the accelerator, when one is used); the total counts each domain once "
        "(nested domains such as RAPL core are shown but not added).",
        "Per-step energy, where shown, is the window's energy shared out in proportion to step durations, "
        "because no counter is read per step. Epoch energy is measured between epoch marks.",
        timeline,
        "Carbon = energy x PUE x grid intensity; the sources section names the intensity table and the PUE.",
    )


def _model_card(run: RunRecord) -> str:
    try:
        return render_model_card([run], ExportOptions())
    except ConfigError as err:
        return f"# greenmeter: no co2_eq_emissions block for this run: {err}\n"
