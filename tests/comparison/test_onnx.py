"""Exporting a variant to ONNX and measuring it under ONNX Runtime (greenmeter.comparison.export: export_onnx, OnnxModel).

The digits CNN and its pruned, distilled and int8 variants are exported, run by an ONNX Runtime CPU session and
scored on the 450 test images: the ONNX model must score what the PyTorch variant scores, and ``compare`` must
measure both in one comparison. ``int8-dynamic`` cannot export (ONNX has no operator for its PyTorch kernel): the
error names the method and what to export instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

from greenmeter import ConfigError  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.comparison.export import OnnxModel, export_onnx  # noqa: E402
from greenmeter.comparison.recipes import RecipeContext, build_variant  # noqa: E402
from greenmeter.demo.digits import DigitsData, accuracy, batches  # noqa: E402


@pytest.fixture(scope="module")
def ctx(digits: DigitsData) -> RecipeContext:
    train = list(batches(digits.x_train, digits.y_train, 64, shuffle=True))[:6]
    return RecipeContext(example_input=digits.x_train[:8], train_data=train, fine_tune_epochs=1, train_epochs=1,
                         calibration_batches=4)


def correct(model: nn.Module, digits: DigitsData) -> int:
    return round(accuracy(model, digits.x_test, digits.y_test) * len(digits.y_test))


@pytest.mark.parametrize("spec", ["float", "prune:0.5", "distill:0.5", "int8-static"])
def test_exported_model_scores_what_the_variant_scores(spec: str, trained: nn.Module, ctx: RecipeContext,
                                                        digits: DigitsData, tmp_path: Path) -> None:
    model = trained if spec == "float" else build_variant(spec, trained, ctx)
    path = export_onnx(model, digits.x_train[:8], tmp_path / "sub" / "model.onnx")
    assert path == tmp_path / "sub" / "model.onnx" and path.stat().st_size > 1000
    onnx_model = OnnxModel(path)
    assert abs(correct(onnx_model, digits) - correct(model, digits)) <= 1  # within one of the 450 samples
    # any batch size: the batch dimension is exported dynamic
    with torch.no_grad():
        expected = model.eval()(digits.x_test[:3])
    got = onnx_model(digits.x_test[:3])
    if spec == "int8-static":  # ONNX Runtime's int8 kernels round an activation a step apart here and there
        assert (got - expected).abs().max() <= 0.1 * expected.abs().max()
        assert torch.equal(got.argmax(1), expected.argmax(1))
    else:
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_int8_dynamic_cannot_export_and_the_error_says_what_to_do(trained: nn.Module, ctx: RecipeContext,
                                                                  digits: DigitsData, tmp_path: Path) -> None:
    model = build_variant("int8-dynamic", trained, ctx)
    with pytest.raises(ConfigError) as caught:
        export_onnx(model, digits.x_train[:8], tmp_path / "int8.onnx")
    message = str(caught.value)
    assert "'dynamic_int8' method (recipe 'int8-dynamic')" in message
    assert "quantized::linear_dynamic" in message and "quantize='dynamic'" in message
    assert not (tmp_path / "int8.onnx").exists()


def test_quantize_dynamic_is_the_int8_path(trained: nn.Module, digits: DigitsData, tmp_path: Path) -> None:
    float_path = export_onnx(trained, digits.x_train[:8], tmp_path / "float.onnx")
    int8_path = export_onnx(trained, digits.x_train[:8], tmp_path / "int8.onnx", quantize="dynamic")
    assert int8_path.stat().st_size < float_path.stat().st_size / 2  # int8 weights: about a quarter
    assert abs(correct(OnnxModel(int8_path), digits) - correct(trained, digits)) <= 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.onnx", "int8.onnx"]  # no temporary file left


def test_compare_measures_pytorch_and_onnx_in_one_comparison(trained: nn.Module, digits: DigitsData,
                                                             tmp_path: Path) -> None:
    path = export_onnx(trained, digits.x_train[:8], tmp_path / "float.onnx")
    result = compare({"float": trained, "float-onnx": OnnxModel(path)}, (digits.x_test, digits.y_test),
                     repeats=2, min_repeat_s=0.05, progress=False)
    torch_result, onnx_result = result.variant("float"), result.variant("float-onnx")
    assert onnx_result.status == "ok", onnx_result.error
    assert abs(onnx_result.metric - torch_result.metric) <= 1 / len(digits.y_test)
    assert onnx_result.energy_per_sample_j.mean > 0 and torch_result.energy_per_sample_j.mean > 0
    assert path.stat().st_size < onnx_result.size_b < path.stat().st_size + 4096  # the ONNX file's bytes


def test_errors(trained: nn.Module, digits: DigitsData, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="quantize"):
        export_onnx(trained, digits.x_train[:8], tmp_path / "m.onnx", quantize="static")
    with pytest.raises(ConfigError, match="tensor batch"):
        export_onnx(trained, [1, 2], tmp_path / "m.onnx")  # type: ignore[arg-type]
    path = export_onnx(trained, digits.x_train[:8], tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="cannot train"):
        OnnxModel(path).train()


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ConfigError, match=r"onnxruntime, which is not installed: pip install greenmeter\[onnx\]"):
        OnnxModel(tmp_path / "m.onnx")
