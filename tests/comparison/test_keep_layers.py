"""The step modifier ``[keep=NAME,...]``: a recipe step leaves the named modules as they are (unpruned, in float).

Parsed once (``parse_step``), refused before any work on a recipe that does not take it, passed to the step as
``RecipeContext.keep_layers`` and on to the method's config, checked against the model, recorded in the facts.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter import ConfigError, Meter  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.comparison.recipes import (  # noqa: E402
    RecipeContext,
    build_variant,
    check_recipe,
    format_recipes,
    format_step,
    parse_recipe,
    parse_step,
    recipe_steps,
    register_recipe,
    registered_recipes,
    unregister_recipe,
)
from greenmeter.compression import Int4Linear  # noqa: E402
from greenmeter.demo.digits import batches, load_digits_data, make_digits_cnn  # noqa: E402

# the digits CNN's modules: 0 conv, 1 bn, 2 relu, 3 conv, 4 bn, 5 relu, 6 pool, 7 flatten, 8 linear, 9 relu, 10 linear
CONVS, LINEARS = ("0", "3"), ("8", "10")
TAKERS = ["channels", "int4", "int8-dynamic", "int8-static", "prune", "qat", "ticket"]


@pytest.fixture(scope="module")
def base() -> nn.Module:
    torch.set_num_threads(2)
    return make_digits_cnn(seed=0).eval()


@pytest.fixture(scope="module")
def ctx() -> RecipeContext:
    digits = load_digits_data()
    data = list(batches(digits.x_train[:256], digits.y_train[:256], 64, shuffle=True))
    return RecipeContext(example_input=digits.x_test[:16], train_data=data, fine_tune_epochs=1)


class Trainer:
    """A train_fn that counts its calls and trains nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module, loss_fn: Any = None, epochs: int = 1) -> None:
        self.calls += 1


def modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def zeros(module: nn.Module) -> int:
    return int((module.weight == 0).sum())


# ------------------------------------------------------------------------------------------ grammar

@pytest.mark.parametrize(("spec", "parsed"), [
    ("int8-static", ("int8-static", None, ())),
    ("prune:0.7", ("prune", "0.7", ())),
    ("int8-static[keep=classifier.2]", ("int8-static", None, ("classifier.2",))),
    ("prune:0.7[keep=features.0,classifier.2]", ("prune", "0.7", ("features.0", "classifier.2"))),
    ("prune:0.7[keep=classifier.2,features.0]", ("prune", "0.7", ("classifier.2", "features.0"))),  # order kept
])
def test_a_step_round_trips_through_parse_and_format(spec: str, parsed: tuple[Any, ...]) -> None:
    assert parse_step(spec) == parsed
    assert format_step(*parse_step(spec)) == spec
    assert parse_recipe(spec) == parsed[:2]  # name and argument only


def test_whitespace_around_names_is_dropped_and_the_canonical_text_has_none() -> None:
    assert parse_step(" prune : 0.7 [ keep = features.0 , classifier.2 ] ") == (
        "prune", "0.7", ("features.0", "classifier.2"))
    assert format_step(*parse_step("prune:0.7[keep= features.0 ,classifier.2 ]")) == \
        "prune:0.7[keep=features.0,classifier.2]"


def test_a_stacked_spec_with_modifiers_is_checked_step_by_step() -> None:
    specs = registered_recipes()
    spec = "channels:0.5[keep=features.3]+int8-static[keep=classifier.2]"
    assert recipe_steps(spec) == ((specs["channels"], "0.5"), (specs["int8-static"], None))
    assert [format_step(*parse_step(part)) for part in spec.split("+")] == spec.split("+")


@pytest.mark.parametrize(("spec", "message"), [
    ("prune:0.5[keep=]", r"recipe step 'prune:0.5\[keep=\]' keeps no module; list the modules"),
    ("prune[keep]", r"keeps no module"),
    ("prune[keep=a,,b]", r"has an empty module name in its \[keep=...\] list"),
    ("prune[skip=a]", r"has an unknown modifier 'skip'; the only modifier is \[keep=NAME,...\]"),
    ("prune[keep=a", r"recipe step 'prune\[keep=a' has unbalanced brackets"),
    ("prune]", r"has unbalanced brackets"),
    ("prune[keep=a]]", r"has unbalanced brackets"),
    ("prune[keep=a][keep=b]", r"has unbalanced brackets"),
    ("prune[keep=a]:0.5", r"has text after its modifier; the modifier comes last"),
    ("prune[keep=a b]", r"keeps 'a b', which has a space in it"),
    ("prune[keep=a,a]", r"names 'a' more than once"),
])
def test_a_malformed_modifier_is_refused_with_one_sentence(spec: str, message: str) -> None:
    for check in (parse_step, check_recipe):
        with pytest.raises(ConfigError, match=message):
            check(spec)


def test_a_recipe_that_does_not_keep_layers_is_refused_before_any_work(base: nn.Module) -> None:
    assert sorted(n for n, r in registered_recipes().items() if r.keeps_layers) == TAKERS
    trainer = Trainer()
    ctx = RecipeContext(example_input=torch.randn(4, 1, 8, 8), train_fn=trainer)
    for spec in ("distill:0.5[keep=8]", "early-exit:0.9[keep=8]", "prune:0.5+distill:0.5[keep=8]"):
        with pytest.raises(ConfigError, match=r"recipe '(distill|early-exit)' does not take \[keep=...\] .*; the "
                                              r"recipes that do: channels, int4, int8-dynamic, int8-static, prune, "
                                              r"qat, ticket$"):
            build_variant(spec, base, ctx)
    assert trainer.calls == 0
    assert "[keep=NAME,...] after a step leaves those modules as they are; taken by: channels, int4" in format_recipes()


def test_keeps_layers_is_a_checked_flag_of_the_recipe() -> None:
    from greenmeter.compression.registry import RecipeSpec

    def build(model: nn.Module, arg: str | None, ctx: RecipeContext) -> nn.Module:
        return model

    assert RecipeSpec("r", build, trains=False, description="x").keeps_layers is False
    with pytest.raises(ConfigError, match="recipe 'r': keeps_layers must be True or False, got 'yes'"):
        RecipeSpec("r", build, trains=False, description="x", keeps_layers="yes")  # type: ignore[arg-type]


def test_each_step_gets_its_own_kept_modules_in_its_context(base: nn.Module) -> None:
    seen: list[tuple[str, ...]] = []

    @register_recipe("spy-keep", trains=False, description="records ctx.keep_layers", keeps_layers=True)
    def spy(model: nn.Module, arg: str | None, ctx: RecipeContext) -> nn.Module:
        seen.append(ctx.keep_layers)
        return model

    try:
        ctx = RecipeContext(example_input=torch.randn(4, 1, 8, 8), keep_layers=("stale",))
        variant = build_variant("spy-keep[keep=3, 0]+spy-keep+spy-keep[keep=8]", base, ctx)
    finally:
        unregister_recipe("spy-keep")
    assert seen == [("3", "0"), (), ("8",)]
    assert variant.recipe.spec == "spy-keep[keep=3,0]+spy-keep+spy-keep[keep=8]"
    assert [s.keep for s in variant.recipe.steps] == [("3", "0"), (), ("8",)]
    assert variant.recipe.steps[0].to_dict()["keep"] == ["3", "0"]


def test_the_context_checks_its_kept_modules() -> None:
    x = torch.randn(2, 1, 8, 8)
    assert RecipeContext(example_input=x, keep_layers=["a", "b"]).keep_layers == ("a", "b")
    for bad in ("fc", ("",), ("a", 3), ("a", "a")):
        with pytest.raises(ConfigError, match="RecipeContext.keep_layers"):
            RecipeContext(example_input=x, keep_layers=bad)
    with pytest.raises(ConfigError, match=r"must be a tuple of module names .*not 'fc'; write \('fc',\)"):
        RecipeContext(example_input=x, keep_layers="fc")


# ------------------------------------------------------------------------------------------ the built-ins

@pytest.mark.parametrize(("spec", "kept", "target"), [("prune:0.7[keep=0,10]", ("0", "10"), 0.7),
                                                     ("ticket:0.5[keep=10]", ("10",), 0.5)])
def test_pruning_leaves_the_kept_layers_unpruned(spec: str, kept: tuple[str, ...], target: float, base: nn.Module,
                                                 ctx: RecipeContext) -> None:
    before = copy.deepcopy(base.state_dict())
    variant = build_variant(spec, base, ctx)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())  # the baseline is intact
    got, ref = modules(variant), modules(base)
    for name in kept:
        assert zeros(got[name]) == zeros(ref[name]) == 0
    if spec.startswith("prune"):  # not trained: the kept weights are the baseline's, bit for bit
        assert all(torch.equal(got[n].weight, ref[n].weight) for n in kept)
    others = [got[n] for n in {*CONVS, *LINEARS} - set(kept)]  # ranked together: the sparsity is theirs
    assert sum(map(zeros, others)) / sum(m.weight.numel() for m in others) == pytest.approx(target, abs=1e-3)
    details = variant.compression_info.details
    assert details["kept_layers"] == list(kept) and all(details["layer_sparsity"][n] == 0 for n in kept)
    assert variant.recipe.spec == spec and variant.recipe.keep == kept


def test_channels_keeps_the_channels_of_the_kept_layer_and_the_module_names(base: nn.Module,
                                                                           ctx: RecipeContext) -> None:
    variant = build_variant("channels:0.5[keep=3]", base, ctx)
    got, ref = modules(variant), modules(base)
    assert list(got) == list(ref)  # module names stay the same after removing channels
    assert type(got["3"]) is nn.Conv2d and got["3"].out_channels == ref["3"].out_channels == 64
    assert got["0"].out_channels == ref["0"].out_channels // 2 and got["8"].out_features == ref["8"].out_features // 2
    assert got["3"].in_channels == got["0"].out_channels  # its inputs follow the pruned conv before it
    details = variant.compression_info.details
    assert details["kept_layers"] == ["3"] and "3" in details["kept_whole"]
    assert details["channels"]["3"] == {"before": 64, "after": 64}


@pytest.mark.parametrize("spec", ["int8-dynamic[keep=10]", "int4[keep=10]", "int8-static[keep=10]",
                                  "int8-static[keep=3,10]"])
def test_a_quantizer_leaves_the_kept_layers_in_float_with_their_weights(spec: str, base: nn.Module,
                                                                         ctx: RecipeContext) -> None:
    variant = build_variant(spec, base, ctx)
    kept = parse_step(spec)[2]
    got, ref = modules(variant), modules(base)
    for name in kept:
        assert type(got[name]) is type(ref[name])  # exactly nn.Linear / nn.Conv2d, not a quantized or fused one
        assert torch.equal(got[name].weight, ref[name].weight) and torch.equal(got[name].bias, ref[name].bias)
    assert "8" in got and type(got["8"]).__module__.startswith(("torch.ao.nn", "greenmeter.compression"))
    if spec.startswith("int4"):
        assert isinstance(got["8"], Int4Linear)
    if "3" in kept:  # not fused with its BatchNorm, which is quantized on its own; the first conv is quantized
        assert type(got["0"]).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    assert variant.compression_info.details["kept_layers"] == list(kept)
    x = ctx.example_input
    with torch.no_grad():
        assert torch.allclose(variant(x), base(x), atol=0.1)
        last = {}
        got["10"].register_forward_hook(lambda m, i, o: last.setdefault("in", i[0]))
        variant(x)
    assert last["in"].dtype == torch.float32 and not last["in"].is_quantized  # a float layer gets float input


def test_qat_leaves_the_kept_layer_a_float_module(base: nn.Module, ctx: RecipeContext) -> None:
    variant = build_variant("qat[keep=10]", base, ctx)
    got = modules(variant)
    assert type(got["10"]) is nn.Linear and type(got["8"]).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    assert variant.compression_info.details["kept_layers"] == ["10"]
    assert variant.compression_info.details["quantized_layers"] >= 3
    with torch.no_grad():
        assert variant(ctx.example_input).shape == (16, 10)


def test_a_stacked_recipe_keeps_by_name_after_channel_pruning(base: nn.Module, ctx: RecipeContext) -> None:
    spec = "channels:0.5[keep=3]+int8-static[keep=10]"
    variant = build_variant(spec, base, ctx)
    got = modules(variant)
    assert type(got["10"]) is nn.Linear and got["10"].in_features == base[10].in_features // 2
    assert variant.recipe.spec == spec and [s.keep for s in variant.recipe.steps] == [("3",), ("10",)]
    assert variant.recipe.steps[0].details["ratio"] == 0.5
    assert variant.compression_info.details["kept_layers"] == ["10"]


# ------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize(("spec", "method"), [
    ("int8-static", "static int8 quantization"), ("int8-dynamic", "dynamic int8 quantization"),
    ("int4", "int4 weight-only quantization"), ("prune:0.5", "pruning"), ("channels:0.5", "channel pruning"),
])
def test_a_name_that_is_no_module_or_one_left_alone_anyway_is_refused_with_the_listing(
    spec: str, method: str, base: nn.Module, ctx: RecipeContext,
) -> None:
    listing = {"int8-static": "0, 1, 3, 4, 8, 10", "int8-dynamic": "8, 10", "int4": "8, 10"}.get(
        parse_step(spec)[0], "0, 3, 8, 10")
    with pytest.raises(ConfigError, match=rf"names no module of the model: 'classifier.2'; the modules {method}.* "
                                          rf"changes in Sequential are: {listing}$"):
        build_variant(f"{spec}[keep=classifier.2]", base, ctx)
    with pytest.raises(ConfigError, match=rf"names '2' \(ReLU\), which {method}.* leaves as it is anyway; the "
                                          rf"modules it changes in Sequential are: {listing}$"):
        build_variant(f"{spec}[keep=2]", base, ctx)


def test_a_long_listing_stops_after_twelve_names() -> None:
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(15)]).eval()
    ctx = RecipeContext(example_input=torch.randn(2, 4))
    with pytest.raises(ConfigError, match=r"changes in Sequential are: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, \.\.\.$"):
        build_variant("int8-dynamic[keep=fc]", model, ctx)
    with pytest.raises(ConfigError, match=r"keeps every module that dynamic int8 quantization changes"):
        build_variant("int8-dynamic[keep=0]", nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval(), ctx)


# ------------------------------------------------------------------------------------------ compare

def test_compare_builds_a_variant_with_kept_layers_and_reports_them(base: nn.Module) -> None:
    digits = load_digits_data()
    meter = Meter(backends=["cpu-estimate"])
    try:
        result = compare({"float": base, "v": "int8-static[keep=10]", "bad": "int8-static[keep=nope]"},
                         (digits.x_test[:64], digits.y_test[:64]), meter=meter, repeats=2, min_repeat_s=0.02,
                         progress=False)
    finally:
        meter.close()
    v = result.variant("v")
    assert v.ok, v.error
    assert v.recipe == "int8-static[keep=10]"
    assert v.details["method"] == "static_int8" and v.details["kept_layers"] == ["10"]
    assert v.details["quantized_layers"] >= 3
    assert v.macs_per_sample == result.variant("float").macs_per_sample  # the float layer's MACs still count
    bad = result.variant("bad")  # a name the model lacks fails that variant, with the listing; the others go on
    assert not bad.ok and "StaticQuantConfig.keep_layers names no module of the model: 'nope'" in bad.error
    assert "are: 0, 1, 3, 4, 8, 10" in bad.error
