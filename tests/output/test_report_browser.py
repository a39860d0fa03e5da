"""The HTML report in a real browser (Debian's headless chromium, driven by Selenium; see tests/_browser.py).

Skipped without chromium outside CI; under CI=true a missing browser fails (.ci/run installs it).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from greenmeter.records.comparison import Comparison
from greenmeter.output.report import comparison_report, store_report
from greenmeter.comparison.recommend import recommend
from greenmeter.output.comparison_view import comparison_view
from greenmeter.store.database import Store
from tests._browser import non_background_share, open_page, require_chromium

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_schema2.db"
XSS = "<script>alert(1)</script>"

# Click "mJ / sample" once (ascending), read the first row; count scripts and drawn chart shapes.
PROBE = """
const head = [...document.querySelectorAll('#figures thead th')].find(th => th.dataset.key === 'energy_per_sample_j');
head.querySelector('button').click();
const first = document.querySelector('#figures tbody tr').dataset.name;
const r = window.devicePixelRatio;
return {rects: [...document.querySelectorAll('figure.chart svg')].map(s => { const b = s.getBoundingClientRect();
          return [b.left * r, (b.top + window.scrollY) * r, b.right * r, (b.bottom + window.scrollY) * r]; }),
        first: first, scripts: document.querySelectorAll('script').length,
        shapes: [...document.querySelectorAll('figure.chart svg')].map(s => s.querySelectorAll('path, use').length),
        sorted: head.getAttribute('aria-sort')};
"""


RECTS = ("const r = window.devicePixelRatio; return [...document.querySelectorAll('figure.chart svg')].map(s => {"
         "const b = s.getBoundingClientRect(); return [b.left * r, (b.top + window.scrollY) * r, b.right * r, "
         "(b.bottom + window.scrollY) * r];});")


def chart_shares(screenshot: Path, rects: list[list[float]], tmp_path: Path) -> list[float]:
    """The non-background share inside each chart's box on the full-page screenshot."""
    from PIL import Image

    shares = []
    with Image.open(screenshot) as image:
        for i, box in enumerate(rects):
            crop = tmp_path / f"chart-{i}.png"
            image.crop(tuple(round(v) for v in box)).save(crop)
            shares.append(non_background_share(crop))
    return shares


@pytest.fixture()
def comparison(tmp_path: Path) -> Comparison:
    path = tmp_path / "runs.db"
    shutil.copyfile(FIXTURE, path)
    with Store(path) as store:
        found = store.last_comparison()
    assert found is not None
    return found


def test_the_comparison_report_loads_clean_draws_its_charts_and_sorts(tmp_path: Path, comparison: Comparison) -> None:
    require_chromium()
    page_path = tmp_path / "report.html"
    page_path.write_text(comparison_report(comparison), encoding="utf-8")
    page = open_page(page_path, tmp_path / "report.png", run_js=PROBE)
    assert page.console_errors == ()
    assert page.requests == ()  # self-contained: nothing fetched, not even a local file
    assert page.title == "Comparison: digits-fixture · greenmeter"
    # Two charts of real drawing: inside each chart's box a real share of pixels is ink (an empty box is 0;
    # the fixture's scatter measured 0.037 and its latency bars 0.36 at 1280 px).
    shares = chart_shares(page.screenshot, page.js_result["rects"], tmp_path)
    assert len(shares) == 2 and min(shares) > 0.02, shares
    assert page.non_background_share > 0.03, page.non_background_share
    assert len(page.js_result["shapes"]) == 2 and min(page.js_result["shapes"]) >= 10
    assert page.js_result["scripts"] == 1 and page.js_result["sorted"] == "ascending"
    cheapest = min((v for v in comparison.variants if v.ok), key=lambda v: v.energy_per_sample_j.mean)
    assert page.js_result["first"] == cheapest.name
    rec = recommend(comparison)
    assert f"Recommended: {rec.name}" in page.text
    for label, value in rec.savings:
        assert value in page.text, label
    view = comparison_view(comparison, charts=False)
    for row in view.rows:  # every row's figures as the reader sees them
        for cell in row.cells[2:8]:
            assert cell.text in page.text


def test_a_hostile_variant_name_is_text_in_the_browser(tmp_path: Path, comparison: Comparison) -> None:
    require_chromium()
    variants = tuple(dataclasses.replace(v, name=XSS) if v.name == "prune:0.5" else v for v in comparison.variants)
    page_path = tmp_path / "xss.html"
    page_path.write_text(comparison_report(dataclasses.replace(comparison, variants=variants)), encoding="utf-8")
    page = open_page(page_path, tmp_path / "xss.png",
                     run_js="return {scripts: document.querySelectorAll('script').length, "
                            "rows: [...document.querySelectorAll('#figures tbody tr')].map(r => r.dataset.name)};")
    # An alert would have blocked the driver's script; the name is shown literally, as a row and a label.
    assert page.console_errors == ()
    assert page.js_result["scripts"] == 1 and XSS in page.js_result["rows"]
    assert XSS in page.text


def test_the_training_run_report_draws_power_and_epochs(tmp_path: Path) -> None:
    require_chromium()
    path = tmp_path / "runs.db"
    shutil.copyfile(FIXTURE, path)
    with Store(path) as store:
        run_id = next(r.id for r in store.list_runs() if r.name == "digits-training")
        _, html = store_report(store, run_id)
    page_path = tmp_path / "run.html"
    page_path.write_text(html, encoding="utf-8")
    page = open_page(page_path, tmp_path / "run.png",
                     run_js="return {ids: [...document.querySelectorAll('figure.chart')].map(f => f.id), "
                            "rects: (() => {" + RECTS + "})()};")
    assert page.console_errors == () and page.requests == ()
    assert page.js_result["ids"] == ["chart-power", "chart-epochs"]
    shares = chart_shares(page.screenshot, page.js_result["rects"], tmp_path)
    assert len(shares) == 2 and min(shares) > 0.02, shares
    assert "Energy per epoch" in page.text and "train #5" in page.text


def test_the_optimize_report_shows_its_decision_and_keeps_hostile_reasons_as_text(
        tmp_path: Path, comparison: Comparison) -> None:
    from greenmeter.output.report import optimize_report
    from tests.output.conftest import HOSTILE_REASON, make_optimization

    require_chromium()
    result = make_optimization(comparison)
    page_path = tmp_path / "optimize.html"
    page_path.write_text(optimize_report(result), encoding="utf-8")
    page = open_page(page_path, tmp_path / "optimize.png",
                     run_js="const s = document.querySelector('#decision'); const b = s.getBoundingClientRect(); "
                            "return {scripts: document.querySelectorAll('script').length, height: b.height, "
                            "candidates: [...document.querySelectorAll('#candidates tbody tr')].map(r => "
                            "[...r.children].map(c => c.textContent)), "
                            "chosen: getComputedStyle(document.querySelector('#candidates tr.chosen')).backgroundColor};")
    assert page.console_errors == () and page.requests == ()
    assert page.title == "Optimization: digits-optimize · greenmeter"
    assert page.js_result["scripts"] == 1 and page.js_result["height"] > 300  # laid out, not collapsed
    assert [row[0] for row in page.js_result["candidates"]] == [c.spec for c in result.candidates]
    assert [row[-1] for row in page.js_result["candidates"]] == [c.reason for c in result.candidates]
    assert HOSTILE_REASON in page.js_result["candidates"][4]  # shown literally: no script ran, no markup made
    assert page.js_result["chosen"] == "rgb(228, 242, 232)"  # the decision CSS is applied
    assert "Chosen: channels:0.5" in page.text and "Per-layer sensitivity" in page.text
