"""``greenmeter compare CONFIG``: a TOML file in, a table out, the comparison stored and written as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greenmeter.carbon.settings import CarbonSettings  # noqa: E402
from greenmeter.cli.main import main  # noqa: E402
from greenmeter.comparison.config import load_compare_config  # noqa: E402
from greenmeter.store.database import Store  # noqa: E402

CONFIG = """
name = "digits-cli"

[model]
factory = "greenmeter.demo.digits:trained_digits_cnn"
kwargs = { epochs = 3 }

[data]
eval = "greenmeter.demo.digits:eval_data"
train = "greenmeter.demo.digits:train_data"

[training]
function = "greenmeter.demo.digits:train_fn"

[compare]
baseline = "float"
recipes = ["prune:0.5", "int8-dynamic"]
repeats = 2
min_repeat_s = 0.05
significance = "bootstrap"
threads = 2

[compare.variants]
static = "int8-static"

[carbon]
country = "FRA"
pue = 1.1
"""


def test_compare_runs_a_toml_config_stores_and_writes_json(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "compare.toml"
    config.write_text(CONFIG)
    store, out_json = tmp_path / "runs.db", tmp_path / "cmp.json"
    threads_before = torch.get_num_threads()
    code = main(["compare", str(config), "--store", str(store), "--json", str(out_json), "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "making prune:0.5" in captured.err  # progress
    for name in ("float", "prune:0.5", "int8-dynamic", "static"):
        assert name in captured.out
    data = json.loads(out_json.read_text())
    assert data["name"] == "digits-cli" and data["repeats"] == 2 and data["baseline"] == "float"
    assert data["torch_threads"] == 1 and torch.get_num_threads() == threads_before  # --threads beat the file's 2
    names = [v["name"] for v in data["variants"]]
    assert names == ["float", "prune:0.5", "int8-dynamic", "static"]
    int8 = data["variants"][2]
    assert int8["vs_baseline"]["energy_significance"]["test"] == "bootstrap"
    assert int8["status"] == "ok" and int8["carbon_per_million"]["intensity"]["source"]
    assert int8["carbon_per_million"]["pue"] == 1.1
    france = CarbonSettings(country="FRA").resolve_intensity().intensity_g_per_kwh
    assert int8["carbon_per_million"]["intensity_g_per_kwh"] == pytest.approx(france)
    with Store(store) as s:
        assert s.last_comparison().name == "digits-cli"


@pytest.mark.parametrize(("text", "message"), [
    ("[model]\nfactory = 'greenmeter.demo.digits:trained_digits_cnn'\n[data]\neval = 'x:y'\n[compare]\nrecipes = ['int4']\n"
     "repeat = 3\n", "unknown key(s) repeat in [compare]"),
    ("[data]\neval = 'greenmeter.demo.digits:eval_data'\n", "[model] needs factory"),
    ("[model]\nfactory = 'greenmeter.demo.digits:trained_digits_cnn'\n[data]\neval = 'greenmeter.demo.digits:eval_data'\n",
     "nothing to compare"),
    ("[model\n", "is not valid TOML"),
    ("[model]\nfactory = 'greenmeter.demo.digits:trained_digits_cnn'\n[data]\neval = 'greenmeter.demo.digits:eval_data'\n"
     "[compare]\nrecipes = ['int4']\nrepeats = 0\n", "compare.repeats must be a whole number >= 1"),
    ("[model]\nfactory = 'greenmeter.demo.digits:trained_digits_cnn'\n[data]\neval = 'greenmeter.demo.digits:eval_data'\n"
     "[compare]\nrecipes = ['int4']\n[carbon]\ncountry = 'FRA'\nintensity = 50\n", "at most one of"),
    ("[model]\nfactory = 'greenmeter.demo.digits:trained_digits_cnn'\n[data]\neval = 'greenmeter.demo.digits:eval_data'\n"
     "[compare]\nrecipes = ['int4']\nsignificance = 'anova'\n",
     "compare.significance must be one of 'paired', 'welch', 'bootstrap', not 'anova'"),
    ("[model]\nfactory = 'greenmeter.demo.digits:trained_digits_cnn'\n[data]\neval = 'greenmeter.demo.digits:eval_data'\n"
     "[compare]\nrecipes = ['int4']\nthreads = 0\n", "compare.threads must be a whole number >= 1"),
])
def test_bad_configs_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                                 message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert main(["compare", str(config), "--no-store"]) == 1
    assert message in capsys.readouterr().err


def test_import_paths_that_do_not_resolve_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[model]\nfactory = 'no_such_module_xyz:make'\n[data]\neval = 'greenmeter.demo.digits:eval_data'\n"
                      "[compare]\nrecipes = ['int4']\n")
    with pytest.raises(Exception, match="model.factory: cannot import 'no_such_module_xyz'"):
        load_compare_config(config).build()


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path / "nope.toml")]) == 1
    assert "cannot read the comparison config" in capsys.readouterr().err
