"""Records as Jupyter shows them: the ``_repr_html_`` and ``_repr_markdown_`` of the result records.

:class:`~greenmeter.Measurement`, :class:`~greenmeter.Comparison`,
:class:`~greenmeter.records.run.RunRecord` and :class:`~greenmeter.records.distributed.DistributedResult`
each have ``_repr_html_`` and ``_repr_markdown_`` methods that call the functions here (imported inside
the method, so that the records never import the output stage at module level). Each view is a compact
table in which every energy figure carries:

* its **provenance**: ``measured`` (read from a hardware counter) or ``estimated`` (computed by a model),
  and which source;
* its **band** (the "band" column): how far off the sources could be, a systematic bound apart from the
  run-to-run 95% interval; ``-`` where a source states none.

A comparison also shows its metric-against-energy chart as inline SVG (the reports' chart). Every piece of
user text (names, commands, errors) is escaped: HTML-escaped in the HTML view, Markdown-escaped in the
Markdown view.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from greenmeter._text import markdown_text

if TYPE_CHECKING:
    from greenmeter.records.comparison import Comparison
    from greenmeter.records.distributed import DistributedResult
    from greenmeter.records.measurement import Measurement
    from greenmeter.records.run import RunRecord
    from greenmeter.sources.band import Band

__all__ = [
    "comparison_html",
    "comparison_markdown",
    "distributed_html",
    "distributed_markdown",
    "measurement_html",
    "measurement_markdown",
    "run_html",
    "run_markdown",
]

_STYLE = ("<style>.greenmeter-view table{border-collapse:collapse;font-size:90%}"
          ".greenmeter-view th,.greenmeter-view td{padding:2px 8px;text-align:left}"
          ".greenmeter-view .num{text-align:right;font-variant-numeric:tabular-nums}"
          ".greenmeter-view .note{color:#555;font-size:85%;margin:4px 0}"
          ".greenmeter-view svg{max-width:640px}</style>")


# ---------------------------------------------------------------------------------------------- helpers

def _e(value: object) -> str:
    """User or record text, escaped for HTML (quotes too)."""
    return html.escape(str(value), quote=True)


def _band_text(band: Band | None, scale: float = 1.0, unit: str = "J") -> str:
    """``"1.21-1.83 J (-18%/+22%)"``: a band's ends, scaled (1e3 for mJ); ``"-"`` when there is none."""
    return "-" if band is None else band.scaled(scale).describe(unit).removeprefix("band ")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of already-escaped cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def _notes_html(notes: Sequence[str]) -> str:
    return "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _view(title: str, body: str) -> str:
    return f'<div class="greenmeter-view">{_STYLE}<p><strong>{title}</strong></p>{body}</div>'


# ---------------------------------------------------------------------------------------------- measurement

_DOMAIN_HEADER = ("domain", "energy J", "band", "provenance", "source")


def _domain_rows(m: Measurement, cell: Callable[[object], str]) -> list[list[str]]:
    """One row per domain, then the total: energy, band, measured/estimated and the source (``summary()``
    has each source's method too)."""
    rows = []
    for d in m.domains:
        key = d.key if d.in_total else f"{d.key} (inside another domain, not in total)"
        rows.append([cell(key), f"{d.energy_j:.4g}", cell(_band_text(d.band)), cell(d.provenance.kind),
                     cell(d.provenance.source)])
    kind = "measured" if m.measured else "estimated" if all(
        d.provenance.kind == "estimated" for d in m.domains if d.in_total) else "measured + estimated"
    rows.append([cell("total"), f"{m.energy_j:.4g}", cell(_band_text(m.energy_band)), cell(kind),
                 cell(", ".join(m.backends))])
    return rows


def _measurement_facts(m: Measurement) -> list[str]:
    """The headline figures of a measurement, one phrase each (no user text)."""
    facts = [f"{m.energy_j:.4g} J over {m.duration_s:.3g} s", f"mean {m.power_w:.3g} W"]
    if m.samples:
        per = m.energy_per_sample_j
        band = m.energy_per_sample_band
        facts.append(f"{per:.4g} J/sample over {m.samples} samples"
                     + ("" if band is None else f" (band {_band_text(band)})"))
    if m.latency is not None:
        facts.append(f"{m.latency.count} steps, p50 {m.latency.p50_s * 1e3:.3g} ms")
    if m.idle_power_w is not None and m.attributable_energy_j is not None:
        facts.append(f"attributable {m.attributable_energy_j:.4g} J (idle {m.idle_power_w:.3g} W)")
    return facts


def _measurement_notes(m: Measurement) -> list[str]:
    notes = [m.band_note()]
    if m.carbon is not None:
        notes.append(m.carbon.describe())
    if m.status != "ok":
        notes.append(f"FAILED: {m.error}")
    notes.extend(f"! {flag}" for flag in m.flags)
    return notes


def _measurement_body_html(m: Measurement) -> str:
    return (f"<p>{_e('; '.join(_measurement_facts(m)))}</p>"
            + _html_table(_DOMAIN_HEADER, _domain_rows(m, _e), numeric=(1,)) + _notes_html(_measurement_notes(m)))


def _measurement_body_markdown(m: Measurement) -> str:
    return "\n\n".join([markdown_text("; ".join(_measurement_facts(m))),
                        _md_table(_DOMAIN_HEADER, _domain_rows(m, markdown_text)),
                        *(markdown_text(n) for n in _measurement_notes(m))])


def measurement_html(m: Measurement) -> str:
    """A measurement as HTML for a notebook: headline figures, one row per domain and the total, notes.

    Args:
        m: the measurement.

    Returns:
        An HTML fragment (a ``<div>``); the name, sources and errors are escaped.
    """
    return _view(f"greenmeter: {_e(m.name)} ({_e(m.status)})", _measurement_body_html(m))


def measurement_markdown(m: Measurement) -> str:
    """A measurement as short Markdown: the headline figures, the domain table and the band note.

    Args:
        m: the measurement.

    Returns:
        Markdown text; the name, sources and errors are escaped.
    """
    return f"**greenmeter: {markdown_text(m.name)}** ({m.status})\n\n{_measurement_body_markdown(m)}\n"


# ---------------------------------------------------------------------------------------------- comparison

def _comparison_rows(c: Comparison, cell: Callable[[object], str]) -> tuple[list[str], list[list[str]]]:
    percent = c.metric_name == "accuracy"
    header = ["variant", c.metric_name + (" %" if percent else ""), "mJ/sample (95% CI)", "band mJ/sample",
              "energy vs baseline [band]", "saving", "front", "provenance"]
    rows = []
    for v in c.variants:
        if not v.ok:
            rows.append([cell(v.name), cell(f"FAILED: {v.error or ''}")] + ["-"] * (len(header) - 2))
            continue
        e, d = v.energy_per_sample_j, v.vs_baseline
        metric = "-" if v.metric is None else (f"{v.metric * 100:.2f}" if percent else f"{v.metric:.4g}")
        ci = "-" if e is None else (f"{e.mean * 1e3:.3g}" + ("" if e.low is None or e.high is None
                                                             else f" [{e.low * 1e3:.3g}, {e.high * 1e3:.3g}]"))
        ratio = "-" if d is None or d.energy_ratio is None else f"x{d.energy_ratio:.2f}"
        if d is not None and d.energy_ratio_band is not None:
            ratio += f" [{d.energy_ratio_band.low:.2f}, {d.energy_ratio_band.high:.2f}]"
        saving = "-" if d is None else ("yes" if d.measurable_saving else "no")
        rows.append([cell(v.name), metric, ci, cell(_band_text(v.energy_band, 1e3, "mJ")), cell(ratio), saving,
                     "*" if v.on_pareto_front else "", cell(_sources(v.provenance))])
    return header, rows


def _sources(provenance: Sequence[str]) -> str:
    """A variant's provenance lines, short: ``"cpu-estimate:cpu: estimated: CPU power model"`` (no method)."""
    return "; ".join(line.partition(" (")[0] for line in provenance) or "-"


def _comparison_notes(c: Comparison) -> list[str]:
    from greenmeter.records.comparison import band_note

    notes = [f"baseline: {c.baseline}; {c.repeats} repeats x {c.passes_per_repeat} pass(es) of "
             f"{c.samples_per_pass} samples; status {c.status}", band_note(c)]
    notes.extend(f"! {flag}" for flag in c.flags)
    return notes


def _comparison_chart(c: Comparison) -> str:
    """The metric-against-energy chart (inline SVG, the reports' chart), or ``""`` with no variant to draw."""
    ok = [v for v in c.variants if v.ok and v.metric is not None and v.energy_per_sample_j is not None]
    if not ok:
        return ""
    from greenmeter.output.charts import ChartPoint, metric_energy_svg

    points = []
    for v in ok:
        e = v.energy_per_sample_j
        assert e is not None and v.metric is not None
        points.append(ChartPoint(v.name, v.metric, e.mean, e.low, e.high, v.on_pareto_front, v.name == c.baseline))
    percent = c.metric_name == "accuracy"
    return metric_energy_svg(points, "accuracy (%)" if percent else c.metric_name, 100.0 if percent else 1.0)


def comparison_html(c: Comparison, *, chart: bool = True) -> str:
    """A comparison as HTML for a notebook: one row per variant, the notes and the metric-energy chart.

    Args:
        c: the comparison.
        chart: draw the metric-against-energy chart (inline SVG; needs matplotlib).

    Returns:
        An HTML fragment (a ``<div>``); variant names, recipes, errors and flags are escaped (the chart
        draws names as escaped SVG text).
    """
    header, rows = _comparison_rows(c, _e)
    body = _html_table([_e(h) for h in header], rows, numeric=(1, 2, 3, 4)) + _notes_html(_comparison_notes(c))
    if chart:
        body += _comparison_chart(c)
    return _view(f"greenmeter comparison: {_e(c.name)}", body)


def comparison_markdown(c: Comparison) -> str:
    """A comparison as short Markdown: the variant table and the notes (no chart).

    Args:
        c: the comparison.

    Returns:
        Markdown text; user text is escaped.
    """
    header, rows = _comparison_rows(c, markdown_text)
    parts = [f"**greenmeter comparison: {markdown_text(c.name)}**",
             _md_table([markdown_text(h) for h in header], rows), *(markdown_text(n) for n in _comparison_notes(c))]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- run

def _run_facts(r: RunRecord) -> list[tuple[str, str]]:
    facts = [("run", r.id[:12]), ("kind", r.kind), ("status", r.display_status), ("started", r.started_at),
             ("ended", r.ended_at or "-"), ("windows", str(r.windows_count))]
    if r.command:
        facts.append(("command", " ".join(r.command)))
    if r.exit_code is not None:
        facts.append(("exit code", str(r.exit_code)))
    if r.note:
        facts.append(("note", r.note))
    return facts


def _no_measurement(r: RunRecord) -> str:
    """Why a run has no whole-run measurement, and where its figures are."""
    if not r.complete:
        return "no whole-run measurement: the run has not finished (or its process died)"
    return (f"no whole-run measurement (a run of the Python API): its {r.windows_count} window(s) are in the "
            f"store, Store.windows({r.id[:12]!r})")


def run_html(r: RunRecord) -> str:
    """A stored run as HTML for a notebook: its facts, then its measurement's table when it finished.

    Args:
        r: the run.

    Returns:
        An HTML fragment (a ``<div>``); the name, command and note are escaped.
    """
    body = _html_table(("", ""), [[_e(k), _e(v)] for k, v in _run_facts(r)])
    if r.measurement is not None:
        body += _measurement_body_html(r.measurement)
    else:
        body += _notes_html([_no_measurement(r)])
    return _view(f"greenmeter run: {_e(r.name)}", body)


def run_markdown(r: RunRecord) -> str:
    """A stored run as short Markdown: its facts and its measurement's table.

    Args:
        r: the run.

    Returns:
        Markdown text; user text is escaped.
    """
    facts = "; ".join(f"{k} {markdown_text(v)}" for k, v in _run_facts(r))
    body = (_measurement_body_markdown(r.measurement) if r.measurement is not None
            else markdown_text(_no_measurement(r)))
    return f"**greenmeter run: {markdown_text(r.name)}**\n\n{facts}\n\n{body}\n"


# ---------------------------------------------------------------------------------------------- distributed

_WINDOW_HEADER = ("window", "node", "ranks", "energy J", "band", "provenance", "CO2e g")


def _distributed_rows(d: DistributedResult, cell: Callable[[object], str]) -> list[list[str]]:
    rows = []
    for w in d.windows:
        m = w.measurement
        kind = "measured" if m.measured else "estimated (in part or whole)"
        rows.append([cell(w.name), "all", cell(", ".join(map(str, w.ranks))), f"{w.energy_j:.4g}",
                     cell(_band_text(m.energy_band)), cell(kind), "-" if w.co2e_g is None else f"{w.co2e_g:.3g}"])
        for n in w.nodes:
            rows.append(["", cell(n.node_id), cell(", ".join(map(str, n.ranks))), f"{n.energy_j:.4g}", "-",
                         cell(f"node-wide {n.node_wide_j:.4g} J, per-rank {n.rank_j:.4g} J"), "-"])
    return rows


def _distributed_notes(d: DistributedResult) -> list[str]:
    notes = [f"{d.world_size} ranks on {len(d.node_ids)} nodes"]
    notes.extend(f"{w.name}: {w.measurement.band_note()}" for w in d.windows)
    notes.extend(f"! {flag}" for flag in d.flags)
    return notes


def distributed_html(d: DistributedResult) -> str:
    """A distributed job's result as HTML: each window's total with its band, then each node's share.

    Args:
        d: the result.

    Returns:
        An HTML fragment (a ``<div>``); window names, node ids and flags are escaped.
    """
    body = _html_table(_WINDOW_HEADER, _distributed_rows(d, _e), numeric=(3, 6)) + _notes_html(_distributed_notes(d))
    return _view(f"greenmeter distributed job: {d.world_size} ranks", body)


def distributed_markdown(d: DistributedResult) -> str:
    """A distributed job's result as short Markdown: the window and node table and the notes.

    Args:
        d: the result.

    Returns:
        Markdown text; user text is escaped.
    """
    parts = [f"**greenmeter distributed job: {d.world_size} ranks**",
             _md_table(_WINDOW_HEADER, _distributed_rows(d, markdown_text)),
             *(markdown_text(n) for n in _distributed_notes(d))]
    return "\n\n".join(parts) + "\n"
