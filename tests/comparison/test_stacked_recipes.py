"""Stacked recipes (``"channels:0.5+int8-dynamic"``): checked whole before any work, applied left to right, each
step's making energy measured in its own window and summed, facts taken from the final model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter import ConfigError, Meter  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.comparison.config import load_compare_config  # noqa: E402
from greenmeter.comparison.facts import serialized_size_b  # noqa: E402
from greenmeter.comparison.recipes import (  # noqa: E402
    RecipeContext,
    build_variant,
    check_recipe,
    recipe_steps,
    register_recipe,
    registered_recipes,
    unregister_recipe,
)
from greenmeter.output.report import comparison_report  # noqa: E402
from greenmeter.records.comparison import Comparison, MakingCost  # noqa: E402

FAST = {"repeats": 2, "min_repeat_s": 0.02, "progress": False}
STACK = "channels:0.5+int8-dynamic"


def tiny_cnn() -> nn.Module:
    """1x8x8 inputs, 3 classes: conv 1->8, conv 8->8, linear 512->10."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()


# the channels:0.5 model by hand: conv 1->4 (64 positions x 4 x 9), conv 4->4 (64 x 4 x 36), linear 256->10
PRUNED_MACS = 64 * 4 * 9 + 64 * 4 * 36 + 256 * 10
FLOAT_MACS = 64 * 8 * 9 + 64 * 8 * 72 + 512 * 10


def data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


class Trainer:
    """A train_fn that counts its calls and leaves the weights as they are (so builds are reproducible)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module, loss_fn: Any = None, epochs: int = 1) -> None:
        self.calls += 1


# ------------------------------------------------------------------------------------------ checks


def test_a_stacked_spec_is_split_into_checked_steps() -> None:
    steps = recipe_steps(" channels:0.5 + int8-static ")
    specs = registered_recipes()
    assert steps == ((specs["channels"], "0.5"), (specs["int8-static"], None))
    assert check_recipe("distill:0.5+early-exit:auto") == (specs["early-exit"], "auto")  # the last step
    for ok in ("channels:0.5+int8-static", "distill:0.5+qat", "ticket:0.2+int8-dynamic", "distill:0.5+early-exit:auto",
               "prune:0.5+channels:0.3+int4"):
        recipe_steps(ok)


@pytest.mark.parametrize(("spec", "later", "quantizer"), [
    ("int8-dynamic+prune:0.5", "prune:0.5", "int8-dynamic"),
    ("channels:0.5+int8-static+qat", "qat", "int8-static"),
    ("qat+distill:0.5", "distill:0.5", "qat"),
    ("int4+early-exit:0.9", "early-exit:0.9", "int4"),
    ("int8-static+int8-dynamic", "int8-dynamic", "int8-static"),
])
def test_a_step_needing_float_weights_after_a_quantization_step_is_refused(spec: str, later: str,
                                                                           quantizer: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_recipe(spec)
    assert str(info.value) == (f"stacked recipe {spec!r} cannot work in this order: {later!r} needs a float model, "
                               f"but it comes after {quantizer!r}, which leaves quantized weights; put {later!r} "
                               f"before {quantizer!r}")


@pytest.mark.parametrize(("spec", "message"), [
    ("prune:0.5+", "has an empty step"),
    ("prune:0.5++int4", "has an empty step"),
    ("prune:0.5+nope", "unknown recipe 'nope'"),
    ("prune:7+int4", "recipe 'prune': bad argument '7'"),
    ("channels:0.5+int8-dynamic:2", "recipe 'int8-dynamic' takes no argument"),
])
def test_every_step_of_a_stacked_spec_is_checked(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_recipe(spec)


def test_a_recipe_that_works_on_quantized_models_may_follow_one_that_quantizes() -> None:
    register_recipe("relabel", lambda model, arg, ctx: model, trains=False, description="no change")
    try:
        assert registered_recipes()["relabel"].needs_float  # a recipe is assumed to need float weights
        with pytest.raises(ConfigError, match="'relabel' needs a float model"):
            check_recipe("int8-dynamic+relabel")
    finally:
        unregister_recipe("relabel")
    from greenmeter.compression.registry import RecipeSpec, register_recipe_spec

    register_recipe_spec(RecipeSpec("relabel", lambda model, arg, ctx: model, trains=False, description="no change",
                                    needs_float=False))
    try:
        assert [s.name for s, _ in recipe_steps("int8-dynamic+relabel")] == ["int8-dynamic", "relabel"]
    finally:
        unregister_recipe("relabel")


def test_the_builtin_quantization_recipes_declare_that_they_quantize() -> None:
    specs = registered_recipes()
    assert {n for n, s in specs.items() if s.makes_quantized} == {"int8-dynamic", "int8-static", "qat", "int4"}
    assert all(s.needs_float for n, s in specs.items()
               if n in {"prune", "channels", "ticket", "distill", "early-exit", "int8-dynamic", "int8-static", "qat",
                        "int4"})


def test_a_plugin_method_whose_facts_say_quantized_makes_quantized_models() -> None:
    from greenmeter.compression.registry import FactsHooks, Method, RecipeSpec

    class Cfg:
        pass

    method = Method("half-q", Cfg, lambda m, c: (m, {}), RecipeSpec("half-q", lambda m, a, c: m, trains=False,
                                                                    description="x"), FactsHooks(quantized=True))
    assert method.recipe is not None and method.recipe.makes_quantized


def test_a_bad_order_stops_compare_before_any_training_or_measurement() -> None:
    trainer = Trainer()
    windows: list[str] = []
    meter = Meter(backends=["cpu-estimate"])
    meter.listeners.append(lambda m: windows.append(m.name))
    with pytest.raises(ConfigError, match=r"variant 'bad': stacked recipe 'int8-dynamic\+prune:0.5' cannot work"):
        compare({"float": tiny_cnn(), "channels": "channels:0.5", "bad": "int8-dynamic+prune:0.5"}, data(),
                train_fn=trainer, meter=meter, **FAST)
    meter.close()
    assert trainer.calls == 0 and windows == []


def test_a_config_file_with_a_stacked_recipe_loads_and_a_bad_order_is_refused_on_load(tmp_path: Path) -> None:
    from tests.comparison.test_config import config_text

    path = tmp_path / "c.toml"
    path.write_text(config_text(recipes=f'["{STACK}"]', compare='[compare.variants]\nsmall = "distill:0.5+qat"'))
    config = load_compare_config(path)
    assert config.recipes == {STACK: STACK, "small": "distill:0.5+qat"}
    path.write_text(config_text(recipes='["int8-dynamic+prune:0.5"]'))
    with pytest.raises(ConfigError, match=r"compare\.recipes: stacked recipe 'int8-dynamic\+prune:0.5' cannot work"):
        load_compare_config(path)


# ------------------------------------------------------------------------------------------ building


def test_build_variant_applies_the_steps_left_to_right_and_leaves_the_baseline_alone() -> None:
    base = tiny_cnn()
    before = copy.deepcopy(base.state_dict())
    trainer = Trainer()
    x, _ = data()
    variant = build_variant(STACK, base, RecipeContext(example_input=x, train_fn=trainer))
    assert trainer.calls == 1  # channels fine-tunes once; int8-dynamic does not train
    convs = [m for m in variant.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4]  # pruned ...
    linear = variant[5]
    assert type(linear).__module__.startswith("torch.ao.nn.quantized.dynamic")  # ... then quantized
    assert linear.weight().shape == (10, 256)
    recipe = variant.recipe
    assert (recipe.spec, recipe.name, recipe.arg, recipe.trains) == (STACK, STACK, None, True)
    assert [(s.spec, s.trains) for s in recipe.steps] == [("channels:0.5", True), ("int8-dynamic", False)]
    assert recipe.to_dict()["steps"][0]["details"]["ratio"] == 0.5
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_the_teacher_of_a_stacked_recipe_is_a_copy_of_the_baseline_not_the_step_before() -> None:
    seen: dict[str, Any] = {}

    def capture(model: nn.Module, arg: str | None, ctx: RecipeContext) -> nn.Module:
        seen["teacher"], seen["student"] = ctx.teacher, model
        return model

    register_recipe("capture", capture, trains=False, description="keeps what it was given")
    try:
        base = tiny_cnn()
        x, _ = data()
        build_variant("prune:0.9+capture", base, RecipeContext(example_input=x))
    finally:
        unregister_recipe("capture")
    teacher, student = seen["teacher"], seen["student"]
    assert teacher is not base and all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                                         base.state_dict().values()))
    weights = torch.cat([m.weight.flatten() for m in student.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert float((weights == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)  # what the step before made


def test_a_stacked_distill_then_qat_builds_a_quantized_student() -> None:
    base = tiny_cnn()
    x, _ = data()
    ctx = RecipeContext(example_input=x, train_data=[data()], train_epochs=1, fine_tune_epochs=1)
    variant = build_variant("distill:0.5+qat", base, ctx)
    convs = [m for m in variant.modules() if type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized")
             or type(m).__name__ == "Conv2d" and "quantized" in type(m).__module__]
    assert convs and all(c.weight().shape[0] == 4 for c in convs)  # a half-width student, in int8
    assert [s.spec for s in variant.recipe.steps] == ["distill:0.5", "qat"]


# ------------------------------------------------------------------------------------------ compare


@pytest.fixture(scope="module")
def stacked() -> tuple[Comparison, dict[str, Any], nn.Module]:
    windows: dict[str, Any] = {}
    meter = Meter(backends=["cpu-estimate"])
    meter.listeners.append(lambda m: windows.__setitem__(m.name, m))
    base = tiny_cnn()
    built = build_variant(STACK, base, RecipeContext(example_input=data()[0], train_fn=Trainer()))
    result = compare({"float": base, "int8": "int8-dynamic", STACK: STACK, "by hand": built}, data(),
                     train_fn=Trainer(), meter=meter, **FAST)
    meter.close()
    return result, windows, built


def test_each_step_is_measured_in_its_own_window_and_the_making_energy_is_their_sum(
    stacked: tuple[Comparison, dict[str, Any], nn.Module],
) -> None:
    result, windows, _ = stacked
    making = result.variant(STACK).making
    first, second = windows[f"make:{STACK}/1:channels:0.5"], windows[f"make:{STACK}/2:int8-dynamic"]
    assert f"make:{STACK}" not in windows and "make:int8" in windows  # a one-step recipe keeps one window
    assert making.energy_j == pytest.approx(first.energy_j + second.energy_j, rel=1e-12)
    assert making.duration_s == pytest.approx(first.duration_s + second.duration_s, rel=1e-12)
    assert [(s.recipe, s.energy_j, s.trains) for s in making.steps] == [
        ("channels:0.5", first.energy_j, True), ("int8-dynamic", second.energy_j, False)]
    assert making.trains and making.energy_j > 0
    assert result.variant("int8").making.steps == ()
    again = MakingCost.from_dict(making.to_dict())
    assert again == making


def test_the_facts_come_from_the_final_model(stacked: tuple[Comparison, dict[str, Any], nn.Module]) -> None:
    result, _, built = stacked
    v, base, int8 = result.variant(STACK), result.variant("float"), result.variant("int8")
    assert v.ok, v.error
    assert v.recipe == STACK and v.details["method"] == "dynamic_int8"
    assert base.macs_per_sample == FLOAT_MACS
    assert (v.macs_per_sample, v.macs_method) == (PRUNED_MACS, "flop-counter and quantized layer shapes")
    assert int8.macs_per_sample == FLOAT_MACS  # quantizing alone keeps every MAC
    # the same model stacked by hand and passed as a model: its own MACs, not the float baseline's
    hand = result.variant("by hand")
    assert (hand.macs_per_sample, hand.macs_method, hand.recipe) == (PRUNED_MACS, v.macs_method, None)
    assert v.size_b == serialized_size_b(built) < int8.size_b
    # conv weights and biases in float, the linear's in int8: 4*9+4 + 4*36+4 + 2560+10
    assert (v.params_total, v.params_kind) == (4 * 9 + 4 + 4 * 36 + 4 + 2560 + 10, "stored weight elements")


def test_the_table_and_the_reports_show_the_whole_recipe(stacked: tuple[Comparison, dict[str, Any], nn.Module]) -> None:
    result, _, _ = stacked
    assert STACK in result.table()
    md = comparison_report(result, "md")
    assert f"| {STACK} |" in md.replace("\\+", "+")
    html = comparison_report(result, "html")
    assert html.count(STACK) >= 2  # its name and its recipe column


def test_the_markdown_report_puts_each_variants_note_on_its_own_line(
    stacked: tuple[Comparison, dict[str, Any], nn.Module],
) -> None:
    result, _, _ = stacked
    steps = result.variant(STACK).making.steps
    lines = comparison_report(result, "md").splitlines()
    method = "MACs: flop-counter and quantized layer shapes"
    assert f"- int8: {method}" in lines and f"- by hand: {method}" in lines
    # the stacked variant's note also gives each step's making energy
    assert (f"- {STACK}: {method}; making: channels:0.5 {steps[0].energy_j:.4g} J + int8-dynamic "
            f"{steps[1].energy_j:.4g} J") in [line.replace("\\+", "+") for line in lines]  # md escapes +
