"""View models of a report: plain frozen records that templates render, and the cell formatting they share.

Builders fill them from stored results: :mod:`greenmeter.output.comparison_view` from a comparison,
:mod:`greenmeter.output.run_view` from a stored run, :mod:`greenmeter.output.decision_view` the decision
section of an optimize result. Every figure shown is formatted once, in a builder, so
the HTML, Markdown and CSV outputs say the same thing.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from greenmeter.comparison.recommend import Recommendation

__all__ = ["Cell", "ChartView", "Column", "DecisionView", "ReportView", "Row", "TableView", "now", "num", "ratio"]


@dataclass(frozen=True)
class Cell:
    """One table cell: the text shown and the raw value the table sorts by (``None`` sorts last)."""

    text: str
    sort: float | str | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Column(Generic[T]):
    """A table column, defined once: what the header shows and how a row's item fills the column.

    Attributes:
        key: the column's key, also its CSV header.
        label: the heading shown.
        title: a tooltip saying what the column holds, with its unit.
        cell: the item's cell: the text shown and the value the table sorts by.
        raw: the item's value in SI units (joules, seconds, bytes, ratios), as the CSV gives it; an
            interval is a ``(low, high)`` pair.
        numeric: whether the column holds numbers (right-aligned, sorted as numbers).
    """

    key: str
    label: str
    title: str
    cell: Callable[[T], Cell]
    raw: Callable[[T], Any]
    numeric: bool = True

    @classmethod
    def quantity(cls, key: str, label: str, title: str, raw: Callable[[T], float | None], spec: str,
                 shown: Callable[[float], float] | None = None) -> Column[T]:
        """A numeric column whose cell is its SI value, converted by ``shown`` (e.g. seconds to
        milliseconds), formatted with the format spec ``spec``; ``–`` where the value is missing."""

        def cell(item: T) -> Cell:
            value = raw(item)
            return num(value if value is None or shown is None else shown(value), spec)

        return cls(key, label, title, cell, raw)


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
class TableView:
    """A small plain table of text (not sortable): its caption, headings and rows, already formatted.

    Attributes:
        caption: what the table holds, in one line.
        headers: one heading per column.
        numeric: per column, whether it holds numbers (right-aligned).
        rows: the cells of each row, as text.
        marks: per row, a CSS class (``"chosen"``, ``"failed"``...) or ``""``; empty for none.
    """

    caption: str
    headers: tuple[str, ...]
    numeric: tuple[bool, ...]
    rows: tuple[tuple[str, ...], ...]
    marks: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecisionView:
    """The decision of an optimize result (:func:`greenmeter.optimize`), formatted for its report section.

    Attributes:
        question: what was asked, as ``(label, value)`` pairs: the metric budget, the limits, the data the
            candidates were chosen on, the time budget.
        chosen: the chosen variant's recipe spec, or ``None`` when the baseline is kept.
        baseline: the baseline's name.
        reason: why, in one sentence.
        figures: the choice against the baseline and the search, as ``(label, value)`` pairs.
        candidates: every candidate: spec, status, round, metric change, energy ratio, making energy, why.
        rounds: the screening rounds of successive halving, or ``None`` when there were none.
        sensitivity: the per-layer sensitivity table, or ``None`` when none was measured.
        sensitivity_note: what the sensitivity table's figures are, or ``None``.
        flags: what to keep in mind when reading the decision.
    """

    question: tuple[tuple[str, str], ...]
    chosen: str | None
    baseline: str
    reason: str
    figures: tuple[tuple[str, str], ...]
    candidates: TableView
    rounds: TableView | None
    sensitivity: TableView | None
    sensitivity_note: str | None
    flags: tuple[str, ...]


@dataclass(frozen=True)
class ReportView:
    """Everything a report shows, formatted. ``kind`` is ``"comparison"``, ``"run"`` or ``"optimization"`` (a
    comparison's view with its ``decision`` section)."""

    kind: str
    title: str
    subtitle: str
    generated_at: str
    summary: Recommendation | None
    headline: tuple[tuple[str, str], ...]
    charts: tuple[ChartView, ...]
    columns: tuple[Column[Any], ...]
    rows: tuple[Row, ...]
    environment: tuple[tuple[str, str], ...]
    sources: tuple[tuple[str, str], ...]
    constants: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    methodology: tuple[str, ...]
    model_card: str
    flags: tuple[str, ...]
    version: str
    decision: DecisionView | None = None


# ---- formatting -----------------------------------------------------------------------------------

def num(value: float | None, spec: str, suffix: str = "") -> Cell:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Cell("–", None)
    return Cell(format(value, spec) + suffix, float(value))


def ratio(value: float | None) -> Cell:
    """A variant/baseline ratio as a signed percentage change: 0.48 -> '−52%'."""
    if value is None or not math.isfinite(value):
        return Cell("–", None)
    change = (value - 1.0) * 100
    return Cell(f"{change:+.1f}%".replace("-", "−"), float(value))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
