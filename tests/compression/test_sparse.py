"""Sparse execution of pruned Linear layers: SparseLinear, the measured choice, and the flags of pruned variants."""

from __future__ import annotations

import copy
import io

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.facts import count_macs, parameter_counts  # noqa: E402
from greenmeter.comparison.recipes import RecipeContext, build_variant  # noqa: E402
from greenmeter.compression import compress  # noqa: E402
from greenmeter.compression.lottery import LotteryTicketConfig  # noqa: E402
from greenmeter.compression.pruning import PruneConfig  # noqa: E402
from greenmeter.compression.sparse import (  # noqa: E402
    DENSE_KERNELS_FLAG, SparseLinear, sparse_candidates, time_forward, use_sparse_kernels,
)


OFF_FLAG = (f'{DENSE_KERNELS_FLAG} (sparse execution off; with sparse_execution="auto" pruned Linear layers run '
            "sparse kernels where those measure faster)")


def _pruned_linear(in_f: int = 64, out_f: int = 48, sparsity: float = 0.8, seed: int = 0,
                   bias: bool = True) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_f, in_f, generator=gen))
        layer.weight.mul_(torch.rand(out_f, in_f, generator=gen) >= sparsity)
        if bias:
            layer.bias.copy_(torch.randn(out_f, generator=gen))
    return layer


def _mlp(sparsity: float = 0.9) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) >= sparsity)
    return model


def _fake_measure(seconds: dict[type, float], calls: list[tuple[str, int]] | None = None):
    """``measure(layer, x)``: a fixed time per layer class (no clock), recording what was timed."""

    def measure(layer: nn.Module, x: torch.Tensor) -> float:
        if calls is not None:
            calls.append((type(layer).__name__ if not isinstance(layer, SparseLinear) else layer.layout, len(x)))
        return seconds[type(layer)]

    return measure


# ------------------------------------------------------------------------------------------ the layer


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_the_dense_layer(batch: int, bias: bool) -> None:
    dense = _pruned_linear(bias=bias)
    sparse = SparseLinear.from_linear(dense)
    x = torch.randn(batch, 64, generator=torch.Generator().manual_seed(1))
    assert sparse.layout == "csr" and sparse.nnz == int(torch.count_nonzero(dense.weight))
    assert torch.allclose(sparse(x), dense(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(sparse.dense_weight(), dense.weight.detach())
    back = sparse.to_linear()
    assert torch.equal(back.weight, dense.weight) and (back.bias is None) == (not bias)


def test_sparse_linear_takes_any_leading_dims_and_passes_gradients_to_the_input() -> None:
    dense = _pruned_linear()
    sparse = SparseLinear.from_linear(dense)
    x = torch.randn(2, 3, 64, requires_grad=True)
    y = sparse(x)
    assert y.shape == (2, 3, 48) and torch.allclose(y, dense(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert torch.allclose(x.grad, dense.weight.detach().sum(dim=0).expand(2, 3, 64), rtol=1e-5, atol=1e-5)


def test_bsr_layer_matches_on_block_sparse_weights() -> None:
    dense = _pruned_linear(64, 48, sparsity=0.0)
    with torch.no_grad():  # keep the 8 x 8 blocks (r, c) with r + c a multiple of 4: a quarter of them
        r, c = torch.meshgrid(torch.arange(6), torch.arange(8), indexing="ij")
        keep = ((r + c) % 4 == 0).repeat_interleave(8, 0).repeat_interleave(8, 1)
        dense.weight.mul_(keep)
    candidates = sparse_candidates(dense)
    # 32 does not divide 48; a 16 x 16 block holds at most one kept 8 x 8 block (a quarter full, not half)
    assert list(candidates) == ["csr", "bsr 8x8"]
    bsr = candidates["bsr 8x8"]
    assert bsr.layout == "bsr" and bsr.blocksize == (8, 8) and bsr.nnz == int(keep.sum())
    x = torch.randn(5, 64)
    assert torch.allclose(bsr(x), dense(x), rtol=1e-5, atol=1e-5)


def test_unstructured_zeros_get_no_bsr_candidate() -> None:
    assert list(sparse_candidates(_pruned_linear(64, 64, sparsity=0.8))) == ["csr"]


def test_state_dict_round_trips_and_takes_the_saved_sizes() -> None:
    dense = _pruned_linear()
    sparse = SparseLinear.from_linear(dense)
    buf = io.BytesIO()
    torch.save(sparse.state_dict(), buf)
    buf.seek(0)
    fresh = SparseLinear(64, 48)  # no values yet: the loaded state brings its own number of them
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(3, 64)
    assert fresh.nnz == sparse.nnz and torch.equal(fresh(x), sparse(x))
    assert set(sparse.state_dict()) == {"crow_indices", "col_indices", "values", "bias"}
    assert sparse.state_dict()["col_indices"].dtype == torch.int32
    bsr = SparseLinear.from_linear(dense, "bsr", (8, 8))
    into_csr = SparseLinear(64, 48)
    into_csr.load_state_dict(bsr.state_dict())  # the layout follows the saved values' shape
    assert into_csr.layout == "bsr" and into_csr.blocksize == (8, 8)
    assert torch.allclose(into_csr(x), dense(x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(copy.deepcopy(sparse)(x), dense(x), rtol=1e-5, atol=1e-5)


def test_facts_count_a_sparse_layers_weights_and_macs_as_the_dense_layers() -> None:
    model = _mlp()
    before, macs = parameter_counts(model), count_macs(model, torch.zeros(4, 32))
    model[0] = SparseLinear.from_linear(model[0])
    after = parameter_counts(model)
    assert (after.total, after.nonzero) == (before.total, before.nonzero)
    # the flop counter counts the sparse matmul from its shapes: dense MACs, as the flag says
    assert count_macs(model, torch.zeros(4, 32)).macs_per_sample == macs.macs_per_sample == 32 * 64 + 64 * 10


# ------------------------------------------------------------------------------------------ the choice


def test_a_layer_measured_faster_sparse_is_swapped_with_its_times_in_the_details() -> None:
    model = _mlp()
    calls: list[tuple[str, int]] = []
    out, details = use_sparse_kernels(model, 4, repeats=3, min_sample_s=0,
                                      measure=_fake_measure({nn.Linear: 2e-3, SparseLinear: 1e-3}, calls))
    assert out is model and isinstance(model[0], SparseLinear) and isinstance(model[2], SparseLinear)
    assert details["sparse_layers"] == {"0": "csr", "2": "csr"}
    decision = details["sparse_decisions"]["0"]
    assert decision["times_ms"] == {"dense": 2.0, "csr": 1.0} and decision["speedup"] == 2.0
    assert decision["path"] == "csr" and "reason" not in decision
    # one warm-up each, then 3 rounds that alternate dense and sparse, at the batch asked for
    assert calls[:8] == [("Linear", 4), ("csr", 4)] * 4
    assert details["flags"] == [f"sparse kernels run 2 of 2 pruned Linear layers (0, 2), measured faster at batch 4 "
                                f"on {torch.get_num_threads()} threads; other layers run dense, and MACs are counted "
                                "as for the dense model"]
    assert not any(DENSE_KERNELS_FLAG in f for f in details["flags"])


def test_a_layer_measured_slower_or_within_the_margin_stays_dense_with_the_flag() -> None:
    for sparse_s in (3e-3, 1.95e-3):  # slower; 2.5% faster, inside the 10% margin
        model = _mlp()
        out, details = use_sparse_kernels(model, 1, measure=_fake_measure({nn.Linear: 2e-3, SparseLinear: sparse_s}))
        assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
        assert details["sparse_layers"] == {}
        assert details["sparse_decisions"]["0"]["path"] == "dense"
        assert "not 1.11x or more" in details["sparse_decisions"]["0"]["reason"]
        assert details["flags"] == [f"{DENSE_KERNELS_FLAG} (no sparse kernel measured faster at batch 1 on "
                                    f"{torch.get_num_threads()} threads)"]


def test_a_short_call_is_timed_as_the_mean_of_enough_calls_to_last_min_sample_s() -> None:
    calls: list[tuple[str, int]] = []
    _, details = use_sparse_kernels(_mlp(), layers=["0"], repeats=2, min_sample_s=0.01,
                                    measure=_fake_measure({nn.Linear: 2e-3, SparseLinear: 1e-3}, calls))
    # warm-up: one call each; then per round 5 dense calls (10 ms / 2 ms) and 10 sparse ones (10 ms / 1 ms)
    assert [name for name, _ in calls] == ["Linear", "csr"] + (["Linear"] * 5 + ["csr"] * 10) * 2
    assert details["sparse_decisions"]["0"]["times_ms"] == {"dense": 2.0, "csr": 1.0}


def test_the_speed_up_pairs_each_round_dense_with_sparse() -> None:
    # load drifts between rounds: per round, sparse takes half the dense time in 4 of 5 rounds, though its median
    # time (2 ms) is above the dense median (1 ms); the paired speed-up (2x) decides
    dense_s = [1e-3, 1e-3, 1e-3, 1e-3, 10e-3, 10e-3]  # warm-up first
    sparse_s = [1e-3, 0.5e-3, 2e-3, 0.5e-3, 5e-3, 5e-3]
    sequence = iter(x for pair in zip(dense_s, sparse_s) for x in pair)
    model = _mlp()
    _, details = use_sparse_kernels(model, layers=["0"], repeats=5, min_sample_s=0,
                                    measure=lambda layer, x: next(sequence))
    decision = details["sparse_decisions"]["0"]
    assert decision["times_ms"] == {"dense": 1.0, "csr": 2.0}
    assert decision["speedup"] == 2.0 and decision["path"] == "csr" and isinstance(model[0], SparseLinear)


def test_only_the_faster_layers_are_swapped_and_a_nearly_dense_layer_is_not_timed() -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight.copy_(torch.randn(10, 64))  # dense: sparsity 0
    timed: list[tuple[str, int]] = []
    _, details = use_sparse_kernels(model, 2, min_sample_s=0,
                                    measure=_fake_measure({nn.Linear: 2e-3, SparseLinear: 1e-3}, timed))
    assert isinstance(model[0], SparseLinear) and type(model[2]) is nn.Linear
    assert details["sparse_decisions"]["2"] == {"sparsity": 0.0, "path": "dense",
                                                "reason": "sparsity below 0.5: not timed"}
    assert len(timed) == 2 * 8  # only layer 0 was timed: 1 warm-up + 7 rounds, dense and csr
    assert details["flags"][0].startswith("sparse kernels run 1 of 2 pruned Linear layers (0),")


def _scripted_watch(machine_s: list[float], own_s: list[float]):
    """A LoadWatch over scripted counters (the machine's busy seconds, this process's CPU seconds) and a clock
    that advances one second between the start and the reading."""
    from functools import partial

    from greenmeter.metering.cpu_load import LoadWatch

    machine, own, clock = iter(machine_s), iter(own_s), iter([0.0, 1.0])
    return partial(LoadWatch, machine=lambda: next(machine), own=lambda: next(own), clock=lambda: next(clock))


@pytest.mark.parametrize(("machine_s", "other", "flagged"), [([100.0, 102.0], 1.0, True), ([100.0, 101.0], 0.0, False)])
def test_timing_on_a_busy_machine_is_said(monkeypatch: pytest.MonkeyPatch, machine_s: list[float], other: float,
                                          flagged: bool) -> None:
    import greenmeter.compression.sparse as sparse_module

    monkeypatch.setattr(sparse_module, "LoadWatch", _scripted_watch(machine_s, [10.0, 11.0]))
    _, details = use_sparse_kernels(_mlp(), layers=["0"], min_sample_s=0,
                                    measure=_fake_measure({nn.Linear: 0.1, SparseLinear: 0.05}))
    assert details["sparse_decisions"]["0"]["timed_s"] == pytest.approx(8 * 0.15)
    assert details["sparse_timing_other_cores"] == other
    busy = [f for f in details["flags"] if f.startswith("other processes kept 1.00 of")]
    assert len(busy) == flagged and len(details["flags"]) == 1 + flagged
    if flagged:
        assert "during the timing of sparse against dense kernels" in busy[0]
        assert "the choice of kernels may not hold on a quiet machine" in busy[0]


def test_a_short_timing_is_not_judged_for_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import greenmeter.compression.sparse as sparse_module

    monkeypatch.setattr(sparse_module, "LoadWatch", _scripted_watch([100.0, 150.0], [10.0, 11.0]))
    _, details = use_sparse_kernels(_mlp(), min_sample_s=0,
                                    measure=_fake_measure({nn.Linear: 2e-3, SparseLinear: 1e-3}))
    assert details["sparse_timing_other_cores"] is None and len(details["flags"]) == 1


def test_a_bare_linear_and_a_shared_linear_are_replaced_everywhere() -> None:
    fast = _fake_measure({nn.Linear: 2e-3, SparseLinear: 1e-3})
    bare, details = use_sparse_kernels(_pruned_linear(), measure=fast)
    assert isinstance(bare, SparseLinear) and details["sparse_layers"] == {"(model)": "csr"}
    shared = _pruned_linear(16, 16)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    use_sparse_kernels(model, measure=fast, layers=["0"])
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]


def test_the_default_timer_times_one_call() -> None:
    seen = []
    assert time_forward(lambda x: seen.append(x.shape), torch.zeros(3, 2)) >= 0  # type: ignore[arg-type]
    assert seen == [torch.Size([3, 2])]


def test_bad_choice_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        use_sparse_kernels(_mlp(), 0)
    with pytest.raises(ConfigError, match="margin"):
        use_sparse_kernels(_mlp(), margin=1.0)
    with pytest.raises(ConfigError, match="min_sample_s"):
        use_sparse_kernels(_mlp(), min_sample_s=-1)


# ------------------------------------------------------------------------------------------ pruning


def test_pruning_says_its_model_runs_dense_kernels_by_default() -> None:
    model = _mlp(sparsity=0.0)
    pruned = compress(model, PruneConfig(sparsity=0.9))
    details = pruned.compression_info.details
    assert type(pruned[0]) is nn.Linear and details["sparse_execution"] == "off"
    assert details["sparse_layers"] == {}
    assert details["flags"] == [OFF_FLAG]


def test_pruning_with_sparse_execution_auto_times_the_pruned_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    import greenmeter.compression.sparse as sparse_module

    # the default timer, replaced where the method looks it up: sparse twice as fast for every layer
    monkeypatch.setattr(sparse_module, "time_forward", _fake_measure({nn.Linear: 2e-3, SparseLinear: 1e-3}))
    model = _mlp(sparsity=0.0)
    pruned = compress(model, PruneConfig(sparsity=0.9, sparse_execution="auto", sparse_batch=8,
                                         keep_layers=("2",)))
    details = pruned.compression_info.details
    assert isinstance(pruned[0], SparseLinear) and type(pruned[2]) is nn.Linear  # a kept layer is not touched
    assert details["sparse_layers"] == {"0": "csr"} and details["sparse_batch"] == 8
    assert list(details["sparse_decisions"]) == ["0"]
    x = torch.randn(5, 32)
    dense = compress(model, PruneConfig(sparsity=0.9, keep_layers=("2",)))
    assert torch.allclose(pruned(x), dense(x), rtol=1e-5, atol=1e-5)
    assert type(model[0]) is nn.Linear  # the caller's model is left as it was


def test_a_ticket_with_sparse_execution_auto_runs_its_pruned_layers_sparse(monkeypatch: pytest.MonkeyPatch) -> None:
    import greenmeter.compression.sparse as sparse_module

    monkeypatch.setattr(sparse_module, "time_forward", _fake_measure({nn.Linear: 2e-3, SparseLinear: 1e-3}))
    model = _mlp(sparsity=0.0).train()
    ticket = compress(model, LotteryTicketConfig(lambda m: None, rounds=1, rate=0.9, sparse_execution="auto"))
    details = ticket.compression_info.details
    assert details["sparse_layers"] == {"0": "csr", "2": "csr"} and details["sparse_batch"] == 1
    assert details["flags"][0].startswith("sparse kernels run 2 of 2 pruned Linear layers (0, 2)")
    assert ticket[0].training and ticket[2].training  # the model's train/eval modes are kept
    x = torch.randn(3, 32)
    with torch.no_grad():
        want = ticket[2].dense_weight() @ torch.relu(ticket[0].to_linear()(x)).t()
    assert torch.allclose(ticket(x), want.t() + ticket[2].bias, rtol=1e-5, atol=1e-5)


def test_bad_sparse_options_name_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"PruneConfig.sparse_execution must be 'off' or 'auto', not 'on'"):
        PruneConfig(sparsity=0.5, sparse_execution="on")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="PruneConfig.sparse_batch"):
        PruneConfig(sparsity=0.5, sparse_batch=0)
    with pytest.raises(ConfigError, match=r"LotteryTicketConfig.sparse_execution must be 'off' or 'auto'"):
        LotteryTicketConfig(lambda m: None, rounds=1, sparse_execution=True)  # type: ignore[arg-type]


def test_prune_and_ticket_variants_carry_the_dense_kernel_flag() -> None:
    torch.manual_seed(0)
    baseline = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    ctx = RecipeContext(example_input=torch.zeros(2, 1, 8, 8), train_fn=lambda model, loss_fn=None, epochs=None: None)
    for spec in ("prune:0.9", "ticket:0.5"):
        variant = build_variant(spec, baseline, ctx)
        flags = variant.compression_info.details["flags"]
        assert flags == [OFF_FLAG], spec


def test_a_compared_prune_variant_shows_the_flag_next_to_its_figures() -> None:
    from greenmeter import Meter, compare

    torch.manual_seed(0)
    baseline = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x, y = torch.randn(64, 16), torch.randint(0, 3, (64,))
    meter = Meter(backends=["cpu-estimate"])
    try:
        result = compare({"float": baseline, "pruned": "prune:0.9"}, (x, y), meter=meter, repeats=2,
                         min_repeat_s=0.01, progress=False)
    finally:
        meter.close()
    assert OFF_FLAG in result.variant("pruned").flags
    assert not any(DENSE_KERNELS_FLAG in f for f in result.variant("float").flags)
