"""``greenmeter demo --quick`` end to end: every variant built and measured, every file written and readable."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from greenmeter.cli.main import main
from greenmeter.records.comparison import Comparison
from greenmeter.demo.run import DEMO_RECIPES
from greenmeter.store.database import Store


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    with Store(out / "runs.db") as earlier:  # an earlier demo's store: replaced (checked below)
        earlier.start_run(name="an earlier demo", kind="api")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--quick", "--quiet", "--out", str(out), "--country", "FRA"])
    assert code == 0
    return out, stdout.getvalue()


def test_every_variant_is_built_measured_and_compared(demo: tuple[Path, str]) -> None:
    out, _ = demo
    c = Comparison.from_json((out / "comparison.json").read_text())
    assert [v.name for v in c.variants] == ["float", *DEMO_RECIPES]
    base = c.variant("float")
    assert base.metric > 0.9  # a trained baseline, even in quick mode
    for v in c.variants:
        assert v.ok, (v.name, v.error)
        assert v.energy_per_sample_j.mean > 0 and math.isfinite(v.energy_per_sample_j.mean)
        assert len(v.energy_values_j) == c.repeats == 3
        if v.name != "float":
            assert v.making is not None and v.making.energy_j >= 0
            assert v.vs_baseline.energy_significance.p_value is not None
    # what each method did is visible in the figures
    assert c.variant("prune:0.5").params_nonzero < 0.6 * base.params_total
    assert c.variant("channels:0.5").params_total < base.params_total / 2
    assert c.variant("ticket:0.2").params_nonzero < 0.3 * base.params_total
    for name in ("int8-dynamic", "int8-static", "int4", "qat"):
        assert c.variant(name).size_b < 0.4 * base.size_b, name
    assert c.variant("distill:0.5").params_total < base.params_total / 2
    for name in ("channels:0.5", "ticket:0.2", "qat", "distill:0.5", "early-exit:auto"):
        assert c.variant(name).making.trains, name
    assert c.carbon["country"] == "FRA"
    assert c.pareto_front


def test_the_reports_and_the_store_are_written(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    c = Comparison.from_json((out / "comparison.json").read_text())
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") == 2
    for v in c.variants:
        assert f'data-name="{v.name}"' in html
    assert "Recommended:" in html or "No variant is recommended" in html
    training = (out / "training.html").read_text()
    assert 'id="chart-power"' in training and 'id="chart-epochs"' in training and "train-baseline #4" in training
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert len(rows) == len(c.variants)
    assert (out / "report.md").read_text().startswith("# Comparison: demo: digits CNN and its variants")
    with Store(out / "runs.db") as store:
        runs = {r.name: r for r in store.list_runs()}
        assert set(runs) == {"demo: train the baseline", "demo: digits CNN and its variants", "demo: optimize"}
        train = next(w for w in store.windows(runs["demo: train the baseline"].id) if w.name == "train-baseline")
        assert len(train.epochs) == 4 and train.steps == 4 * math.ceil(1078 / 64) and train.energy_j > 0  # 80% trains
        ids = {name: cid for cid, name, *_ in store.list_comparisons()}  # the optimize step's come after it
        assert store.get_comparison(ids["demo: digits CNN and its variants"]).to_dict() == c.to_dict()
    # the printed summary: the table, the recommendation and the paths
    assert "int8-static" in stdout and "recommended:" in stdout and str(out / "report.html") in stdout
    assert json.loads((out / "comparison.json").read_text())["repeats"] == 3


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["demo", "--quick", "--quiet", "--out", str(blocker / "sub")]) == 1
    assert "cannot create the demo's output folder" in capsys.readouterr().err


def _text_file(path: Path) -> None:
    path.write_text("my own notes, not a run store\n")


def _other_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("make", [_text_file, _other_sqlite, Path.mkdir])
def test_a_runs_db_that_is_not_a_greenmeter_store_is_never_deleted(
        tmp_path: Path, make: Callable[[Path], None], capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "runs.db"
    make(path)
    before = sorted((p.name, p.is_dir() or p.read_bytes()) for p in tmp_path.iterdir())
    assert main(["demo", "--quick", "--quiet", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "not a greenmeter run store" in err, err
    assert "choose another output folder" in err
    assert sorted((p.name, p.is_dir() or p.read_bytes()) for p in tmp_path.iterdir()) == before  # nothing touched


def test_the_demo_asks_optimize_for_the_cheapest_variant_within_half_a_point(demo: tuple[Path, str]) -> None:
    from greenmeter.demo.run import OPTIMIZE_MAX_DROP
    from greenmeter.records.optimization import OptimizeResult

    out, stdout = demo
    result = OptimizeResult.from_json((out / "optimize.json").read_text())
    assert result.max_drop == OPTIMIZE_MAX_DROP == 0.005 and result.name == "demo: optimize"
    assert result.sensitivity is not None and result.sensitivity.layers  # the per-layer table came first
    assert result.candidates and all(c.reason for c in result.candidates)
    assert result.comparison.repeats == 3 and result.comparison.variants[0].name == "baseline"
    tried = [c for c in result.candidates if c.status != "not tried"]
    assert tried, "the quick budget builds at least one candidate"
    if result.improved:
        chosen = result.comparison.variant(result.chosen)
        assert chosen.vs_baseline.measurable_saving and chosen.vs_baseline.metric_test.diff_low >= -0.005
    assert result.summary().splitlines()[0] in stdout
    html = (out / "optimize.html").read_text()
    assert html.startswith("<!doctype html>") and "Decision" in html and result.chosen in html
    with Store(out / "runs.db") as store:
        assert "demo: optimize" in {row[1] for row in store.list_comparisons()}  # the final comparison, stored
