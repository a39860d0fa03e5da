"""``greenmeter optimize CONFIG``: a TOML file in, the choice, its evidence and every candidate out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greenmeter.cli.main import main  # noqa: E402
from greenmeter.comparison.config import load_optimize_config  # noqa: E402
from greenmeter.store.database import Store  # noqa: E402

CONFIG = """
name = "digits-optimize"

[model]
factory = "greenmeter.demo.digits:trained_digits_cnn"
kwargs = { epochs = 3 }

[data]
eval = "greenmeter.demo.digits:eval_data"
train = "greenmeter.demo.digits:train_data"

[compare]
min_repeat_s = 0.02
threads = 2

[optimize]
max_drop = 0.01
recipes = ["int8-dynamic", "int4", "int8-static"]
final_repeats = 2
finalists = 2
probes = []
time_budget_s = 300
"""


def test_optimize_runs_a_toml_config_prints_the_choice_and_writes_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "optimize.toml"
    config.write_text(CONFIG.replace("probes = []\n", ""))
    store, out_json = tmp_path / "runs.db", tmp_path / "opt.json"
    code = main(["optimize", str(config), "--store", str(store), "--json", str(out_json), "--max-drop", "0.02"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[optimize] [1/3] making int8-dynamic" in captured.err
    assert "candidate" in captured.out and "int4" in captured.out and "digits-optimize: " in captured.out
    data = json.loads(out_json.read_text())
    assert data["name"] == "digits-optimize" and data["max_drop"] == 0.02  # the option beat the file's 0.01
    assert [c["spec"] for c in data["candidates"]] == ["int8-dynamic", "int4", "int8-static"]
    assert data["comparison"]["repeats"] == 2 and data["comparison"]["torch_threads"] == 2
    assert data["sensitivity"] is not None  # the default probes ran
    with Store(store) as s:
        assert s.last_comparison().name == "digits-optimize"  # the final comparison, the evidence
        stored = s.last_optimization()
        assert stored.to_dict() == json.loads(out_json.read_text())
        assert s.list_optimizations()[0][4] == s.list_comparisons()[0][0]  # linked to the final comparison


@pytest.mark.parametrize(("table", "message"), [
    ("max_drop = -1\n", "optimize.max_drop must be a number >= 0"),
    ("recipes = 'int4'\n", "optimize.recipes must be a non-empty list of strings"),
    ("recipes = ['shrink:2']\n", "optimize.recipes: unknown recipe 'shrink'"),
    ("finalists = 0\n", "optimize.finalists must be a whole number >= 1"),
    ("budget = 3\n", "unknown key(s) budget in [optimize]"),
])
def test_bad_optimize_tables_are_refused_before_any_work(tmp_path: Path, table: str, message: str) -> None:
    from greenmeter import ConfigError

    config = tmp_path / "optimize.toml"
    config.write_text("[model]\nfactory = 'greenmeter.demo.digits:trained_digits_cnn'\n[data]\n"
                      "eval = 'greenmeter.demo.digits:eval_data'\n[optimize]\n" + table)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        load_optimize_config(config)


def test_a_compare_file_without_recipes_is_still_refused_by_compare(tmp_path: Path) -> None:
    from greenmeter import ConfigError
    from greenmeter.comparison.config import load_compare_config

    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    assert load_optimize_config(config).optimize["recipes"] == ["int8-dynamic", "int4", "int8-static"]
    with pytest.raises(ConfigError, match="nothing to compare"):
        load_compare_config(config)


def test_resume_goes_on_from_the_journal_or_says_there_is_nothing_to_resume(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "optimize.toml"
    config.write_text(CONFIG)
    store = tmp_path / "runs.db"
    assert main(["optimize", str(config), "--store", str(store), "--resume", "--no-store"]) != 0
    assert "--resume reads the search back from the store: drop --no-store" in capsys.readouterr().err
    code = main(["optimize", str(config), "--store", str(store), "--resume"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[optimize] nothing to resume: starting a new search" in captured.err
    with Store(store) as s:
        assert s.unfinished_searches() == []  # finished: stored whole, no journal left
        assert len(s.list_optimizations()) == 1


def test_resume_without_a_store_is_refused_before_the_config_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-config.toml"  # reading it would be the first work, and an error of its own
    assert main(["optimize", str(missing), "--resume", "--no-store"]) != 0
    err = capsys.readouterr().err
    assert "--resume reads the search back from the store: drop --no-store" in err and "no-such-config" not in err
