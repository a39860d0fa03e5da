"""Structural golden test of the rendered HTML reports.

The reports of the fixture store (``tests/fixtures/store_schema2.db``) are rendered with a fixed
timestamp and compared with ``tests/output/golden/*.html`` after scrubbing what may legitimately change
without a template change: the greenmeter version, the inlined CSS and script text, and the drawing
inside each chart (matplotlib's output varies across its versions; the charts are checked in the
browser test). Everything else -- sections, headings, table structure, every formatted figure, the
sources and the model-card block -- must match. After a deliberate template change, regenerate with

    GREENMETER_UPDATE_GOLDEN=1 python -m pytest tests/output/test_report_golden.py

and review the diff of tests/output/golden/ like code.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from pathlib import Path

import pytest

from greenmeter import __version__
from greenmeter.output.report import store_report
from greenmeter.store.database import Store

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_schema2.db"
GOLDEN = Path(__file__).parent / "golden"
STAMP = "2026-01-01T00:00:00+00:00"


def scrub(html: str) -> str:
    """The page with its volatile parts replaced by placeholders."""
    html = html.replace(f'content="greenmeter {__version__}"', 'content="greenmeter <VERSION>"')
    html = html.replace(f"Made by greenmeter {__version__}.", "Made by greenmeter <VERSION>.")
    html = re.sub(r"<style>.*?</style>", "<style>[report.css]</style>", html, flags=re.S)
    html = re.sub(r"<script>.*?</script>", "<script>[sort.js]</script>", html, flags=re.S)

    def chart(match: re.Match[str]) -> str:
        label = re.search(r'aria-label="([^"]*)"', match.group(0))
        return f'<svg aria-label="{label.group(1) if label else "?"}">[chart]</svg>'

    return re.sub(r"<svg\b.*?</svg>", chart, html, flags=re.S)


@pytest.mark.parametrize(("ident", "golden"), [(None, "comparison_report.html"), ("digits-training", "run_report.html")])
def test_rendered_report_matches_the_golden_structure(tmp_path: Path, ident: str | None, golden: str) -> None:
    path = tmp_path / "runs.db"
    shutil.copyfile(FIXTURE, path)
    with Store(path) as store:
        if ident is not None:
            ident = next(r.id for r in store.list_runs() if r.name == ident)
        _, html = store_report(store, ident, "html", generated_at=STAMP)
    got = scrub(html)
    assert got.count("[chart]</svg>") == 2
    target = GOLDEN / golden
    if os.environ.get("GREENMETER_UPDATE_GOLDEN") == "1":
        target.write_text(got, encoding="utf-8")
    want = target.read_text(encoding="utf-8")
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "rendered", n=1))
        pytest.fail(f"the rendered report differs from {target} (regenerate with GREENMETER_UPDATE_GOLDEN=1 "
                    f"after a deliberate change):\n{diff[:6000]}")
