"""``calibrate``: a wall meter's log against the stored runs, giving this machine's coefficients.

The steps, each in its own module: read the log (:mod:`~greenmeter.calibration.meter_log`); recover each
stored window's activity from its CPU and RAM estimates (:mod:`~greenmeter.calibration.activity`); find the
meter clock's offset and fit ``idle_W``, ``w_cpu`` and ``w_gb`` (:mod:`~greenmeter.calibration.fit`); then
(unless ``dry_run``) add the meter's energy to every fitted window as a measured domain, ``meter:wall``
(kind ``wall``, ``in_total=False``: the wall sees the whole machine, so it is kept apart from the device
domains), and store the :class:`~greenmeter.calibration.profile.CalibrationProfile`, which later
estimates on this host use.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._checks import choice, number
from greenmeter._errors import ConfigError
from greenmeter.calibration.activity import Activity, activity_of
from greenmeter.calibration.fit import DEFAULT_OFFSET_RANGE_S, LADDER_HINT, align
from greenmeter.calibration.meter_log import LOG_FORMATS, MeterLog, read_meter_log
from greenmeter.calibration.profile import CalibrationProfile
from greenmeter.records.measurement import DomainEnergy
from greenmeter.sources.band import BandModel
from greenmeter.sources.base import Provenance

if TYPE_CHECKING:
    from greenmeter.store.database import Store

__all__ = ["WALL_KEY", "CalibratedWindow", "CalibrationResult", "calibrate", "wall_domain"]

#: The key of the meter's domain added to each calibrated window.
WALL_KEY = "meter:wall"


@dataclass(frozen=True)
class CalibratedWindow:
    """One stored window the calibration used.

    Attributes:
        run_id: the stored run's id.
        run_name: its name.
        window: the window's name.
        started_at: the window's start, ISO 8601.
        duration_s: its length, in seconds.
        meter_j: the meter's energy over it (after the clock offset), in joules.
        estimate_j: its uncalibrated CPU + RAM estimate, in joules.
        calibrated_j: the fitted model's energy for it, in joules.
        held_out_j: its energy predicted by a fit of the other windows (``None`` when too few to hold one out).
    """

    run_id: str
    run_name: str
    window: str
    started_at: str
    duration_s: float
    meter_j: float
    estimate_j: float
    calibrated_j: float
    held_out_j: float | None

    @property
    def residual_j(self) -> float:
        """Fitted minus metered energy, in joules."""
        return self.calibrated_j - self.meter_j

    @property
    def estimate_error(self) -> float | None:
        """The uncalibrated estimate's relative error against the meter (``None`` when the meter read 0 J)."""
        return (self.estimate_j - self.meter_j) / self.meter_j if self.meter_j > 0 else None

    @property
    def held_out_error(self) -> float | None:
        """The held-out prediction's relative error against the meter, when there is one."""
        if self.held_out_j is None or not self.meter_j > 0:
            return None
        return (self.held_out_j - self.meter_j) / self.meter_j


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` found.

    Attributes:
        profile: the fitted coefficients (stored unless ``dry_run``).
        windows: the windows fitted, in time order.
        log: the meter log read.
        offset_step_s: the clock-offset search's step, in seconds.
        skipped: windows left out and why, one line each.
        stored: whether the meter's energy and the profile were written to the store.
    """

    profile: CalibrationProfile
    windows: tuple[CalibratedWindow, ...]
    log: MeterLog
    offset_step_s: float
    skipped: tuple[str, ...]
    stored: bool

    def lines(self) -> list[str]:
        """The result for people: the offset, the coefficients, R^2, and a table of the windows."""
        from greenmeter._text import text_table

        p = self.profile
        held = "n/a (fewer than 5 windows)" if p.held_out_error is None else f"{p.held_out_error:.1%}"
        out = [
            f"meter log: {self.log.path} ({self.log.format}, {len(self.log.times_s)} samples every "
            f"{self.log.sample_interval_s:g} s, {self.log.describe_integration()})",
            f"clock offset: {p.offset_s:+.2f} s (searched {-p.offset_range_s:+g} s to {p.offset_range_s:+g} s in "
            f"steps of {self.offset_step_s:g} s; added to the meter's times)",
            f"fit over {p.n_runs} windows on {p.host}: wall_J = idle_W x duration_s + w_cpu x busy_cpu_s + "
            "w_gb x gb_s",
            f"  idle_W = {p.idle_w:.2f} W   w_cpu = {p.w_cpu:.3f} W per busy CPU   w_gb = {p.w_gb:.4f} W per GB",
            f"  R^2 = {p.r_squared:.4f}   largest held-out error: {held}",
        ]
        rows = []
        for w in self.windows:
            rows.append([
                w.run_id[:8], w.window, w.started_at[:19], f"{w.duration_s:.1f}", f"{w.meter_j:.1f}",
                f"{w.calibrated_j:.1f}", f"{w.residual_j:+.1f}",
                "n/a" if w.held_out_error is None else f"{w.held_out_error:+.1%}",
                f"{w.estimate_j:.1f}", "n/a" if w.estimate_error is None else f"{w.estimate_error:+.1%}",
            ])
        out.append("")
        header = ["run", "window", "started (UTC)", "s", "meter J", "fitted J", "residual J", "held-out err",
                  "uncalibrated J", "uncal. err"]
        out += text_table([header, *rows], left=(0, 1, 2)).splitlines()
        out.extend(f"skipped: {line}" for line in self.skipped)
        if self.stored:
            out.append(f"stored: the meter's energy as domain {WALL_KEY} of each window above, and the profile for "
                       f"{p.host} (later CPU and RAM estimates on this host use it)")
        else:
            out.append("dry run: nothing was stored")
        return out


def wall_domain(log: MeterLog, energy_j: float, offset_s: float, duration_s: float) -> DomainEnergy:
    """The meter's energy over a window as a measured domain (``meter:wall``, kind ``wall``, not in the total).

    Args:
        log: the meter log it was integrated from.
        energy_j: the energy, in joules.
        offset_s: the clock offset applied, in seconds.
        duration_s: the window's length, in seconds (a window shorter than the log's sample interval is
            marked unresolved).
    """
    provenance = Provenance(
        "measured", f"external meter {log.path}",
        f"{log.format} power log integrated over the window (offset {offset_s:+.2f} s; {log.describe_integration()})",
        {"meter_log": log.path, "format": log.format, "offset_s": offset_s,
         "sample_interval_s": log.sample_interval_s, "integration": log.integration},
    )
    band = BandModel(power_period_s=log.sample_interval_s, basis=(
        f"external meter: a window's edges fall up to one {log.sample_interval_s:g} s sample interval from the log's "
        "samples (the meter's own accuracy is its maker's to state, and not in this band)"))
    resolved = duration_s >= log.sample_interval_s
    return DomainEnergy(WALL_KEY, "wall", energy_j, False, provenance, resolved,
                        band=band.band(energy_j, duration_s, resolved=resolved))


def _windows_near(store: Store, log: MeterLog, margin_s: float, host: str) -> tuple[
        list[tuple[str, str, int, Any, Activity]], list[str], set[str]]:
    """``(run id, run name, window id, measurement, activity)`` of the host's stored windows that may overlap the
    log; the windows left out and why; the other hosts whose runs overlap it."""
    found: list[tuple[str, str, int, Any, Activity]] = []
    skipped: list[str] = []
    others: set[str] = set()
    lo, hi = log.start_s - margin_s, log.end_s + margin_s
    for run in store.list_runs():
        end = _epoch(run.ended_at)
        if end is not None and end < lo:
            continue  # it ended before the log began (its windows' own times decide the rest)
        run_host = run.host.hostname if run.host is not None else None
        if run_host is not None and run_host != host:
            others.add(run_host)
            continue
        for window_id, m in store.windows_by_id(run.id):
            activity = activity_of(m)
            if activity is None:
                skipped.append(f"run {run.id[:8]} window {m.name!r}: no CPU estimate to calibrate")
            elif m.status != "ok":
                skipped.append(f"run {run.id[:8]} window {m.name!r}: it failed")
            elif activity.end_s >= lo and activity.start_s <= hi:
                found.append((run.id, run.name, window_id, m, activity))
    found.sort(key=lambda row: row[4].start_s)
    return found, skipped, others


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        stamp = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=_dt.timezone.utc)).timestamp()


def calibrate(log: MeterLog | str | os.PathLike[str], store: Store | str | os.PathLike[str] | bool | None = True, *,
              format: str = "auto", offset_range_s: float = DEFAULT_OFFSET_RANGE_S, offset_step_s: float | None = None,
              dry_run: bool = False, host: str | None = None) -> CalibrationResult:
    """Calibrate this machine's CPU and RAM estimates against a wall meter's log of stored runs.

    Args:
        log: the meter's log: a :class:`MeterLog`, or its path (read with ``format``).
        store: the run store (the ``store=`` rule of :func:`~greenmeter.store.recorder.open_store`; default the
            default store).
        format: the log's format when ``log`` is a path: ``"auto"``, ``"csv"``, ``"ipmitool"`` or ``"plug"``.
        offset_range_s: the clock-offset search runs from ``-offset_range_s`` to ``+offset_range_s`` seconds.
        offset_step_s: its step, in seconds (default a quarter of the log's sample interval).
        dry_run: fit and report, but write nothing to the store.
        host: the host whose runs are fitted (default this one).

    Returns:
        The :class:`CalibrationResult`; unless ``dry_run``, the meter's energy is added to each fitted window
        (domain ``meter:wall``) and the profile is stored as the host's newest.

    Raises:
        ConfigError: an unreadable log; a log that overlaps no stored run of the host; too few windows, or
            too little variety in their loads (the message says to run ``greenmeter calibrate --load-ladder``).
    """
    from greenmeter.metering.host import describe_host
    from greenmeter.store.recorder import open_store

    offset_range_s = number("offset_range_s", offset_range_s, low=0, unit="seconds")
    choice("format", format, ("auto", *LOG_FORMATS))
    choice("dry_run", dry_run, (False, True))
    if store is None or store is False:
        raise ConfigError("calibrate needs the run store that holds the metered runs; pass store=True or a path")
    if not isinstance(log, MeterLog):
        log = read_meter_log(log, format)
    this = describe_host()
    host = host or this.hostname
    opened = open_store(store)
    assert opened is not None
    try:
        found, skipped, others = _windows_near(opened, log, offset_range_s, host)
        if not found and others:
            raise ConfigError(f"the meter log {log.path} overlaps runs of {', '.join(sorted(others))}, not of {host}; "
                              "calibrate on the machine the runs were measured on (or pass host=)")
        alignment = align(log, [row[4] for row in found], offset_range_s=offset_range_s, step_s=offset_step_s)
        fit = alignment.fit
        used = [found[i] for i in alignment.used]
        errors = [abs(e) for e in fit.held_out_errors(alignment.meter_j)]
        negative = [f"{name} = {value:.4g}" for name, value in (("idle_W", fit.idle_w), ("w_cpu", fit.w_cpu),
                                                                  ("w_gb", fit.w_gb)) if value < 0]
        if negative:
            raise ConfigError(f"the fit over {len(alignment.used)} windows gave {', '.join(negative)}, below zero: the "
                              f"runs do not pin these coefficients down; {LADDER_HINT}")
        first = used[0][3].host
        profile = CalibrationProfile(
            host=host, cpu_model=first.cpu_model if first else this.cpu_model,
            logical_cpus=int(first.logical_cpus if first else this.logical_cpus),
            idle_w=fit.idle_w, w_cpu=fit.w_cpu, w_gb=fit.w_gb, r_squared=fit.r_squared, n_runs=len(used),
            residuals_j=fit.residuals_j, held_out_error=max(errors) if errors else None,
            fit_error=max(abs(r) / m for r, m in zip(fit.residuals_j, alignment.meter_j) if m > 0),
            meter_log=log.path, meter_format=log.format, offset_s=alignment.offset_s,
            offset_range_s=alignment.range_s, created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(),
            ram_modes=tuple(sorted({row[4].ram_mode for row in used if row[4].ram_mode})),
        )
        windows = tuple(
            CalibratedWindow(run_id, run_name, m.name, m.started_at, m.duration_s, meter, activity.estimate_j,
                             predicted, held)
            for (run_id, run_name, _, m, activity), meter, predicted, held
            in zip(used, alignment.meter_j, fit.predicted_j, fit.held_out_j)
        )
        uncovered = len(found) - len(used)
        if uncovered:
            skipped.append(f"{uncovered} window{'s' if uncovered > 1 else ''} near the log that it does not cover "
                           f"whole at the offset found")
        if not dry_run:
            for (_, _, window_id, m, _), meter in zip(used, alignment.meter_j):
                opened.add_window_domain(window_id, wall_domain(log, meter, alignment.offset_s, m.duration_s))
            opened.save_calibration(profile)
    finally:
        if opened is not store:
            opened.close()
    return CalibrationResult(profile, windows, log, alignment.step_s, tuple(skipped), not dry_run)

