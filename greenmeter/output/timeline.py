"""Power timelines: checked ``(t_s, power_w)`` series, trapezoid integration, sums over domains.

The arithmetic behind the report's power chart (:mod:`greenmeter.output.charts`), kept apart from the
drawing: :func:`cumulative_energy` integrates one series; the sum over domains is integrated per domain
on its own points; :func:`thin` keeps at most a few thousand points of a long series for drawing only.
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence

from greenmeter._errors import ConfigError

__all__ = ["checked_number", "checked_series", "cumulative_energy", "summed_cumulative", "thin"]


def checked_number(value: object, what: str) -> float:
    """``value`` as a finite float, or ConfigError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{what} must be finite, got {out!r}")
    return out


def checked_series(points: Sequence[tuple[float, float]], who: str) -> list[tuple[float, float]]:
    """The (t_s, power_w) points of ``who`` as floats, sorted by time (stable: equal times keep order)."""
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence):
        raise ConfigError(f"{who} needs a sequence of (t_s, power_w) points, got {type(points).__name__}")
    if len(points) == 0:
        raise ConfigError(f"{who} needs at least one (t_s, power_w) point; got none")
    out = []
    for pair in points:
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ConfigError(f"{who}: each point must be a (t_s, power_w) pair, got {pair!r}")
        t = checked_number(pair[0], f"a time in {who}")
        p = checked_number(pair[1], f"a power in {who}")
        if p < 0:
            raise ConfigError(f"{who} has a negative power ({p!r} W at t={t!r} s)")
        out.append((t, p))
    out.sort(key=lambda tp: tp[0])
    return out


def cumulative_energy(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Integrate power over time by the trapezoid rule.

    Args:
        points: ``(t_s, power_w)`` pairs, seconds and watts, in any order (sorted by time here; points at
            equal times keep their given order, so a step in power can be written as two points).

    Returns:
        ``(t_s, energy_j)`` pairs, sorted by time: the energy in joules from the first point up to each
        point. The first is always ``(t_first, 0.0)``.

    Raises:
        ConfigError: no points, a non-finite value or a negative power.
    """
    ordered = checked_series(points, "cumulative_energy()")
    out = [(ordered[0][0], 0.0)]
    total = 0.0
    for (t0, p0), (t1, p1) in itertools.pairwise(ordered):
        total += (t1 - t0) * (p0 + p1) / 2
        out.append((t1, total))
    return out


def _energy_on(ordered: list[tuple[float, float]], grid: list[float]) -> list[float]:
    """Energy (J) of one time-sorted series from its start to each time of ``grid``: the exact integral of
    its piecewise-linear power, 0 before the series starts and constant after it ends."""
    times, cum = [tp[0] for tp in ordered], cumulative_energy(ordered)
    out = []
    for t in grid:
        if t <= times[0] or t >= times[-1]:
            out.append(0.0 if t <= times[0] else cum[-1][1])
            continue
        i = bisect.bisect_right(times, t) - 1  # times[i] <= t < times[i + 1], so times[i + 1] > times[i]
        (t0, p0), (t1, p1) = ordered[i], ordered[i + 1]
        p_t = p0 + (p1 - p0) * (t - t0) / (t1 - t0)
        out.append(cum[i][1] + (t - t0) * (p0 + p_t) / 2)
    return out


def summed_cumulative(series: Mapping[str, list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Cumulative energy (J) of the sum over domains, at every time any domain has a point.

    Each domain is integrated by the trapezoid rule on its own points; between them its power is taken as
    linear, so at every domain's own points the sum equals the sum of the per-domain trapezoid totals.
    """
    grid = sorted({t for v in series.values() for t, _ in v})
    per_domain = [_energy_on(v, grid) for v in series.values()]
    return [(t, math.fsum(col)) for t, col in zip(grid, zip(*per_domain), strict=True)]


def thin(line: list[tuple[float, float]], limit: int = 2000) -> list[tuple[float, float]]:
    """At most ``limit`` points of a time-sorted line, for drawing only: the lowest and highest point of each
    run of consecutive points (in time order), so peaks survive. Totals are computed from every point."""
    if len(line) <= limit:
        return line
    size = math.ceil(len(line) / (limit // 2 - 1))
    out = [line[0]]
    for start in range(1, len(line) - 1, size):
        run = range(start, min(start + size, len(line) - 1))
        lo, hi = min(run, key=lambda i: line[i][1]), max(run, key=lambda i: line[i][1])
        out += [line[i] for i in sorted({lo, hi})]
    return [*out, line[-1]]
