"""Fitting a machine's power coefficients to a wall meter: the clock-offset search and the least-squares fit.

The model, per window ``i`` (its :class:`~greenmeter.calibration.activity.Activity`)::

    wall_J[i] = idle_W * duration_s[i] + w_cpu * busy_cpu_s[i] + w_gb * gb_s[i]

``idle_W`` is the whole machine's power at rest (in watts, as the wall sees it: CPU, memory, disks, fans, the
power supply's losses), ``w_cpu`` the joules per busy CPU-second (watts per busy vCPU) and ``w_gb`` the joules
per GB-second (watts per GB). Each window's row is divided by its duration before the least-squares solve, so
the fit is one of mean power and a long window does not outweigh the short ones; R^2 is that of mean power.
With five windows or more, each one is also predicted by a fit of the others (leave-one-out), and the largest
relative error of those held-out predictions is what the calibrated estimates' band uses.

The meter's clock may be offset from this machine's. :func:`align` tries every offset in a stated range (in
steps of a quarter of the log's sample interval) and keeps the one whose fit leaves the least mean squared
residual between the meter's samples inside each window and the window's fitted power, which is where the
meter's power steps line up with the windows' edges.

numpy is imported when a fit runs, not with this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from greenmeter._checks import number
from greenmeter._errors import ConfigError
from greenmeter.calibration.activity import Activity
from greenmeter.calibration.meter_log import MeterLog, utc_iso

__all__ = ["DEFAULT_OFFSET_RANGE_S", "LADDER_HINT", "MIN_RUNS", "Alignment", "LinearFit", "align", "fit_linear"]

#: The default clock-offset search: from -120 s to +120 s.
DEFAULT_OFFSET_RANGE_S = 120.0
#: The fewest windows a fit takes (three coefficients, and one more to judge the fit).
MIN_RUNS = 4
#: The fewest windows with which each one is also predicted by a fit of the others.
_HELD_OUT_MIN = 5
#: Above this condition number of the (column-normalised) design the coefficients are not determined.
_MAX_CONDITION = 1e6
#: The most offsets the search tries (the step grows for a long range and a short sample interval).
_MAX_OFFSETS = 4001
#: What to do when the runs do not determine the coefficients.
LADDER_HINT = ("run `greenmeter calibrate --load-ladder` while the meter logs, so that the stored runs span idle, "
                "one core, all cores and a memory-bound load")


@dataclass(frozen=True)
class LinearFit:
    """The least-squares fit of the wall meter's energy to the windows' activity.

    Attributes:
        idle_w: the machine's power at rest, in watts.
        w_cpu: joules per busy CPU-second (watts per busy vCPU).
        w_gb: joules per GB-second (watts per GB of memory held).
        r_squared: the fit's R^2 over the windows' mean power.
        predicted_j: each window's fitted energy, in joules.
        residuals_j: each window's fitted minus metered energy, in joules.
        held_out_j: each window's energy predicted by a fit of the other windows (``None`` for all when fewer
            than five windows were fitted, or for one whose others could not be fitted).
    """

    idle_w: float
    w_cpu: float
    w_gb: float
    r_squared: float
    predicted_j: tuple[float, ...]
    residuals_j: tuple[float, ...]
    held_out_j: tuple[float | None, ...]

    def predict_j(self, activity: Activity) -> float:
        """The calibrated energy of a window's activity, in joules."""
        return self.idle_w * activity.duration_s + self.w_cpu * activity.busy_cpu_s + self.w_gb * activity.gb_s

    def held_out_errors(self, meter_j: Sequence[float]) -> tuple[float, ...]:
        """The held-out predictions' relative errors against the meter (``(predicted - meter) / meter``)."""
        return tuple((p - m) / m for p, m in zip(self.held_out_j, meter_j) if p is not None and m > 0)


@dataclass(frozen=True)
class Alignment:
    """The clock offset between the meter and this machine, and the fit it gave.

    Attributes:
        offset_s: seconds added to the meter's times to give this machine's (a meter clock 30 s behind: +30).
        range_s: the search ran from ``-range_s`` to ``+range_s``.
        step_s: the search's step, in seconds.
        used: the indices (into the activities given) of the windows the log covers at that offset.
        meter_j: the meter's energy of each used window, in joules.
        fit: the fit at that offset, over the used windows.
    """

    offset_s: float
    range_s: float
    step_s: float
    used: tuple[int, ...]
    meter_j: tuple[float, ...]
    fit: LinearFit


def _design(activities: Sequence[Activity]):  # type: ignore[no-untyped-def]
    import numpy as np

    d = np.array([a.duration_s for a in activities], dtype=float)
    return np.column_stack([np.ones_like(d), [a.busy_cpu_s for a in activities] / d,
                            [a.gb_s for a in activities] / d]), d


def _check_design(activities: Sequence[Activity]) -> None:
    import numpy as np

    if len(activities) < MIN_RUNS:
        raise ConfigError(f"a calibration needs at least {MIN_RUNS} stored windows that the meter log covers, and "
                          f"{len(activities)} are; {LADDER_HINT}")
    if any(not a.duration_s > 0 for a in activities):
        raise ConfigError("a window to calibrate against has no duration; remove it or " + LADDER_HINT)
    x, _ = _design(activities)
    norms = np.linalg.norm(x, axis=0)
    if np.any(norms == 0) or np.linalg.cond(x / norms) > _MAX_CONDITION:
        what = ("no window held memory as the RAM estimate sees it" if norms[2] == 0
                else "the windows' loads do not vary enough to tell idle power, CPU power and memory power apart "
                     "(every run at the same load, or memory that moves with CPU time)")
        raise ConfigError(f"cannot calibrate from these {len(activities)} windows: {what}; {LADDER_HINT}")


def _solve(x, y):  # type: ignore[no-untyped-def]
    import numpy as np

    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return coef


def fit_linear(activities: Sequence[Activity], meter_j: Sequence[float]) -> LinearFit:
    """Fit ``idle_W``, ``w_cpu`` and ``w_gb`` to the meter's energy of each window (see the module docstring).

    Args:
        activities: the windows' activity (:func:`~greenmeter.calibration.activity.activity_of`).
        meter_j: the meter's energy of each window, in joules, in the same order.

    Returns:
        The :class:`LinearFit`, with held-out predictions when there are five windows or more.

    Raises:
        ConfigError: fewer than four windows, or windows whose loads do not determine the three coefficients
            (the message says to run the load ladder).
    """
    import numpy as np

    if len(activities) != len(meter_j):
        raise ConfigError(f"fit_linear needs one meter energy per window: {len(activities)} windows, "
                          f"{len(meter_j)} energies")
    _check_design(activities)
    x, d = _design(activities)
    y = np.asarray(meter_j, dtype=float) / d
    coef = _solve(x, y)
    fitted = x @ coef
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - fitted) ** 2)) / total if total > 0 else math.nan
    held: list[float | None] = [None] * len(activities)
    if len(activities) >= _HELD_OUT_MIN:
        for i in range(len(activities)):
            keep = [j for j in range(len(activities)) if j != i]
            rest = x[keep]
            norms = np.linalg.norm(rest, axis=0)
            if np.any(norms == 0) or np.linalg.cond(rest / norms) > _MAX_CONDITION:
                continue  # the others alone do not determine the coefficients
            held[i] = float(x[i] @ _solve(rest, y[keep]) * d[i])
    predicted = fitted * d
    return LinearFit(
        idle_w=float(coef[0]), w_cpu=float(coef[1]), w_gb=float(coef[2]), r_squared=r2,
        predicted_j=tuple(float(p) for p in predicted),
        residuals_j=tuple(float(p - m) for p, m in zip(predicted, meter_j)),
        held_out_j=tuple(held),
    )


def align(log: MeterLog, activities: Sequence[Activity], *, offset_range_s: float = DEFAULT_OFFSET_RANGE_S,
          step_s: float | None = None) -> Alignment:
    """Find the meter's clock offset that best fits the windows, and the fit there.

    For each offset from ``-offset_range_s`` to ``+offset_range_s`` the windows the log covers whole are
    integrated (:meth:`MeterLog.energy_j`) and fitted (:func:`fit_linear` without the held-out pass), and the
    meter's samples inside each window are compared with the window's fitted mean power; among the offsets
    that cover the most windows, the one with the least mean squared difference wins (a misaligned edge puts
    samples of the neighbouring load inside a window, which its fitted power does not explain).

    Args:
        log: the meter's log.
        activities: the stored windows' activity.
        offset_range_s: the largest clock offset tried either way, in seconds (>= 0).
        step_s: the search's step, in seconds (> 0); default a quarter of the log's sample interval (larger
            when that would try more than 4,001 offsets).

    Returns:
        The :class:`Alignment`, its fit done with held-out predictions.

    Raises:
        ConfigError: a bad range or step; the log covers no window at any offset (the message gives both
            spans); or too few windows, or too little variety in them, to fit.
    """
    import numpy as np

    offset_range_s = number("offset_range_s", offset_range_s, low=0, unit="seconds")
    if step_s is None:
        step_s = max(log.sample_interval_s / 4.0, 2.0 * offset_range_s / (_MAX_OFFSETS - 1), 1e-3)
    step_s = number("step_s", step_s, low=0, low_open=True, unit="seconds")
    count = int(math.floor(offset_range_s / step_s + 1e-9))
    offsets = [k * step_s for k in range(-count, count + 1)]
    covered = [tuple(i for i, a in enumerate(activities) if log.covers(a.start_s - o, a.end_s - o)) for o in offsets]
    most = max((len(c) for c in covered), default=0)
    if most == 0:
        spans = [a.start_s for a in activities] + [a.end_s for a in activities]
        runs = (f"the stored windows span {utc_iso(min(spans))} to {utc_iso(max(spans))}" if spans
                else "the store holds no window measured with the CPU estimate")
        raise ConfigError(f"the meter log {log.path} ({utc_iso(log.start_s)} to {utc_iso(log.end_s)}) overlaps no "
                          f"stored run, even with the meter's clock off by up to {offset_range_s:g} s: {runs}; log the "
                          "meter while the runs are measured (or widen --offset-range if its clock is further off)")
    times = np.asarray(log.times_s, dtype=float)
    watts = np.asarray(log.watts, dtype=float)
    sum_w = np.concatenate([[0.0], np.cumsum(watts)])
    sum_w2 = np.concatenate([[0.0], np.cumsum(watts ** 2)])
    best: tuple[float, float, tuple[int, ...]] | None = None
    checked: set[tuple[int, ...]] = set()
    for offset, used in zip(offsets, covered):
        if len(used) < most:
            continue
        chosen = [activities[i] for i in used]
        if used not in checked:
            _check_design(chosen)
            checked.add(used)
        x, d = _design(chosen)
        y = np.array([log.energy_j(a.start_s - offset, a.end_s - offset) for a in chosen]) / d
        power = x @ _solve(x, y)  # each window's fitted mean power
        lo = np.searchsorted(times, [a.start_s - offset for a in chosen], side="left")
        hi = np.searchsorted(times, [a.end_s - offset for a in chosen], side="right")
        n = hi - lo
        if not n.sum():
            continue
        # the meter's samples inside each window against the window's fitted power: a misaligned edge puts
        # samples of the neighbouring load inside the window, which the fitted power does not explain
        squares = (sum_w2[hi] - sum_w2[lo]) - 2 * power * (sum_w[hi] - sum_w[lo]) + n * power ** 2
        score = float(squares.sum() / n.sum())
        if best is None or score < best[0] - 1e-12 or (abs(score - best[0]) <= 1e-12 and abs(offset) < abs(best[1])):
            best = (score, offset, used)
    if best is None:
        raise ConfigError(f"the meter log {log.path} has no sample inside any stored window it covers: its samples "
                          f"are {log.sample_interval_s:g} s apart, longer than the windows; log the meter more often")
    assert best is not None
    _, offset, used = best
    chosen = [activities[i] for i in used]
    meter = tuple(log.energy_j(a.start_s - offset, a.end_s - offset) for a in chosen)
    return Alignment(offset, offset_range_s, step_s, used, meter, fit_linear(chosen, meter))

