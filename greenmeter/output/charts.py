"""Charts for the HTML report, drawn with matplotlib into inline SVG text.

Plain data in, SVG text out: nothing here knows about greenmeter's records. Each ``*_svg`` function
validates its input (raising :class:`~greenmeter._errors.ConfigError` with what was wrong), draws with
matplotlib's object API (no pyplot global state) and returns an ``<svg>`` element ready to inline in an
HTML5 page: deterministic, scalable, titled for screen readers, self-contained, with user strings
(variant, domain and epoch names) drawn literally and escaped, and ids unique to the chart (see
:mod:`greenmeter.output.svg`, which turns a figure into that element).

Colours come from the Okabe-Ito palette (colour-blind safe), on white, with marker shapes, hatches and
line styles so that a greyscale print still reads. matplotlib is imported inside the functions, so
``import greenmeter`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter.output import svg as _svg
from greenmeter._errors import ConfigError
from greenmeter.output.timeline import checked_number as _number
from greenmeter.output.timeline import checked_series as _checked_series
from greenmeter.output.timeline import cumulative_energy
from greenmeter.output.timeline import summed_cumulative as _summed_cumulative
from greenmeter.output.timeline import thin as _thin

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

__all__ = [
    "ChartPoint",
    "LatencyBar",
    "cumulative_energy",
    "epoch_energy_svg",
    "latency_svg",
    "metric_energy_svg",
    "power_timeline_svg",
]

# Okabe-Ito, without the yellow (unreadable on white paper).
BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, BLACK = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_LINE_COLOURS = (BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, BLACK)
_LINE_STYLES = ("-", "--", "-.", ":")
_GRID, _LEADER = "#d9d9d9", "#808080"
_FIGSIZE = (7.0, 4.2)  # inches

_RC: dict[str, Any] = {
    **_svg.RC,
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica", "sans-serif"],
    "axes.formatter.useoffset": False, "axes.spines.top": False, "axes.spines.right": False,
    "figure.facecolor": "white", "axes.facecolor": "white", "savefig.facecolor": "white",
    "legend.frameon": False,
}


@dataclass(frozen=True)
class ChartPoint:
    """One variant in the metric-against-energy chart.

    Attributes:
        name: the variant's name, drawn literally next to its point.
        metric: the quality metric, unscaled (e.g. accuracy as a fraction).
        energy_j: mean energy per sample, joules.
        energy_low_j, energy_high_j: the 95% interval of ``energy_j``, joules; both or neither. Drawn as
            horizontal error bars. The low bound may be negative (a wide t-interval), the mean may not.
        on_front: on the Pareto front (metric high, energy low); joined by a step line.
        is_baseline: the baseline variant (square marker).
        recommended: the recommended variant (ringed, name in bold).
    """

    name: str
    metric: float
    energy_j: float
    energy_low_j: float | None = None
    energy_high_j: float | None = None
    on_front: bool = False
    is_baseline: bool = False
    recommended: bool = False


@dataclass(frozen=True)
class LatencyBar:
    """Per-batch latency percentiles of one variant, seconds."""

    name: str
    p50_s: float
    p95_s: float
    p99_s: float


# ---------------------------------------------------------------------------------------------- checks

def _name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {value!r}")
    return value


def _non_empty(items: Sequence[Any] | Mapping[Any, Any], func: str, what: str) -> None:
    if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, Mapping)):
        raise ConfigError(f"{func}() needs a sequence of {what}, got {type(items).__name__}")
    if len(items) == 0:
        raise ConfigError(f"{func}() needs at least one {what[:-1]}; got none")


def _checked_point(p: object) -> ChartPoint:
    if not isinstance(p, ChartPoint):
        raise ConfigError(f"metric_energy_svg() takes ChartPoint values, got {type(p).__name__}")
    name = _name(p.name, "a chart point's name")
    who = f"variant {name!r}"
    _number(p.metric, f"the metric of {who}")
    energy = _number(p.energy_j, f"the energy per sample of {who}")
    if energy < 0:
        raise ConfigError(f"the energy per sample of {who} is negative ({energy!r} J)")
    if (p.energy_low_j is None) != (p.energy_high_j is None):
        raise ConfigError(f"the energy interval of {who} needs both bounds or neither")
    if p.energy_low_j is not None and p.energy_high_j is not None:
        low = _number(p.energy_low_j, f"the energy interval's low bound of {who}")
        high = _number(p.energy_high_j, f"the energy interval's high bound of {who}")
        if not low <= energy <= high:
            raise ConfigError(f"the energy interval of {who} ({low!r} J to {high!r} J) does not contain "
                              f"its mean ({energy!r} J)")
    return p


# ------------------------------------------------------------------------------------------ charts

def metric_energy_svg(points: Sequence[ChartPoint], metric_label: str = "accuracy (%)",
                      metric_scale: float = 100.0) -> str:
    """Scatter of a quality metric against energy per sample, one labelled point per variant.

    Args:
        points: the variants. Error bars show each interval; Pareto-front points are filled blue and joined
            by a step line; others are hollow vermillion; the baseline is a square; the recommended variant
            is ringed in black with its name in bold. Names that would overlap are stacked upwards, each
            joined to its point by a grey leader line.
        metric_label: the y axis label (drawn literally).
        metric_scale: the metric is multiplied by this for the y axis (100 turns a fraction into %).

    Returns:
        The chart as an inline ``<svg>`` element; x is energy per sample in millijoules.

    Raises:
        ConfigError: no points, a non-finite or negative energy, a non-finite metric (naming the variant),
            a half-given or inconsistent interval, or a scale that is not a finite positive number.
    """
    _non_empty(points, "metric_energy_svg", "points")
    checked = [_checked_point(p) for p in points]
    label = _name(metric_label, "metric_label")
    scale = _number(metric_scale, "metric_scale")
    if scale <= 0:
        raise ConfigError(f"metric_scale must be positive, got {scale!r}")
    from matplotlib.lines import Line2D

    with _style():
        fig = _figure(_FIGSIZE)
        ax = fig.add_subplot()
        for p in checked:
            x, y = p.energy_j * 1e3, p.metric * scale
            colour = BLUE if p.on_front else VERMILLION
            if p.energy_low_j is not None and p.energy_high_j is not None:
                xerr = [[x - p.energy_low_j * 1e3], [p.energy_high_j * 1e3 - x]]
                ax.errorbar([x], [y], xerr=xerr, fmt="none", ecolor=colour, elinewidth=1, capsize=3, zorder=2)
            ax.plot([x], [y], linestyle="none", marker="s" if p.is_baseline else "o", markersize=7,
                    markeredgewidth=1.5, markeredgecolor=colour,
                    markerfacecolor=colour if p.on_front else "white", zorder=3)
            if p.recommended:
                ax.plot([x], [y], linestyle="none", marker="o", markersize=15, markerfacecolor="none",
                        markeredgecolor=BLACK, markeredgewidth=1.6, zorder=4)
        front = sorted((p.energy_j * 1e3, p.metric * scale) for p in checked if p.on_front)
        if len(front) >= 2:
            ax.step([f[0] for f in front], [f[1] for f in front], where="post", color=BLUE, linewidth=1.2,
                    alpha=0.8, zorder=2)
        legend = [  # (shown, label, proxy style): only the kinds present are listed
            (any(p.on_front for p in checked), "Pareto front", {"color": BLUE, "linestyle": "-"}),
            (not all(p.on_front for p in checked), "not on the front",
             {"markerfacecolor": "white", "markeredgecolor": VERMILLION, "markeredgewidth": 1.5}),
            (any(p.is_baseline for p in checked), "baseline (square)",
             {"marker": "s", "markerfacecolor": "white", "markeredgecolor": BLACK}),
            (any(p.recommended for p in checked), "recommended (ringed)",
             {"markersize": 12, "markerfacecolor": "none", "markeredgecolor": BLACK, "markeredgewidth": 1.6}),
        ]
        ax.legend([Line2D([], [], **{"marker": "o", "linestyle": "none", **kw}) for shown, _, kw in legend if shown],
                  [text for shown, text, _ in legend if shown], loc="best", fontsize=9)
        _finish(ax, "energy per sample (mJ)", label, grid="both")
        ax.margins(x=0.15, y=0.12)
        _label_points(ax, [(p.name, p.energy_j * 1e3, p.metric * scale, p.recommended) for p in checked])
        return _svg.render(fig, f"Chart: {label} against energy per sample (mJ) for {_count(len(checked), 'variant')}")


def _label_points(ax: Axes, labels: list[tuple[str, float, float, bool]]) -> None:
    """Name each point (name, x, y, bold) 8 pt right of and 5 pt above it, stacking names that would overlap.

    Call once the axes limits are final. Names are placed bottom to top (by their point's y, then x, then
    given order); one whose box would overlap a name already placed moves up to just above it, until it
    overlaps none, and is then joined to its point by a thin grey leader line. So names of coincident or
    close points stack into a readable column while names of separate points stay where they were.
    """
    def annotate(name: str, x: float, y: float, bold: bool, lift: float) -> Annotation:
        leader = {"arrowstyle": "-", "color": _LEADER, "linewidth": 0.6, "relpos": (0, 0), "shrinkB": 4}
        return ax.annotate(name, (x, y), xytext=(8, 5 + lift), textcoords="offset points", fontsize=9,
                           fontweight="bold" if bold else "normal", parse_math=False, zorder=5,
                           arrowprops=leader if lift else None)

    trial = [annotate(*label, lift=0) for label in labels]
    ax.figure.draw_without_rendering()  # lays the figure out, so text boxes are in display units
    boxes = [t.get_window_extent() for t in trial]
    for t in trial:
        t.remove()
    per_point = ax.figure.dpi / 72  # display units per point
    placed: list[Bbox] = []
    lifts = [0.0] * len(labels)  # points
    for i in sorted(range(len(labels)), key=lambda i: (boxes[i].y0, boxes[i].x0, i)):
        box = boxes[i]
        while hits := [b for b in placed if b.overlaps(box)]:
            box = box.translated(0, max(b.y1 for b in hits) + per_point - box.y0)  # 1 pt above them
        placed.append(box)
        lifts[i] = (box.y0 - boxes[i].y0) / per_point
    for label, lift in zip(labels, lifts, strict=True):
        annotate(*label, lift=lift)


def latency_svg(bars: Sequence[LatencyBar]) -> str:
    """Horizontal grouped bars of p50, p95 and p99 latency per batch, one group per variant.

    Args:
        bars: the variants, drawn top to bottom in the given order; latencies in seconds.

    Returns:
        The chart as an inline ``<svg>`` element; latencies drawn in milliseconds.

    Raises:
        ConfigError: no bars, a non-finite or negative latency, or percentiles out of order (p50 > p95 or
            p95 > p99), naming the variant.
    """
    _non_empty(bars, "latency_svg", "bars")
    rows: list[tuple[str, tuple[float, float, float]]] = []
    for b in bars:
        if not isinstance(b, LatencyBar):
            raise ConfigError(f"latency_svg() takes LatencyBar values, got {type(b).__name__}")
        who = f"variant {_name(b.name, 'a latency bar name')!r}"
        vals = tuple(_number(v, f"the {q} latency of {who}")
                     for q, v in (("p50", b.p50_s), ("p95", b.p95_s), ("p99", b.p99_s)))
        if min(vals) < 0:
            raise ConfigError(f"{who} has a negative latency ({vals!r} s)")
        if not vals[0] <= vals[1] <= vals[2]:
            raise ConfigError(f"the latency percentiles of {who} are out of order: p50 <= p95 <= p99 "
                              f"must hold, got {vals!r} s")
        rows.append((b.name, (vals[0], vals[1], vals[2])))
    n = len(rows)
    with _style():
        fig = _figure((_FIGSIZE[0], min(14.0, max(_FIGSIZE[1], 1.2 + 0.55 * n))))
        ax = fig.add_subplot()
        height = 0.26
        styles = (("p50", SKY, ""), ("p95", BLUE, ""), ("p99", VERMILLION, "///"))
        handles = []
        for j, (_, colour, hatch) in enumerate(styles):
            ys = [i + (j - 1) * height for i in range(n)]
            handles.append(ax.barh(ys, [r[1][j] * 1e3 for r in rows], height=height, color=colour,
                                   hatch=hatch or None, edgecolor="white" if not hatch else BLACK,
                                   linewidth=0.5))
        ax.set_yticks(range(n), labels=[r[0] for r in rows])
        ax.invert_yaxis()  # first variant on top, p50 first within each group
        ax.legend(handles, [s[0] for s in styles], loc="best", fontsize=9)
        _finish(ax, "latency per batch (ms)", None, grid="x")
        return _svg.render(fig, f"Chart: p50, p95 and p99 latency per batch (ms) for {_count(n, 'variant')}")


def power_timeline_svg(series: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    """Power over time, one line per domain, above the cumulative energy of all domains together.

    Args:
        series: domain name -> ``(t_s, power_w)`` points, seconds from the start and watts, in any order
            (sorted here), at least two per domain and not all at one time.

    Returns:
        The chart as an inline ``<svg>`` element: power in watts on top; below, sharing the time axis, the
        cumulative energy in joules of the sum over domains (trapezoid rule per domain, then summed), with
        the total written at its end.

    Raises:
        ConfigError: no domains, a domain with fewer than two points or no duration, a non-finite value or
            a negative power (naming the domain).
    """
    if not isinstance(series, Mapping):
        raise ConfigError(f"power_timeline_svg() needs a mapping of domain name to points, "
                          f"got {type(series).__name__}")
    _non_empty(series, "power_timeline_svg", "domains")
    checked: dict[str, list[tuple[float, float]]] = {}
    for domain, points in series.items():
        who = f"domain {_name(domain, 'a domain name')!r}"
        ordered = _checked_series(points, who)
        if len(ordered) < 2:
            raise ConfigError(f"{who} needs at least two (t_s, power_w) points to draw a timeline, "
                              f"got {len(ordered)}")
        if ordered[0][0] == ordered[-1][0]:
            raise ConfigError(f"{who} has all its points at one time (t={ordered[0][0]!r} s)")
        checked[domain] = ordered
    total = _summed_cumulative(checked)
    with _style():
        fig = _figure((_FIGSIZE[0], 5.4))
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        handles = []
        for i, ordered in enumerate(checked.values()):
            drawn = _thin(ordered)
            line, = top.plot([t for t, _ in drawn], [p for _, p in drawn], linewidth=1.4,
                             color=_LINE_COLOURS[i % len(_LINE_COLOURS)],
                             linestyle=_LINE_STYLES[(i // len(_LINE_COLOURS) + i) % len(_LINE_STYLES)])
            handles.append(line)
        # explicit labels: an automatic legend would hide a domain whose name starts with "_"
        top.legend(handles, list(checked), loc="best", fontsize=9)
        _finish(top, None, "power (W)", grid="both")
        top.set_ylim(bottom=0)
        drawn = _thin(total)
        bottom.plot([t for t, _ in drawn], [e for _, e in drawn], color=BLACK, linewidth=1.6)
        t_end, e_end = total[-1]
        bottom.annotate(f"total {_fmt(e_end)} J", (t_end, e_end), xytext=(-4, 6), textcoords="offset points",
                        ha="right", fontsize=9, parse_math=False)
        _finish(bottom, "time since start (s)", "cumulative energy (J)", grid="both")
        bottom.set_ylim(bottom=0)
        return _svg.render(fig, f"Chart: power over time (W) of {_count(len(checked), 'domain')} and "
                         f"cumulative energy (J), total {_fmt(e_end)} J")


def epoch_energy_svg(epochs: Sequence[tuple[str, float]]) -> str:
    """Bar chart of energy per epoch.

    Args:
        epochs: ``(label, energy_j)`` pairs in order; labels drawn literally, energy in joules. With more
            than 30 epochs only every k-th label is drawn; with 12 or fewer each bar carries its value.

    Returns:
        The chart as an inline ``<svg>`` element.

    Raises:
        ConfigError: no epochs, or a non-finite or negative energy (naming the epoch).
    """
    _non_empty(epochs, "epoch_energy_svg", "epochs")
    rows: list[tuple[str, float]] = []
    for pair in epochs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ConfigError(f"epoch_energy_svg(): each epoch must be a (label, energy_j) pair, got {pair!r}")
        who = f"epoch {_name(pair[0], 'an epoch label')!r}"
        energy = _number(pair[1], f"the energy of {who}")
        if energy < 0:
            raise ConfigError(f"the energy of {who} is negative ({energy!r} J)")
        rows.append((pair[0], energy))
    n = len(rows)
    with _style():
        fig = _figure(_FIGSIZE)
        ax = fig.add_subplot()
        container = ax.bar(range(n), [e for _, e in rows], width=0.7, color=BLUE)
        if n <= 12:
            ax.bar_label(container, labels=[_fmt(e) for _, e in rows], padding=2, fontsize=8)
        step = max(1, math.ceil(n / 30))
        shown = range(0, n, step)
        ax.set_xticks(list(shown), labels=[rows[i][0] for i in shown])
        if n > 8 or max(len(r[0]) for r in rows) > 10:
            for text in ax.get_xticklabels():
                text.set(rotation=40, ha="right", rotation_mode="anchor")
        _finish(ax, "epoch", "energy (J)", grid="y")
        ax.margins(y=0.1)
        return _svg.render(fig, f"Chart: energy per epoch (J) for {_count(n, 'epoch')}, "
                         f"total {_fmt(sum(e for _, e in rows))} J")


# ----------------------------------------------------------------------------------------- output

def _fmt(value: float) -> str:
    """A compact human number: 4 significant figures below 1000, whole and comma-grouped above."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _finish(ax: Axes, xlabel: str | None, ylabel: str | None, grid: str) -> None:
    """Label the axes (our own fixed strings, or metric_label drawn literally) and draw a light grid."""
    if xlabel is not None:
        ax.set_xlabel(xlabel, parse_math=False)
    if ylabel is not None:
        ax.set_ylabel(ylabel, parse_math=False)
    ax.grid(axis=grid, color=_GRID, linewidth=0.6)
    ax.set_axisbelow(True)


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")

