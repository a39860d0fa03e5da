"""Saving a variant to deploy (greenmeter.comparison.export): state dict, program, manifest; reloaded and re-checked.

Every built-in recipe is built from the digits CNN (trained one epoch), saved, loaded back in the same process,
and its program must score the same accuracy on the 450 test images as the variant in memory, with the same
outputs. The expected program formats are what torch 2.13 CPU does (docs/compare.md has the table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
from torch import nn  # noqa: E402

from greenmeter import ConfigError  # noqa: E402
from greenmeter.comparison.export import (  # noqa: E402
    ExportedModule,
    SavedModel,
    load_model,
    read_manifest,
    read_state_dict,
    save_model,
)
from greenmeter.comparison.recipes import RecipeContext, build_variant  # noqa: E402
from greenmeter.demo.digits import (  # noqa: E402
    DigitsData,
    accuracy,
    batches,
    make_digits_cnn,
    train_classifier,
)

INT8_EXPORT_ERROR = "AttributeError: __torch__.torch.classes.quantized."  # torch.export cannot flatten packed params
EXPORTED = ("float", "prune:0.5", "ticket:0.2", "channels:0.5", "distill:0.5", "int4")
TRACED = ("int8-dynamic", "int8-static", "qat", "channels:0.5+int8-static")


@pytest.fixture(scope="module")
def baseline(digits: DigitsData) -> nn.Module:
    return train_classifier(make_digits_cnn(), digits, epochs=1)


@pytest.fixture(scope="module")
def ctx(digits: DigitsData) -> RecipeContext:
    train = list(batches(digits.x_train, digits.y_train, 64, shuffle=True))[:6]  # recipes that train: 384 images
    return RecipeContext(example_input=digits.x_train[:8], train_data=train, fine_tune_epochs=1, train_epochs=1,
                         calibration_batches=4)


def variant(spec: str, baseline: nn.Module, ctx: RecipeContext) -> nn.Module:
    return baseline if spec == "float" else build_variant(spec, baseline, ctx)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + 128]) for i in range(0, len(x), 128)])


@pytest.mark.parametrize("spec", EXPORTED + TRACED)
def test_a_saved_variant_reloads_with_the_same_accuracy_and_outputs(spec: str, baseline: nn.Module,
                                                                   ctx: RecipeContext, digits: DigitsData,
                                                                   tmp_path: Path) -> None:
    model = variant(spec, baseline, ctx)
    acc = accuracy(model, digits.x_test, digits.y_test)
    saved = save_model(model, tmp_path / "v", example_input=digits.x_train[:8],
                       metric={"name": "accuracy", "value": acc})

    loaded = load_model(tmp_path / "v")
    assert not loaded.training
    assert accuracy(loaded, digits.x_test, digits.y_test) == acc  # 450 images: the same predictions count
    assert torch.allclose(outputs(loaded, digits.x_test), outputs(model, digits.x_test), rtol=1e-4, atol=1e-5)
    assert not model.training  # left in the mode it was in

    assert saved == read_manifest(tmp_path / "v")
    assert saved.recipe == (None if spec == "float" else spec)
    assert saved.metric == {"name": "accuracy", "value": acc}
    assert saved.input_shape == (8, 1, 8, 8) and saved.input_dtype == "float32"
    files = {p.name for p in (tmp_path / "v").iterdir()}
    if spec in EXPORTED:
        assert (saved.program, saved.program_file, dict(saved.failures)) == ("torch.export", "model.pt2", {})
        assert isinstance(loaded, ExportedModule)
        assert loaded(digits.x_test[:1]).shape == (1, 10)  # any batch size, not only the example's 8
        assert files == {"manifest.json", "state_dict.pt", "model.pt2"}
    else:
        assert (saved.program, saved.program_file) == ("torchscript-trace", "model.torchscript.pt")
        assert list(saved.failures) == ["torch.export"]
        assert saved.failures["torch.export"].startswith(INT8_EXPORT_ERROR)
        assert isinstance(loaded, torch.jit.ScriptModule)
        assert files == {"manifest.json", "state_dict.pt", "model.torchscript.pt"}
        assert "torch.export failed (AttributeError" in saved.describe()
    assert saved.max_abs_diff is not None and saved.max_abs_diff <= 1e-5
    if spec != "float":
        assert saved.compression is not None and saved.compression["method"] == model.compression_info.method


def test_the_state_dict_reloads_into_a_model_built_by_the_same_recipe(baseline: nn.Module, ctx: RecipeContext,
                                                                     digits: DigitsData, tmp_path: Path) -> None:
    model = build_variant("int8-static", baseline, ctx)  # quantized weights: packed parameters in the state dict
    save_model(model, tmp_path, example_input=digits.x_train[:8])
    fresh = build_variant(read_manifest(tmp_path).recipe, make_digits_cnn(seed=1), ctx)  # other weights
    assert accuracy(fresh, digits.x_test, digits.y_test) != accuracy(model, digits.x_test, digits.y_test)
    fresh.load_state_dict(read_state_dict(tmp_path))
    assert torch.equal(outputs(fresh, digits.x_test), outputs(model, digits.x_test))


def test_early_exit_gets_no_program_and_the_manifest_says_why(baseline: nn.Module, ctx: RecipeContext,
                                                             digits: DigitsData, tmp_path: Path) -> None:
    model = build_variant("early-exit:0.9", baseline, ctx)
    saved = save_model(model, tmp_path, example_input=digits.x_train[:8])
    assert saved.program is None and saved.program_file is None and saved.max_abs_diff is None
    assert list(saved.failures) == ["torch.export", "torchscript-trace", "torchscript-script"]
    assert saved.failures["torch.export"].startswith("GuardOnDataDependentSymNode: ")
    assert saved.failures["torchscript-trace"].startswith("UnreliableTrace: torch.jit.trace warned that the trace may be wrong")
    assert saved.failures["torchscript-script"].split(": ")[0] in {"NotSupportedError", "RuntimeError"}  # its code
    assert {p.name for p in tmp_path.iterdir()} == {"manifest.json", "state_dict.pt"}
    assert "no deployable program" in saved.describe()
    with pytest.raises(ConfigError, match="holds no deployable program .*GuardOnDataDependentSymNode.*"
                                          "load state_dict.pt into a model built by recipe 'early-exit:0.9'"):
        load_model(tmp_path)
    # the documented way: the same recipe, then the weights
    fresh = build_variant("early-exit:0.9", baseline, ctx)
    fresh.load_state_dict(read_state_dict(tmp_path))
    assert torch.equal(outputs(fresh, digits.x_test), outputs(model, digits.x_test))


class Branchy(nn.Module):
    """Data-dependent control flow that torch.export refuses and a trace would freeze, but TorchScript scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            return self.linear(x)
        return -self.linear(x)


def test_data_dependent_branches_are_scripted_not_traced(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    saved = save_model(model, tmp_path, example_input=torch.ones(3, 4))
    assert saved.program == "torchscript-script" and saved.program_file == "model.torchscript.pt"
    assert list(saved.failures) == ["torch.export", "torchscript-trace"]
    assert saved.failures["torchscript-trace"].startswith("UnreliableTrace: ")
    loaded = load_model(tmp_path)
    for x in (torch.ones(2, 4), -torch.ones(2, 4)):  # both branches, not only the example's
        assert torch.allclose(loaded(x), model(x))
    assert saved.recipe is None and saved.compression is None
    assert saved.model_class == f"{__name__}.Branchy"


class Unsavable(nn.Module):
    """A forward that none of the formats can turn into a program: it calls back into Python with a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float(len(str(x.tolist())) > 0)


def test_a_model_no_format_can_save_has_a_state_dict_and_reasons(tmp_path: Path) -> None:
    saved = save_model(Unsavable(), tmp_path, example_input=torch.ones(2, 4), recipe="custom")
    assert saved.program is None
    assert list(saved.failures) == ["torch.export", "torchscript-trace", "torchscript-script"]
    assert all(": " in why for why in saved.failures.values())
    assert set(saved.files) == {"state_dict.pt"}
    assert read_state_dict(tmp_path).keys() == {"linear.weight", "linear.bias"}


class Noisy(nn.Module):
    """A forward whose outputs change from call to call: no program can reproduce them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_a_program_that_does_not_reproduce_the_outputs_is_not_kept(tmp_path: Path) -> None:
    saved = save_model(Noisy(), tmp_path, example_input=torch.ones(2, 4))
    assert saved.program is None
    assert saved.failures["torch.export"].startswith("ProgramMismatch: the reloaded program's outputs differ")
    assert saved.failures["torchscript-script"].startswith("ProgramMismatch: ")
    assert {p.name for p in tmp_path.iterdir()} == {"manifest.json", "state_dict.pt"}


def test_a_changed_file_is_refused(baseline: nn.Module, digits: DigitsData, tmp_path: Path) -> None:
    save_model(baseline, tmp_path, example_input=digits.x_train[:8])
    load_model(tmp_path)  # untouched: fine
    program = tmp_path / "model.pt2"
    program.write_bytes(program.read_bytes() + b"\0")
    with pytest.raises(ConfigError, match=r"model\.pt2 was changed after it was saved"):
        load_model(tmp_path)

    save_model(baseline, tmp_path, example_input=digits.x_train[:8])  # a previous save may be overwritten
    load_model(tmp_path)
    state = tmp_path / "state_dict.pt"
    state.write_bytes(state.read_bytes()[:-1] + b"x")
    with pytest.raises(ConfigError, match=r"state_dict\.pt was changed"):
        read_state_dict(tmp_path)
    with pytest.raises(ConfigError, match=r"state_dict\.pt was changed"):
        load_model(tmp_path)  # every file is checked, not only the program
    state.unlink()
    with pytest.raises(ConfigError, match=r"state_dict\.pt is missing"):
        load_model(tmp_path)


def test_a_foreign_directory_is_refused_and_an_old_save_is_replaced(digits: DigitsData, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = digits.x_train[:4]
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and is not a previous greenmeter save .*no manifest.json"):
        save_model(model, tmp_path, example_input=x)
    assert {p.name for p in tmp_path.iterdir()} == {"notes.txt"}  # nothing written
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="not a previous greenmeter save"):
        save_model(model, tmp_path, example_input=x)
    file = tmp_path / "notes.txt"
    with pytest.raises(ConfigError, match="it is a file, not a directory"):
        save_model(model, file, example_input=x)

    # a TorchScript save replaced by a torch.export one: the old program does not linger
    target = tmp_path / "deep" / "er"
    save_model(Branchy().eval(), target, example_input=torch.ones(2, 4))
    assert (target / "model.torchscript.pt").exists()
    saved = save_model(model, target, example_input=x, recipe="float")
    assert {p.name for p in target.iterdir()} == {"manifest.json", "state_dict.pt", "model.pt2"}
    assert read_manifest(target) == saved and saved.recipe == "float"


def test_the_manifest_round_trips_and_is_checked(tmp_path: Path) -> None:
    saved = SavedModel(recipe="int4:64", model_class="torch.nn.modules.container.Sequential", input_shape=(2, 3),
                       input_dtype="float32", program="torch.export", program_file="model.pt2", failures={},
                       max_abs_diff=0.0, files={"state_dict.pt": "ab", "model.pt2": "cd"},
                       compression={"method": "int4_weight", "config": {"group_size": 64}, "details": {}},
                       metric={"name": "accuracy", "value": 0.98}, extra={"note": "x"}, torch_version="2.13.0",
                       saved_at="2026-01-01T00:00:00+00:00")
    data = saved.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["format"] == "greenmeter-saved-model" and data["schema_version"] == 1
    assert data["input"] == {"shape": [2, 3], "dtype": "float32"}
    assert SavedModel.from_dict(data) == saved
    assert saved.describe().startswith("The 'int4:64' variant (method int4_weight), a Sequential, saved by greenmeter")
    assert "metric name accuracy, value 0.98" in saved.describe()
    with pytest.raises(ConfigError, match="newer than this greenmeter reads"):
        SavedModel.from_dict({**data, "schema_version": 2})
    with pytest.raises(ConfigError, match="not a greenmeter saved-model manifest"):
        SavedModel.from_dict({**data, "format": "other"})
    with pytest.raises(ConfigError, match="missing or malformed field"):
        SavedModel.from_dict({k: v for k, v in data.items() if k != "files"})
    with pytest.raises(ConfigError, match="has no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"example_input": [1.0]}, "example_input must be a tensor batch"),
    ({"example_input": torch.ones(())}, "example_input must be a tensor batch"),
    ({"example_input": torch.ones(2, 4), "recipe": ""}, "recipe must be a non-empty string"),
    ({"example_input": torch.ones(2, 4), "metric": 0.98}, "metric must be a mapping"),
    ({"example_input": torch.ones(2, 4), "extra": ["x"]}, "extra must be a mapping"),
])
def test_bad_arguments_are_refused_before_any_writing(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        save_model(nn.Linear(4, 2), tmp_path / "v", **kwargs)
    assert not (tmp_path / "v").exists()
    with pytest.raises(ConfigError, match="needs a torch.nn.Module"):
        save_model("model", tmp_path / "v", example_input=torch.ones(2, 4))  # type: ignore[arg-type]


def test_prefer_names_the_format_a_deployment_needs(digits: DigitsData, tmp_path: Path) -> None:
    save_model(Branchy().eval(), tmp_path, example_input=torch.ones(2, 4))
    assert isinstance(load_model(tmp_path, prefer="torchscript"), torch.jit.ScriptModule)
    with pytest.raises(ConfigError, match="holds a torchscript-script program, not torch.export"):
        load_model(tmp_path, prefer="torch.export")
    with pytest.raises(ConfigError, match="prefer must be one of"):
        load_model(tmp_path, prefer="onnx")


def test_an_exported_program_runs_in_eval_mode_and_refuses_training(digits: DigitsData, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 10))
    model.train()  # saved in eval mode (batch norm's running statistics, no dropout), left in training mode
    saved = save_model(model, tmp_path, example_input=digits.x_train[:8])
    assert model.training and saved.program == "torch.export"
    loaded = load_model(tmp_path)
    assert loaded.eval() is loaded and not loaded.training
    assert torch.allclose(loaded(digits.x_test), model.eval()(digits.x_test))
    with pytest.raises(ConfigError, match="cannot train"):
        loaded.train()


def test_an_example_batch_of_one_still_exports_for_any_batch_size(baseline: nn.Module, digits: DigitsData,
                                                                  tmp_path: Path) -> None:
    saved = save_model(baseline, tmp_path, example_input=digits.x_train[:1])
    assert saved.program == "torch.export" and saved.input_shape == (1, 1, 8, 8)
    loaded = load_model(tmp_path)
    assert torch.allclose(loaded(digits.x_test[:5]), outputs(baseline, digits.x_test[:5]), atol=1e-6)
