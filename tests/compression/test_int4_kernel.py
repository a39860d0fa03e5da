"""int4 on PyTorch's int4 CPU kernel, and the dequantizing path it falls back to.

Hardware is faked at one boundary only: the ``torch.ops.aten`` namespace, where the two int4 CPU ops are
looked up, is replaced by one that lacks them, or whose matmul fails or computes wrongly (a build without
the kernel). Tests that need the real kernel are skipped, with the probe's reason, where this build lacks it.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from greenmeter import ConfigError, Meter  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.compression import compress  # noqa: E402
from greenmeter.compression.int4 import (  # noqa: E402
    DEQUANTIZED_FLAG,
    Int4Linear,
    Int4WeightConfig,
    int4_paths,
    probe_int4_kernel,
)

PACK, MATMUL = "_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu"


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    """Every test asks the (faked or real) build afresh, and leaves no cached answer behind."""
    probe_int4_kernel.cache_clear()
    yield
    probe_int4_kernel.cache_clear()


@pytest.fixture
def kernel() -> None:
    why = probe_int4_kernel()
    if why is not None:
        pytest.skip(f"no int4 CPU kernel in this build: {why}")


class FakeAten:
    """``torch.ops.aten`` as a build would have it with the int4 ops missing (None) or replaced."""

    def __init__(self, real: Any, **ops: Callable[..., Any] | None) -> None:
        self._real, self._ops = real, ops

    def __getattr__(self, name: str) -> Any:
        if name in self._ops:
            op = self._ops[name]
            if op is None:
                raise AttributeError(f"'_OpNamespace' 'aten' object has no attribute '{name}'")
            return op
        return getattr(self._real, name)


def fake_build(monkeypatch: pytest.MonkeyPatch, **ops: Callable[..., Any] | None) -> None:
    monkeypatch.setattr(torch.ops, "aten", FakeAten(torch.ops.aten, **ops))
    probe_int4_kernel.cache_clear()


def mlp(seed: int = 0, sizes: tuple[int, ...] = (96, 128, 64)) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def saved(model: nn.Module) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf)


# --------------------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "zero-point"])
@pytest.mark.parametrize("group_size, shape", [(32, (128, 1024)), (128, (64, 512)), (32, (48, 100))],
                         ids=["g32", "g128", "padded-rows"])
def test_the_kernel_agrees_with_the_dequantizing_path_within_the_quantization_error(
        kernel: None, symmetric: bool, group_size: int, shape: tuple[int, int]) -> None:
    torch.manual_seed(3)
    linear = nn.Linear(shape[1], shape[0])
    fast = Int4Linear.from_linear(linear, group_size, symmetric)
    slow = Int4Linear.from_linear(linear, group_size, symmetric, use_kernel=False)
    assert (fast.path, fast.path_reason) == ("kernel", None)
    assert (slow.path, slow.path_reason) == ("dequantize", "the dequantizing path was asked for (use_kernel=False)")
    for name in ("qweight", "scales", "zeros", "bias"):  # one set of codes, scales and zero points
        a, b = getattr(fast, name), getattr(slow, name)
        assert (a is None and b is None) or torch.equal(a, b)
    x = torch.randn(2, 5, shape[1])  # a leading batch shape is kept
    with torch.inference_mode():
        y_fast, y_slow, y_float = fast(x), slow(x), linear(x)
    assert y_fast.shape == y_slow.shape == (2, 5, shape[0]) and y_fast.dtype == torch.float32
    quantization_error = (y_slow - y_float).norm()
    assert quantization_error > 0
    # the kernel rounds activations and outputs to bfloat16: measured about 4% of the quantization error
    assert (y_fast - y_slow).norm() < 0.15 * quantization_error
    assert torch.allclose(y_fast, y_slow, rtol=0.02, atol=0.02 * float(y_slow.abs().max()))


def test_the_kernel_reads_exactly_the_weights_the_codes_stand_for(kernel: None) -> None:
    torch.manual_seed(0)
    q = Int4Linear.from_linear(nn.Linear(64, 32, bias=False), 32, symmetric=False)
    with torch.inference_mode():  # the identity through the kernel: each output is one weight, rounded to bfloat16
        seen = q(torch.eye(64)).t()
    expected = q.dequantize_weight().to(torch.bfloat16).to(torch.float32)
    assert torch.equal(seen, expected)


def test_the_model_reports_which_path_ran(kernel: None) -> None:
    model = mlp()
    q = compress(model, Int4WeightConfig(group_size=32))
    details = q.compression_info.details
    assert details["path"] == "kernel" and details["kernel_layers"] == ["0", "2"]
    assert details["dequantized_layers"] == {} and details["flags"] == []
    assert int4_paths(q) == {"0": "kernel", "2": "kernel"}
    slow = compress(model, Int4WeightConfig(group_size=32, use_kernel=False))
    assert slow.compression_info.details["path"] == "dequantize"
    assert slow.compression_info.details["flags"] == [
        f"{DEQUANTIZED_FLAG} (the dequantizing path was asked for (use_kernel=False))"]
    x = torch.randn(16, 96)
    with torch.inference_mode():
        assert (q(x) - slow(x)).norm() < 0.15 * (slow(x) - model(x)).norm()


def test_layers_the_kernel_does_not_fit_run_dequantized_with_a_reason(kernel: None) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()  # 10 rows: not a block of 16
    q = compress(model, Int4WeightConfig(group_size=32))
    details = q.compression_info.details
    assert details["path"] == "mixed" and details["kernel_layers"] == ["0"]
    assert details["dequantized_layers"] == {
        "2": "out_features 10 is not a multiple of 16, as PyTorch's int4 CPU kernel needs"}
    assert details["flags"] == ["int4 runs dequantized in 1 of 2 layers (2): those save size, not compute"]
    odd = compress(model, Int4WeightConfig(group_size=16))  # the kernel takes groups of 32, 64, 128 or 256
    assert odd.compression_info.details["path"] == "dequantize"
    assert odd.compression_info.details["flags"] == [
        f"{DEQUANTIZED_FLAG} (group size 16: PyTorch's int4 CPU kernel takes 32, 64, 128, 256 only)"]


def test_an_input_that_needs_gradients_runs_the_dequantizing_path(kernel: None) -> None:
    torch.manual_seed(0)
    q = Int4Linear.from_linear(nn.Linear(64, 32), 32)
    x = torch.randn(3, 64, requires_grad=True)
    q(x).sum().backward()  # the kernel has no backward; the dequantized matmul has
    assert x.grad is not None
    assert torch.allclose(x.grad, q.dequantize_weight().sum(0).expand(3, 64), atol=1e-5)


def test_a_saved_model_loads_back_onto_the_kernel_path(kernel: None) -> None:
    q = compress(mlp(seed=0), Int4WeightConfig(group_size=32, symmetric=False))
    state = saved(q)
    assert not [k for k in state if k.endswith(("kernel_weight", "kernel_scales_zeros"))]  # CPU-specific: rebuilt
    assert state["0.scales"].dtype == torch.bfloat16 and state["0.qweight"].dtype == torch.uint8
    other = compress(mlp(seed=1), Int4WeightConfig(group_size=32, symmetric=False))  # other weights, same shapes
    other.load_state_dict(state)
    assert int4_paths(other) == {"0": "kernel", "2": "kernel"}
    x = torch.randn(8, 96)
    with torch.inference_mode():
        assert torch.equal(other(x), q(x))


def test_version_1_state_dicts_load_with_their_zero_points_converted(kernel: None) -> None:
    q = compress(mlp(), Int4WeightConfig(group_size=32, symmetric=False))
    old = saved(q)  # as version 1 stored it: float32 scales, zeros = the group minimum (w = code * scale + min)
    for layer in ("0", "2"):
        scales = old[f"{layer}.scales"].to(torch.float32)
        old[f"{layer}.zeros"] = old[f"{layer}.zeros"].to(torch.float32) - 8 * scales
        old[f"{layer}.scales"] = scales
        old._metadata[layer]["version"] = 1  # type: ignore[attr-defined]
    fresh = compress(mlp(seed=1), Int4WeightConfig(group_size=32, symmetric=False))
    fresh.load_state_dict(old)
    for a, b in zip(int4_layers(q), int4_layers(fresh)):
        assert torch.equal(a.dequantize_weight(), b.dequantize_weight())
        assert b.path == "kernel"


def int4_layers(model: nn.Module) -> list[Int4Linear]:
    return [m for m in model.modules() if isinstance(m, Int4Linear)]


def test_use_kernel_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="use_kernel must be True or False, not 'yes'"):
        Int4WeightConfig(use_kernel="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- builds without it


def test_a_build_without_the_int4_kernels_falls_back_with_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp()
    fake_build(monkeypatch, **{PACK: None, MATMUL: None})
    why = probe_int4_kernel()
    assert why is not None and why.startswith(f"this PyTorch build ({torch.__version__}) has no int4 CPU kernel")
    assert MATMUL in why or PACK in why
    q = compress(model, Int4WeightConfig(group_size=32))
    details = q.compression_info.details
    assert details["path"] == "dequantize" and details["kernel_layers"] == []
    assert details["dequantized_layers"] == {"0": why, "2": why}
    assert details["flags"] == [f"{DEQUANTIZED_FLAG} ({why})"]
    assert [m.path for m in int4_layers(q)] == ["dequantize", "dequantize"]
    x = torch.randn(8, 96)
    with torch.inference_mode():  # it runs, dequantized: the float matmul of the weights the codes stand for
        hidden = F.relu(F.linear(x, int4_layers(q)[0].dequantize_weight(), model[0].bias))
        expected = F.linear(hidden, int4_layers(q)[1].dequantize_weight(), model[2].bias)
        assert torch.allclose(q(x), expected, atol=1e-5)


def test_a_model_saved_with_the_kernel_loads_dequantized_on_a_build_without_it(
        kernel: None, monkeypatch: pytest.MonkeyPatch) -> None:
    q = compress(mlp(), Int4WeightConfig(group_size=32))
    state = saved(q)
    x = torch.randn(8, 96)
    with torch.inference_mode():
        y_kernel = q(x)
    fake_build(monkeypatch, **{MATMUL: None})
    elsewhere = compress(mlp(seed=1), Int4WeightConfig(group_size=32))
    elsewhere.load_state_dict(state)
    assert [m.path for m in int4_layers(elsewhere)] == ["dequantize", "dequantize"]
    with torch.inference_mode():
        assert torch.allclose(elsewhere(x), y_kernel, rtol=0.02, atol=0.02 * float(y_kernel.abs().max()))


def test_a_kernel_that_fails_here_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise NotImplementedError("Could not run 'aten::_weight_int4pack_mm_for_cpu' with arguments from the "
                                  "'CPU' backend.\nmore lines")

    fake_build(monkeypatch, **{MATMUL: broken})
    assert probe_int4_kernel() == ("PyTorch's int4 CPU kernel does not run here (NotImplementedError: Could not run "
                                   "'aten::_weight_int4pack_mm_for_cpu' with arguments from the 'CPU' backend.)")
    assert compress(mlp(), Int4WeightConfig()).compression_info.details["path"] == "dequantize"


def test_a_kernel_that_computes_wrongly_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(x: Any, weight: Any, group_size: int, table: Any) -> Any:
        return torch.zeros(x.shape[0], weight.shape[0], dtype=x.dtype)

    fake_build(monkeypatch, **{MATMUL: wrong})
    assert probe_int4_kernel() == ("PyTorch's int4 CPU kernel gave results that differ from the dequantized "
                                   "weights on a test case")
    q = compress(mlp(), Int4WeightConfig())
    assert all(m.path == "dequantize" for m in int4_layers(q))


# ---------------------------------------------------------------------------------------------- compare


def test_compare_reports_the_path_of_the_int4_variant(kernel: None) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 96), torch.randint(0, 64, (64,))
    res = compare({"float": mlp(), "int4": "int4"}, (x, y), meter=Meter(backends=["cpu-estimate"]), repeats=2,
                  min_repeat_s=0.02, batch_size=16, progress=False)
    details = res.variant("int4").details
    assert details["path"] == "kernel" and details["kernel_layers"] == ["0", "2"] and details["flags"] == []
    assert details["method"] == "int4_weight"


def test_compare_flags_an_int4_variant_that_runs_dequantized(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_build(monkeypatch, **{PACK: None, MATMUL: None})
    why = probe_int4_kernel()
    torch.manual_seed(0)
    x, y = torch.randn(64, 96), torch.randint(0, 64, (64,))
    res = compare({"float": mlp(), "int4": "int4"}, (x, y), meter=Meter(backends=["cpu-estimate"]), repeats=2,
                  min_repeat_s=0.02, batch_size=16, progress=False)
    int4, base = res.variant("int4"), res.variant("float")
    assert int4.details["path"] == "dequantize"
    assert f"{DEQUANTIZED_FLAG} ({why})" in int4.flags  # the reader of the table sees it, not only the details
    assert not any(DEQUANTIZED_FLAG in f for f in base.flags)


def test_a_pickled_model_rebuilds_the_kernel_layout_where_it_is_loaded(
        kernel: None, monkeypatch: pytest.MonkeyPatch) -> None:
    q = compress(mlp(), Int4WeightConfig(group_size=32))
    buf = io.BytesIO()
    torch.save(q, buf)  # the whole model: the kernel's CPU-specific layout is not in the pickle
    x = torch.randn(8, 96)
    with torch.inference_mode():
        y = q(x)
        buf.seek(0)
        assert torch.equal(torch.load(buf, weights_only=False)(x), y)
        assert torch.equal(copy.deepcopy(q)(x), y)
        fake_build(monkeypatch, **{MATMUL: None})
        buf.seek(0)
        elsewhere = torch.load(buf, weights_only=False)
        assert [m.path for m in int4_layers(elsewhere)] == ["dequantize", "dequantize"]
        assert torch.allclose(elsewhere(x), y, rtol=0.02, atol=0.02 * float(y.abs().max()))


def test_a_linear_used_twice_in_one_parent_is_quantized_in_both_places() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(64, 64)
    model = nn.Sequential(shared, nn.ReLU(), shared).eval()  # named_children() names `shared` once
    q = compress(model, Int4WeightConfig(use_kernel=False))
    assert isinstance(q[0], Int4Linear) and q[2] is q[0]  # both uses, and still one layer
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = q[0](torch.relu(q[0](x)))
        assert torch.equal(q(x), expected)
