"""``compare``, ``optimize`` and the sensitivity on data and models as users have them (issue 20, item 0).

A small transformer-like classifier with ``forward(input_ids, attention_mask)``, trained here for a second on a
toy task, is compared on dict batches from a real ``DataLoader`` whose collate function pads each batch to its
own longest sentence, as a Hugging Face tokenizer with dynamic padding does.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.comparison.facts import count_macs  # noqa: E402
from greenmeter.comparison.journal import data_hash  # noqa: E402
from greenmeter.comparison.batches import evaluation_batches  # noqa: E402
from greenmeter.comparison.recipes import RecipeContext  # noqa: E402
from greenmeter.comparison.sensitivity import layer_sensitivity  # noqa: E402
from greenmeter.comparison.steps import UNPAIRED  # noqa: E402

VOCAB, DIM, MARK = 24, 32, 3  # the label: whether the sentence holds token MARK


@dataclass
class Output:
    """What a Hugging Face model returns: an object with ``.logits`` (and more)."""

    logits: torch.Tensor
    last_hidden_state: torch.Tensor


class TinyEncoder(nn.Module):
    """Embedding, one transformer encoder block (attention with a padding mask, a feed-forward), masked mean
    pooling and a classifier head. (Written out: ``nn.TransformerEncoderLayer``'s inference fast path cannot run
    with dynamically quantized Linear layers in torch 2.13.)"""

    def __init__(self, per_token: bool = False, as_object: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.ff = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, DIM))
        self.head = nn.Linear(DIM, 2)
        self.per_token, self.as_object = per_token, as_object

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | Output:
        x = self.embed(input_ids)
        a, _ = self.attn(x, x, x, key_padding_mask=attention_mask == 0, need_weights=False)
        h = self.norm1(x + a)
        h = self.norm2(h + self.ff(h))
        if self.per_token:  # (N, L, 2): one prediction per token, L differs from batch to batch
            return self.head(h)
        weights = attention_mask.unsqueeze(-1).to(h.dtype)
        logits = self.head((h * weights).sum(1) / weights.sum(1))
        return Output(logits, h) if self.as_object else logits


def _sentences(n: int, seed: int) -> list[tuple[list[int], int]]:
    """``n`` token sequences of 2 to 14 tokens, labelled 1 when they hold token MARK."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(2, 15, (1,), generator=g))
        ids = torch.randint(4, VOCAB, (length,), generator=g)
        if i % 2:
            ids[int(torch.randint(0, length, (1,), generator=g))] = MARK
        out.append((ids.tolist(), i % 2))
    return out


def collate(rows: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest sentence: input_ids, attention_mask and labels, like a tokenizer's output."""
    longest = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, (tokens, _) in enumerate(rows):
        ids[i, :len(tokens)] = torch.tensor(tokens)
        mask[i, :len(tokens)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([label for _, label in rows])}


def _trained(model: TinyEncoder) -> TinyEncoder:
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(6):
        for batch in DataLoader(_sentences(256, seed=1), batch_size=32, collate_fn=collate):
            labels = batch.pop("labels")
            out = model(**batch)
            loss = nn.functional.cross_entropy(out.logits if isinstance(out, Output) else out, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def encoder() -> TinyEncoder:
    torch.set_num_threads(2)
    return _trained(TinyEncoder())


@pytest.fixture(scope="module")
def loader() -> DataLoader:
    return DataLoader(_sentences(96, seed=2), batch_size=16, collate_fn=collate)


def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    right = total = 0
    with torch.inference_mode():
        for batch in loader:
            labels = batch.pop("labels")
            right += int((model(**batch).argmax(1) == labels).sum())
            total += len(labels)
    return right / total


def test_dict_batches_with_dynamic_padding_compare_float_and_int8(encoder: TinyEncoder, loader: DataLoader) -> None:
    widths = {b["input_ids"].shape[1] for b in loader}
    assert len(widths) > 1  # the batches really differ in shape
    result = compare({"float": encoder, "int8": "int8-dynamic"}, loader, repeats=2, min_repeat_s=0.0,
                     progress=False)
    base, int8 = result.variant("float"), result.variant("int8")
    assert base.ok and int8.ok, (base.error, int8.error)
    assert base.metric == pytest.approx(_accuracy(encoder, loader)) and base.metric > 0.8  # it learned the task
    assert int8.details["method"] == "dynamic_int8"
    assert abs(int8.metric - base.metric) < 0.1
    assert result.samples_per_pass == 96
    for v in (base, int8):
        assert v.energy_per_sample_j.mean > 0 and v.latency_sample.p50_s > 0
        assert v.macs_per_sample > 0 and v.macs_method.startswith("flop-counter")
    # logits (N, 2) per batch join across batches: each sample's correctness is paired, McNemar's test runs
    assert int8.vs_baseline.metric_test.test == "mcnemar"


def test_tuple_inputs_are_passed_as_positional_arguments(encoder: TinyEncoder, loader: DataLoader) -> None:
    pairs = [((b["input_ids"], b["attention_mask"]), b["labels"]) for b in loader]
    result = compare({"float": encoder}, pairs, repeats=1, min_repeat_s=0.0, progress=False)
    assert result.variant("float").metric == pytest.approx(_accuracy(encoder, loader))


def test_a_model_output_object_gives_its_logits_or_what_output_fn_takes(loader: DataLoader) -> None:
    model = _trained(TinyEncoder(as_object=True))
    plain = TinyEncoder()
    plain.load_state_dict(model.state_dict())
    result = compare({"hf": model}, loader, repeats=1, min_repeat_s=0.0, progress=False)
    assert result.variant("hf").metric == pytest.approx(_accuracy(plain.eval(), loader))

    def pooled_norm(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(outputs.norm(dim=1).mean())

    first_token = compare({"hf": model}, loader, repeats=1, min_repeat_s=0.0, progress=False, metric=pooled_norm,
                          output_fn=lambda out: out.last_hidden_state[:, 0])
    assert first_token.variant("hf").ok and first_token.metric_name == "pooled_norm"
    assert first_token.variant("hf").metric > 1.0  # the norm of a 32-d hidden state, not of 2 logits


def test_a_batch_metric_scores_per_token_outputs_and_their_change_is_untested(loader: DataLoader) -> None:
    tagger = TinyEncoder(per_token=True).eval()

    class TokenAccuracy:  # the torchmetrics protocol, duck-typed
        def reset(self) -> None:
            self.right, self.total = 0, 0

        def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
            self.right += int((outputs.argmax(-1) == targets[:, None]).sum())
            self.total += outputs.shape[0] * outputs.shape[1]

        def compute(self) -> float:
            return self.right / self.total

    with pytest.raises(ConfigError, match="could not be evaluated.*differ in shape between batches.*reset\\(\\), "
                                          "update\\(outputs, targets\\) and compute\\(\\)"):
        compare({"float": tagger}, loader, repeats=1, min_repeat_s=0.0, progress=False)
    result = compare({"float": tagger, "int8": "int8-dynamic"}, loader, repeats=1, min_repeat_s=0.0,
                     progress=False, metric=TokenAccuracy())
    base, int8 = result.variant("float"), result.variant("int8")
    assert base.ok and int8.ok and result.metric_name == "TokenAccuracy"
    expected = TokenAccuracy()
    expected.reset()
    with torch.inference_mode():
        for b in loader:
            expected.update(tagger(b["input_ids"], b["attention_mask"]), b["labels"])
    assert base.metric == pytest.approx(expected.compute())
    assert int8.vs_baseline.metric_test is None and UNPAIRED in int8.flags


def test_a_dict_without_labels_and_an_unreadable_output_fail_before_any_measurement(encoder: TinyEncoder) -> None:
    batches = [{"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3),
                "label": torch.tensor([0, 1])}]
    with pytest.raises(ConfigError, match="batch 0 is a dict with keys input_ids, attention_mask, label and no "
                                          "'labels': name the key of the targets with target_key="):
        compare({"float": encoder}, batches, progress=False)
    result = compare({"float": encoder}, batches, target_key="label", repeats=1, min_repeat_s=0.0, progress=False)
    assert result.variant("float").ok
    with pytest.raises(ConfigError, match="could not be evaluated.*the model returned a dict with keys "
                                          "hidden.*pass output_fn="):
        compare({"float": _DictOut()}, (torch.zeros(4, 2), torch.zeros(4)), repeats=1, progress=False)
    with pytest.raises(ConfigError, match="output_fn must be a function"):
        compare({"float": encoder}, batches, output_fn="logits", progress=False)
    with pytest.raises(ConfigError, match="target_key must be a non-empty string"):
        compare({"float": encoder}, batches, target_key="", progress=False)


class _DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden": x}


def test_macs_are_counted_with_the_model_called_on_the_dict(encoder: TinyEncoder, loader: DataLoader) -> None:
    batch = next(iter(loader))
    batch.pop("labels")
    by_dict = count_macs(encoder, batch)
    by_tuple = count_macs(encoder, (batch["input_ids"], batch["attention_mask"]))
    assert by_dict.macs_per_sample == by_tuple.macs_per_sample > 0


def test_sensitivity_and_recipe_contexts_read_dict_batches(encoder: TinyEncoder, loader: DataLoader) -> None:
    sens = layer_sensitivity(encoder, loader, probes=("int8", "prune:0.5"), layers=["head"], progress=False)
    assert sens.baseline_metric == pytest.approx(_accuracy(encoder, loader)) and sens.samples == 96
    assert sens.calibration == "the first 6 evaluation batches (96 samples)"
    assert sens.layers[0].drops["int8"] is not None
    ctx = RecipeContext(example_input=evaluation_batches(loader, 8)[0].inputs, train_data=loader,
                        calibration_batches=2)
    inputs = ctx.calibration_inputs()
    assert len(inputs) == 2 and list(inputs[0]) == ["input_ids", "attention_mask"]
    with pytest.raises(ConfigError, match="RecipeContext.example_input must be a batch .* not a list of 1 item"):
        RecipeContext(example_input=["text"])


def test_the_journal_hashes_the_tensors_inside_dict_batches(loader: DataLoader) -> None:
    batches = evaluation_batches(loader, 8)
    again = evaluation_batches(DataLoader(_sentences(96, seed=2), batch_size=16, collate_fn=collate), 8)
    assert data_hash(batches) == data_hash(again) is not None
    changed = evaluation_batches(DataLoader(_sentences(96, seed=3), batch_size=16, collate_fn=collate), 8)
    assert data_hash(changed) != data_hash(batches)


def test_optimize_searches_on_dict_batches(encoder: TinyEncoder, loader: DataLoader, tmp_path) -> None:  # noqa: ANN001
    from greenmeter.comparison.optimize import optimize

    result = optimize(encoder, loader, recipes=["int8-dynamic"], probes=("prune:0.5",), max_drop=0.05,
                      final_repeats=2, min_repeat_s=0.0, progress=False)
    assert result.sensitivity is not None and result.sensitivity.samples == 96
    outcome = next(c for c in result.candidates if c.spec == "int8-dynamic")
    assert outcome.metric is not None and outcome.metric_low is not None  # McNemar on the paired logits
    final = result.comparison
    assert final.variant("baseline").metric == pytest.approx(_accuracy(encoder, loader))
    assert final.variant("int8-dynamic").ok
    with pytest.raises(ConfigError, match="save_to saves a program that takes one input tensor"):
        optimize(encoder, loader, recipes=["int8-dynamic"], save_to=tmp_path / "out", progress=False)


def test_a_batch_metric_on_outputs_that_join_gets_a_paired_bootstrap(encoder: TinyEncoder, loader: DataLoader) -> None:
    class Accuracy:  # accumulates batch by batch; the bootstrap gives it each resample as one batch
        def reset(self) -> None:
            self.right, self.total = 0, 0

        def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
            self.right += int((outputs.argmax(1) == targets).sum())
            self.total += len(targets)

        def compute(self) -> torch.Tensor:
            return torch.tensor(self.right / self.total)

    result = compare({"float": encoder, "int8": "int8-dynamic"}, loader, repeats=1, min_repeat_s=0.0,
                     progress=False, metric=Accuracy(), metric_name="accuracy (batches)")
    base, int8 = result.variant("float"), result.variant("int8")
    assert base.metric == pytest.approx(_accuracy(encoder, loader))
    test = int8.vs_baseline.metric_test
    assert test.test == "paired-bootstrap" and test.diff_mean == pytest.approx(int8.metric - base.metric)
    assert UNPAIRED not in int8.flags
