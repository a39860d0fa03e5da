"""Pruning on the real digits task: unstructured magnitude, structured channels (Torch-Pruning), lottery tickets."""

from __future__ import annotations

import copy
import importlib.util
import io
import math

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from greenmeter._errors import ConfigError, UnsupportedModelError  # noqa: E402
from greenmeter.compression import compress, registered_methods  # noqa: E402
from greenmeter.compression.lottery import LotteryTicketConfig  # noqa: E402
from greenmeter.compression.pruning import ChannelPruneConfig, PruneConfig, sparsity  # noqa: E402
from greenmeter.demo.digits import DigitsData, accuracy, make_digits_cnn, train_classifier  # noqa: E402

X1 = torch.zeros(1, 1, 8, 8)
needs_torch_pruning = pytest.mark.skipif(
    importlib.util.find_spec("torch_pruning") is None, reason="structured pruning needs torch-pruning"
)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


def _saved_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _assert_no_prune_leftovers(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not module._forward_pre_hooks, f"hook left on {name}"
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask"), name
    keys = list(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys), keys


class ResNetLet(nn.Module):
    """A stem conv and two ResNet basic blocks with identity shortcuts, a global pool and a classifier."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(nn.ModuleDict({
                "conv1": nn.Conv2d(width, width, 3, padding=1, bias=False), "bn1": nn.BatchNorm2d(width),
                "conv2": nn.Conv2d(width, width, 3, padding=1, bias=False), "bn2": nn.BatchNorm2d(width),
            }))
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for b in self.blocks:
            y = torch.relu(b["bn1"](b["conv1"](h)))
            h = torch.relu(h + b["bn2"](b["conv2"](y)))  # identity shortcut: conv2's channels are tied to h's
        return self.fc(h.mean(dim=(2, 3)))


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(torch.relu(self.embed(x.squeeze(1))))  # rows of the image as a sequence
        return self.fc(out[:, -1])


def test_methods_are_registered() -> None:
    methods = registered_methods()
    assert methods["prune"] is PruneConfig
    assert methods["channel_prune"] is ChannelPruneConfig
    assert methods["lottery_ticket"] is LotteryTicketConfig


# ---------------------------------------------------------------- unstructured


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_global_pruning_reaches_the_target_and_leaves_no_hooks(baseline: nn.Module, target: float) -> None:
    before = _state(baseline)
    pruned = compress(baseline, PruneConfig(sparsity=target))
    details = pruned.compression_info.details
    assert abs(details["sparsity"] - target) < 1e-3
    assert details["requested_sparsity"] == target
    assert sparsity(pruned) == pytest.approx(details["sparsity"])
    assert details["prunable_weights"] == sum(m.weight.numel() for m in pruned if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert set(details["layer_sparsity"]) == {"0", "3", "8", "10"}
    assert len({round(v, 3) for v in details["layer_sparsity"].values()}) > 1  # one threshold, unequal layers
    _assert_no_prune_leftovers(pruned)
    assert all(isinstance(m.weight, nn.Parameter) for m in pruned if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert pruned[1].weight.count_nonzero() == pruned[1].weight.numel()  # BatchNorm and biases are untouched
    assert _same_state(baseline, before)  # the input model is unchanged
    assert sparsity(baseline) == 0.0


def test_layer_scope_prunes_every_layer_to_the_target(baseline: nn.Module) -> None:
    pruned = compress(baseline, PruneConfig(sparsity=0.8, scope="layer"))
    details = pruned.compression_info.details
    assert abs(details["sparsity"] - 0.8) < 1e-3
    for module, name in ((pruned[0], "0"), (pruned[3], "3"), (pruned[8], "8"), (pruned[10], "10")):
        real = float((module.weight == 0).sum()) / module.weight.numel()
        assert real == pytest.approx(details["layer_sparsity"][name])
        assert abs(real - 0.8) <= 0.5 / module.weight.numel() + 1e-12  # round(0.8 * n) weights per layer
    _assert_no_prune_leftovers(pruned)


def test_half_the_weights_cost_at_most_two_points_without_fine_tuning(baseline: nn.Module, digits: DigitsData) -> None:
    dense = accuracy(baseline, digits.x_test, digits.y_test)
    pruned = compress(baseline, PruneConfig(sparsity=0.5))
    sparse = accuracy(pruned, digits.x_test, digits.y_test)
    print(f"unstructured 50%: accuracy {dense:.4f} -> {sparse:.4f}")
    assert dense - sparse <= 0.02
    assert sparse >= 0.95


def test_layer_types_choose_what_is_pruned(baseline: nn.Module) -> None:
    pruned = compress(baseline, PruneConfig(sparsity=0.5, layer_types=("Conv2d",)))
    assert set(pruned.compression_info.details["layer_sparsity"]) == {"0", "3"}
    assert pruned[8].weight.count_nonzero() == pruned[8].weight.numel()
    assert sparsity(pruned, ["Conv2d"]) == pytest.approx(0.5, abs=1e-3)
    assert compress(baseline, PruneConfig(0.0)).compression_info.details["sparsity"] == 0.0


def test_sparsity_counts_attached_masks() -> None:
    layer = nn.Linear(10, 10)
    nn.utils.prune.l1_unstructured(layer, "weight", amount=30)
    assert sparsity(layer) == pytest.approx(0.3)


# ---------------------------------------------------------------- structured


@needs_torch_pruning
def test_half_the_channels_removed_from_the_digits_cnn(baseline: nn.Module, digits: DigitsData) -> None:
    before = _state(baseline)
    small = compress(baseline, ChannelPruneConfig(ratio=0.5, example_input=X1))
    assert (small[0].out_channels, small[1].num_features, small[3].in_channels) == (16, 16, 16)
    assert (small[3].out_channels, small[4].num_features) == (32, 32)
    assert (small[8].in_features, small[8].out_features) == (512, 64)  # 32 channels x 4 x 4 in, half the neurons
    assert (small[10].in_features, small[10].out_features) == (64, 10)
    param_ratio = _n_params(small) / _n_params(baseline)
    size_ratio = _saved_bytes(small) / _saved_bytes(baseline)
    print(f"structured 0.5: params x{param_ratio:.3f}, saved size x{size_ratio:.3f}")
    assert 0.22 < param_ratio < 0.30  # both sides of most weights halve: about a quarter is left
    assert size_ratio < 0.32
    details = small.compression_info.details
    assert details["params_before"] == _n_params(baseline) and details["params_after"] == _n_params(small)
    assert details["channels"]["3"] == {"before": 64, "after": 32}
    assert details["channels"]["10"] == {"before": 10, "after": 10} and details["kept_whole"] == ["10"]
    assert small(digits.x_test[:7]).shape == (7, 10)
    assert not small.training  # keeps the input's eval mode
    assert _same_state(baseline, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in small.modules())


@needs_torch_pruning
def test_fine_tuned_half_width_model_stays_accurate(baseline: nn.Module, digits: DigitsData) -> None:
    calls = []

    def fine_tune(model: nn.Module) -> None:
        calls.append(_n_params(model))
        train_classifier(model, digits, epochs=5, lr=2e-3)

    dense = accuracy(baseline, digits.x_test, digits.y_test)
    small = compress(baseline, ChannelPruneConfig(ratio=0.5, example_input=X1, fine_tune=fine_tune))
    acc = accuracy(small, digits.x_test, digits.y_test)
    print(f"structured 0.5 + 5 epochs: accuracy {dense:.4f} -> {acc:.4f}")
    assert calls == [_n_params(small)]  # fine_tune got the already-pruned model, once
    assert small.compression_info.details["fine_tuned"] is True
    assert acc >= 0.95


@needs_torch_pruning
def test_residual_blocks_are_pruned_consistently() -> None:
    torch.manual_seed(0)
    net = ResNetLet(width=16).train()
    x = torch.randn(4, 1, 8, 8)
    small = compress(net, ChannelPruneConfig(ratio=0.5, example_input=x, importance="l1"))
    assert small.training  # the input's train mode is kept
    # stem and both blocks' conv2 feed the same additions, so they keep the same channels; conv1 halves too
    tied = {small.stem[0].out_channels} | {b["conv2"].out_channels for b in small.blocks}
    assert tied == {8}
    for b in small.blocks:
        assert b["conv1"].in_channels == b["conv2"].out_channels == b["bn2"].num_features == 8
        assert b["conv1"].out_channels == b["bn1"].num_features == b["conv2"].in_channels == 8
    assert small.fc.in_features == 8 and small.fc.out_features == 10
    assert small(x).shape == net(x).shape == (4, 10)
    ratio = _n_params(small) / _n_params(net)
    assert 0.23 < ratio < 0.32, ratio


@needs_torch_pruning
def test_ratio_zero_on_a_training_model_changes_nothing() -> None:
    net = make_digits_cnn(seed=1).train()
    same = compress(net, ChannelPruneConfig(ratio=0.0, example_input=torch.randn(8, 1, 8, 8)))
    assert _same_state(same, _state(net))  # tracing ran in eval mode: BatchNorm statistics did not move
    assert same.training and same[1].training


@needs_torch_pruning
def test_ignored_layers_keep_their_channels(baseline: nn.Module) -> None:
    small = compress(baseline, ChannelPruneConfig(ratio=0.5, example_input=X1, ignored_layers=("0",)))
    assert small[0].out_channels == 32 and small[3].out_channels == 32
    assert small.compression_info.details["kept_whole"] == ["0", "10"]
    with pytest.raises(ConfigError, match="ignored_layers names no module.*'conv9'"):
        compress(baseline, ChannelPruneConfig(ratio=0.5, example_input=X1, ignored_layers=("conv9",)))


def test_layer_ratios_shrink_the_layers_that_tolerate_more(baseline: nn.Module, digits: DigitsData) -> None:
    small = compress(baseline, ChannelPruneConfig(ratio=0.5, example_input=X1, layer_ratios={"3": 0.75}))
    # conv 0 and Linear 8 lose half, conv 3 three quarters; the output layer is kept whole
    assert (small[0].out_channels, small[3].out_channels, small[8].out_features) == (16, 16, 64)
    assert small[8].in_features == 16 * 4 * 4 and small[10].out_features == 10
    assert small.compression_info.details["layer_ratios"] == {"3": 0.75}
    assert small(digits.x_test[:5]).shape == (5, 10)


def test_layer_ratios_must_name_layers_whose_channels_it_removes(baseline: nn.Module) -> None:
    for ratios, message in [({"10": 0.5}, "names '10', which is not a layer.*output layer.*those are: 0, 3, 8"),
                            ({"conv9": 0.5}, "names 'conv9'.*no such module"),
                            ({"3": 1.0}, r"layer_ratios\['3'\]"),
                            ({"0": 0.5}, "ignored_layers keeps whole")]:
        with pytest.raises(ConfigError, match=message):
            compress(baseline, ChannelPruneConfig(ratio=0.5, example_input=X1, ignored_layers=("0",) if "0" in ratios
                                                  else (), layer_ratios=ratios))


def test_the_channels_recipe_takes_per_layer_ratios(baseline: nn.Module, digits: DigitsData) -> None:
    from greenmeter.comparison.recipes import RecipeContext, build_variant, check_recipe

    ctx = RecipeContext(example_input=digits.x_train[:8], train_fn=lambda m, loss_fn=None, epochs=None: None)
    small = build_variant("channels:0.5,3=0.75,8=0.25", baseline, ctx)
    assert (small[0].out_channels, small[3].out_channels, small[8].out_features) == (16, 16, 96)
    for bad in ("channels:0.5,3", "channels:0.5,3=1.5", "channels:0.5,3=0.7,3=0.8", "channels:0.5,=0.7"):
        with pytest.raises(ConfigError, match="recipe 'channels'"):
            check_recipe(bad)


@needs_torch_pruning
def test_an_lstm_in_the_path_is_named() -> None:
    model = WithLSTM()
    with pytest.raises(UnsupportedModelError, match=r"ChannelPruneConfig.*'lstm' \(LSTM\)"):
        compress(model, ChannelPruneConfig(ratio=0.5, example_input=torch.randn(2, 1, 8, 8)))
    config = ChannelPruneConfig(ratio=0.5, example_input=torch.randn(2, 1, 8, 8), ignored_layers=("lstm",))
    kept = compress(model, config)
    assert kept.embed.out_features == 8 and kept.lstm.input_size == 8 and kept.lstm.hidden_size == 16
    assert kept(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@needs_torch_pruning
def test_a_library_failure_is_wrapped() -> None:
    class Folding(nn.Module):  # a view that mixes hidden neurons: DepGraph cannot follow it
        def __init__(self) -> None:
            super().__init__()
            self.fc0, self.fc = nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc0(x.flatten(1)).view(-1, 4, 8).sum(1).repeat(1, 4))

    with pytest.raises(UnsupportedModelError, match="failed inside Torch-Pruning") as caught:
        compress(Folding(), ChannelPruneConfig(ratio=0.5, example_input=torch.randn(2, 1, 8, 8)))
    assert caught.value.__cause__ is not None


# ---------------------------------------------------------------- lottery ticket


class _Probe:
    """A train_fn that trains briefly and checks, at every forward of training, that pruned weights are zero."""

    def __init__(self, digits: DigitsData, epochs: int = 2) -> None:
        self.digits, self.epochs = digits, epochs
        self.masks: list[dict[str, torch.Tensor]] = []
        self.start_weights: list[dict[str, torch.Tensor]] = []
        self.forwards = 0

    def __call__(self, model: nn.Module) -> None:
        layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        self.masks.append({n: m.weight_mask.clone() for n, m in layers.items()})
        self.start_weights.append({n: m.weight_orig.detach().clone() for n, m in layers.items()})

        def check(module: nn.Module, _inputs: object) -> None:  # runs after torch's prune hook sets .weight
            self.forwards += 1
            assert torch.all(module.weight[module.weight_mask == 0] == 0)

        hooks = [m.register_forward_pre_hook(check) for m in layers.values()]
        try:
            train_classifier(model, self.digits, epochs=self.epochs)
        finally:
            for hook in hooks:
                hook.remove()


def test_lottery_ticket_prunes_iteratively_and_holds_masks(digits: DigitsData) -> None:
    init = make_digits_cnn(seed=0)  # untrained: the rewind point
    before = _state(init)
    probe = _Probe(digits)
    cfg = LotteryTicketConfig(probe, rounds=2, rate=0.5, eval_fn=lambda m: accuracy(m, digits.x_test, digits.y_test))
    ticket = compress(init, cfg)
    details = ticket.compression_info.details
    assert _same_state(init, before)
    assert abs(details["sparsity"] - (1 - 0.5**2)) < 1e-3 and details["target_sparsity"] == 0.75
    assert abs(sparsity(ticket) - 0.75) < 1e-3
    assert [r["round"] for r in details["rounds"]] == [0, 1, 2]
    assert [round(r["sparsity"], 3) for r in details["rounds"]] == [0.0, 0.5, 0.75]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in details["rounds"])
    print("lottery ticket:", [(round(r["sparsity"], 3), round(r["accuracy"], 4)) for r in details["rounds"]])
    assert details["accuracy"] >= 0.95
    assert details["reinit"] is False and details["rewind"] == "init"
    assert probe.forwards > 100  # the mask check ran at every training forward
    # masks only grow, and what survives starts each round from the initial weights (rewinding)
    for earlier, later in zip(probe.masks, probe.masks[1:]):
        assert all(torch.all(later[n] <= earlier[n]) for n in earlier)
    for n, w in probe.start_weights[2].items():
        alive = probe.masks[2][n].bool()
        assert torch.equal(w[alive], before[f"{n}.weight"][alive])
        assert torch.all(ticket.get_submodule(n).weight[~alive] == 0)  # the baked weights keep the final mask
    _assert_no_prune_leftovers(ticket)
    assert ticket.training is init.training  # the input's mode is kept (a fresh module trains)


def test_lottery_reinit_control_uses_same_masks_and_fresh_weights(digits: DigitsData) -> None:
    init = make_digits_cnn(seed=0)
    ticket_probe, control_probe = _Probe(digits, epochs=1), _Probe(digits, epochs=1)
    compress(init, LotteryTicketConfig(ticket_probe, rounds=1, rate=0.5))
    control = compress(init, LotteryTicketConfig(control_probe, rounds=1, rate=0.5, reinit=True, seed=3))
    details = control.compression_info.details
    assert details["reinit"] is True and details["rounds"][-1]["accuracy"] is None
    assert abs(details["sparsity"] - 0.5) < 1e-3
    for n, mask in ticket_probe.masks[1].items():
        assert torch.equal(control_probe.masks[1][n], mask)  # the same ticket structure
        alive = mask.bool()
        assert not torch.equal(control_probe.start_weights[1][n][alive], ticket_probe.start_weights[1][n][alive])


def test_lottery_rewinds_to_a_given_state_and_snapshots_it(digits: DigitsData) -> None:
    model = make_digits_cnn(seed=0)
    train_classifier(model, digits, epochs=1)
    live = model.state_dict()  # tensors that share storage with the model
    probe = _Probe(digits, epochs=1)
    cfg = LotteryTicketConfig(probe, rounds=1, rate=0.5, rewind_state=live, scope="layer")
    early = {k: v.clone() for k, v in live.items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)  # the config holds a copy: changing the model does not move the rewind point
    assert torch.equal(cfg.rewind_state["0.weight"], early["0.weight"])
    assert "<rewind state: 18 tensors>" in repr(cfg)  # a short repr, not every tensor
    ticket = compress(model, cfg)
    assert ticket.compression_info.details["rewind"] == "rewind_state"
    for n, w in probe.start_weights[1].items():
        alive = probe.masks[1][n].bool()
        assert torch.equal(w[alive], early[f"{n}.weight"][alive])
        assert abs(float((probe.masks[1][n] == 0).float().mean()) - 0.5) < 0.5 / alive.numel() + 1e-9  # per layer
    bad = dict(early)
    bad.pop("0.bias")
    with pytest.raises(ConfigError, match="missing.*0.bias"):
        compress(model, LotteryTicketConfig(probe, rounds=1, rewind_state=bad))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan"), 1.5, True, "0.5", None])
def test_sparsity_outside_zero_one_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^PruneConfig.sparsity must be a fraction in \[0, 1\) \(the fraction removed\), "
                                          r"not "):
        PruneConfig(sparsity=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ChannelPruneConfig.ratio"):
        ChannelPruneConfig(ratio=value, example_input=X1)  # type: ignore[arg-type]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="scope"):
        PruneConfig(0.5, scope="net")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layer_types"):
        PruneConfig(0.5, layer_types=())
    with pytest.raises(ConfigError, match="needs example_input"):
        ChannelPruneConfig(ratio=0.5)
    with pytest.raises(ConfigError, match="importance"):
        ChannelPruneConfig(ratio=0.5, example_input=X1, importance="l3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rounds"):
        LotteryTicketConfig(lambda m: None, rounds=0)
    for rate in (0.0, 1.0, math.nan):
        with pytest.raises(ConfigError, match="rate"):
            LotteryTicketConfig(lambda m: None, rounds=2, rate=rate)
    with pytest.raises(ConfigError, match="train_fn"):
        LotteryTicketConfig("train", rounds=1)  # type: ignore[arg-type]


def test_a_model_with_nothing_to_prune_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.ReLU())
    with pytest.raises(UnsupportedModelError, match=r"prune \(PruneConfig\).*Linear, Conv2d.*BatchNorm1d"):
        compress(model, PruneConfig(0.5))
    with pytest.raises(UnsupportedModelError, match="lottery_ticket"):
        compress(model, LotteryTicketConfig(lambda m: None, rounds=1))
    with pytest.raises(UnsupportedModelError, match="sparsity"):
        sparsity(model)
    if importlib.util.find_spec("torch_pruning") is not None:
        only_head = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        with pytest.raises(UnsupportedModelError, match=r"ChannelPruneConfig.*other than the output layer"):
            compress(only_head, ChannelPruneConfig(0.5, example_input=X1))


def test_config_records_are_plain() -> None:
    cfg = ChannelPruneConfig(0.5, example_input=[X1], ignored_layers="0")
    assert cfg.example_input == (X1,) and cfg.ignored_layers == ("0",)
    assert PruneConfig(0.5, layer_types=nn.Linear).layer_types == ("Linear",)
    model = copy.deepcopy(make_digits_cnn(width=0.25))
    info = compress(model, PruneConfig(0.3)).compression_info.to_dict()
    assert info["method"] == "prune" and info["config"]["sparsity"] == 0.3


@pytest.mark.parametrize("make", [lambda keep: PruneConfig(0.5, keep_layers=keep),
                                  lambda keep: LotteryTicketConfig(lambda m: None, rounds=1, keep_layers=keep)],
                         ids=["prune", "ticket"])
def test_keep_layers_must_be_a_tuple_of_module_names(make) -> None:  # type: ignore[no-untyped-def]
    assert make(["3", "10"]).keep_layers == ("3", "10") and make(()).keep_layers == ()
    owner = f"{type(make(())).__name__}.keep_layers"
    for bad in ("10", ("",), ("3", 3), ("a b",), None):
        with pytest.raises(ConfigError, match=rf"^{owner} must be a tuple of module names"):
            make(bad)
    with pytest.raises(ConfigError, match=rf"^{owner} names '3' more than once"):
        make(("3", "3"))


def test_a_lottery_ticket_never_prunes_a_kept_layer_layer_by_layer(baseline: nn.Module) -> None:
    rounds: list[int] = []
    config = LotteryTicketConfig(lambda m: rounds.append(1), rounds=2, rate=0.5, scope="layer", keep_layers=("3",))
    ticket = compress(baseline, config)
    assert len(rounds) == 3 and torch.equal(ticket[3].weight, baseline[3].weight)  # trained nothing: rewound as it was
    details = ticket.compression_info.details
    assert details["layer_sparsity"]["3"] == 0 and details["kept_layers"] == ["3"]
    assert all(details["layer_sparsity"][n] == pytest.approx(0.75, abs=0.01) for n in ("0", "8", "10"))
    with pytest.raises(ConfigError, match=r"LotteryTicketConfig.keep_layers names '1' \(BatchNorm2d\), which "
                                          r"lottery ticket pruning leaves as it is anyway; .* are: 0, 3, 8, 10$"):
        compress(baseline, LotteryTicketConfig(lambda m: None, rounds=1, keep_layers=("1",)))
    with pytest.raises(ConfigError, match=r"PruneConfig.keep_layers keeps every module that pruning"):
        compress(baseline, PruneConfig(0.5, keep_layers=("0", "3", "8", "10")))


@needs_torch_pruning
def test_ignored_layers_must_be_layers_whose_channels_it_would_remove(baseline: nn.Module) -> None:
    for name, what in (("2", "ReLU"), ("1", "BatchNorm2d")):  # nothing to keep; a BatchNorm follows its conv
        with pytest.raises(ConfigError, match=rf"ChannelPruneConfig.ignored_layers names '{name}' \({what}\), which "
                                              r"channel pruning leaves as it is anyway; .* are: 0, 3, 8, 10$"):
            compress(baseline, ChannelPruneConfig(ratio=0.5, example_input=X1, ignored_layers=(name,)))
