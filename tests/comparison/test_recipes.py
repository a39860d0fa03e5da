"""Recipes on the real digits task: every built-in builds a working variant and leaves the baseline alone."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter._errors import ConfigError, UnsupportedModelError  # noqa: E402
from greenmeter.compression import Int4Linear, MultiExitModel, sparsity  # noqa: E402
from greenmeter.compression.early_exit import exit_positions  # noqa: E402
from greenmeter.demo.digits import (  # noqa: E402
    DigitsData,
    accuracy,
    batches,
    load_digits_data,
    make_digits_cnn,
    train_classifier,
)
from greenmeter.comparison.recipes import (  # noqa: E402
    Recipe,
    RecipeContext,
    build_variant,
    check_recipe,
    parse_recipe,
    register_recipe,
    registered_recipes,
    unregister_recipe,
)

BUILTINS = {  # name -> (trains, takes an argument)
    "prune": (False, True), "channels": (True, True), "ticket": (True, True), "int8-dynamic": (False, False),
    "int8-static": (False, False), "int4": (False, True), "qat": (True, False), "distill": (True, True),
    "early-exit": (True, True),
}
SPECS = ["prune:0.5", "channels:0.5", "ticket:0.2", "int8-dynamic", "int8-static", "int4", "qat", "distill:0.5",
         "early-exit:0.9", "early-exit:auto"]


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    torch.set_num_threads(2)
    return load_digits_data()


@pytest.fixture(scope="module")
def baseline(digits: DigitsData) -> nn.Module:
    """A half-width digits CNN trained briefly (about 98% test accuracy), in eval mode."""
    model = make_digits_cnn(width=0.5, seed=0)
    train_classifier(model, digits, epochs=4, seed=0)
    assert accuracy(model, digits.x_test, digits.y_test) >= 0.95
    return model.eval()


@pytest.fixture(scope="module")
def ctx(digits: DigitsData) -> RecipeContext:
    train, val = digits.validation_split(0.2)
    data = list(batches(train.x_train, train.y_train, 64, shuffle=True))
    return RecipeContext(example_input=digits.x_test[:16], train_data=data, val_data=(val.x_test, val.y_test),
                         fine_tune_epochs=1, train_epochs=3)


@pytest.fixture(scope="module")
def built(baseline: nn.Module, ctx: RecipeContext) -> Callable[[str], nn.Module]:
    """``built(spec)``: the variant for ``spec``, built once per module (after checking the baseline is intact)."""
    cache: dict[str, nn.Module] = {}

    def get(spec: str) -> nn.Module:
        if spec not in cache:
            before = snapshot(baseline)
            cache[spec] = build_variant(spec, baseline, ctx)
            assert_intact(baseline, before)
        return cache[spec]

    return get


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool], list[str]]:
    return ({k: v.clone() for k, v in model.state_dict().items()}, {n: m.training for n, m in model.named_modules()},
            [type(m).__name__ for m in model.modules()])


def assert_intact(model: nn.Module, before: tuple[dict[str, torch.Tensor], dict[str, bool], list[str]]) -> None:
    state, modes, kinds = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert [type(m).__name__ for m in model.modules()] == kinds
    assert not hasattr(model, "recipe") and not hasattr(model, "compression_info")


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


# ----------------------------------------------------------------------------------------- built-ins

def test_the_builtin_recipes_are_registered_with_their_training_flag_and_argument_help() -> None:
    recipes = registered_recipes()
    assert BUILTINS.keys() <= recipes.keys()
    assert list(recipes) == sorted(recipes)
    for name, (trains, takes_arg) in BUILTINS.items():
        assert recipes[name].name == name and recipes[name].trains is trains
        assert (recipes[name].arg_help is not None) is takes_arg
        assert recipes[name].description


@pytest.mark.parametrize("spec", SPECS)
def test_each_builtin_builds_a_working_variant_with_the_baseline_output_shape(
    spec: str, built: Callable[[str], nn.Module], baseline: nn.Module, digits: DigitsData,
) -> None:
    variant = built(spec)
    assert variant is not baseline
    assert not variant.training
    assert outputs(variant, digits.x_test).shape == outputs(baseline, digits.x_test).shape == (450, 10)
    name, arg = parse_recipe(spec)
    assert isinstance(variant.recipe, Recipe)
    assert (variant.recipe.name, variant.recipe.arg, variant.recipe.spec) == (name, arg, spec)
    assert variant.recipe.trains is BUILTINS[name][0]
    assert variant.recipe.to_dict()["details"] == dict(variant.recipe.details)
    assert hasattr(variant, "compression_info")
    # every variant still classifies: the baseline is about 98% accurate, the variants measured 92-99%
    assert accuracy(variant, digits.x_test, digits.y_test) >= 0.85, spec


def test_prune_reaches_the_requested_sparsity(built: Callable[[str], nn.Module], baseline: nn.Module) -> None:
    variant = built("prune:0.5")
    assert sparsity(variant) == pytest.approx(0.5, abs=0.005)
    assert sparsity(baseline) < 0.01
    assert variant.compression_info.method == "prune"
    assert variant.recipe.details == {"sparsity": 0.5}


def test_ticket_keeps_the_requested_fraction_of_weights(built: Callable[[str], nn.Module]) -> None:
    variant = built("ticket:0.2")
    assert 1 - sparsity(variant) == pytest.approx(0.2, abs=0.01)
    details = variant.recipe.details
    assert details["rounds"] == 3 and (1 - details["rate"]) ** 3 == pytest.approx(0.2)
    assert variant.compression_info.details["prune_steps"] == 3
    assert details["trainer"] == "built-in" and details["epochs"] == 1


def test_int8_recipes_hold_real_integer_modules(built: Callable[[str], nn.Module]) -> None:
    dynamic = [m for m in built("int8-dynamic").modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(dynamic) == 2  # the hidden and the output Linear
    static = built("int8-static")
    assert any(isinstance(m, torch.ao.nn.quantized.Conv2d) for m in static.modules())
    assert static.recipe.details == {"calibration": "train_data", "calibration_batches": 8, "calibration_samples": 512}
    qat = built("qat")
    assert any(type(m).__module__.startswith("torch.ao.nn.") and "quantized" in type(m).__module__
               for m in qat.modules())
    assert not any(isinstance(m, torch.ao.quantization.FakeQuantizeBase) for m in qat.modules())


def test_int4_replaces_every_linear_with_int4linear(built: Callable[[str], nn.Module]) -> None:
    variant = built("int4")
    assert sum(isinstance(m, Int4Linear) for m in variant.modules()) == 2
    assert not any(type(m) is nn.Linear for m in variant.modules())
    assert variant.recipe.details == {"group_size": 32}



def test_int4_takes_the_group_size_as_its_argument(baseline: nn.Module) -> None:
    variant = build_variant("int4:16", baseline, _no_training_ctx())
    assert [m.group_size for m in variant.modules() if isinstance(m, Int4Linear)] == [16, 16]
    assert variant.compression_info.details["group_size"] == 16


def test_channels_and_distill_make_smaller_models(built: Callable[[str], nn.Module], baseline: nn.Module) -> None:
    params = sum(p.numel() for p in baseline.parameters())
    channels = built("channels:0.5")
    assert sum(p.numel() for p in channels.parameters()) < 0.5 * params
    assert channels.compression_info.details["fine_tuned"] is True
    student = built("distill:0.5")
    assert sum(p.numel() for p in student.parameters()) < 0.5 * params
    assert student.compression_info.method == "distillation"
    assert student.recipe.details["epochs"] == 3  # train_epochs: the student is trained from scratch


def test_early_exit_builds_a_multi_exit_model_after_a_third_and_two_thirds_of_the_compute(
    built: Callable[[str], nn.Module], baseline: nn.Module, ctx: RecipeContext,
) -> None:
    fixed, auto = built("early-exit:0.9"), built("early-exit:auto")
    assert isinstance(fixed, MultiExitModel) and isinstance(auto, MultiExitModel)
    # conv1 is ~1% of the MACs, conv2 brings it to ~90%: after the first and the second conv block
    assert fixed.exits_after == (2, 5) and fixed.recipe.details["exits_after"] == [2, 5]
    assert fixed.threshold == 0.9 and fixed.recipe.details["calibrated"] is False
    assert exit_positions(baseline, ctx.example_input) == [2, 5]
    # auto: heads at every possible place, then the subset of least measured time at batch 1
    details = auto.recipe.details
    assert details["candidate_exits"] == exit_positions(baseline, ctx.example_input, candidates=5) == [2, 5, 6, 7, 9]
    assert set(auto.exits_after) <= set(details["candidate_exits"]) and list(auto.exits_after) == details["exits_after"]
    assert 0 < auto.threshold <= 1
    assert details["calibrated"] is True and details["threshold"] == auto.threshold
    assert details["expected_time_ratio"] > 0 and "batch 1" in details["chosen_by"]
    assert sum(details["validation_exit_histogram"]) == len(ctx.val_data[0])
    info = auto.compression_info.details  # the kept exits' figures, not the candidates'
    assert info["exits_after"] == list(auto.exits_after) and info["exit_macs"] == list(auto.exit_macs)
    assert len(auto.heads) == len(auto.exits_after)


# ------------------------------------------------------------------------------------ exit placement

def test_exit_positions_skip_norms_and_activations_and_refuse_what_they_cannot_split() -> None:
    mlp = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 10))
    cuts = exit_positions(mlp, torch.zeros(4, 8))
    assert cuts and all(not isinstance(mlp[i + 1], nn.ReLU) and i < len(mlp) - 1 for i in cuts)
    # MACs 512, 4096, 4096, 640: cumulative shares 5%, 49%, 93% after the 1st, 2nd, 3rd hidden block
    assert cuts == [3, 5]
    with pytest.raises(UnsupportedModelError, match="nn.Sequential.*Wrapper"):
        exit_positions(Wrapper(), torch.zeros(1, 8))
    assert exit_positions(nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 10)), torch.zeros(1, 8)) == [0]
    with pytest.raises(UnsupportedModelError, match="no place for an exit"):
        exit_positions(nn.Sequential(nn.Linear(8, 10), nn.Softmax(dim=1)), torch.zeros(1, 8))


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_early_exit_on_a_model_that_is_not_sequential_names_the_reason() -> None:
    ctx = RecipeContext(example_input=torch.zeros(2, 8), train_fn=lambda m, loss=None, epochs=None: None)
    with pytest.raises(UnsupportedModelError, match="early-exit.*nn.Sequential.*Wrapper"):
        build_variant("early-exit", Wrapper(), ctx)


# --------------------------------------------------------------------------------------- bad input

def _no_training_ctx() -> RecipeContext:
    return RecipeContext(example_input=torch.zeros(2, 1, 8, 8))


def test_parse_recipe_splits_name_and_argument() -> None:
    assert parse_recipe("prune:0.5") == ("prune", "0.5")
    assert parse_recipe("int8-dynamic") == ("int8-dynamic", None)
    assert parse_recipe(" early-exit : auto ") == ("early-exit", "auto")
    assert parse_recipe("mine:a:b") == ("mine", "a:b")  # only the first ':' separates
    for bad, text in [("", "no recipe name"), (":0.5", "no recipe name"), ("prune:", "nothing after ':'"),
                      (3, "must be a string")]:
        with pytest.raises(ConfigError, match=re.escape(text)):
            parse_recipe(bad)  # type: ignore[arg-type]


def test_an_unknown_recipe_lists_the_registered_names_sorted(baseline: nn.Module) -> None:
    with pytest.raises(ConfigError) as info:
        build_variant("prnue:0.5", baseline, _no_training_ctx())
    message = str(info.value)
    assert "unknown recipe 'prnue'" in message
    listed = message.split("registered recipes: ")[1].split(", ")
    assert listed == sorted(registered_recipes()) and set(BUILTINS) <= set(listed)


@pytest.mark.parametrize("spec, expected", [
    ("prune:abc", "fraction of Linear/Conv weights set to zero"), ("prune:1.5", "[0, 1)"), ("prune:-0.1", "[0, 1)"),
    ("prune:nan", "[0, 1)"), ("channels:1", "channels and hidden neurons removed"), ("ticket:0", "(0, 1)"),
    ("ticket:1", "weights kept"), ("int4:1", "integer in [2, 4096]"), ("int4:3.5", "group size"),
    ("int4:5000", "[2, 4096]"), ("int4:inf", "[2, 4096]"), ("distill:0", "(0, 1]"),
    ("distill:2", "width"), ("early-exit:0", "threshold"), ("early-exit:1.5", "'auto'"), ("early-exit:x", "(0, 1]"),
])
def test_a_bad_argument_names_the_recipe_and_what_it_expects(spec: str, expected: str, baseline: nn.Module) -> None:
    name, arg = parse_recipe(spec)
    ctx = RecipeContext(example_input=torch.zeros(2, 1, 8, 8), train_fn=lambda m, loss=None, epochs=None: None)
    with pytest.raises(ConfigError, match=re.escape(f"recipe {name!r}: bad argument {arg!r}; expected")) as info:
        build_variant(spec, baseline, ctx)
    assert expected in str(info.value)


@pytest.mark.parametrize("spec", ["prune:7", "prune:abc", "channels:1", "ticket:0", "int4:1", "int4:inf", "distill:2",
                                  "early-exit:1.5", "early-exit:x", "int8-dynamic:3", "prnue:0.5"])
def test_check_recipe_refuses_what_build_variant_refuses_without_building(spec: str, baseline: nn.Module) -> None:
    with pytest.raises(ConfigError) as checked:
        check_recipe(spec)
    ctx = RecipeContext(example_input=torch.zeros(2, 1, 8, 8), train_fn=lambda m, loss=None, epochs=None: None)
    with pytest.raises(ConfigError) as built:
        build_variant(spec, baseline, ctx)
    assert str(checked.value) == str(built.value)


def test_every_builtin_recipe_that_takes_an_argument_checks_it_up_front() -> None:
    specs = registered_recipes()
    takes = [name for name, (_, arg) in BUILTINS.items() if arg]
    assert all(specs[name].parse_arg is not None for name in takes)
    assert check_recipe("prune:0.25") == (specs["prune"], "0.25") and specs["prune"].parse_arg("0.25") == 0.25
    assert check_recipe("early-exit:AUTO")[1] == "AUTO" and specs["early-exit"].parse_arg("AUTO") == "auto"
    assert specs["int4"].parse_arg(None) == 32 and specs["distill"].parse_arg("1") == 1.0


def test_compare_refuses_a_bad_recipe_argument_before_building_or_measuring(baseline: nn.Module,
                                                                             digits: DigitsData) -> None:
    from greenmeter.comparison.compare import compare

    built: list[str | None] = []

    def parse_factor(arg: str | None) -> float:
        if arg is not None and arg not in ("2", "3"):
            raise ConfigError(f"recipe 'test-factor': bad argument {arg!r}; expected 2 or 3")
        return float(arg or 2)

    register_recipe("test-factor", lambda model, arg, ctx: built.append(arg) or model, trains=False,
                    description="records its builds", arg_help="2 or 3", parse_arg=parse_factor)
    try:
        for spec in ("prune:7", "prune:abc", "test-factor:9"):
            with pytest.raises(ConfigError) as info:  # the good variant listed first is not built either
                compare({"base": baseline, "ok": "test-factor:2", "bad": spec}, (digits.x_test[:8], digits.y_test[:8]),
                        repeats=1, progress=False)
            assert str(info.value).startswith(f"variant 'bad': recipe '{parse_recipe(spec)[0]}': bad argument")
        assert built == []
        assert check_recipe("test-factor:3")[1] == "3"
    finally:
        unregister_recipe("test-factor")
    with pytest.raises(ConfigError, match="parse_arg must be callable"):
        register_recipe("test-broken", lambda model, arg, ctx: model, trains=False, description="x",
                        parse_arg="float")  # type: ignore[arg-type]
    assert "test-broken" not in registered_recipes()


def test_arguments_to_recipes_that_take_none_and_auto_without_val_data_are_refused(baseline: nn.Module) -> None:
    ctx = RecipeContext(example_input=torch.zeros(2, 1, 8, 8), train_fn=lambda m, loss=None, epochs=None: None)
    with pytest.raises(ConfigError, match="recipe 'int8-dynamic' takes no argument"):
        build_variant("int8-dynamic:3", baseline, ctx)
    with pytest.raises(ConfigError, match="early-exit:auto.*val_data"):
        build_variant("early-exit:auto", baseline, ctx)


@pytest.mark.parametrize("spec", ["channels:0.5", "ticket:0.2", "qat", "distill:0.5", "early-exit"])
def test_a_recipe_that_trains_needs_train_fn_or_train_data(spec: str, baseline: nn.Module) -> None:
    before = snapshot(baseline)
    with pytest.raises(ConfigError, match=f"recipe {parse_recipe(spec)[0]!r} trains, so it needs train_fn or "
                                          "train_data"):
        build_variant(spec, baseline, _no_training_ctx())
    assert_intact(baseline, before)


def test_the_context_refuses_one_shot_data_a_wrong_trainer_and_bad_numbers(digits: DigitsData) -> None:
    x = digits.x_test[:4]
    with pytest.raises(ConfigError, match="re-iterable"):
        RecipeContext(example_input=x, train_data=(b for b in [(x, digits.y_test[:4])]))
    with pytest.raises(ConfigError, match=re.escape("train_fn(model, loss_fn, epochs)")):
        RecipeContext(example_input=x, train_fn=lambda model: None)
    with pytest.raises(ConfigError, match=re.escape("train_fn(model, loss_fn, epochs)")):
        RecipeContext(example_input=x, train_fn="train")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="val_data"):
        RecipeContext(example_input=x, val_data=(x, digits.y_test[:3]))
    with pytest.raises(ConfigError, match="example_input"):
        RecipeContext(example_input=[1, 2])  # type: ignore[arg-type]
    for field_name, value in [("fine_tune_epochs", 0), ("train_epochs", 1.5), ("calibration_batches", True),
                              ("seed", "0"), ("lr", 0)]:
        with pytest.raises(ConfigError, match=f"RecipeContext.{field_name}"):
            RecipeContext(example_input=x, **{field_name: value})
    ok = RecipeContext(example_input=x, train_data=lambda: [], val_data=[x, digits.y_test[:4]])
    assert isinstance(ok.val_data, tuple) and ok.can_train


# ---------------------------------------------------------------------------- user recipes and trainers

def test_a_user_registered_recipe_works_through_build_variant(baseline: nn.Module, digits: DigitsData) -> None:
    seen: dict[str, Any] = {}

    @register_recipe("test-scale-output", trains=False, description="multiply the logits",
                     arg_help="a factor (default 2)")
    def scale(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, float]]:
        seen["is_baseline"] = model is baseline
        factor = 2.0 if arg is None else float(arg)
        with torch.no_grad():  # change the copy in place: the baseline must not notice
            model[-1].weight.mul_(factor)
            model[-1].bias.mul_(factor)
        return model, {"factor": factor}

    register_recipe("test-identity", lambda model, arg, ctx: model, trains=False, description="as is")
    try:
        assert "test-scale-output" in registered_recipes()
        before = snapshot(baseline)
        variant = build_variant("test-scale-output:3", baseline, _no_training_ctx())
        assert_intact(baseline, before)
        assert seen["is_baseline"] is False
        assert torch.allclose(outputs(variant, digits.x_test[:32]), 3 * outputs(baseline, digits.x_test[:32]),
                              atol=1e-5)
        assert variant.recipe == Recipe("test-scale-output", "3", False, "multiply the logits", {"factor": 3.0})
        same = build_variant("test-identity", baseline, _no_training_ctx())
        assert torch.equal(outputs(same, digits.x_test[:32]), outputs(baseline, digits.x_test[:32]))
        with pytest.raises(ConfigError, match="takes no argument"):
            build_variant("test-identity:1", baseline, _no_training_ctx())
        with pytest.raises(ConfigError, match="'test-identity' is already registered"):
            register_recipe("test-identity", lambda model, arg, ctx: model, trains=False, description="again")
        with pytest.raises(ConfigError, match="'prune' is already registered"):
            register_recipe("prune", lambda model, arg, ctx: model, trains=False, description="again")
    finally:
        unregister_recipe("test-scale-output")
        unregister_recipe("test-identity")
    assert "test-identity" not in registered_recipes()
    for bad_name in ("", "a:b", "has space"):
        with pytest.raises(ConfigError, match="recipe name"):
            register_recipe(bad_name, lambda model, arg, ctx: model, trains=False, description="x")


def test_a_user_recipe_that_trains_is_refused_without_a_trainer_and_one_returning_no_module_is_an_error(
    baseline: nn.Module,
) -> None:
    calls = []
    register_recipe("test-trains", lambda model, arg, ctx: calls.append(1) or model, trains=True, description="t")
    register_recipe("test-returns-none", lambda model, arg, ctx: None, trains=False, description="broken")
    try:
        with pytest.raises(ConfigError, match="'test-trains' trains"):
            build_variant("test-trains", baseline, _no_training_ctx())
        assert calls == []  # refused before build ran
        with pytest.raises(ConfigError, match="'test-returns-none' returned NoneType"):
            build_variant("test-returns-none", baseline, _no_training_ctx())
    finally:
        unregister_recipe("test-trains")
        unregister_recipe("test-returns-none")


def test_the_users_train_fn_is_called_with_the_recipes_loss_and_epochs(
    baseline: nn.Module, digits: DigitsData,
) -> None:
    small = DigitsData(digits.x_train[:256], digits.y_train[:256], digits.x_test, digits.y_test)
    calls: list[tuple[str, bool, int]] = []

    def train_fn(model: nn.Module, loss_fn: Callable[..., torch.Tensor] | None = None,
                 epochs: int | None = None) -> None:
        calls.append((type(model).__name__, loss_fn is not None, epochs))  # type: ignore[arg-type]
        train_classifier(model, small, epochs=epochs or 1, loss_fn=loss_fn)

    ctx = RecipeContext(example_input=digits.x_test[:4], train_fn=train_fn, fine_tune_epochs=1, train_epochs=2)
    variant = build_variant("ticket:0.5", baseline, ctx)  # 1 pruning round: trained twice
    assert calls == [("Sequential", False, 1)] * 2
    assert variant.recipe.details["trainer"] == "train_fn" and variant.recipe.details["rounds"] == 1
    assert 1 - sparsity(variant) == pytest.approx(0.5, abs=0.01)
    calls.clear()
    build_variant("distill:0.5", baseline, ctx)
    assert calls == [("Sequential", True, 2)]  # the distillation loss, train_epochs
    calls.clear()
    static = build_variant("int8-static", baseline, ctx)  # no train_data: calibrates on example_input
    assert calls == [] and static.recipe.details["calibration"] == "example_input"
    assert math.isfinite(float(outputs(static, digits.x_test[:8]).sum()))


def test_a_baseline_in_training_mode_is_converted_from_an_eval_copy_and_keeps_its_mode(
    baseline: nn.Module, digits: DigitsData,
) -> None:
    training = copy.deepcopy(baseline).train()
    before = snapshot(training)
    variant = build_variant("int8-dynamic", training, _no_training_ctx())
    assert_intact(training, before)
    assert training.training and not variant.training
    assert outputs(variant, digits.x_test[:8]).shape == (8, 10)


def test_the_recipe_listing_comes_from_the_registry_and_the_docs_table_lists_the_builtins() -> None:
    from pathlib import Path

    from greenmeter.comparison.recipes import format_recipes

    text = format_recipes()
    recipes = registered_recipes()
    for name, info in recipes.items():
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{info.usage} "))
        assert info.description in line and (info.method or "-") in line
        assert ("yes" if info.trains else "no") == line.split()[1]
        if info.arg_help is not None:
            assert f"  {name}" in text and info.arg_help in text
    page = (Path(__file__).resolve().parents[2] / "docs" / "compare.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9-]+)[:` ].*\| (yes|no) \|$", page, flags=re.M)
    assert {name: trains == "yes" for name, trains in rows} == {name: t for name, (t, _) in BUILTINS.items()}
