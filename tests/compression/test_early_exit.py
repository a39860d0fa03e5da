"""Early exits: training the heads, calibrated thresholds that save MACs, batched inference, bad input."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter._errors import CompressionError, ConfigError, UnsupportedModelError  # noqa: E402
from greenmeter.compression import (  # noqa: E402
    EarlyExitConfig, MultiExitModel, calibrate_threshold, compress, exit_report,
)
from greenmeter.compression.early_exit import fit_temperature  # noqa: E402
from greenmeter.demo.digits import DigitsData, accuracy, batches, train_classifier  # noqa: E402

EXITS = [2, 5]  # after the first conv block (conv, BN, ReLU) and after the second


@pytest.fixture(scope="module")
def split(digits: DigitsData) -> tuple[DigitsData, DigitsData]:
    return digits.validation_split()


@pytest.fixture(scope="module")
def multi(_trained_baseline: nn.Module, digits: DigitsData, split: tuple[DigitsData, DigitsData]) -> nn.Module:
    train_part, _ = split
    config = EarlyExitConfig(exits_after=EXITS, example_input=digits.x_train[:1], train_fn=lambda m, loss: (
        train_classifier(m, train_part, epochs=10, loss_fn=loss)))
    return compress(_trained_baseline, config)


def test_mac_counts_match_a_hand_count(multi: nn.Module) -> None:
    conv1, conv2 = 8 * 8 * 32 * 9, 8 * 8 * 64 * 32 * 9
    fc1, fc2 = 1024 * 128, 128 * 10
    head1, head2 = 32 * 64 * 10, 64 * 64 * 10  # the 4x4 average pool folded into the Linear layer to 10 classes
    assert multi.block_macs == (conv1, conv2, fc1 + fc2)
    assert multi.head_macs == (head1, head2)
    assert multi.full_macs == conv1 + conv2 + fc1 + fc2 == 1_330_432
    assert multi.exit_macs == (conv1 + head1, conv1 + conv2 + head1 + head2, multi.full_macs + head1 + head2)


def test_calibrated_threshold_saves_macs_at_a_bounded_drop(
    multi: nn.Module, baseline: nn.Module, digits: DigitsData, split: tuple[DigitsData, DigitsData],
) -> None:
    _, val = split
    base_acc = accuracy(baseline, digits.x_test, digits.y_test)
    threshold = calibrate_threshold(multi, val.x_test, val.y_test, max_drop=0.005)
    assert 0 < threshold < 1.0
    report = exit_report(multi, digits.x_test, digits.y_test, threshold)
    drop_pp = 100 * (base_acc - report["accuracy"])
    print(f"threshold {threshold:.3f} baseline {base_acc:.4f} early-exit {report['accuracy']:.4f} "
          f"drop {drop_pp:.2f} pp, MACs {report['avg_macs']:.0f} vs {report['full_macs']} "
          f"({report['mac_saving']:.2f}x), histogram {report['exit_histogram']}")
    assert report["final_exit_accuracy"] == pytest.approx(base_acc)  # frozen backbone: the last exit is the baseline
    assert drop_pp <= 0.5  # the goal; measured 0.00 pp at 5.47x fewer MACs
    assert report["mac_saving"] >= 1.5
    assert sum(report["exit_histogram"]) == len(digits.x_test) == report["n"]
    hist = torch.tensor(report["exit_histogram"], dtype=torch.float64)
    assert report["avg_macs"] == pytest.approx(float((hist * torch.tensor(multi.exit_macs)).sum() / hist.sum()))
    # The eval-mode forward is early-exit inference at the model's threshold, so accuracy() works on it.
    multi.threshold = threshold
    try:
        assert accuracy(multi, digits.x_test, digits.y_test) == pytest.approx(report["accuracy"])
    finally:
        multi.threshold = 0.9


def test_confidence_estimate_is_stricter_than_the_empirical_one(
    multi: nn.Module, digits: DigitsData, split: tuple[DigitsData, DigitsData],
) -> None:
    _, val = split
    by_confidence = calibrate_threshold(multi, val.x_test, val.y_test, max_drop=0.005)
    empirical = calibrate_threshold(multi, val.x_test, val.y_test, max_drop=0.005, estimate="empirical")
    assert by_confidence >= empirical
    reports = {t: exit_report(multi, digits.x_test, digits.y_test, t) for t in (by_confidence, empirical)}
    print({t: (r["accuracy"], r["exit_histogram"]) for t, r in reports.items()})
    # more samples go on to later exits, and the test accuracy is no lower
    assert reports[by_confidence]["avg_macs"] >= reports[empirical]["avg_macs"]
    assert reports[by_confidence]["accuracy"] >= reports[empirical]["accuracy"]
    with pytest.raises(ConfigError, match="estimate must be one of confidence, empirical"):
        calibrate_threshold(multi, val.x_test, val.y_test, estimate="bayes")


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_scale_of_calibrated_logits(scale: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(4000, 5, generator=gen)
    y = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen).squeeze(1)  # labels drawn from the logits
    assert fit_temperature(scale * logits, y) == pytest.approx(scale, rel=0.1)


def test_backbone_is_frozen_and_the_input_model_untouched(
    multi: nn.Module, _trained_baseline: nn.Module, baseline: nn.Module,
) -> None:
    flat = [m for block in multi.blocks for m in block]
    assert len(flat) == len(baseline)
    for mine, theirs in zip(flat, baseline):
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
            assert torch.equal(a, b)  # weights and batch-norm statistics
    assert not _trained_baseline.training and not isinstance(_trained_baseline, MultiExitModel)
    assert multi.compression_info.details["freeze_backbone"] is True


@pytest.mark.parametrize("criterion", ["max_softmax", "entropy"])
def test_batched_inference_matches_one_sample_at_a_time(multi: nn.Module, digits: DigitsData, criterion: str) -> None:
    x = digits.x_test[:80]
    threshold = 0.8 if criterion == "max_softmax" else 0.6
    with torch.inference_mode():
        logits, exits = multi.infer(x, threshold, criterion)
        alone = [multi.infer(x[i:i + 1], threshold, criterion) for i in range(len(x))]
        every = multi.forward_all(x)
    assert torch.equal(exits, torch.cat([e for _, e in alone]))
    assert torch.allclose(logits, torch.cat([lg for lg, _ in alone]), atol=1e-5)
    assert len(set(exits.tolist())) > 1  # the test means something: samples leave at different exits
    # The rule: the first head whose confidence is strictly above the threshold, else the last exit.
    for i in range(len(x)):
        probs = [o[i].softmax(0) for o in every[:-1]]
        if criterion == "max_softmax":
            conf = [float(p.max()) for p in probs]
        else:
            conf = [1 + float((p * p.clamp_min(1e-12).log()).sum()) / torch.log(torch.tensor(10.0)).item() for p in probs]
        expected = next((k for k, c in enumerate(conf) if c > threshold), 2)
        assert int(exits[i]) == expected
        assert torch.allclose(logits[i], every[expected][i], atol=1e-5)


@pytest.mark.parametrize(("threshold", "where"), [(1e-6, 0), (1.0 - 1e-7, 2)])
def test_batches_that_all_leave_at_one_exit(multi: nn.Module, digits: DigitsData, threshold: float, where: int) -> None:
    x = digits.x_test[:40]
    with torch.inference_mode():
        every = multi.forward_all(x)
        expected = torch.tensor([next((k for k, o in enumerate(every[:-1]) if float(o[i].softmax(0).max()) > threshold),
                                      2) for i in range(len(x))])
        assert set(expected.tolist()) == {where}  # the case this test is about
        for batch in (x, x[:1]):
            logits, exits = multi.infer(batch, threshold)
            assert torch.equal(exits, expected[:len(batch)])
            assert torch.allclose(logits, every[where][:len(batch)], atol=1e-5)


def test_threshold_one_sends_everything_to_the_last_exit(multi: nn.Module, baseline: nn.Module, digits: DigitsData) -> None:
    report = exit_report(multi, digits.x_test, digits.y_test, threshold=1.0)
    assert report["exit_histogram"] == [0, 0, len(digits.x_test)]
    assert report["avg_macs"] == report["full_macs"] and report["mac_saving"] == 1.0
    assert report["accuracy"] == pytest.approx(accuracy(baseline, digits.x_test, digits.y_test))
    with torch.inference_mode():
        logits, _ = multi.infer(digits.x_test[:32], threshold=1.0)
        assert torch.allclose(logits, baseline(digits.x_test[:32]), atol=1e-6)


def test_training_mode_is_refused_where_eval_is_required(multi: nn.Module, digits: DigitsData) -> None:
    model = copy.deepcopy(multi).train()
    outs = model(digits.x_test[:4])  # training forward: every exit, for the joint loss
    assert isinstance(outs, list) and [o.shape for o in outs] == [(4, 10)] * 3
    for call in (lambda: model.infer(digits.x_test[:4]), lambda: exit_report(model, digits.x_test, digits.y_test),
                 lambda: calibrate_threshold(model, digits.x_test, digits.y_test)):
        with pytest.raises(CompressionError, match=r"call model.eval\(\)"):
            call()
    assert not any(m.training for m in model.blocks.modules())  # a frozen backbone's batch norm stays in eval


def test_unfrozen_backbone_trains_with_the_built_in_loop(baseline: nn.Module, digits: DigitsData) -> None:
    before = copy.deepcopy(baseline.state_dict())
    data = list(batches(digits.x_train, digits.y_train, 64, shuffle=True))
    model = compress(baseline, EarlyExitConfig(exits_after=[5], example_input=digits.x_train[:2], data=data, epochs=2,
                                               freeze_backbone=False, exit_weights=[0.5, 1.0]))
    assert model.num_exits == 2 and not model.training
    d = model.compression_info.details
    assert d["trainer"] == "built-in" and len(d["epoch_losses"]) == 2 and d["exit_weights"] == [0.5, 1.0]
    assert not torch.equal(model.blocks[0][0].weight, before["0.weight"])  # the backbone moved
    assert all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())  # the input did not
    assert exit_report(model, digits.x_test, digits.y_test)["accuracy"] >= 0.95


class NotSequential(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_bad_inputs_are_clear_errors(baseline: nn.Module, multi: nn.Module, digits: DigitsData) -> None:
    x1 = digits.x_train[:1]
    ok = {"example_input": x1, "train_fn": lambda m, loss: None}
    with pytest.raises(ConfigError, match="exit index 10 is out of range.*11 layers"):
        compress(baseline, EarlyExitConfig(exits_after=[2, 10], **ok))
    with pytest.raises(ConfigError, match="strictly increasing"):
        compress(baseline, EarlyExitConfig(exits_after=[5, 2], **ok))
    with pytest.raises(UnsupportedModelError, match="nn.Sequential backbone, not NotSequential"):
        compress(NotSequential(), EarlyExitConfig(exits_after=[0], **ok))
    with pytest.raises(UnsupportedModelError, match=r"after layer 0 have shape \(4, 5\)"):
        MultiExitModel(nn.Sequential(nn.Conv1d(3, 4, 1), nn.Flatten(), nn.Linear(20, 2)), [0], torch.zeros(1, 3, 5))
    for bad in (0.0, 1.5, -0.2, float("nan"), float("inf"), "0.9", True):
        with pytest.raises(ConfigError, match=r"^EarlyExitConfig: threshold must be a number in \(0, 1\] \(for "
                                              r"max_softmax; 1.0 = never exit early\), not "):
            EarlyExitConfig(exits_after=EXITS, threshold=bad, **ok)
        with pytest.raises(ConfigError, match="threshold"):
            multi.infer(digits.x_test[:2], threshold=bad)
    with pytest.raises(ConfigError, match="threshold"):
        multi.threshold = 1.5
    assert multi.threshold == 0.9
    with pytest.raises(ConfigError, match="criterion"):
        EarlyExitConfig(exits_after=EXITS, criterion="margin", **ok)
    with pytest.raises(ConfigError, match="3 weights"):
        EarlyExitConfig(exits_after=EXITS, exit_weights=[1.0, 1.0], **ok)
    with pytest.raises(ConfigError, match="example_input"):
        EarlyExitConfig(exits_after=EXITS, example_input=[1, 2], train_fn=ok["train_fn"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exactly one of train_fn"):
        EarlyExitConfig(exits_after=EXITS, example_input=x1)
    with pytest.raises(ConfigError, match="MultiExitModel"):
        exit_report(baseline, digits.x_test, digits.y_test)


# ------------------------------------------------------------------------------------ exits chosen by measured cost

def test_exit_costs_add_the_layers_up_to_each_exit_and_the_heads_passed() -> None:
    from greenmeter.compression.early_exit import ExitCosts

    costs = ExitCosts(layer_s=(1.0, 2.0, 3.0, 4.0, 5.0), head_s={1: 0.5, 3: 0.25}, batch_size=1, source="test")
    assert costs.exit_s([1, 3]) == [1.0 + 2.0 + 0.5, 1.0 + 2.0 + 3.0 + 4.0 + 0.5 + 0.25, 15.0 + 0.75]
    assert costs.exit_s([3]) == [10.0 + 0.25, 15.0 + 0.25]


def test_measured_exit_costs_cover_every_layer_and_head(multi: nn.Module, digits: DigitsData) -> None:
    from greenmeter.compression.early_exit import measure_exit_costs

    model = copy.deepcopy(multi).train()
    costs = measure_exit_costs(model, digits.x_test[:3], batch_size=4, rounds=2)
    assert len(costs.layer_s) == 11 and all(s > 0 for s in costs.layer_s)
    assert set(costs.head_s) == {2, 5} and all(s > 0 for s in costs.head_s.values())
    assert costs.batch_size == 4 and "batch 4" in costs.source
    assert model.training  # its mode is restored
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        measure_exit_costs(multi, digits.x_test[:1], batch_size=0)


@pytest.mark.parametrize("cheap", [2, 5])
def test_choose_exits_keeps_the_subset_of_least_expected_cost(
        multi: nn.Module, digits: DigitsData, split: tuple[DigitsData, DigitsData], cheap: int) -> None:
    from greenmeter.compression.early_exit import ExitCosts, _all_exit_logits, _calibrated, choose_exits

    _, val = split
    # a made-up machine where the head at `cheap` is free and the other costs more than the whole backbone
    heads = {2: 0.0, 5: 100.0} if cheap == 2 else {2: 100.0, 5: 0.0}
    costs = ExitCosts(layer_s=(1.0,) * 11, head_s=heads, batch_size=1, source="test")
    chosen, info = choose_exits(multi, val.x_test, val.y_test, costs, max_drop=0.005)
    assert info["exits_after"] == [cheap] and chosen.exits_after == (cheap,)
    # its expected cost, from the validation samples' exits, by hand
    outs = _all_exit_logits(multi, val.x_test)
    sub = [outs[multi.exits_after.index(cheap)], outs[-1]]
    threshold = _calibrated(sub, val.y_test, 0.005, multi.criterion, "confidence")
    early_conf = sub[0].softmax(dim=1).amax(dim=1)  # the rule: leave at the head when more than threshold sure
    exits = (~(early_conf > threshold)).long()
    per_exit = [cheap + 1.0, 11.0]
    expected = sum(per_exit[int(e)] for e in exits) / len(exits)
    assert info["threshold"] == chosen.threshold == threshold
    assert info["expected_s"] == pytest.approx(expected) and info["cost_ratio"] == pytest.approx(expected / 11)
    assert info["exit_histogram"] == torch.bincount(exits, minlength=2).tolist()
    ratios = [s["cost_ratio"] for s in info["subsets"]]
    assert ratios == sorted(ratios) and len(ratios) == 3  # {2}, {5}, {2, 5}
    # the kept head is the trained one, routing as in the model it came from
    with torch.inference_mode():
        every = multi.forward_all(digits.x_test[:50])
        logits, where = chosen.infer(digits.x_test[:50])
    k = multi.exits_after.index(cheap)
    for i in range(50):
        assert torch.allclose(logits[i], (every[k] if where[i] == 0 else every[-1])[i], atol=1e-5)
    assert chosen.backbone_frozen and all(p is q for p, q in zip(chosen.blocks.parameters(), multi.blocks.parameters()))


def test_with_exits_refuses_exits_the_model_does_not_have(multi: nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"with_exits: \[3\] are not exits of this model"):
        multi.with_exits([3])


def test_self_distillation_adds_the_kl_to_the_final_exit_and_trains_the_heads(
        baseline: nn.Module, digits: DigitsData) -> None:
    from torch.nn import functional as F

    from greenmeter.compression.early_exit import SELF_DISTILL_TEMPERATURE, _joint_loss

    model = MultiExitModel(baseline, [2], digits.x_train[:1]).train()
    x, y = digits.x_train[:16], digits.y_train[:16]
    outs = model.forward_all(x)
    t = SELF_DISTILL_TEMPERATURE
    kl = F.kl_div(F.log_softmax(outs[0] / t, 1), F.softmax(outs[1].detach() / t, 1), reduction="batchmean")
    plain = F.cross_entropy(outs[0], y) + F.cross_entropy(outs[1], y)
    assert float(_joint_loss([1.0, 1.0], 0.5)(model, x, y).detach()) == pytest.approx(float((plain + 0.5 * t * t * kl).detach()), rel=1e-5)
    assert float(_joint_loss([1.0, 1.0])(model, x, y).detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    data = list(batches(digits.x_train, digits.y_train, 64, shuffle=True))
    trained = compress(baseline, EarlyExitConfig(exits_after=[2], example_input=digits.x_train[:1], data=data,
                                                 epochs=1, self_distill=1.0))
    assert trained.compression_info.details["self_distill"] == 1.0
    assert exit_report(trained, digits.x_test, digits.y_test)["final_exit_accuracy"] >= 0.97  # backbone frozen
    with pytest.raises(ConfigError, match="self_distill must be a number >= 0"):
        EarlyExitConfig(exits_after=[2], example_input=digits.x_train[:1], data=data, self_distill=-1.0)


def test_a_head_folds_its_pool_into_its_linear_layer_for_inference(multi: nn.Module, digits: DigitsData) -> None:
    import pickle

    head = copy.deepcopy(multi.heads[0])
    with torch.no_grad():
        features = multi.blocks[0](digits.x_test[:20])
    with torch.inference_mode():
        folded = head(features)
        assert head._folded is not None  # the folded weight, made on the first call
    with torch.enable_grad():
        pooled = head(features)  # gradients: the pool runs
    assert torch.allclose(folded, pooled, atol=1e-5) and pooled.requires_grad
    assert head.folded_weight((32, 8, 8)).shape == (10, 32 * 64)
    with torch.no_grad():
        head.fc.weight.mul_(2)  # a changed weight makes a new folded weight
        assert torch.allclose(head(features), 2 * pooled.detach() - head.fc.bias, atol=1e-4)
    again = pickle.loads(pickle.dumps(head))
    assert again._folded is None and head._folded is not None  # the cache is not saved, nor dropped from the head
    assert set(head.state_dict()) == {"fc.weight", "fc.bias"}
