"""How compare reads a user's batches: tensors, tuples, dicts with a target key, DataLoaders, output objects."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.batches import (  # noqa: E402
    Batch,
    batch_size_of,
    calibration_inputs,
    call_model,
    default_output,
    describe,
    evaluation_batches,
    first_samples,
    model_output,
    read_batch,
)


def _encoded(lengths: list[int]) -> dict[str, torch.Tensor]:
    """A dict batch padded to its longest row, as a tokenizer with ``padding=True`` gives it, with labels."""
    longest = max(lengths)
    ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.arange(1, n + 1)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(len(lengths)) % 2}


def test_a_dict_batch_gives_its_labels_as_targets_and_the_rest_as_inputs() -> None:
    batch = read_batch(_encoded([3, 5]), 0)
    assert isinstance(batch, Batch) and batch.size == 2
    assert list(batch.inputs) == ["input_ids", "attention_mask"]
    assert batch.targets.tolist() == [0, 1]
    inputs, targets = batch  # still unpacks as a pair
    assert inputs is batch.inputs and targets is batch.targets


def test_target_key_names_another_key() -> None:
    raw = _encoded([2, 4])
    raw["label"] = raw.pop("labels")
    batch = read_batch(raw, 0, target_key="label")
    assert batch.targets.tolist() == [0, 1] and "label" not in batch.inputs


def test_a_dict_without_the_target_key_says_what_it_is_and_which_option_fixes_it() -> None:
    raw = _encoded([2, 4])
    del raw["labels"]
    with pytest.raises(ConfigError) as err:
        evaluation_batches([raw], 8)
    message = str(err.value)
    assert "batch 0 is a dict with keys input_ids, attention_mask and no 'labels'" in message
    assert "target_key= (for example target_key='your_key')" in message
    raw["label_ids"] = torch.zeros(2)
    with pytest.raises(ConfigError, match="for example target_key='label_ids'"):
        evaluation_batches([raw], 8)
    whole = {"input_ids": torch.zeros(4, 2), "y": torch.zeros(4)}
    with pytest.raises(ConfigError, match="the evaluation data is a dict with keys input_ids, y and no 'labels'"):
        evaluation_batches(whole, 2)
    assert [b.targets.shape[0] for b in evaluation_batches(whole, 3, target_key="y")] == [3, 1]


@pytest.mark.parametrize(("item", "said"), [
    (torch.zeros(4, 3), "batch 0 is a Tensor of shape (4, 3)"),
    ((torch.zeros(4, 3),), "batch 0 is a tuple of 1 item (Tensor)"),
    ("text", "batch 0 is a str"),
])
def test_a_batch_that_is_neither_a_pair_nor_a_dict_is_refused_with_its_structure(item: object, said: str) -> None:
    with pytest.raises(ConfigError, match="compare needs \\(inputs, targets\\) batches") as err:
        evaluation_batches([item], 8)
    assert said in str(err.value) and "target_key=" in str(err.value)


def test_inputs_without_a_tensor_and_targets_of_another_count_are_refused() -> None:
    with pytest.raises(ConfigError, match="the inputs of batch 0 are a list of 2 items \\(str, str\\)"):
        evaluation_batches([(["a", "b"], torch.zeros(2))], 8)
    with pytest.raises(ConfigError, match="batch 1 has 3 inputs .* but 2 targets"):
        evaluation_batches([(torch.zeros(3, 2), torch.zeros(3)), (torch.zeros(3, 2), torch.zeros(2))], 8)


def test_a_dataloader_with_a_collate_function_is_read_once_with_dynamic_padding() -> None:
    lengths = [3, 7, 2, 9, 4, 4, 12, 1]
    reads = {"n": 0}

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        reads["n"] += 1
        return _encoded(rows)

    loader = DataLoader(lengths, batch_size=3, collate_fn=collate)
    batches = evaluation_batches(loader, 256)
    assert reads["n"] == 3  # read once, kept
    assert [b.size for b in batches] == [3, 3, 2]
    assert [b.inputs["input_ids"].shape[1] for b in batches] == [7, 9, 12]  # each padded to its own longest


def test_whole_data_sets_are_cut_into_batches_in_every_input_form() -> None:
    ids, mask, y = torch.arange(10).reshape(5, 2), torch.ones(5, 2), torch.arange(5)
    as_tuple = evaluation_batches(((ids, mask), y), 2)
    assert [b.size for b in as_tuple] == [2, 2, 1]
    assert torch.equal(as_tuple[1].inputs[0], ids[2:4]) and torch.equal(as_tuple[2].targets, y[4:])
    as_dict = evaluation_batches({"input_ids": ids, "attention_mask": mask, "labels": y}, 4)
    assert [b.size for b in as_dict] == [4, 1] and torch.equal(as_dict[0].inputs["attention_mask"], mask[:4])
    with pytest.raises(ConfigError, match="differ in length \\(4, 5 samples\\)"):
        evaluation_batches(((ids, mask[:4]), y), 2)


def test_the_batch_size_is_the_leading_size_of_the_first_tensor() -> None:
    assert batch_size_of(torch.zeros(7, 3)) == 7
    assert batch_size_of(("not a tensor", torch.zeros(5, 2), torch.zeros(9))) == 5
    assert batch_size_of({"input_ids": torch.zeros(4, 11), "other": torch.zeros(2)}) == 4
    assert batch_size_of(torch.zeros(())) is None and batch_size_of(["a"]) is None


def test_the_model_is_called_the_way_the_inputs_are_shaped() -> None:
    def f(a: torch.Tensor, b: torch.Tensor | None = None) -> str:
        return f"{a.shape[0]}/{None if b is None else b.shape[0]}"

    x, m = torch.zeros(3), torch.zeros(2)
    assert call_model(f, x) == "3/None"
    assert call_model(f, (x, m)) == "3/2"
    assert call_model(f, {"b": m, "a": x}) == "3/2"


@dataclass
class _Output:
    """A Hugging Face ``ModelOutput`` stand-in: an object with ``.logits``."""

    logits: torch.Tensor
    hidden: torch.Tensor


def test_the_default_output_takes_a_tensor_the_first_of_a_tuple_or_the_logits() -> None:
    t = torch.ones(2, 3)
    assert default_output(t) is t
    assert default_output((t, "exit info")) is t
    assert default_output(_Output(t, torch.zeros(2, 5, 4))) is t
    assert default_output({"logits": t, "hidden": None}) is t
    with pytest.raises(ConfigError, match="the model returned a dict with keys hidden.*pass output_fn="):
        default_output({"hidden": t})


def test_output_fn_reduces_the_output_and_must_return_a_tensor() -> None:
    model = nn.Identity()
    out = model_output(lambda x: _Output(x, x * 2), torch.ones(2, 3), output_fn=lambda o: o.hidden)
    assert out.tolist() == [[2.0] * 3] * 2
    with pytest.raises(ConfigError, match="output_fn returned a str"):
        model_output(model, torch.ones(2), output_fn=lambda o: "no")


def test_calibration_inputs_drop_targets_from_pairs_and_dicts() -> None:
    raw = _encoded([2, 3])
    got = calibration_inputs([raw, (torch.ones(2, 4), torch.zeros(2)), torch.ones(5, 4)], limit=2)
    assert len(got) == 2 and list(got[0]) == ["input_ids", "attention_mask"] and got[1].shape == (2, 4)
    with pytest.raises(ConfigError, match="calibration batch 0 is a str"):
        calibration_inputs(["text"])


def test_first_samples_keep_the_form_of_the_inputs() -> None:
    raw = _encoded([2, 3, 4])
    cut = first_samples({"input_ids": raw["input_ids"], "n": 3}, 1)
    assert cut["input_ids"].shape == (1, 4) and cut["n"] == 3
    assert [t.shape[0] for t in first_samples((raw["input_ids"], raw["attention_mask"]), 2)] == [2, 2]


def test_describe_names_the_structure() -> None:
    assert describe({"a": 1, "b": 2}) == "a dict with keys a, b"
    assert describe([1, "x", None, 2.0, 3]) == "a list of 5 items (int, str, NoneType, float, ...)"
    assert describe(torch.zeros(2, 1)) == "a Tensor of shape (2, 1)"
    assert describe(object()) == "an object"
