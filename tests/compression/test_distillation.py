"""Knowledge distillation: the Hinton loss, thinner students, training with and without hints, bad input."""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter._errors import ConfigError, UnsupportedModelError  # noqa: E402
from greenmeter.compression import DistillConfig, compress, hinton_loss, make_student  # noqa: E402
from greenmeter.demo.digits import DigitsData, accuracy, batches, train_classifier  # noqa: E402


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def test_hinton_loss_matches_a_hand_computation() -> None:
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 1.0, 0.0], [1.0, 0.5, 2.5]]
    y = [1, 2]
    temp, alpha = 2.0, 0.7
    kl = 0.0
    ce = 0.0
    for srow, trow, label in zip(s, t, y):
        p, q = softmax(trow, temp), softmax(srow, temp)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        ce += -math.log(softmax(srow, 1.0)[label])
    expected = alpha * temp**2 * kl / 2 + (1 - alpha) * ce / 2
    got = hinton_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=temp, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # The ends of alpha: plain cross-entropy, and the pure soft term.
    assert float(hinton_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 2.0, 0.0)) == pytest.approx(ce / 2, rel=1e-5)
    assert float(hinton_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 2.0, 1.0)) == pytest.approx(4 * kl / 2, rel=1e-5)
    # The teacher is a constant: no gradient flows into its logits.
    t_req = torch.tensor(t, requires_grad=True)
    hinton_loss(torch.tensor(s, requires_grad=True), t_req, torch.tensor(y)).backward()
    assert t_req.grad is None


def test_hinton_loss_rejects_bad_arguments() -> None:
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="temperature"):
        hinton_loss(x, x, y, temperature=0.0)
    with pytest.raises(ConfigError, match="alpha"):
        hinton_loss(x, x, y, alpha=1.5)


def test_make_student_shapes_and_parameter_ratio(baseline: nn.Module, digits: DigitsData) -> None:
    before = copy.deepcopy(baseline.state_dict())
    student = make_student(baseline, 0.45)
    convs = [m for m in student if isinstance(m, nn.Conv2d)]
    linears = [m for m in student if isinstance(m, nn.Linear)]
    bns = [m for m in student if isinstance(m, nn.BatchNorm2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 14), (14, 29)]
    assert [b.num_features for b in bns] == [14, 29]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(29 * 4 * 4, 58), (58, 10)]
    assert student(digits.x_test[:5]).shape == (5, 10)
    ratio = n_params(baseline) / n_params(student)
    assert ratio >= 4.0 and ratio == pytest.approx(151498 / 31469)
    # Width 0.5 is just short of 4x (the first conv and the 10-way output do not shrink by w**2).
    assert 3.9 < n_params(baseline) / n_params(make_student(baseline, 0.5)) < 4.0
    # Fresh weights, reproducible by seed; the model it came from is untouched.
    assert accuracy(student, digits.x_test, digits.y_test) < 0.5
    assert torch.equal(make_student(baseline, 0.45, seed=3)[0].weight, make_student(baseline, 0.45, seed=3)[0].weight)
    assert all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


def test_make_student_rejects_what_it_cannot_thin(baseline: nn.Module) -> None:
    with pytest.raises(UnsupportedModelError, match=r"make_student.*LSTM"):
        make_student(nn.Sequential(nn.Linear(4, 8), nn.LSTM(8, 8)), 0.5)
    with pytest.raises(UnsupportedModelError, match="nn.Sequential"):
        make_student(Residual(), 0.5)
    with pytest.raises(ConfigError, match="width"):
        make_student(baseline, 0.0)


def test_distilled_student_beats_the_same_student_trained_alone(baseline: nn.Module, digits: DigitsData) -> None:
    """Equal budgets: same student init, same quarter of the training data, same epochs, same batches.

    With all the training data a 0.45-width student already reaches ~98.6% alone, so the teacher's extra
    knowledge shows when the student sees a quarter of the data (the teacher saw all of it).
    """
    plain, distilled = [], []
    for seed in range(3):
        idx = torch.randperm(len(digits.x_train), generator=torch.Generator().manual_seed(seed))[: len(digits.x_train) // 4]
        part = DigitsData(digits.x_train[idx], digits.y_train[idx], digits.x_test, digits.y_test)
        alone = train_classifier(make_student(baseline, 0.45, seed=seed), part, epochs=20, seed=seed)
        taught = compress(make_student(baseline, 0.45, seed=seed), DistillConfig(
            teacher=baseline, train_fn=lambda m, loss, part=part, seed=seed: train_classifier(
                m, part, epochs=20, seed=seed, loss_fn=loss)))
        plain.append(accuracy(alone, digits.x_test, digits.y_test))
        distilled.append(accuracy(taught, digits.x_test, digits.y_test))
    gain_pp = 100 * (sum(distilled) - sum(plain)) / 3
    print(f"plain {plain} distilled {distilled} mean gain {gain_pp:.2f} pp")
    assert gain_pp >= 0.5
    assert taught.compression_info.details["trainer"] == "train_fn"
    assert taught.compression_info.details["steps"] == 20 * math.ceil(len(idx) / 64)


def test_alpha_zero_is_exactly_plain_training(baseline: nn.Module, digits: DigitsData) -> None:
    """The comparison above is fair: with alpha=0 the distillation path reproduces plain training bit for bit."""
    part = DigitsData(digits.x_train[:200], digits.y_train[:200], digits.x_test, digits.y_test)
    alone = train_classifier(make_student(baseline, 0.45, seed=1), part, epochs=2, seed=1)
    same = compress(make_student(baseline, 0.45, seed=1), DistillConfig(
        teacher=baseline, alpha=0.0, train_fn=lambda m, loss: train_classifier(m, part, epochs=2, seed=1, loss_fn=loss)))
    assert all(torch.equal(a, b) for a, b in zip(alone.state_dict().values(), same.state_dict().values()))


@pytest.mark.parametrize("trainer", ["built-in", "train_fn"])
def test_hint_distillation_reduces_the_hint_loss(baseline: nn.Module, digits: DigitsData, trainer: str) -> None:
    student = make_student(baseline, 0.45)
    hints = {"3": "3", "8": "8"}  # second conv (29 vs 64 channels) and hidden Linear (58 vs 128 units)
    if trainer == "built-in":
        def data():  # a fresh iterable each epoch
            return batches(digits.x_train, digits.y_train, 64, shuffle=True, seed=0)
        config = DistillConfig(teacher=baseline, data=data, epochs=8, hints=hints)
    else:
        config = DistillConfig(teacher=baseline, hints=hints, train_fn=lambda m, loss: train_classifier(
            m, digits, epochs=8, loss_fn=loss))
    out = compress(student, config)
    d = out.compression_info.details
    assert d["trainer"] == trainer
    assert d["hint_layers"] == ["3->3", "8->8"]
    assert d["hint_regressors"] == {"3": "Conv2d", "8": "Linear"}
    assert d["hint_loss_final"] < 0.5 * d["hint_loss_initial"]
    assert accuracy(out, digits.x_test, digits.y_test) >= 0.95
    if trainer == "built-in":
        assert d["epochs"] == 8 and len(d["epoch_losses"]) == 8
        assert d["epoch_losses"][-1] < d["epoch_losses"][0]
    # No hooks are left behind on either model.
    assert not any(m._forward_hooks for m in out.modules())
    assert not any(m._forward_hooks for m in baseline.modules())


def test_compress_leaves_student_and_teacher_unchanged(baseline: nn.Module, digits: DigitsData) -> None:
    student = make_student(baseline, 0.45)
    student_before = copy.deepcopy(student.state_dict())
    baseline.train()  # the teacher is run in eval mode, and its mode is put back
    teacher_before = copy.deepcopy(baseline.state_dict())
    data = list(batches(digits.x_train[:256], digits.y_train[:256], 64, shuffle=False))
    out = compress(student, DistillConfig(teacher=baseline, data=data, epochs=2))
    assert out is not student and not out.training
    assert all(torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in baseline.state_dict().items())
    assert baseline.training
    assert not all(torch.equal(student_before[k], v) for k, v in out.state_dict().items())


def test_bad_configs_are_clear_errors(baseline: nn.Module, digits: DigitsData) -> None:
    data = [(digits.x_train[:8], digits.y_train[:8])]
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(teacher=baseline, data=data, temperature=0)
    for bad in (float("inf"), float("nan"), "2"):  # refused with the range, not a TypeError or a silent inf
        with pytest.raises(ConfigError, match=r"^DistillConfig.temperature must be a number > 0, not "):
            DistillConfig(teacher=baseline, data=data, temperature=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^DistillConfig.hint_weight must be a number >= 0, not inf"):
        DistillConfig(teacher=baseline, data=data, hint_weight=float("inf"))
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig(teacher=baseline, data=data, alpha=-0.1)
    with pytest.raises(ConfigError, match="epochs"):
        DistillConfig(teacher=baseline, data=data, epochs=0)
    with pytest.raises(ConfigError, match="exactly one of train_fn"):
        DistillConfig(teacher=baseline)
    with pytest.raises(ConfigError, match="exactly one of train_fn"):
        DistillConfig(teacher=baseline, data=data, train_fn=lambda m, loss: None)
    with pytest.raises(ConfigError, match="one-shot iterator"):
        DistillConfig(teacher=baseline, data=iter(data), epochs=2)
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        DistillConfig(teacher="resnet", data=data)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="teacher has no module named 'body.7'"):
        DistillConfig(teacher=baseline, data=data, hints={"3": "body.7"})
    config = DistillConfig(teacher=baseline, data=data, hints={"conv9": "3"})
    with pytest.raises(ConfigError, match="student has no module named 'conv9'"):
        compress(make_student(baseline, 0.45), config)
    with pytest.raises(ConfigError, match=r"batch 0 is a Tensor of shape \(8, 1, 8, 8\): .*\(inputs, targets\) batches"):
        compress(make_student(baseline, 0.45), DistillConfig(teacher=baseline, data=[digits.x_train[:8]], epochs=1))
