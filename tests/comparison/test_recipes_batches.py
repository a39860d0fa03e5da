"""The recipes that train read the batches ``compare`` reads (issue 20, item 0).

The built-in trainer (``RecipeContext.trainer`` -> ``greenmeter.compression.distillation.fit``) and its losses
(cross-entropy, distillation, the early-exit joint loss) take dict batches (``model(**inputs)``, the targets
under ``target_key``), tuple-of-inputs batches (``model(*inputs)``) and batches of different sequence lengths.
The text model is an embedding, a masked mean pool and two Linear layers with
``forward(input_ids, attention_mask)``; its toy task (which third of the vocabulary a sentence is drawn from)
is learnt within a few epochs.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from greenmeter._errors import ConfigError, UnsupportedModelError  # noqa: E402
from greenmeter.comparison.recipes import RecipeContext, build_variant  # noqa: E402
from greenmeter.compression import DistillConfig, MultiExitModel, compress  # noqa: E402
from greenmeter.compression import distillation  # noqa: E402

VOCAB, CLASSES, LENGTHS = 31, 3, (5, 9, 7, 12)  # class c draws its tokens from 1 + 10c .. 10 + 10c


class TextModel(nn.Module):
    """``forward(input_ids, attention_mask)``: embedding, mean over the unmasked tokens, Linear-ReLU-Linear."""

    def __init__(self, hidden: int = 32, as_object: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 16)
        self.fc1 = nn.Linear(16, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, CLASSES)
        self.as_object = as_object

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        mask = attention_mask.to(torch.float32).unsqueeze(-1)  # cast first: QAT observes float tensors only
        pooled = (self.emb(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.fc2(self.act(self.fc1(pooled)))
        return SimpleNamespace(logits=logits) if self.as_object else logits  # as_object: like a ModelOutput


def text_batches(key: str = "labels") -> list[dict[str, torch.Tensor]]:
    """Dict batches of 12 sentences, each batch padded to its own length (5, 9, 7, 12 tokens)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for length in LENGTHS:
        y = torch.arange(12) % CLASSES
        ids = 1 + 10 * y[:, None] + torch.randint(0, 10, (12, length), generator=g)
        mask = torch.ones(12, length, dtype=torch.long)
        mask[::2, length // 2:] = 0  # every other sentence is shorter: padding
        ids = ids * mask
        out.append({"input_ids": ids, "attention_mask": mask, key: y})
    return out


def tuple_batches() -> list[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The same data as ``((input_ids, attention_mask), labels)``."""
    return [((b["input_ids"], b["attention_mask"]), b["labels"]) for b in text_batches()]


def dataset_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """The mean cross-entropy of ``model`` over dict batches."""
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(b["input_ids"], b["attention_mask"]), b["labels"]))
                   for b in batches) / len(batches)


def accuracy(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """The fraction of sentences of the dict batches that ``model`` classifies right."""
    with torch.no_grad():
        right = sum(int((model(b["input_ids"], b["attention_mask"]).argmax(1) == b["labels"]).sum()) for b in batches)
    return right / sum(len(b["labels"]) for b in batches)


@pytest.fixture
def histories(monkeypatch: pytest.MonkeyPatch) -> list[list[float]]:
    """Each call of the built-in loop's epoch losses (the real loop, recorded)."""
    real, seen = distillation.fit, []

    def recording(*args: Any, **kwargs: Any) -> list[float]:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(distillation, "fit", recording)
    return seen


def context(example: Any, data: Any, **kwargs: Any) -> RecipeContext:
    settings = {"fine_tune_epochs": 6, "train_epochs": 6, "lr": 3e-2, **kwargs}
    return RecipeContext(example_input=example, train_data=data, **settings)


def example_pair() -> tuple[torch.Tensor, torch.Tensor]:
    first = text_batches()[0]
    return first["input_ids"], first["attention_mask"]


@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_channels_fine_tunes_on_text_batches(form: str, histories: list[list[float]]) -> None:
    batches = text_batches()
    data = batches if form == "dict" else tuple_batches()
    baseline = TextModel().eval()
    before = dataset_loss(baseline, batches)
    variant = build_variant("channels:0.5[keep=emb]", baseline,
                            context(example_pair(), data, target_key="labels"))
    assert variant.fc1.out_features == 16 and baseline.fc1.out_features == 32  # pruned; the baseline untouched
    [history] = histories
    assert len(history) == 6 and history[-1] < 0.5 * history[0]
    assert dataset_loss(variant, batches) < 0.5 * before
    long = batches[-1]  # runs on a batch of another length than the example's
    assert variant(long["input_ids"], long["attention_mask"]).shape == (12, CLASSES)
    assert variant.recipe.details["trainer"] == "built-in"


def test_channels_traces_a_model_on_a_dict_example_input() -> None:
    # the example as a tokenizer gives it: keyword inputs, the model called as model(**inputs)
    first = text_batches()[0]
    example = {"input_ids": first["input_ids"], "attention_mask": first["attention_mask"]}
    baseline = TextModel().eval()
    variant = build_variant("channels:0.5[keep=emb]", baseline, context(example, text_batches()))
    assert variant.fc1.out_features == 16 and baseline.fc1.out_features == 32
    assert variant(**example).shape == (len(first["labels"]), CLASSES)
    with pytest.raises(ConfigError, match="a dict of tensors"):
        build_variant("channels:0.5[keep=emb]", baseline, context({"input_ids": [1, 2]}, text_batches()))


@pytest.mark.parametrize(("spec", "example", "error", "message"), [
    ("channels:0.5", "tuple", UnsupportedModelError, "cannot prune layer 'emb' \\(Embedding\\)"),
    ("qat", "tuple", UnsupportedModelError, "Embedding weights"),
    ("distill:0.5", "tuple", UnsupportedModelError, "TextModel is neither: pass a student of your own"),
    ("early-exit", "tuple", UnsupportedModelError, "cuts an nn.Sequential backbone"),
])
def test_recipes_that_cannot_take_the_text_model_say_why(spec: str, example: str, error: type[Exception],
                                                          message: str) -> None:
    first = text_batches()[0]
    inputs = ({"input_ids": first["input_ids"], "attention_mask": first["attention_mask"]} if example == "dict"
              else example_pair())
    with pytest.raises(error, match=message):
        build_variant(spec, TextModel().eval(), context(inputs, text_batches()))


def test_qat_trains_on_dict_batches(histories: list[list[float]]) -> None:
    baseline = TextModel().eval()
    variant = build_variant("qat[keep=emb]", baseline, context(example_pair(), text_batches(), fine_tune_epochs=4))
    [history] = histories
    assert history[-1] < 0.8 * history[0]
    assert variant.compression_info.details["quantized_layers"] == 2  # fc1 and fc2 are int8; the embedding kept
    long = text_batches()[-1]
    logits = variant(long["input_ids"], long["attention_mask"])
    assert logits.shape == (12, CLASSES)
    assert (logits.argmax(1) == long["labels"]).float().mean() > 0.8


def test_ticket_trains_on_dict_batches_under_a_named_key(histories: list[list[float]]) -> None:
    batches = text_batches(key="label")
    variant = build_variant("ticket:0.5", TextModel().eval(),
                            context(example_pair(), batches, target_key="label", fine_tune_epochs=3))
    assert len(histories) == 2 and all(h[-1] < h[0] for h in histories)  # one pruning round, then the ticket
    assert float((variant.fc1.weight == 0).float().mean()) > 0.3
    assert dataset_loss(variant, text_batches()) < dataset_loss(TextModel().eval(), text_batches())


def test_distillation_loss_calls_teacher_and_student_on_dict_batches() -> None:
    batches = text_batches(key="label")
    teacher = TextModel(as_object=True).eval()  # returns an object with .logits, as a ModelOutput does
    ctx = context(example_pair(), batches, target_key="label", fine_tune_epochs=8)
    ctx.trainer("fit the teacher")(teacher)  # the built-in cross-entropy on .logits
    student = TextModel(hidden=8)
    fresh = dataset_loss(TextModel(hidden=8).eval(), text_batches())
    small = compress(student, DistillConfig(teacher=teacher, data=batches, epochs=6, lr=1e-2, target_key="label"))
    d = small.compression_info.details
    assert d["trainer"] == "built-in" and d["steps"] == 6 * len(LENGTHS)
    assert d["epoch_losses"][-1] < 0.95 * d["epoch_losses"][0]
    assert dataset_loss(small, text_batches()) < 0.8 * fresh


def test_distill_config_checks_its_target_key() -> None:
    with pytest.raises(ConfigError, match="DistillConfig.target_key must be a non-empty string, not ''"):
        DistillConfig(teacher=TextModel(), data=text_batches(), target_key="")


def test_the_built_in_trainer_reduces_a_model_output_object(histories: list[list[float]]) -> None:
    model = TextModel(as_object=True)
    before = dataset_loss(TextModel().eval(), text_batches())
    RecipeContext(example_input=example_pair(), train_data=tuple_batches(), lr=1e-2).trainer("test", 5)(model)
    [history] = histories
    assert history[-1] < 0.7 * history[0]
    model.as_object = False
    assert dataset_loss(model, text_batches()) < 0.7 * before


def mlp_data() -> tuple[torch.Tensor, list[tuple[tuple[torch.Tensor], torch.Tensor]]]:
    """A Sequential's data as tuple-of-inputs batches ``((x,), y)`` of 16 samples."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, [((x[i:i + 16],), y[i:i + 16]) for i in range(0, 64, 16)]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def test_early_exit_heads_train_on_tuple_of_inputs_batches(histories: list[list[float]]) -> None:
    x, data = mlp_data()
    variant = build_variant("early-exit:0.9", mlp(), context(x, data))
    assert isinstance(variant, MultiExitModel) and variant.num_exits >= 2
    [history] = histories
    assert history[-1] < history[0]
    assert variant(x).shape == (64, 3)


def test_distill_recipe_trains_a_student_on_tuple_of_inputs_batches(histories: list[list[float]]) -> None:
    x, data = mlp_data()
    variant = build_variant("distill:0.5", mlp(), context(x, data))
    d = variant.compression_info.details
    assert d["student_parameters"] < d["teacher_parameters"]
    [history] = histories  # the recipe trains through the context's trainer: the built-in loop
    assert history[-1] < history[0]
    assert variant(x).shape == (64, 3)


class TinyTransformer(nn.Module):
    """``forward(input_ids, attention_mask)``: embedding, a 4-layer ``nn.TransformerEncoder``, masked mean, Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
        mask = attention_mask.to(torch.float32).unsqueeze(-1)
        return self.fc((h * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def trained_tiny_transformer(batches: list[dict[str, torch.Tensor]]) -> TinyTransformer:
    """A :class:`TinyTransformer` trained on ``batches`` (10 epochs of Adam at 0.01), in eval mode."""
    model = TinyTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        for b in batches:
            opt.zero_grad()
            F.cross_entropy(model(b["input_ids"], b["attention_mask"]), b["labels"]).backward()
            opt.step()
    return model.eval()


def test_distill_makes_a_transformer_shallower_from_its_own_blocks_and_trains_it_on_dict_batches(
        histories: list[list[float]]) -> None:
    batches = text_batches()
    teacher = trained_tiny_transformer(batches)  # the teacher learns the task first
    assert accuracy(teacher, batches) == 1.0
    first = {k: v for k, v in batches[0].items() if k != "labels"}
    start, _ = distillation.make_shallow_student(teacher, 0.25)  # the student before it learns from the teacher
    before = accuracy(start.eval(), batches)
    variant = build_variant("distill:0.25", teacher, context(first, batches))
    d = variant.recipe.details
    assert (d["depth"], d["stack"], d["blocks"], d["kept_blocks"]) == (0.25, "encoder.layers", 4, [3])
    assert len(variant.encoder.layers) == variant.encoder.num_layers == 1
    assert len(teacher.encoder.layers) == teacher.encoder.num_layers == 4  # the baseline keeps its blocks
    info = variant.compression_info.details
    assert info["student_parameters"] < info["teacher_parameters"]
    [history] = histories  # trained through the built-in loop on dict batches of different lengths
    assert history[-1] < history[0]
    assert before < 0.9 <= accuracy(variant, batches)
    assert variant(**first).shape == (12, CLASSES)


@pytest.mark.parametrize("spec", ["int8-dynamic", "int4", "channels:0.5[keep=emb,encoder.layers.0.self_attn,"
                                  "encoder.layers.1.self_attn,encoder.layers.2.self_attn,encoder.layers.3.self_attn]"])
def test_a_transformer_encoders_int8_int4_and_channel_variants_run_where_torch_takes_its_fused_path(spec: str) -> None:
    batches = text_batches()
    teacher = TinyTransformer().eval()
    first = {k: v for k, v in batches[0].items() if k != "labels"}
    variant = build_variant(spec, teacher, context(first, batches, fine_tune_epochs=1))
    with torch.no_grad():  # eval mode without gradients: torch's fused encoder path would read linear1.weight
        out = variant(**first)
        expected = teacher(**first)
    assert out.shape == (12, CLASSES)
    details = variant.compression_info.details
    if spec.startswith("channels"):
        assert variant.encoder.layers[0].linear1.out_features == 16  # the feed-forward width halved
    else:  # the replaced feed-forward layers run their own kernels, close to the float model
        assert details["unfused_transformer_layers"] == [f"encoder.layers.{i}" for i in range(4)]
        assert float((out - expected).abs().max()) < 0.1 * float(expected.abs().max())


def test_qat_refuses_before_training_the_layers_fx_cannot_convert_and_quantizes_the_rest_when_they_are_kept(
        histories: list[list[float]]) -> None:
    from greenmeter.compression import qat_float_layers

    batches = text_batches()
    model = TinyTransformer().eval()
    first = {k: v for k, v in batches[0].items() if k != "labels"}
    kept = qat_float_layers(model)
    assert kept == ["emb"] + [f"encoder.layers.{i}.{part}" for i in range(4)
                              for part in ("self_attn.out_proj", "linear1", "linear2")]
    with pytest.raises(UnsupportedModelError, match=r"calls 'encoder' \(TransformerEncoder\) as one module, so it "
                                                    r"cannot convert the 12 layer\(s\) inside it to int8"):
        build_variant("qat[keep=emb]", model, context(first, batches, fine_tune_epochs=1))
    assert histories == []  # refused before any training
    variant = build_variant(f"qat[keep={','.join(kept)}]", model, context(first, batches, fine_tune_epochs=1))
    assert variant.compression_info.details["integer_modules"] == {"Linear": 1}  # the classifier
    with torch.no_grad():  # the kept layers are not wrapped: the encoder layers still read their weights
        assert variant(**first).shape == (12, CLASSES)


@pytest.mark.parametrize(("batch", "message"), [
    ({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3), "label": torch.ones(2)},
     "batch 0 is a dict with keys input_ids, attention_mask, label and no 'labels': name the key of the targets "
     "with target_key= \\(for example target_key='label'\\)"),
    (torch.ones(4, 8), "batch 0 is a Tensor of shape \\(4, 8\\).*target_key="),
])
def test_a_batch_the_trainer_cannot_read_names_its_structure_and_the_option(batch: Any, message: str) -> None:
    train = RecipeContext(example_input=example_pair(), train_data=[batch]).trainer("channels")
    with pytest.raises(ConfigError, match=message):
        train(TextModel())
