"""The report of an optimize result: the final comparison's report with a decision section.

Built from a hand-made :class:`OptimizeResult` around the schema-2 fixture's comparison
(:func:`tests.output.conftest.make_optimization`); nothing is optimized here.
"""

from __future__ import annotations

import dataclasses
import html as html_lib
import json
import re
from html.parser import HTMLParser

import pytest

from greenmeter import ConfigError
from greenmeter.output.comparison_view import comparison_view
from greenmeter.output.decision_view import decision_view
from greenmeter.output.formats import REPORT_SUBJECTS, format_names, get_format
from greenmeter.output.report import comparison_report, optimize_report, render, store_report
from greenmeter.records.comparison import Comparison
from greenmeter.records.optimization import OptimizeResult
from greenmeter.store.database import Store
from tests.output.conftest import HOSTILE_REASON, make_optimization

STAMP = "2026-12-01T00:00:00+00:00"


def _section(page: str, start: str, end: str) -> str:
    return page[page.index(start):page.index(end)]


class _Tags(HTMLParser):
    """Every start and end tag of a page, to check the section's markup is balanced."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("meta", "br", "img", "input", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def test_the_decision_view_holds_the_question_the_choice_and_every_candidate(comparison: Comparison) -> None:
    d = decision_view(make_optimization(comparison))
    assert d.chosen == "channels:0.5" and d.baseline == "float" and "least energy" in d.reason
    question = dict(d.question)
    assert question["metric budget"].startswith("accuracy at most 1 pp below the baseline's")
    assert question["limit: latency per batch"] == "at most ×1.500 the baseline's"
    assert question["candidates chosen on"] == "the validation data"
    final = comparison.duration_s
    assert question["search time"] == (f"91 s: {91 - final:.0f} s of search (budget 600 s), then {final:.0f} s for "
                                       "the final comparison")
    figures = dict(d.figures)
    ratio = comparison.variant("channels:0.5").vs_baseline.energy_ratio
    assert figures["energy per sample"] == f"×{ratio:.3f} the baseline's ({1 / ratio:.2f}× less)"
    assert figures["accuracy change"] == "+2.00 pp"  # the fixture's record has no paired test, so no interval
    assert figures["against the best one-step recipe (int8-dynamic)"].startswith("energy significantly lower (Welch")
    assert figures["candidates"] == "1 chosen, 1 finalist, 1 screened out, 1 over budget, 1 failed, 1 not tried"
    rows = {row[0]: row for row in d.candidates.rows}
    assert rows["channels:0.5"] == ("channels:0.5", "chosen", "2", "+2.00 pp", "+0.80 pp", "×0.355", "12.5 J",
                                    "the least energy per sample within the budget")
    assert rows["int4[keep=classifier.2]"][1:5] == ("over budget", "0", "-3.10 pp", "–")
    assert rows["int8-static"][-1] == HOSTILE_REASON and rows["distill:0.25"][5:7] == ("–", "–")
    assert d.candidates.marks == ("chosen", "finalist", "screened-out", "over-budget", "failed", "not-tried")
    assert d.rounds.rows[0] == ("1", "3", "3: int8-dynamic, prune:0.5, channels:0.5", "2: int8-dynamic, channels:0.5",
                                "12.0 s")
    assert d.sensitivity.headers == ("layer", "kind", "params", "share", "drop int8", "drop int4")
    assert d.sensitivity.rows == (("features.0", "Conv2d", "320", "33.0%", "0.22 pp (3 changed)", "n/a"),
                                  ("classifier.2", "Linear", "650", "67.0%", "3.11 pp (16 changed)",
                                   "7.00 pp (33 changed)"))
    assert "the first 4 training batches" in d.sensitivity_note
    assert d.flags == ("the sensitivity probes ran on 450 samples only",)


def test_keeping_the_baseline_and_a_bare_result_render_without_the_optional_parts(comparison: Comparison) -> None:
    result = dataclasses.replace(make_optimization(comparison), chosen="float", reason="no variant qualified",
                                 rungs=(), sensitivity=None, flags=(), versus_best_single=None, limits={},
                                 time_budget_s=None, duration_s=None)
    d = decision_view(result)
    assert d.chosen is None and d.rounds is None and d.sensitivity is None and d.sensitivity_note is None
    assert [label for label, _ in d.figures] == ["candidates"]
    assert [label for label, _ in d.question] == ["metric budget", "candidates chosen on"]
    page = optimize_report(result, generated_at=STAMP)
    assert '<p class="verdict">Keep the baseline, <strong class="variant-name" id="chosen">float</strong></p>' in page
    assert 'id="rounds"' not in page and 'id="sensitivity"' not in page
    md = optimize_report(result, "md", generated_at=STAMP)
    assert "**Keep the baseline, float**: no variant qualified." in md and "sensitivity" not in md.lower()
    named = dataclasses.replace(result, baseline="baseline", chosen="baseline")  # as optimize names it
    assert '<p class="verdict">Keep the baseline</p>' in optimize_report(named, generated_at=STAMP)
    assert "**Keep the baseline**: no variant qualified." in optimize_report(named, "md", generated_at=STAMP)


def test_the_html_report_has_the_decision_right_after_the_summary(comparison: Comparison) -> None:
    result = make_optimization(comparison)
    page = optimize_report(result, generated_at=STAMP)
    assert page.index('id="summary"') < page.index('id="decision"') < page.index('id="flags"')
    assert page.index('id="decision"') < page.index('id="table"')  # and the comparison's table stays below
    assert "<title>Optimization: digits-optimize · greenmeter</title>" in page
    decision = _section(page, '<section id="decision"', '<section id="flags"')
    assert '<p class="verdict">Chosen: <strong class="variant-name" id="chosen">channels:0.5</strong></p>' in decision
    for c in result.candidates:
        assert f'<th scope="row">{html_lib.escape(c.spec, quote=False)}</th>' in decision
        assert f'<td class="text">{c.status}</td>' in decision
        assert f'<td class="text">{html_lib.escape(c.reason, quote=False)}</td>' in decision
    assert '<tr class="chosen">\n<th scope="row">channels:0.5</th>' in decision
    assert '<th scope="row">classifier.2</th>\n<td class="text">Linear</td>\n<td class="num">650</td>' in decision
    assert '<td class="num">3.11 pp (16 changed)</td>' in decision and '<td class="num">n/a</td>' in decision
    assert "<li>the sensitivity probes ran on 450 samples only</li>" in decision
    assert "table.decision-table" in page  # its CSS, inlined in the page's one style element
    assert page.count("<style>") == 1 and page.index("table.decision-table") < page.index("</head>")
    parser = _Tags()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    # the rest is the final comparison's report, judged at the result's budget
    same = comparison_report(comparison, tolerance=result.max_drop, generated_at=STAMP)
    assert _section(page, '<section id="table"', "</main>") == _section(same, '<section id="table"', "</main>")


def test_a_comparison_report_has_no_decision_and_no_decision_css(comparison: Comparison) -> None:
    page = comparison_report(comparison, generated_at=STAMP)
    assert 'id="decision"' not in page and "decision-table" not in page
    assert comparison_view(comparison, charts=False).decision is None


def test_untrusted_reasons_and_specs_are_text_in_html_and_markdown(comparison: Comparison) -> None:
    result = make_optimization(comparison)
    hostile = dataclasses.replace(result.candidates[4], spec="int8-static[keep=<b>x</b>|y]")
    result = dataclasses.replace(result, candidates=(*result.candidates[:4], hostile, *result.candidates[5:]),
                                 flags=("a flag with <img src=x onerror=alert(1)>",))
    page = optimize_report(result, generated_at=STAMP)
    decision = _section(page, '<section id="decision"', '<section id="flags"')
    assert "<script>" not in decision and "<b>" not in decision and "<img" not in decision
    assert "failed: &lt;script&gt;alert(1)&lt;/script&gt; | a `tick` | *star*" in decision
    assert "int8-static[keep=&lt;b&gt;x&lt;/b&gt;|y]" in decision
    md = optimize_report(result, "md", generated_at=STAMP)
    line = next(row for row in md.splitlines() if row.startswith("| int8-static"))
    assert "<script>" not in md and "<img" not in md
    assert r"failed: &lt;script&gt;alert(1)&lt;/script&gt; \| a \`tick\` \| \*star\*" in line
    assert line.startswith(r"| int8-static\[keep=&lt;b&gt;x&lt;/b&gt;\|y\] | failed |")
    # every row of the candidates table has the heading's number of columns: no `|` made an extra one
    table = [row for row in _section(md, "Every candidate", "Screening rounds").splitlines() if row.startswith("|")]
    assert len(table) == 2 + len(result.candidates)
    assert {len(re.findall(r"(?<!\\)\|", row)) for row in table} == {9}


def test_the_markdown_report_has_the_decision_section(comparison: Comparison) -> None:
    md = optimize_report(make_optimization(comparison), "md", generated_at=STAMP)
    assert md.startswith("# Optimization: digits-optimize\n")
    assert md.index("## Summary") < md.index("## Decision") < md.index("## Read before citing these figures")
    decision = _section(md, "## Decision", "## Read before citing")
    assert "**Chosen: channels:0.5**: channels:0.5 uses the least energy per sample within the budget." in decision
    assert "- **candidates chosen on**: the validation data" in decision
    assert ("| channels:0.5 | chosen | 2 | +2.00 pp | +0.80 pp | ×0.355 | 12.5 J | the least energy per sample "
            "within the budget | ") in decision
    assert "| classifier.2 | Linear | 650 | 67.0% | 3.11 pp (16 changed) | 7.00 pp (33 changed) | " in decision
    assert "| 2 | 9 | 2: int8-dynamic, channels:0.5 | 2: int8-dynamic, channels:0.5 | 30.5 s | " in decision
    assert "## All variants" in md


def test_the_json_report_carries_the_whole_result(comparison: Comparison) -> None:
    result = make_optimization(comparison)
    data = json.loads(optimize_report(result, "json", generated_at=STAMP))
    assert data["report"]["kind"] == "optimization" and data["report"]["recommendation"]["recommended"] == "channels:0.5"
    assert set(data) == {"report", "optimization"}
    assert OptimizeResult.from_dict(data["optimization"]) == result


def test_csv_does_not_render_an_optimization_and_says_which_formats_do(comparison: Comparison) -> None:
    assert "optimization" in REPORT_SUBJECTS and format_names("optimization")[:3] == ("html", "md", "json")
    with pytest.raises(ConfigError, match="the csv format does not render an optimize result: use one of html, md, json"):
        optimize_report(make_optimization(comparison), "csv")
    view = comparison_view(comparison, charts=False)
    assert render(dataclasses.replace(view, kind="optimization", decision=decision_view(make_optimization(comparison))),
                  "md").count("## Decision") == 1
    assert get_format("csv", "comparison").name == "csv"  # a comparison's CSV is unchanged


def test_store_report_finds_an_optimization_by_id_prefix(store_path, comparison: Comparison) -> None:  # noqa: ANN001
    result = make_optimization(comparison)
    with Store(store_path) as store:
        oid = store.add_optimization(result)
        kind, page = store_report(store, oid[:8], "html", generated_at=STAMP)
        assert kind == "optimization" and page == optimize_report(result, generated_at=STAMP)
        kind, _ = store_report(store, None, "html")  # --last stays the latest comparison
        assert kind == "comparison"
        with pytest.raises(ConfigError, match="does not render an optimize result"):
            store_report(store, oid, "csv")


def test_the_search_time_sets_the_final_comparison_apart_and_falls_back_without_its_duration(
        comparison: Comparison) -> None:
    result = make_optimization(comparison)
    timed = dataclasses.replace(result, duration_s=77.4, time_budget_s=60.0,
                                comparison=dataclasses.replace(comparison, duration_s=25.2))
    assert timed.time_text() == "77 s: 52 s of search (budget 60 s), then 25 s for the final comparison"
    assert "took 77 s: 52 s of search (budget 60 s), then 25 s for the final comparison; selection on" in \
        timed.summary()
    untimed = dataclasses.replace(timed, comparison=dataclasses.replace(comparison, duration_s=None))
    assert untimed.time_text() == "77 s of a 60 s budget"
    assert dataclasses.replace(timed, time_budget_s=None).time_text() == \
        "77 s: 52 s of search, then 25 s for the final comparison"
    assert dataclasses.replace(timed, duration_s=None).time_text() == "–"
