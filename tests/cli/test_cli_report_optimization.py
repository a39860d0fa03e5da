"""``greenmeter report`` of a stored optimization (``--last-optimization``, or its id), and ``greenmeter optimizations``.

The optimize result is hand-made around the schema-2 fixture's comparison and stored in a private store;
nothing is optimized here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from greenmeter.cli.main import main
from greenmeter.records.optimization import OptimizeResult
from greenmeter.store.database import Store
from tests.output.conftest import FIXTURE, make_optimization


@pytest.fixture()
def stored(tmp_path: Path) -> tuple[Path, str, OptimizeResult]:
    """A copy of the fixture store holding a hand-made optimization: ``(store path, its id, the result)``."""
    path = tmp_path / "runs.db"
    shutil.copyfile(FIXTURE, path)
    with Store(path) as store:
        comparison = store.last_comparison()
        assert comparison is not None
        result = make_optimization(comparison)
        return path, store.add_optimization(result), result


def test_report_last_optimization_writes_the_html_page_with_its_decision(
        stored: tuple[Path, str, OptimizeResult], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, result = stored
    out = tmp_path / "out.html"
    assert main(["report", "--last-optimization", "-o", str(out), "--store", str(path)]) == 0
    assert capsys.readouterr().out == f"wrote the optimization report to {out}\n"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and '<section id="decision"' in page
    assert '<strong class="variant-name" id="chosen">channels:0.5</strong>' in page
    assert all(f'<td class="text">{c.status}</td>' in page for c in result.candidates)
    assert '<th scope="row">classifier.2</th>' in page and '<section id="table"' in page


def test_report_by_id_prefix_as_markdown_and_json(
        stored: tuple[Path, str, OptimizeResult], capsys: pytest.CaptureFixture[str]) -> None:
    path, oid, result = stored
    assert main(["report", oid[:10], "--format", "md", "-o", "-", "--store", str(path)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Optimization: digits-optimize\n") and "## Decision" in md
    assert "**Chosen: channels:0.5**" in md and "| int4\\[keep=classifier.2\\] | over budget | 0 |" in md
    assert main(["report", oid, "--format", "json", "-o", "-", "--store", str(path)]) == 0
    assert OptimizeResult.from_dict(json.loads(capsys.readouterr().out)["optimization"]) == result


def test_report_refuses_csv_for_an_optimization_and_an_empty_store_says_so(
        stored: tuple[Path, str, OptimizeResult], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = stored
    assert main(["report", "--last-optimization", "--format", "csv", "-o", "-", "--store", str(path)]) == 1
    assert "the csv format does not render an optimize result: use one of html, md, json" in capsys.readouterr().err
    empty = tmp_path / "empty.db"
    Store(empty).close()
    assert main(["report", "--last-optimization", "-o", "-", "--store", str(empty)]) == 1
    assert f"the store {empty} holds no optimization yet" in capsys.readouterr().err
    assert main(["report", "--last", "--last-optimization", "--store", str(path)]) == 1
    assert "name one thing to report: an ID, --last, --last-run or --last-optimization" in capsys.readouterr().err


def test_optimizations_lists_the_stored_ones(
        stored: tuple[Path, str, OptimizeResult], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, oid, _ = stored
    assert main(["optimizations", "--store", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "created", "(UTC)", "chosen", "name"]
    assert lines[1].split() == [oid[:12], "2026-11-29", "05:10:00", "channels:0.5", "digits-optimize"]
    assert main(["optimizations", "--store", str(tmp_path / "none.db")]) == 0
    assert capsys.readouterr().out == f"no optimizations stored in {tmp_path / 'none.db'}\n"
    assert not (tmp_path / "none.db").exists()


def test_optimizations_lists_the_unfinished_searches_a_resume_can_go_on_with(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "runs.db"
    with Store(path) as store:
        for step in ("sensitivity", "candidate:int4", "candidate:int8-static"):
            store.save_search_step("k", "digits-optimize", {"settings": {}}, 42.4, step, {})
    assert main(["optimizations", "--store", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"no optimizations stored in {path}"
    assert "greenmeter optimize CONFIG --resume" in out[2]
    assert out[3].startswith("  digits-optimize: 3 step(s) journaled, 42 s spent, last at 20")
