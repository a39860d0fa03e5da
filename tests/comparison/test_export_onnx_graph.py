"""ONNX models as compare reads them: facts counted from the graph, and models of several inputs.

An :class:`OnnxModel` counts its weights from the graph's initializers and its MACs from the graph's shapes
(``onnx.shape_inference``), so a comparison shows what the exported model holds and does, not 0; an op whose
MACs cannot be counted is named. ``export_onnx`` takes the batches ``compare`` takes: a tensor, a tuple of inputs
(``model(*inputs)``) or a dict (``model(**inputs)``), with the batch and, for 2-D integer inputs, the sequence
exported dynamic.
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
from greenmeter.comparison.facts import count_macs, parameter_counts  # noqa: E402
from greenmeter.demo.digits import make_digits_cnn  # noqa: E402


class ConvNet(nn.Module):
    """A Conv + Linear net without batch norm: nothing for the exporter to fold."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 3, padding=1, groups=1)
        self.grouped = nn.Conv2d(6, 12, 3, stride=2, groups=3)
        self.fc = nn.Linear(12 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.grouped(torch.relu(self.conv(x))))
        return self.fc(h.flatten(1))


class Pair(nn.Module):
    """Token ids and their mask, as a Hugging Face encoder takes them; a per-token projection (MatMul) too."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.proj(self.emb(input_ids))) * attention_mask.unsqueeze(-1).float()
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True).float())


def _tokens(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # the first sentence is padded
    return {"input_ids": torch.randint(0, 50, (batch, length), generator=g), "attention_mask": mask}


def test_a_conv_linear_graph_counts_what_pytorch_counts(tmp_path: Path) -> None:
    model, x = ConvNet().eval(), torch.randn(5, 1, 8, 8)
    onnx_model = OnnxModel(export_onnx(model, x, tmp_path / "net.onnx"))
    counts = parameter_counts(onnx_model)
    assert counts.total == sum(p.numel() for p in model.parameters()) == 6 * 9 + 6 + 12 * 2 * 9 + 12 + 108 * 10 + 10
    assert counts.kind == "parameters" and counts.nonzero == counts.total
    macs = count_macs(onnx_model, x)
    expected = 6 * 8 * 8 * 9 + 12 * 3 * 3 * (2 * 9) + 108 * 10
    assert count_macs(model, x).macs_per_sample == expected
    assert (macs.macs_per_sample, macs.method, macs.note) == (expected, "onnx graph shapes", None)
    assert count_macs(onnx_model, x[:2]).macs_per_sample == expected  # per sample, whatever the batch


def test_the_digits_cnn_and_its_int8_graph(tmp_path: Path) -> None:
    model, x = make_digits_cnn(seed=0).eval(), torch.randn(8, 1, 8, 8)
    torch_macs = count_macs(model, x).macs_per_sample
    assert torch_macs == 32 * 64 * 9 + 64 * 64 * 32 * 9 + 1024 * 128 + 128 * 10
    float_model = OnnxModel(export_onnx(model, x, tmp_path / "float.onnx"))
    assert count_macs(float_model, x).macs_per_sample == torch_macs
    # the exporter folds each batch norm into the convolution before it: its scale and shift are not weights apart
    folded = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert parameter_counts(float_model).total == sum(p.numel() for p in model.parameters()) - folded
    int8 = OnnxModel(export_onnx(model, x, tmp_path / "int8.onnx", quantize="dynamic"))  # ConvInteger, MatMulInteger
    macs = count_macs(int8, x)
    assert (macs.macs_per_sample, macs.method) == (torch_macs, "onnx graph shapes")
    counts = parameter_counts(int8)
    assert counts.kind == "stored weight elements"
    assert counts.total == parameter_counts(float_model).total  # int8 codes and float biases; no scales


@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_statically_quantized_graphs(fmt: str, tmp_path: Path) -> None:
    """ONNX Runtime's static int8: QLinearConv and QLinearMatMul (QOperator), or DequantizeLinear before float ops
    (QDQ); their int8 weights and int32 biases counted, their scales and zero points not."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict[str, object]]) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, object] | None:
            return next(self.feeds, None)

    conv, x = ConvNet().eval(), torch.randn(4, 1, 8, 8)
    pair, tokens = Pair().eval(), _tokens(4, 6, seed=3)
    for model, example, inputs, name in ((conv, x, {"input": x}, "conv"), (pair, tokens, tokens, "pair")):
        float_path = export_onnx(model, example, tmp_path / f"{name}.onnx")
        int8_path = tmp_path / f"{name}-int8.onnx"
        quantize_static(str(float_path), str(int8_path), Reader([{k: v.numpy() for k, v in inputs.items()}] * 4),
                        quant_format=getattr(QuantFormat, fmt), op_types_to_quantize=["Conv", "MatMul"],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        int8 = OnnxModel(int8_path)
        ops = {node.op_type for node in int8._graph().graph.node}
        assert ({"QLinearConv"} if name == "conv" else {"QLinearMatMul"}) <= ops if fmt == "QOperator" else (
            "DequantizeLinear" in ops)
        macs = count_macs(int8, example)
        assert (macs.macs_per_sample, macs.note) == (count_macs(model, example).macs_per_sample, None)
        counts = parameter_counts(int8)
        assert counts.kind == "stored weight elements"
        assert counts.total == sum(p.numel() for p in model.parameters())


def test_an_op_without_a_mac_formula_is_named(tmp_path: Path) -> None:
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    x = torch.randn(2, 2, 4, 4)
    macs = count_macs(OnnxModel(export_onnx(model, x, tmp_path / "t.onnx")), x)
    assert macs.macs_per_sample is None and macs.method == "unavailable"
    assert "ConvTranspose" in macs.note and "it counted 432 MACs per sample in the rest" in macs.note  # type: ignore[operator]


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_two_inputs_export_with_dynamic_batch_and_sequence(form: str, tmp_path: Path) -> None:
    model = Pair().eval()
    example = _tokens(4, 7, seed=1)
    given = (example["input_ids"], example["attention_mask"]) if form == "tuple" else example
    onnx_model = OnnxModel(export_onnx(model, given, tmp_path / "pair.onnx"))
    assert onnx_model.input_names == ["input_ids", "attention_mask"]  # forward's parameter names, or the keys
    other = _tokens(3, 12, seed=2)  # another batch size and sentence length
    with torch.no_grad():
        expected = model(**other)
    assert torch.allclose(onnx_model(**other), expected, atol=1e-5)
    assert torch.allclose(onnx_model(other["input_ids"], other["attention_mask"]), expected, atol=1e-5)
    assert parameter_counts(onnx_model).total == sum(p.numel() for p in model.parameters())
    assert count_macs(onnx_model, other).macs_per_sample == count_macs(model, other).macs_per_sample == 12 * 64 + 24


def test_compare_feeds_dict_batches_of_several_lengths_to_onnx_runtime(tmp_path: Path) -> None:
    model = Pair().eval()
    data = [{**_tokens(4, length, seed=length), "labels": torch.tensor([0, 1, 2, 1])} for length in (5, 9, 7)]
    path = export_onnx(model, {k: v for k, v in data[0].items() if k != "labels"}, tmp_path / "pair.onnx")
    result = compare({"torch": model, "onnx": OnnxModel(path)}, data, repeats=2, min_repeat_s=0.01, progress=False)
    torch_result, onnx_result = result.variant("torch"), result.variant("onnx")
    assert onnx_result.status == "ok", onnx_result.error
    assert onnx_result.metric == torch_result.metric
    assert onnx_result.macs_per_sample == torch_result.macs_per_sample == 5 * 64 + 24  # the first batch's length
    assert onnx_result.params_total == torch_result.params_total == 50 * 8 + 8 * 8 + 8 + 8 * 3 + 3


def test_inputs_the_graph_does_not_take_are_refused(tmp_path: Path) -> None:
    model = Pair().eval()
    onnx_model = OnnxModel(export_onnx(model, _tokens(2, 4, seed=0), tmp_path / "pair.onnx"))
    with pytest.raises(ConfigError, match="'token_type_ids' is not an input of the graph; its inputs are "
                                          "input_ids, attention_mask"):
        onnx_model(**_tokens(2, 4, seed=0), token_type_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="needs input\\(s\\) attention_mask"):
        onnx_model(input_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="share their batch size"):
        export_onnx(model, {"input_ids": torch.zeros(2, 4, dtype=torch.long),
                            "attention_mask": torch.ones(3, 4, dtype=torch.long)}, tmp_path / "bad.onnx")
