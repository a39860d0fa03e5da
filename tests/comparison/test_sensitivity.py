"""Per-layer sensitivity: a known fragile layer ranks first, each probe's weights are the method's, the model stays."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.sensitivity import layer_sensitivity, probed_weight, sensitivity_layers  # noqa: E402
from greenmeter.compression import Int4Linear, Int4WeightConfig, compress  # noqa: E402
from greenmeter.demo.digits import load_digits_data, make_digits_cnn, train_classifier  # noqa: E402
from greenmeter.records.sensitivity import Sensitivity  # noqa: E402


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 5), nn.Linear(5, 4), nn.Linear(4, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def _fragile_mlp() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """An MLP whose fc2 input has one channel 1000 times wider than the others (and that fc2 ignores): int8's
    per-tensor input grid on fc2 then rounds the useful channels to a few levels; fc1 and fc3 see narrow inputs.
    The targets are the float model's own predictions, so its accuracy is 1.0."""
    torch.manual_seed(0)
    model = _Mlp().eval()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc1.weight[:4, :4] = torch.eye(4)
        model.fc1.weight[4, 0] = 1000.0  # the wide channel
        model.fc1.bias.zero_()
        model.fc2.weight.zero_()
        model.fc2.weight[:, :4] = torch.eye(4)
        model.fc2.bias.zero_()
        model.fc3.weight.copy_(torch.randn(3, 4, generator=torch.Generator().manual_seed(2)))  # all 3 classes
        model.fc3.bias.zero_()
    x = torch.randn(600, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, (x, y)


def test_the_fragile_layer_ranks_first_under_int8_and_the_others_barely_move() -> None:
    model, data = _fragile_mlp()
    sens = layer_sensitivity(model, data, probes=("int8",), progress=False)
    assert sens.baseline_metric == 1.0 and sens.samples == 600
    assert [e.name for e in sens.layers] == ["fc1", "fc2", "fc3"]
    fc2 = sens.drop("fc2", "int8")
    assert fc2 is not None and fc2 > 0.5  # 0.82 here
    for name in ("fc1", "fc3"):
        assert abs(sens.drop(name, "int8")) < 0.02  # type: ignore[arg-type]
    assert sens.sensitive_layers("int8", 0.05) == ("fc2",)
    assert sens.worst("int8") == ("fc2", fc2)
    entry = sens.layer("fc2")
    assert entry.metrics["int8"] == pytest.approx(1.0 - fc2)
    # the baseline is right on every sample, so each changed sample is one now wrong
    assert entry.changed["int8"] == round(fc2 * 600)
    assert "first 3 evaluation batches (600 samples)" in sens.calibration


def test_prune_zero_is_the_baseline_exactly_and_prune_099_is_a_large_drop() -> None:
    model, data = _fragile_mlp()
    sens = layer_sensitivity(model, data, probes=("prune:0.0", "prune:0.99"), progress=False)
    for e in sens.layers:
        assert e.metrics["prune:0.0"] == sens.baseline_metric
        assert e.drops["prune:0.0"] == 0.0 and e.changed["prune:0.0"] == 0
    assert sens.drop("fc3", "prune:0.99") > 0.3  # type: ignore[operator]
    assert sens.drop("fc1", "prune:0.99") > 0.3  # type: ignore[operator]


def test_prune_zeroes_exactly_the_smallest_weights() -> None:
    layer = nn.Linear(10, 10)
    w = probed_weight(layer, "prune:0.5")
    assert w is not None and int((w == 0).sum()) == 50
    kept = layer.weight.detach().abs()[w != 0]
    dropped = layer.weight.detach().abs()[w == 0]
    assert float(kept.min()) >= float(dropped.max())
    assert torch.equal(w[w != 0], layer.weight.detach()[w != 0])


def test_the_int8_weight_grid_is_per_channel_symmetric_int8() -> None:
    torch.manual_seed(3)
    layer = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        layer.weight[2] *= 40  # channels of very different ranges: each gets its own scale
    w = layer.weight.detach()
    scale = (w.abs().reshape(6, -1).amax(dim=1) / 127.5)[:, None, None, None]
    # codes round(w * (1 / scale)) as torch's fake-quantize rounds them (ties to even), clamped to -128..127
    hand = torch.clamp(torch.round(w * (1.0 / scale)), -128, 127) * scale
    got = probed_weight(layer, "int8")
    assert got is not None and torch.allclose(got, hand, rtol=0, atol=1e-7)
    # and with the scales of torch.ao's per-channel weight observer, the one static int8 uses
    from torch.ao.quantization.observer import default_per_channel_weight_observer

    obs = default_per_channel_weight_observer()
    obs(w)
    s, z = obs.calculate_qparams()
    fake = torch.fake_quantize_per_channel_affine(w, s, z.to(torch.int32), 0, -128, 127)
    assert torch.allclose(got, fake, rtol=0, atol=1e-7)
    assert torch.equal(layer.weight.detach(), w)  # the layer is not changed


def test_the_int8_input_grid_comes_from_the_calibration_data() -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
    model = nn.Sequential(layer).eval()
    x = torch.tensor([[5.0, 0.0], [0.5, 0.25]])
    data = (x, torch.zeros(2, dtype=torch.long))

    def top(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(outputs[:, 0].max())

    w00 = 127 / 127.5  # 1.0 on int8's per-channel grid: 1 / (1 / 127.5) rounds to 128, clamped to 127
    narrow = layer_sensitivity(model, data, metric=top, probes=("int8",), calibration=[torch.tensor([[1.0, 0.0], [0.0, 0.5]])],
                               progress=False)
    assert narrow.baseline_metric == 5.0
    # the input range observed on calibration is [0, 1], so the 5.0 input is clipped to 1.0, the top of that grid
    assert narrow.layers[0].metrics["int8"] == pytest.approx(w00, rel=1e-6)
    assert narrow.calibration == "1 given batches (2 samples)"
    wide = layer_sensitivity(model, data, metric=top, probes=("int8",), progress=False)  # calibrated on data: 0..5
    assert wide.layers[0].metrics["int8"] == pytest.approx(5.0 * w00, rel=1e-6)
    assert wide.metric_name == "top" and wide.layers[0].changed["int8"] is None  # no correctness for a custom metric


def test_int4_is_what_int4_weight_config_stores_and_none_for_conv() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(24, 96), nn.ReLU(), nn.Linear(96, 16)).eval()
    for probe, group in (("int4", 32), ("int4:64", 64)):
        quantized = compress(model, Int4WeightConfig(group_size=group))
        for name in ("2", "4"):
            q = dict(quantized.named_modules())[name]
            assert isinstance(q, Int4Linear)
            got = probed_weight(dict(model.named_modules())[name], probe)
            assert got is not None and torch.equal(got, q.dequantize_weight())
    assert probed_weight(model[0], "int4") is None
    data = (torch.randn(40, 2, 8), torch.randint(0, 16, (40,)))
    sens = layer_sensitivity(model, data, probes=("int4", "int4:64"), progress=False)
    conv = sens.layer("0")
    assert conv.kind == "Conv1d" and conv.metrics == {"int4": None, "int4:64": None}
    assert conv.drops == {"int4": None, "int4:64": None} and conv.changed == {"int4": None, "int4:64": None}
    assert all(isinstance(sens.drop(n, "int4"), float) for n in ("2", "4"))
    assert sens.layer("2").params == 24 * 96 + 96


def test_the_model_is_not_changed() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(4 * 6 * 6, 3))
    model.train()
    model[1].eval()  # a mixed mode must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    data = (torch.randn(30, 1, 8, 8), torch.randint(0, 3, (30,)))
    layer_sensitivity(model, data, progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


class _Attention(nn.Module):
    """An ``nn.MultiheadAttention`` (whose ``out_proj`` it uses through its weight, never as a module call) and a
    Linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))


def test_int8_does_not_probe_a_layer_used_through_its_weight_and_a_named_one_is_refused() -> None:
    model = _Attention().eval()
    data = (torch.randn(24, 5, 8), torch.randint(0, 3, (24,)))
    result = layer_sensitivity(model, data, probes=("int8", "prune:0.5"), progress=False)
    rows = {layer.name: layer for layer in result.layers}
    assert list(rows) == ["attn.out_proj", "fc"]
    assert rows["attn.out_proj"].metrics["int8"] is None  # never called as a module: int8 recipes leave it float
    assert rows["attn.out_proj"].metrics["prune:0.5"] is not None  # its weight is still what the attention reads
    assert rows["fc"].metrics["int8"] is not None
    with pytest.raises(ConfigError, match="never reached layer 'attn.out_proj' as a module call"):
        layer_sensitivity(model, data, probes=("int8",), layers=["attn.out_proj"], progress=False)


def test_layers_restricts_the_probe_and_unknown_names_list_the_candidates() -> None:
    model, data = _fragile_mlp()
    assert list(sensitivity_layers(model)) == ["fc1", "fc2", "fc3"]
    sens = layer_sensitivity(model, data, probes=("prune:0.5",), layers=["fc3", "fc1"], progress=False)
    assert [e.name for e in sens.layers] == ["fc1", "fc3"]  # in model order
    with pytest.raises(ConfigError, match=r"no probeable layer named 'act'.*fc1, fc2, fc3"):
        layer_sensitivity(model, data, layers=["act"], progress=False)
    with pytest.raises(ConfigError, match="'fc9'"):
        layer_sensitivity(model, data, layers=["fc1", "fc9"], progress=False)


@pytest.mark.parametrize("probes", [("int16",), ("prune:1.0",), ("prune:x",), ("int4:1",), ("int8:2",), (5,),
                                    ("prune",)])
def test_bad_probe_names_are_refused_up_front_with_the_valid_forms(probes: tuple[object, ...]) -> None:
    model, data = _fragile_mlp()
    with pytest.raises(ConfigError, match=r"valid forms: int8, int4, int4:G"):
        layer_sensitivity(model, data, probes=probes, progress=False)  # type: ignore[arg-type]


def test_other_bad_arguments() -> None:
    model, data = _fragile_mlp()
    with pytest.raises(ConfigError, match="named twice"):
        layer_sensitivity(model, data, probes=("int8", "int8"), progress=False)
    with pytest.raises(ConfigError, match="sequence of probe names"):
        layer_sensitivity(model, data, probes="int8", progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        layer_sensitivity(model, data, batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="progress"):
        layer_sensitivity(model, data, progress=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no batches"):
        layer_sensitivity(model, data, calibration=[], progress=False)
    with pytest.raises(ConfigError, match="no Linear or Conv"):
        layer_sensitivity(nn.Sequential(nn.ReLU()), data, progress=False)


def test_progress_is_a_line_per_layer_and_false_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    model, data = _fragile_mlp()
    lines: list[str] = []
    layer_sensitivity(model, data, probes=("prune:0.5",), progress=lines.append)
    assert [line.split(":")[0] for line in lines] == ["fc1", "fc2", "fc3"]
    assert "prune:0.5" in lines[0]
    layer_sensitivity(model, data, probes=("prune:0.5",), progress=False)
    assert capsys.readouterr().err == ""


def test_digits_cnn_has_a_row_per_layer_with_finite_drops() -> None:
    data = load_digits_data()
    model = train_classifier(make_digits_cnn(), data, epochs=1)
    sens = layer_sensitivity(model, (data.x_test, data.y_test), progress=False)
    assert [(e.name, e.kind) for e in sens.layers] == [("0", "Conv2d"), ("3", "Conv2d"), ("8", "Linear"),
                                                       ("10", "Linear")]
    assert sens.samples == 450 and sens.probes == ("int8", "int4", "prune:0.5", "prune:0.8")
    for e in sens.layers:
        for probe in sens.probes:
            if probe == "int4" and e.kind == "Conv2d":
                assert e.drops[probe] is None
            else:
                assert math.isfinite(e.drops[probe])  # type: ignore[arg-type]
                assert e.drops[probe] == pytest.approx(sens.baseline_metric - e.metrics[probe])  # type: ignore[operator]
    again = Sensitivity.from_json(sens.to_json())
    assert again == sens
    table = sens.table()
    assert all(e.name in table for e in sens.layers)
