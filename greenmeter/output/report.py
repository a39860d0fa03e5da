"""Render stored results as a report in any registered format: HTML, Markdown, CSV, JSON or a plug-in's.

Renderers read what the store holds and never re-run anything (like pyinstrument's renderers of a
saved session): :func:`comparison_report` renders a :class:`~greenmeter.records.comparison.Comparison`,
:func:`run_report` a stored run with its windows and power samples, :func:`optimize_report` an
:class:`~greenmeter.records.optimization.OptimizeResult` (its final comparison's report with a decision
section), :func:`store_report` whatever a store holds under an id (or the latest). Each builds the view model
(:mod:`greenmeter.output.comparison_view`, :mod:`greenmeter.output.run_view`) and hands it to the format's
renderer from the registry in :mod:`greenmeter.output.formats`; the built-in HTML page is one
self-contained file (charts, CSS and its one script inlined) that opens offline and prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError, StoreError
from greenmeter.comparison.recommend import DEFAULT_TOLERANCE
from greenmeter.output.comparison_view import comparison_view
from greenmeter.output.decision_view import decision_view
from greenmeter.output.formats import REPORT_SUBJECTS, format_for_path, get_format
from greenmeter.output.run_view import run_view
from greenmeter.output.view import ReportView

if TYPE_CHECKING:
    from greenmeter.records.comparison import Comparison
    from greenmeter.records.measurement import Measurement
    from greenmeter.records.optimization import OptimizeResult
    from greenmeter.records.run import RunRecord
    from greenmeter.store.database import Store

__all__ = ["comparison_report", "optimize_report", "render", "run_report", "store_report", "write_report"]

_HTML_PAGE = re.compile(r"\A\s*<!doctype html", re.IGNORECASE)


def render(view: ReportView, fmt: str = "html", record: dict[str, Any] | None = None) -> str:
    """Render a view model in a registered format.

    Args:
        view: from :func:`~greenmeter.output.comparison_view.comparison_view` or
            :func:`~greenmeter.output.run_view.run_view`.
        fmt: a format that applies to the view's kind: ``"html"``, ``"md"``, ``"csv"``, ``"json"`` or a
            plug-in's (see :func:`~greenmeter.output.formats.format_names`).
        record: the stored record under its kind (``{"comparison": ...}``, ``{"run": ...}`` or
            ``{"optimization": ...}``), for formats that carry it (JSON).

    Raises:
        ConfigError: an unknown format, or one that does not apply to the view's kind.
    """
    return get_format(fmt, view.kind).renderer(view.kind)(view, record or {})


def comparison_report(comparison: Comparison, fmt: str = "html", *, tolerance: float = DEFAULT_TOLERANCE,
                      generated_at: str | None = None) -> str:
    """A comparison as a report in ``fmt`` (a format of :func:`~greenmeter.output.formats.format_names`
    ``("comparison")``); ``tolerance`` is the recommendation's metric tolerance in the metric's unit
    (0.01 = 1 percentage point of accuracy).

    Raises:
        ConfigError: an unknown format, or one that does not render a comparison (the message lists those
            that do).
    """
    form = get_format(fmt, "comparison")
    view = comparison_view(comparison, tolerance, charts=form.charts, generated_at=generated_at)
    return form.renderer("comparison")(view, {"comparison": comparison.to_dict()})


def optimize_report(result: OptimizeResult, fmt: str = "html", *, generated_at: str | None = None) -> str:
    """An optimize result as a report in ``fmt``: its final comparison's report, judged at the result's budget
    (``tolerance=result.max_drop``), with the decision section (:func:`~greenmeter.output.decision_view.decision_view`)
    right after the summary. JSON carries ``{"optimization": result.to_dict()}``.

    Args:
        result: from :func:`greenmeter.optimize`, or :meth:`~greenmeter.store.database.Store.get_optimization`.
        fmt: a format of :func:`~greenmeter.output.formats.format_names` ``("optimization")``: ``"html"``,
            ``"md"``, ``"json"`` or a plug-in's (``csv`` has no one table for a decision: render the comparison,
            ``comparison_report(result.comparison, "csv")``).
        generated_at: the report's timestamp (default: now, UTC).

    Raises:
        ConfigError: an unknown format, or one that does not render an optimize result (the message lists
            those that do).
    """
    form = get_format(fmt, "optimization")
    view = comparison_view(result.comparison, result.max_drop, charts=form.charts, generated_at=generated_at)
    view = replace(view, kind="optimization", title=f"Optimization: {result.name}", decision=decision_view(result))
    return form.renderer("optimization")(view, {"optimization": result.to_dict()})


def run_report(run: RunRecord, windows: Sequence[Measurement], samples: Sequence[tuple[float, str, float]] = (),
               fmt: str = "html", *, generated_at: str | None = None) -> str:
    """A stored run (with its windows and power samples ``(seconds since start, domain key, watts)``) as a
    report in ``fmt``.

    Raises:
        ConfigError: an unknown format, or one that does not render a run.
    """
    form = get_format(fmt, "run")
    view = run_view(run, windows, samples, charts=form.charts, generated_at=generated_at)
    record = {"run": run.to_dict(), "windows": [w.to_dict() for w in windows],
              "power_samples": [list(s) for s in samples]}
    return form.renderer("run")(view, record)


def store_report(store: Store, ident: str | None = None, fmt: str = "html", *,
                 tolerance: float = DEFAULT_TOLERANCE, generated_at: str | None = None) -> tuple[str, str]:
    """Render what the store holds under ``ident`` (a comparison, optimization or run id, or a unique prefix of one).

    With ``ident=None`` the latest comparison is rendered, or the latest run when the store holds no
    comparison. Returns ``(kind, text)`` with kind ``"comparison"``, ``"optimization"`` or ``"run"``. An
    optimization is judged at its own budget (``max_drop``), not at ``tolerance``.

    Raises:
        ConfigError: an unknown format, or one that renders neither a comparison nor a run, or not the
            kind found.
        StoreError: nothing matches, or the store is empty.
    """
    get_format(fmt, REPORT_SUBJECTS)  # refuse an unknown format before reading the store
    if ident is None:
        comparison = store.last_comparison()
        if comparison is not None:
            return "comparison", comparison_report(comparison, fmt, tolerance=tolerance, generated_at=generated_at)
        run = store.last_run()
        if run is None:
            raise StoreError(f"the store {store.path} holds no comparison and no run yet: run `greenmeter compare` "
                             f"or `greenmeter run` first")
        return "run", _stored_run(store, run.id, fmt, generated_at)
    matches = [("comparison", cid) for cid, *_ in store.list_comparisons() if cid.startswith(ident)]
    matches += [("optimization", oid) for oid, *_ in store.list_optimizations() if oid.startswith(ident)]
    if len(matches) == 1:
        kind, found = matches[0]
        if kind == "optimization":
            return kind, optimize_report(store.get_optimization(found), fmt, generated_at=generated_at)
        return kind, comparison_report(store.get_comparison(found), fmt, tolerance=tolerance,
                                       generated_at=generated_at)
    if len(matches) > 1:
        kinds = " and ".join(dict.fromkeys(f"{kind} ids" for kind, _ in matches))
        raise StoreError(f"{ident!r} is the start of {len(matches)} {kinds}: give more characters")
    return "run", _stored_run(store, ident, fmt, generated_at)


def _stored_run(store: Store, ident: str, fmt: str, generated_at: str | None) -> str:
    run = store.get_run(ident)
    return run_report(run, store.windows(run.id), store.power_samples(run.id), fmt, generated_at=generated_at)


def write_report(text: str, path: str | os.PathLike[str], *, fmt: str | None = None) -> Path:
    """Write a rendered report (creating missing parent folders); returns the path written.

    The format is ``fmt``, else the one the path's extension names (see
    :func:`~greenmeter.output.formats.format_for_path`); an extension no format claims is written as
    given. The text is checked against it, so an HTML page is not written under a ``.md`` name: render
    it in the format the name asks for (``comparison_report(result, "md")``) or change the name.

    Args:
        text: the rendered report, e.g. from :func:`comparison_report`.
        path: the file to write; it is replaced atomically.
        fmt: the format ``text`` is in, when the extension does not say it or says it differently
            (``codecarbon`` text under a ``.csv`` name is fine; ``md`` under ``.html`` is refused).

    Raises:
        ConfigError: ``fmt`` is unknown, or the path's extension names another format; the text is an
            HTML page and the format does not write ``.html`` files, or the format is ``html`` and the text
            is not a page; or the path cannot be written, with the operating system's reason.
    """
    target = Path(path)
    named = format_for_path(target)
    form = get_format(fmt) if fmt is not None else named
    if form is not None:
        if named is not None and not any(target.name.lower().endswith(ext) for ext in form.extensions):
            raise ConfigError(f"cannot write {form.name} text to {target}: the name asks for {named.name}; name "
                              f"the file {target.stem}{form.extension}, or render the report as {named.name}")
        page = bool(_HTML_PAGE.match(text))
        if page and not {".html", ".htm"} & set(form.extensions) or form.name == "html" and not page:
            found = "an HTML page" if page else "not an HTML page"
            asked = f"fmt={form.name!r}" if fmt is not None else f"its name asks for {form.name}"
            raise ConfigError(f"the text to write to {target} is {found}, but {asked}: render the report as "
                              f"{form.name} (comparison_report(result, {form.name!r})), or write it to a "
                              f"{'.html' if page else form.extension} name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as err:
        raise ConfigError(f"cannot write the report to {target}: {err.strerror or err}") from err
    return target
