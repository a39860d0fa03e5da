"""The built-in renderers of a report's view model: HTML and Markdown pages, the table as CSV, JSON.

Each is a :data:`~greenmeter.output.formats.ViewRenderer`, ``render_x(view, record) -> text``, named by
the built-in formats of :mod:`greenmeter.output.formats`. The pages come from the Jinja2 templates in
``greenmeter.reports_templates`` with autoescaping and strict undefined (a missing field is an error,
never a blank); the HTML page inlines its CSS, its charts (already drawn into the view as SVG) and its
only script (table sorting), so the file opens offline and prints.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import Any

from greenmeter._text import csv_cell, markdown_code_block, markdown_code_span, markdown_text
from greenmeter.output.view import ReportView
from greenmeter.records.encoding import finite_json
from greenmeter.reports_templates import read_template

__all__ = ["render_csv", "render_html", "render_json", "render_markdown"]


def _jinja_env() -> Any:
    import jinja2

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
    env.filters["md"] = markdown_text
    env.filters["md_code"] = markdown_code_span
    env.filters["md_code_block"] = markdown_code_block
    return env


def render_html(view: ReportView, record: Mapping[str, Any]) -> str:
    """One self-contained HTML page (``record`` is not used: the page shows the view)."""
    return _jinja_env().get_template("report.html.j2").render(
        view=view, title=view.title, version=view.version,
        css=read_template("report.css") + (read_template("decision.css") if view.decision is not None else ""),
        script=read_template("sort.js"))


def render_markdown(view: ReportView, record: Mapping[str, Any]) -> str:
    """The report as Markdown, every text made literal by :func:`~greenmeter._text.markdown_text` (``record`` is
    not used)."""
    return _jinja_env().get_template("report.md.j2").render(view=view)


def render_csv(view: ReportView, record: Mapping[str, Any]) -> str:
    """The table in SI units (joules, seconds, bytes, ratios); an interval becomes ``_low``/``_high`` columns.

    A text cell a spreadsheet would run as a formula starts with ``'`` (:func:`~greenmeter._text.csv_cell`)."""
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
        writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else csv_cell(v)
                         for v in values])
    return out.getvalue()


def render_json(view: ReportView, record: Mapping[str, Any]) -> str:
    """``{"report": {kind, title, recommendation, flags, sources...}, **record}`` as strict JSON (NaN -> null)."""
    summary = None if view.summary is None else {
        "recommended": view.summary.name, "reason": view.summary.reason, "savings": dict(view.summary.savings),
        "tied": list(view.summary.tied), "tie_rule": view.summary.tie_rule, "notes": list(view.summary.notes)}
    data = {"report": {"kind": view.kind, "title": view.title, "generated_at": view.generated_at,
                       "greenmeter": view.version, "recommendation": summary, "flags": list(view.flags),
                       "sources": [{"kind": k, "line": line} for k, line in view.sources]},
            **record}
    return json.dumps(finite_json(data), indent=2) + "\n"
