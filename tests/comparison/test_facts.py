"""Tests of greenmeter.comparison.facts: size on disk, weight counts and MACs of float, quantized and packed models."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter._errors import ConfigError, EngineUnavailableError  # noqa: E402
from greenmeter.compression import (  # noqa: E402
    DynamicQuantConfig,
    Int4WeightConfig,
    MultiExitModel,
    PruneConfig,
    StaticQuantConfig,
    compress,
)
from greenmeter.comparison.facts import (  # noqa: E402
    MacCount,
    ParamCounts,
    count_macs,
    parameter_counts,
    serialized_size_b,
)


def mlp(seed: int = 0, hidden: int = 20) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, 5)).eval()


def big_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).eval()


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()


def quantize(model: nn.Module, config: object) -> nn.Module:
    try:
        return compress(model, config)
    except EngineUnavailableError as err:  # pragma: no cover - every x86 and arm build has one
        pytest.skip(str(err))


def test_importing_model_facts_does_not_import_torch() -> None:
    code = "import sys, greenmeter.comparison.facts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------------------------------- MACs


def test_linear_macs_are_exact() -> None:
    # 10*20 + 20*5 = 300 MACs per sample (biases are not counted), whatever the batch
    for batch in (1, 7):
        result = count_macs(mlp(), torch.randn(batch, 10))
        assert result == MacCount(300.0, "flop-counter", None)


def test_conv_macs_match_a_hand_count() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, groups=2)).eval()
    # conv1: 8*9*9 outputs x 3*3*3 = 17496; conv2: 4*4*4 outputs x (8/2)*3*3 = 2304
    assert count_macs(model, torch.randn(2, 3, 9, 9)).macs_per_sample == 17496 + 2304


def test_attention_is_counted_despite_the_fast_path() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    # per token: in_proj 16*48 + out_proj 16*16 + feed-forward 2*16*32 = 2048; 5 tokens = 10240
    # attention: scores and weighted sum, 2 * heads(2) * 5*5 * head_dim(8) = 800
    assert count_macs(layer, torch.randn(2, 5, 16)).macs_per_sample == 10240 + 800
    assert torch.backends.mha.get_fastpath_enabled() is True  # the switch is restored


def test_count_macs_leaves_the_model_as_it_was() -> None:
    model = mlp().train()
    model[2].eval()  # a mixed state must come back exactly
    before = copy.deepcopy(model.state_dict())
    count_macs(model, torch.randn(3, 10))
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_count_macs_takes_a_tuple_of_inputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    assert count_macs(Two(), (torch.randn(5, 4), torch.randn(5, 6))).macs_per_sample == 12 + 18


def test_count_macs_rejects_an_input_without_a_batch() -> None:
    with pytest.raises(ConfigError, match="batch"):
        count_macs(mlp(), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="non-empty"):
        count_macs(mlp(), torch.randn(0, 10))


def test_dynamic_int8_macs_are_counted_from_the_quantized_layers_shapes() -> None:
    model = mlp()
    quantized = quantize(model, DynamicQuantConfig())
    x = torch.randn(4, 10)
    alone = count_macs(quantized, x)
    # 10*20 + 20*5, from the int8 layers themselves, no float model needed
    assert (alone.macs_per_sample, alone.method, alone.note) == (300.0, "flop-counter and quantized layer shapes", None)
    other = mlp(hidden=40)  # a float equivalent is not used when the model's own layers can be counted
    assert count_macs(quantized, x, float_equivalent=other).macs_per_sample == 300.0


def test_static_int8_counts_and_macs() -> None:
    model = small_cnn()
    x = torch.randn(8, 1, 8, 8)
    quantized = quantize(model, StaticQuantConfig(calibration=[x]))
    # conv: 4*6*6 outputs x 9 = 1296; linear: 144*10 = 1440
    assert count_macs(quantized, x) == MacCount(1296 + 1440, "flop-counter and quantized layer shapes")
    counts = parameter_counts(quantized)
    assert counts.kind == "stored weight elements"
    assert counts.total == parameter_counts(model).total == 4 * 9 + 4 + 144 * 10 + 10  # no batch norm to fold
    assert serialized_size_b(quantized) > 0


def test_quantized_ops_without_macs_do_not_stop_the_count_from_the_layers_shapes() -> None:
    # the digits CNN's shape: batch norm folded into the conv, then an int8 max-pool (aten.quantized_max_pool2d)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 10)).eval()
    x = torch.randn(8, 1, 8, 8)
    quantized = quantize(model, StaticQuantConfig(calibration=[x]))
    hand = 64 * 4 * 9 + 64 * 10  # conv: 64 positions x 4 channels x 9; linear 64 -> 10
    assert count_macs(model, x).macs_per_sample == hand
    other = mlp()  # not counted in its place
    assert count_macs(quantized, x, float_equivalent=other) == MacCount(hand, "flop-counter and quantized layer shapes")


def test_a_pruned_then_quantized_model_reports_its_own_macs_not_its_float_ancestors() -> None:
    from greenmeter.compression import ChannelPruneConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.randn(4, 1, 8, 8)
    pruned = compress(model, ChannelPruneConfig(ratio=0.5, example_input=x[:1]))
    widths = [m.out_channels for m in pruned if isinstance(m, nn.Conv2d)]
    assert widths == [4, 4]
    # by hand: conv 1->4 (64 outputs x 4 channels x 9), grouped conv 4->4 in 2 groups (256 outputs x 2 x 9),
    # linear 256 -> 10
    hand = 64 * 4 * 9 + 64 * 4 * 2 * 9 + 4 * 64 * 10
    assert count_macs(pruned, x).macs_per_sample == hand
    for config in (StaticQuantConfig(calibration=[x]), DynamicQuantConfig()):
        quantized = quantize(pruned, config)
        # the float baseline given as float_equivalent (what compare passes) does not replace the model's own count
        counted = count_macs(quantized, x, float_equivalent=model)
        assert (counted.macs_per_sample, counted.method) == (hand, "flop-counter and quantized layer shapes")


def test_rnn_kernels_are_reported_as_uncounted() -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[0]

    model = Tagger().eval()
    result = count_macs(model, torch.randn(3, 2, 4))
    assert result.macs_per_sample is None and "rnn" in result.note
    quantized = quantize(model, DynamicQuantConfig(layer_types=("LSTM",)))
    float_counts = parameter_counts(model)
    assert float_counts == ParamCounts(32 * 4 + 32 * 8 + 32 + 32, 448, "parameters")
    # the gate biases sit both in each cell and in its packed linears: counted once
    stored = parameter_counts(quantized)
    assert (stored.total, stored.kind) == (448, "stored weight elements")
    assert 440 <= stored.nonzero <= 448  # int8 rounding may send a tiny weight to the zero point
    assert count_macs(quantized, torch.randn(3, 2, 4), float_equivalent=model).macs_per_sample is None


# --------------------------------------------------------------------------------- size and weights


def test_float_counts_deduplicate_shared_parameters() -> None:
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    with torch.no_grad():
        shared.weight[0].zero_()
    assert parameter_counts(model) == ParamCounts(72, 64, "parameters")


def test_dynamic_int8_is_smaller_and_stores_every_weight() -> None:
    model = big_mlp()
    quantized = quantize(model, DynamicQuantConfig())
    assert serialized_size_b(model) > 3 * serialized_size_b(quantized)
    float_counts, stored = parameter_counts(model), parameter_counts(quantized)
    assert float_counts.kind == "parameters" and stored.kind == "stored weight elements"
    assert stored.total == float_counts.total == 512 * 512 + 512 + 512 * 10 + 10
    assert list(quantized.parameters()) == []  # what parameters() alone would have reported


def test_quantized_nonzero_counts_codes_off_the_zero_point() -> None:
    model = mlp(hidden=8)
    with torch.no_grad():  # weights of magnitude 0.5..1 (none rounds to zero in int8), every other one zero
        for layer in (model[0], model[2]):
            w = torch.linspace(0.5, 1.0, layer.weight.numel()).reshape(layer.weight.shape)
            w[:, ::2] = 0.0
            layer.weight.copy_(w * torch.tensor([1.0, -1.0]).repeat(w.shape[1])[: w.shape[1]])
    float_counts = parameter_counts(model)
    zeros = 8 * 5 + 5 * 4  # half the columns of each weight
    assert float_counts.nonzero == float_counts.total - zeros
    stored = parameter_counts(quantize(model, DynamicQuantConfig()))
    assert (stored.total, stored.nonzero) == (float_counts.total, float_counts.nonzero)


def test_int4_is_smaller_and_stores_every_weight() -> None:
    model = big_mlp()
    packed = compress(model, Int4WeightConfig(group_size=32))
    assert serialized_size_b(model) > 5 * serialized_size_b(packed)  # 4-bit codes plus float32 group scales
    counts = parameter_counts(packed)
    assert counts.kind == "stored weight elements"
    assert counts.total == parameter_counts(model).total
    # an Int4Linear that dequantizes runs a float matmul, counted directly; one on PyTorch's int4 kernel (which
    # the flop counter cannot see) is counted from its shape: the same MACs either way
    kernel = any(getattr(m, "path", None) == "kernel" for m in packed.modules())
    method = "flop-counter and quantized layer shapes" if kernel else "flop-counter"
    assert count_macs(packed, torch.randn(2, 512)) == MacCount(512 * 512 + 512 * 10, method, None)


def test_int4_counts_real_weights_not_the_row_padding() -> None:
    model = mlp()  # in_features 10 and 20 are padded up to 16 and 32 codes a row at group_size=16
    packed = compress(model, Int4WeightConfig(group_size=16, symmetric=False))
    assert 2 * int(packed[0].qweight.numel()) == 20 * 16  # stored codes, padding included
    assert parameter_counts(packed).total == parameter_counts(model).total == 325
    # non-zero = dequantized weight != 0 (plus the float biases)
    expected = sum(int(torch.count_nonzero(packed[i].dequantize_weight())) for i in (0, 2)) + 25
    assert parameter_counts(packed).nonzero == expected


def test_pruned_model_has_half_its_prunable_weights_nonzero() -> None:
    model = big_mlp()
    pruned = compress(model, PruneConfig(sparsity=0.5))
    counts = parameter_counts(pruned)
    prunable = 512 * 512 + 512 * 10
    assert pruned.compression_info.details["zero_weights"] == prunable // 2
    assert counts.total == parameter_counts(model).total
    assert counts.nonzero == counts.total - prunable // 2  # biases are not pruned
    assert counts.sparsity == pytest.approx((prunable // 2) / counts.total)


def test_early_exit_model_facts() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 10),
    ).eval()
    multi = MultiExitModel(backbone, [1], torch.randn(1, 1, 8, 8), threshold=1.0)
    multi.freeze_backbone()
    multi.train()  # heads train, blocks stay in eval: must come back like this
    x = torch.randn(4, 1, 8, 8)
    assert count_macs(multi, x).macs_per_sample == multi.full_macs  # threshold 1.0: nobody exits early
    assert multi.training and not multi.blocks.training
    multi.threshold = 1e-6  # everybody leaves at the first head
    assert count_macs(multi, x).macs_per_sample == multi.exit_macs[0]
    head = sum(p.numel() for p in multi.heads.parameters())
    assert parameter_counts(multi).total == parameter_counts(backbone).total + head  # shared layers once
    assert serialized_size_b(multi) > serialized_size_b(backbone)


def test_records_round_trip_through_dicts() -> None:
    for counts in (ParamCounts(10, 7, "parameters"), ParamCounts(0, 0, "stored weight elements")):
        assert ParamCounts.from_dict(counts.to_dict()) == counts
    assert ParamCounts(0, 0, "parameters").sparsity == 0.0
    for macs in (MacCount(300.0, "flop-counter"), MacCount(None, "unavailable", "why")):
        assert MacCount.from_dict(macs.to_dict()) == macs
