"""``greenmeter export-model CONFIG --variant SPEC --out PATH``: an ONNX file out, checked and measured beside PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")

from greenmeter.cli.main import main  # noqa: E402

CONFIG = """
name = "digits-export"

[model]
factory = "greenmeter.demo.digits:trained_digits_cnn"
kwargs = { epochs = 1 }

[data]
eval = "greenmeter.demo.digits:eval_data"
train = "greenmeter.demo.digits:train_data"

[training]
function = "greenmeter.demo.digits:train_fn"

[compare]
baseline = "float"
repeats = 2
min_repeat_s = 0.05

[compare.variants]
slim = "channels:0.5"
"""


def test_export_model_writes_onnx_and_compares_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    out = tmp_path / "slim.onnx"
    code = main(["export-model", str(config), "--variant", "slim", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.is_file() and f"wrote {out}" in captured.out
    assert "slim-onnx" in captured.out  # both in one table


def test_export_model_int8_dynamic_says_what_to_choose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    code = main(["export-model", str(config), "--variant", "int8-dynamic", "--out", str(tmp_path / "q.onnx"),
                 "--no-compare"])
    err = capsys.readouterr().err
    assert code == 1
    assert "'dynamic_int8' method (recipe 'int8-dynamic')" in err and "quantize='dynamic'" in err
    assert not (tmp_path / "q.onnx").exists()
