"""Quantization on the real digits task: dynamic and static int8, int4 weight-only, and QAT.

Hardware is faked at one boundary only: the list of quantized engines the PyTorch build reports
(``torch._C._supported_qengines``, which ``torch.backends.quantized.supported_engines`` reads).
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter._errors import (  # noqa: E402
    CompressionError,
    ConfigError,
    EngineUnavailableError,
    UnsupportedModelError,
)
from greenmeter.compression import compress  # noqa: E402
from greenmeter.compression.int4 import Int4Linear, Int4WeightConfig, pack_int4, unpack_int4  # noqa: E402
from greenmeter.compression.qat import QATConfig  # noqa: E402
from greenmeter.compression.quantization import DynamicQuantConfig, StaticQuantConfig  # noqa: E402
from greenmeter.demo.digits import accuracy, batches, train_classifier  # noqa: E402

nnq = torch.ao.nn.quantized
nnqd = torch.ao.nn.quantized.dynamic
_QENGINE_ID = {"fbgemm": 1, "qnnpack": 2, "onednn": 3, "x86": 4}  # c10/core/QEngine.h


def serialized_bytes(obj) -> int:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((a(x).argmax(1) == b(x).argmax(1)).float().mean())


def calibration_batches(digits) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    return [x for x, _ in batches(digits.x_train, digits.y_train, 256, shuffle=False)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor], training: bool) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(type(m) in (nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear)
               for m in model.modules())
    assert model.training is training


@pytest.fixture
def fake_engines(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Make this PyTorch build report only the given quantized engines."""

    def fake(*names: str) -> None:
        monkeypatch.setattr(torch._C, "_supported_qengines", lambda: [_QENGINE_ID[n] for n in names])

    return fake


# --- dynamic int8 -----------------------------------------------------------------------------------


def test_dynamic_int8_on_the_baseline(baseline, digits, recwarn) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(baseline)
    q = compress(baseline, DynamicQuantConfig())
    linears = [m for m in q.modules() if isinstance(m, nnqd.Linear)]
    assert len(linears) == 2
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert agreement(baseline, q, digits.x_test) >= 0.99
    ratio = serialized_bytes(baseline.state_dict()) / serialized_bytes(q.state_dict())
    assert ratio > 2.5  # only the Linear weights shrink: 2.83x measured for this CNN
    details = q.compression_info.details
    assert details["engine"] == "x86" and details["quantized_layers"] == 2
    assert "deprecated" in details["api"]
    assert not [w for w in recwarn if issubclass(w.category, (DeprecationWarning, FutureWarning, UserWarning))]
    assert_unchanged(baseline, before, training=False)


def test_dynamic_int8_quantizes_lstm_and_a_bare_lstm_root() -> None:
    torch.manual_seed(0)

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(16, 32, batch_first=True)
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0])

    model = Tagger().eval()
    x = torch.randn(4, 7, 16)
    q = compress(model, DynamicQuantConfig())
    assert isinstance(q.lstm, nnqd.LSTM) and isinstance(q.head, nnqd.Linear)
    with torch.inference_mode():
        ref, out = model(x), q(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()

    root = compress(nn.LSTM(16, 32).eval(), DynamicQuantConfig(layer_types=("LSTM",)))
    assert isinstance(root, nnqd.LSTM)

    lookup = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 4)).eval()
    q = compress(lookup, DynamicQuantConfig(layer_types=("Linear", "Embedding")))
    assert isinstance(q[0], nnq.Embedding) and isinstance(q[1], nnqd.Linear)
    assert q.compression_info.details["integer_modules"] == {"Embedding": 1, "Linear": 1}


def test_dynamic_int8_per_channel_scales_rows_of_different_range() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    with torch.no_grad():  # rows whose ranges span three orders of magnitude
        layer.weight.mul_(torch.logspace(-3, 0, 32)[:, None])
    model = nn.Sequential(layer).eval()
    x = torch.randn(256, 64)
    errors = {}
    for per_channel in (True, False):
        q = compress(model, DynamicQuantConfig(per_channel=per_channel))
        scheme = q[0].weight().qscheme()
        assert scheme == (torch.per_channel_affine if per_channel else torch.per_tensor_affine)
        assert q.compression_info.details["weight_scales"] == ("per output channel" if per_channel else "per tensor")
        with torch.inference_mode():
            errors[per_channel] = float(((q(x) - model(x)) / model(x).abs().mean(0)).abs().mean())
    # the small rows lose almost all precision under one scale per tensor
    assert errors[True] < errors[False] / 4, errors  # measured: 0.0085 against 0.050
    with pytest.raises(ConfigError, match="per_channel must be True or False"):
        DynamicQuantConfig(per_channel="yes")  # type: ignore[arg-type]


def test_dynamic_int8_needs_a_layer_it_can_quantize() -> None:
    convnet = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    with pytest.raises(UnsupportedModelError, match="no Linear/LSTM layer in Sequential"):
        compress(convnet, DynamicQuantConfig())


# --- static int8 ------------------------------------------------------------------------------------


def test_static_int8_on_the_baseline(baseline, digits, recwarn) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(baseline)
    q = compress(baseline, StaticQuantConfig(calibration=calibration_batches(digits)))
    convs = [m for m in q.modules() if isinstance(m, nnq.Conv2d)]
    assert len(convs) == 2 and len([m for m in q.modules() if isinstance(m, nnq.Linear)]) == 2
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in q.modules())
    assert convs[0].weight().dtype == torch.qint8
    assert agreement(baseline, q, digits.x_test) >= 0.99
    ratio = serialized_bytes(baseline.state_dict()) / serialized_bytes(q.state_dict())
    assert ratio >= 3.0  # 3.73x measured
    details = q.compression_info.details
    assert details["calibration_samples"] == len(digits.x_train) == 1347
    assert details["per_channel"] is True and details["engine"] == "x86"
    assert not [w for w in recwarn if issubclass(w.category, (DeprecationWarning, FutureWarning, UserWarning))]
    assert_unchanged(baseline, before, training=False)


def test_static_int8_with_a_calibration_callable_and_per_tensor_weights(baseline, digits) -> None:  # type: ignore[no-untyped-def]
    seen = []

    def calibrate(model: nn.Module) -> None:
        seen.append(model.training)
        for x in calibration_batches(digits)[:2]:
            model(x)

    q = compress(baseline, StaticQuantConfig(calibration=calibrate, per_channel=False))
    assert seen == [False]
    conv = next(m for m in q.modules() if isinstance(m, nnq.Conv2d))
    assert conv.weight().qscheme() == torch.per_tensor_affine
    assert agreement(baseline, q, digits.x_test) >= 0.98


def test_static_int8_missing_engine_names_it_and_the_ones_available(baseline, digits, fake_engines) -> None:  # type: ignore[no-untyped-def]
    fake_engines("qnnpack")
    with pytest.raises(EngineUnavailableError, match=r"'fbgemm' is not available.*available: qnnpack"):
        compress(baseline, StaticQuantConfig(calibration=[digits.x_train[:64]], engine="fbgemm"))
    q = compress(baseline, StaticQuantConfig(calibration=[digits.x_train[:256]]))  # auto falls back
    assert q.compression_info.details["engine"] == "qnnpack"
    fake_engines()
    with pytest.raises(EngineUnavailableError, match="no int8 quantized engine"):
        compress(baseline, DynamicQuantConfig())


def test_calibration_without_batches_is_a_config_error(baseline) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="no batches"):
        compress(baseline, StaticQuantConfig(calibration=[]))
    with pytest.raises(ConfigError, match="yield tensors"):
        compress(baseline, StaticQuantConfig(calibration=["not a tensor"]))


@pytest.mark.parametrize(
    "config",
    [DynamicQuantConfig(), StaticQuantConfig(calibration=[torch.zeros(1, 1, 8, 8)]), Int4WeightConfig()],
    ids=["dynamic", "static", "int4"],
)
def test_post_training_quantization_refuses_a_model_in_training_mode(baseline, config) -> None:  # type: ignore[no-untyped-def]
    baseline.train()
    before = snapshot(baseline)
    with pytest.raises(CompressionError, match=r"the model \(Sequential\) is in training mode.*call model\.eval\(\) first"):
        compress(baseline, config)
    assert_unchanged(baseline, before, training=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DynamicQuantConfig(engine="tpu"),
        lambda: DynamicQuantConfig(layer_types=("Conv2d",)),
        lambda: DynamicQuantConfig(layer_types=()),
        lambda: StaticQuantConfig(calibration=5),
        lambda: StaticQuantConfig(calibration="data"),
        lambda: StaticQuantConfig(calibration=[], per_channel="yes"),
        lambda: Int4WeightConfig(group_size=0),
        lambda: Int4WeightConfig(group_size=True),
        lambda: Int4WeightConfig(layer_types=("Conv2d",)),
        lambda: QATConfig(train_fn=None),
        lambda: QATConfig(train_fn=print, engine="cuda"),
    ],
)
def test_configs_validate_themselves(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda keep: DynamicQuantConfig(keep_layers=keep),
        lambda keep: StaticQuantConfig(calibration=[torch.zeros(1, 1, 8, 8)], keep_layers=keep),
        lambda keep: QATConfig(train_fn=print, keep_layers=keep),
        lambda keep: Int4WeightConfig(keep_layers=keep),
    ],
    ids=["dynamic", "static", "qat", "int4"],
)
def test_keep_layers_must_be_a_tuple_of_module_names(make) -> None:  # type: ignore[no-untyped-def]
    assert make(["8", "10"]).keep_layers == ("8", "10") and make(()).keep_layers == ()
    owner = f"{type(make(())).__name__}.keep_layers"
    with pytest.raises(ConfigError, match=rf"^{owner} must be a tuple of module names .*not '10'; write \('10',\)"):
        make("10")
    for bad in (("",), ("8", None), ("a b",), 8, None):
        with pytest.raises(ConfigError, match=rf"^{owner} must be a tuple of module names"):
            make(bad)
    with pytest.raises(ConfigError, match=rf"^{owner} names '8' more than once"):
        make(("8", "8"))


def test_a_kept_conv_stays_a_float_conv_with_its_own_weights_not_fused(baseline, digits) -> None:  # type: ignore[no-untyped-def]
    calibration = calibration_batches(digits)
    static = compress(baseline, StaticQuantConfig(calibration=calibration, keep_layers=("0",)))

    def observe(model: nn.Module) -> None:  # runs the observers, trains no weight
        with torch.no_grad():
            for x in calibration:
                model(x)

    qat = compress(baseline, QATConfig(train_fn=observe, keep_layers=("0",)))
    for model in (static, qat):
        got = dict(model.named_modules())
        assert type(got["0"]) is nn.Conv2d and torch.equal(got["0"].weight, baseline[0].weight)  # no BatchNorm folded
        assert type(got["1"]) is torch.ao.nn.intrinsic.quantized.BNReLU2d  # its BatchNorm is quantized on its own
        assert type(got["3"]) is torch.ao.nn.intrinsic.quantized.ConvReLU2d
        assert model.compression_info.details["kept_layers"] == ["0"]
        assert agreement(model, baseline, digits.x_test) > 0.95
    # a kept BatchNorm: its conv is quantized alone, the BatchNorm stays float
    bn = dict(compress(baseline, StaticQuantConfig(calibration=calibration, keep_layers=("1",))).named_modules())
    assert type(bn["1"]) is nn.BatchNorm2d and type(bn["0"]) is nnq.Conv2d
    assert torch.equal(bn["1"].running_mean, baseline[1].running_mean)


# --- int4 weight-only -------------------------------------------------------------------------------


def test_pack_int4_puts_two_codes_in_a_byte() -> None:
    codes = torch.tensor([1, 2, 15, 0, 7], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.tolist() == [0x21, 0x0F, 0x07]
    many = torch.randint(0, 16, (33, 17), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert pack_int4(many).numel() == math.ceil(many.numel() / 2)
    assert torch.equal(unpack_int4(pack_int4(many), many.numel()).reshape(33, 17), many)
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([16]))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(128, 1024), (7, 50)], ids=["baseline-hidden", "padded"])
def test_int4_dequantized_weight_is_within_half_a_step(shape, symmetric) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    linear = nn.Linear(shape[1], shape[0])
    q = Int4Linear.from_linear(linear, group_size=32, symmetric=symmetric, use_kernel=False)  # the float path
    groups = math.ceil(shape[1] / 32)
    assert q.qweight.numel() == math.ceil(shape[0] * groups * 32 / 2)
    error = (q.dequantize_weight() - linear.weight.detach()).abs()
    bound = q.scales.repeat_interleave(32, dim=1)[:, : shape[1]] / 2
    assert bool((error <= bound * (1 + 1e-5) + 1e-7).all())
    x = torch.randn(3, shape[1])
    assert q(x).shape == (3, shape[0])
    assert torch.allclose(q(x), nn.functional.linear(x, q.dequantize_weight(), linear.bias), atol=1e-5)


def test_int4_on_the_baseline(baseline, digits) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(baseline)
    linears = [m for m in baseline.modules() if isinstance(m, nn.Linear)]
    q = compress(baseline, Int4WeightConfig(group_size=32))
    packed = [m for m in q.modules() if isinstance(m, Int4Linear)]
    assert len(packed) == 2 and not any(type(m) is nn.Linear for m in q.modules())
    for lin, p in zip(linears, packed):
        assert p.qweight.numel() == math.ceil(lin.weight.numel() / 2)
    details = q.compression_info.details
    assert details["bits"] == 4 and details["group_size"] == 32
    assert details["packed_bytes"] == sum(math.ceil(m.weight.numel() / 2) for m in linears)
    assert details["float_bytes"] == sum(4 * m.weight.numel() for m in linears)
    ratio = serialized_bytes(nn.ModuleList(linears).state_dict()) / serialized_bytes(nn.ModuleList(packed).state_dict())
    assert ratio >= 3.5  # the Linear layers, weights and bias: 6.3x measured
    drop = accuracy(baseline, digits.x_test, digits.y_test) - accuracy(q, digits.x_test, digits.y_test)
    assert drop <= 0.01
    reloaded = copy.deepcopy(q)
    reloaded.load_state_dict(torch.load(io.BytesIO(_saved(q.state_dict()))))
    assert agreement(q, reloaded, digits.x_test) == 1.0
    assert_unchanged(baseline, before, training=False)


def _saved(obj) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_int4_pads_rows_that_do_not_fill_a_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 20), nn.ReLU(), nn.Linear(20, 3)).eval()
    q = compress(model, Int4WeightConfig(group_size=32, symmetric=False))
    assert q.compression_info.details["padded_layers"] == ["0", "2"]
    x = torch.randn(8, 50)
    with torch.inference_mode():
        assert (q(x) - model(x)).abs().max() < 0.1


# --- quantization-aware training --------------------------------------------------------------------


def test_qat_fine_tunes_then_converts_to_a_real_int8_model(baseline, digits, recwarn) -> None:  # type: ignore[no-untyped-def]
    from torch.ao.quantization import FakeQuantizeBase

    before = snapshot(baseline)
    modes = []

    def fine_tune(model: nn.Module) -> None:
        modes.append(model.training)
        train_classifier(model, digits, epochs=3, lr=1e-3)

    q = compress(baseline, QATConfig(train_fn=fine_tune))
    assert modes == [True] and not q.training
    assert not any(isinstance(m, FakeQuantizeBase) for m in q.modules())
    assert len([m for m in q.modules() if isinstance(m, nnq.Conv2d)]) == 2
    assert len([m for m in q.modules() if isinstance(m, nnq.Linear)]) == 2
    assert accuracy(q, digits.x_test, digits.y_test) >= 0.97
    assert q.compression_info.details["fake_quant_modules_trained"] > 0
    assert not [w for w in recwarn if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert_unchanged(baseline, before, training=False)


def test_warnings_of_the_users_own_code_still_reach_the_user(baseline, digits) -> None:  # type: ignore[no-untyped-def]
    def noisy(model: nn.Module) -> None:
        warnings.warn("learning rate looks high", UserWarning, stacklevel=1)
        model(digits.x_train[:64])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compress(baseline, QATConfig(train_fn=noisy))
    assert [str(w.message) for w in caught] == ["learning rate looks high"]


class _MaskArithmetic(nn.Module):
    """A text model that multiplies its integer mask before casting it: QAT would observe an int64 tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(50, 8), nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = (attention_mask * 2).unsqueeze(-1).float()
        return self.fc((self.emb(input_ids) * weights).mean(1))


def test_qat_on_an_integer_tensor_names_it_and_says_to_cast_it_and_the_baseline_is_untouched() -> None:
    torch.manual_seed(0)
    model = _MaskArithmetic().eval()
    before = copy.deepcopy(model.state_dict())
    ids, mask = torch.randint(0, 50, (8, 6)), torch.ones(8, 6, dtype=torch.long)
    with pytest.raises(UnsupportedModelError) as err:
        compress(model, QATConfig(train_fn=lambda m: m(ids, mask), keep_layers=("emb",)))
    said = str(err.value)
    assert said.startswith("quantization-aware training would fake-quantize the model's input 'attention_mask' "
                           "(used by mul), an integer tensor (int64)")
    assert "Cast it to float in the model's forward" in said
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and not model.training


# --- the int8 layout pass: a Flatten between the convolutions and a Linear layer -----------------------------


def graph_calls(model: nn.Module) -> list[str]:
    """The names of the calls in an FX-converted model's graph, in order (modules by their class)."""
    out = []
    for node in model.graph.nodes:
        if node.op == "call_module":
            out.append(type(model.get_submodule(node.target)).__name__)
        elif node.op in ("call_method", "call_function"):
            out.append(getattr(node.target, "__name__", str(node.target)))
    return out


def test_the_layout_pass_is_exact_in_float(baseline: nn.Module, digits) -> None:  # type: ignore[no-untyped-def]
    from greenmeter.compression.quantization import int8_layout

    model = copy.deepcopy(baseline)
    changes = int8_layout(model)
    assert changes == ["7: flattens channels-last; the input columns of 8 are permuted to match (exact)"]
    assert not any(isinstance(m, nn.Flatten) for m in model.modules())
    with torch.inference_mode():
        want, got = baseline(digits.x_test), model(digits.x_test)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    # the Linear layer's columns were permuted, not left alone: without the channels-last flatten it is wrong
    assert not torch.allclose(model[8].weight, baseline[8].weight)


def test_static_int8_flattens_the_quantized_tensor_without_leaving_int8(baseline: nn.Module, digits) -> None:  # type: ignore[no-untyped-def]
    q = compress(baseline, StaticQuantConfig(calibration=calibration_batches(digits)))
    calls = graph_calls(q)
    # one quantize of the input and one dequantize of the output: nothing between the convolutions and the
    # Linear layers leaves int8 (before, FX dequantized around nn.Flatten and copied the NHWC activations)
    assert calls.count("quantize_per_tensor") == 1 and calls.count("dequantize") == 1, calls
    assert calls[calls.index("MaxPool2d") + 1:calls.index("LinearReLU")] == ["transpose", "transpose", "flatten"]
    assert q.compression_info.details["layout"] == [
        "7: flattens channels-last; the input columns of 8 are permuted to match (exact)"]
    # the int8 model still classifies as the float one does
    assert agreement(q, baseline, digits.x_test) >= 0.98
    # and the flatten is a view of the convolutions' channels-last output: no copy
    with torch.inference_mode():
        seen = {}
        q.get_submodule("6").register_forward_hook(lambda mod, inp, out: seen.update(pool=out))
        q(digits.x_test[:16])
        flat = torch.flatten(seen["pool"].transpose(1, 2).transpose(2, 3), 1)
    assert flat.data_ptr() == seen["pool"].data_ptr()


def test_the_layout_pass_leaves_what_it_cannot_prove_in_nchw_order() -> None:
    from greenmeter.compression.quantization import int8_layout

    shared = nn.Linear(8 * 2 * 2, 8)
    torch.manual_seed(0)
    cases = {
        # the Linear layer is used twice: permuting its columns would change its other use
        "shared": nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), shared,
                                nn.Unflatten(1, (8, 1, 1)), nn.Upsample(size=2), nn.Flatten(), shared),
        # no convolution before the Flatten (a Linear over an image)
        "no conv": nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, 3)),
        # something that mixes channels between the convolution and the Flatten
        "mixing": nn.Sequential(nn.Conv2d(1, 4, 3), nn.PixelShuffle(2), nn.Flatten(), nn.Linear(1 * 12 * 12, 3)),
    }
    x = torch.randn(2, 1, 8, 8)
    for name, model in cases.items():
        model.eval()
        with torch.no_grad():
            want = model(x)
            changes = int8_layout(model)
            got = model(x)
        assert changes and all("runs as torch.flatten" in c for c in changes), (name, changes)
        assert torch.allclose(got, want, atol=1e-6), name
