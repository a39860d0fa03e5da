"""Render stored results as a report: one self-contained HTML page, or Markdown, CSV or JSON.

Renderers read what the store holds and never re-run anything (like pyinstrument's renderers of a
saved session): :func:`comparison_report` renders a :class:`~greenmeter.records.comparison.Comparison`,
:func:`run_report` a stored run with its windows and power samples, :func:`store_report` whatever a
store holds under an id (or the latest). The HTML comes from Jinja2 templates in
``greenmeter.reports_templates`` with autoescaping and strict undefined; its charts are matplotlib SVG
inlined in the page, its CSS and its only script (table sorting) are inlined too, so the file opens
offline and prints.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError, StoreError
from greenmeter.records.measurement import finite_json
from greenmeter.comparison.recommend import DEFAULT_TOLERANCE
from greenmeter.output.comparison_view import comparison_view
from greenmeter.output.run_view import run_view
from greenmeter.output.view import ReportView

if TYPE_CHECKING:
    from greenmeter.records.comparison import Comparison
    from greenmeter.records.measurement import Measurement
    from greenmeter.records.run import RunRecord
    from greenmeter.store.database import Store

__all__ = ["FORMATS", "comparison_report", "render", "run_report", "store_report", "write_report"]

#: Report formats: a self-contained HTML page, Markdown, CSV of the table, JSON of the stored record.
FORMATS = ("html", "md", "csv", "json")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")


def _md(value: Any) -> str:
    """Text safe inside a Markdown table cell or list item: no raw HTML, no column breaks, one line."""
    text = str(value)
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("\n", " ")):
        text = text.replace(a, b)
    return text


def _jinja_env() -> Any:
    import jinja2

    from greenmeter.reports_templates import read_template

    def load(name: str) -> str:
        try:
            return read_template(name)
        except FileNotFoundError as err:
            raise jinja2.TemplateNotFound(name) from err

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load), undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=True),
        keep_trailing_newline=True,
    )
    env.filters["md"] = _md
    return env


def render(view: ReportView, fmt: str = "html", record: dict[str, Any] | None = None) -> str:
    """Render a view model.

    Args:
        view: from :func:`~greenmeter.output.comparison_view.comparison_view` or :func:`~greenmeter.output.comparison_view.run_view`.
        fmt: ``"html"``, ``"md"``, ``"csv"`` or ``"json"``.
        record: for JSON, the stored record to include under its kind (``"comparison"`` or ``"run"``).
    """
    _check_format(fmt)
    if fmt == "csv":
        return _csv(view)
    if fmt == "json":
        return _json(view, record or {})
    from greenmeter.reports_templates import read_template

    env = _jinja_env()
    if fmt == "md":
        return env.get_template("report.md.j2").render(view=view)
    return env.get_template("report.html.j2").render(
        view=view, title=view.title, version=view.version, css=read_template("report.css"),
        script=read_template("sort.js"))


def _csv(view: ReportView) -> str:
    """The table in SI units (joules, seconds, bytes, ratios); an interval becomes ``_low``/``_high`` columns."""
    pairs = [any(isinstance(r.raw[i], tuple) for r in view.rows) for i in range(len(view.columns))]
    header: list[str] = []
    for col, pair in zip(view.columns, pairs):
        header += [f"{col.key}_low", f"{col.key}_high"] if pair else [col.key]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in view.rows:
        values: list[Any] = []
        for i, value in enumerate(row.raw):
            if pairs[i]:
                values += list(value) if isinstance(value, tuple) else [None, None]
            else:
                values.append(value)
        writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in values])
    return out.getvalue()




def _json(view: ReportView, record: dict[str, Any]) -> str:
    summary = None if view.summary is None else {
        "recommended": view.summary.name, "reason": view.summary.reason, "savings": dict(view.summary.savings)}
    data = {"report": {"kind": view.kind, "title": view.title, "generated_at": view.generated_at,
                       "greenmeter": view.version, "recommendation": summary, "flags": list(view.flags),
                       "sources": [{"kind": k, "line": line} for k, line in view.sources]},
            **record}
    return json.dumps(finite_json(data), indent=2) + "\n"


def comparison_report(comparison: Comparison, fmt: str = "html", *, tolerance: float = DEFAULT_TOLERANCE,
                      generated_at: str | None = None) -> str:
    """A comparison as a report in ``fmt`` (see :data:`FORMATS`); ``tolerance`` is the recommendation's
    metric tolerance in the metric's unit (0.01 = 1 percentage point of accuracy)."""
    _check_format(fmt)
    view = comparison_view(comparison, tolerance, charts=fmt == "html", generated_at=generated_at)
    return render(view, fmt, {"comparison": comparison.to_dict()})


def run_report(run: RunRecord, windows: Sequence[Measurement], samples: Sequence[tuple[float, str, float]] = (),
               fmt: str = "html", *, generated_at: str | None = None) -> str:
    """A stored run (with its windows and power samples) as a report in ``fmt``."""
    _check_format(fmt)
    view = run_view(run, windows, samples, charts=fmt == "html", generated_at=generated_at)
    record = {"run": run.to_dict(), "windows": [w.to_dict() for w in windows],
              "power_samples": [list(s) for s in samples]}
    return render(view, fmt, record)


def store_report(store: Store, ident: str | None = None, fmt: str = "html", *,
                 tolerance: float = DEFAULT_TOLERANCE, generated_at: str | None = None) -> tuple[str, str]:
    """Render what the store holds under ``ident`` (a comparison or a run id, or a unique prefix of one).

    With ``ident=None`` the latest comparison is rendered, or the latest run when the store holds no
    comparison. Returns ``(kind, text)`` with kind ``"comparison"`` or ``"run"``.

    Raises:
        StoreError: nothing matches, or the store is empty.
    """
    _check_format(fmt)
    if ident is None:
        comparison = store.last_comparison()
        if comparison is not None:
            return "comparison", comparison_report(comparison, fmt, tolerance=tolerance, generated_at=generated_at)
        run = store.last_run()
        if run is None:
            raise StoreError(f"the store {store.path} holds no comparison and no run yet: run `greenmeter compare` "
                             f"or `greenmeter run` first")
        return "run", _stored_run(store, run.id, fmt, generated_at)
    comparison_ids = [cid for cid, *_ in store.list_comparisons()]
    matches = [cid for cid in comparison_ids if cid.startswith(ident)]
    if len(matches) == 1:
        return "comparison", comparison_report(store.get_comparison(matches[0]), fmt, tolerance=tolerance,
                                               generated_at=generated_at)
    if len(matches) > 1:
        raise StoreError(f"{ident!r} is the start of {len(matches)} comparison ids: give more characters")
    return "run", _stored_run(store, ident, fmt, generated_at)


def _stored_run(store: Store, ident: str, fmt: str, generated_at: str | None) -> str:
    run = store.get_run(ident)
    return run_report(run, store.windows(run.id), store.power_samples(run.id), fmt, generated_at=generated_at)


def write_report(text: str, path: str | os.PathLike[str]) -> Path:
    """Write a rendered report (creating missing parent folders); returns the path written.

    Raises:
        ConfigError: the path cannot be written, with the operating system's reason.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as err:
        raise ConfigError(f"cannot write the report to {target}: {err.strerror or err}") from err
    return target
