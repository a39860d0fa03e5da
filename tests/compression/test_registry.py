"""The method registry: each method registers once, with its recipe and its facts hooks."""

from __future__ import annotations

import copy
import re

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.facts import ParamCounts, parameter_counts  # noqa: E402
from greenmeter.comparison.recipes import RecipeContext, build_variant, registered_recipes  # noqa: E402
from greenmeter.compression import (  # noqa: E402
    DynamicQuantConfig,
    Int4Linear,
    Int4WeightConfig,
    PruneConfig,
    compress,
    register_method,
    registered_methods,
)
from greenmeter.compression.registry import (  # noqa: E402
    FactsHooks,
    Method,
    RecipeSpec,
    WeightCount,
    facts_hooks,
    facts_hooks_for,
    methods,
    unregister_method,
    weight_counters,
)
from greenmeter.compression.sparse import SparseLinear, count_sparse_weights  # noqa: E402
from tests.compression.frozen_method import (  # noqa: E402
    METHOD,
    RECIPE,
    FreezeConfig,
    FrozenLinear,
    frozen_method,
)

BUILTIN_RECIPES = {  # recipe -> method
    "prune": "prune", "channels": "channel_prune", "ticket": "lottery_ticket", "int8-dynamic": "dynamic_int8",
    "int8-static": "static_int8", "int4": "int4_weight", "qat": "qat_int8", "distill": "distillation",
    "early-exit": "early_exit",
}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _ctx() -> RecipeContext:
    return RecipeContext(example_input=torch.zeros(2, 1, 8, 8))


def test_every_builtin_recipe_is_its_methods_and_the_methods_carry_their_facts_hooks() -> None:
    recipes = registered_recipes()
    assert {name: recipes[name].method for name in BUILTIN_RECIPES} == BUILTIN_RECIPES
    registered = methods()
    assert list(registered) == sorted(registered)
    assert registered_methods() == {name: m.config_type for name, m in registered.items()}
    for recipe, method in BUILTIN_RECIPES.items():
        assert registered[method].recipe is recipes[recipe]
    # int8 kernels are invisible to the flop counter: their MACs are counted on the float model
    assert {name for name, m in registered.items() if m.facts.quantized} == {
        "dynamic_int8", "static_int8", "qat_int8", "int4_weight"}
    assert {name for name, m in registered.items() if m.facts.data_macs is not None} == {"early_exit"}
    assert set(weight_counters()) == {Int4Linear, SparseLinear}  # SparseLinear: prune's (sparse execution)
    assert facts_hooks("prune") == FactsHooks(count_weights={SparseLinear: count_sparse_weights})
    assert facts_hooks("channel_prune") == FactsHooks() and facts_hooks(None) == FactsHooks()
    assert facts_hooks("no-such-method") == FactsHooks()


def test_a_registered_method_compresses_builds_through_its_recipe_and_counts_through_its_hook() -> None:
    model = _mlp()
    float_counts = parameter_counts(model)
    assert METHOD not in registered_methods() and RECIPE not in registered_recipes()
    with frozen_method():
        assert registered_methods()[METHOD] is FreezeConfig
        assert registered_recipes()[RECIPE].method == METHOD
        assert facts_hooks(METHOD).data_macs is not None and weight_counters()[FrozenLinear] is not None
        direct = compress(model, FreezeConfig())
        assert direct.compression_info.method == METHOD and direct.compression_info.details["frozen_layers"] == 2
        variant = build_variant(f"{RECIPE}:32", model, _ctx())
        assert variant.recipe.details == {"bits": 32} and variant.compression_info.config == {"bits": 32}
        assert sum(isinstance(m, FrozenLinear) for m in variant.modules()) == 2
        x = torch.randn(5, 1, 8, 8)
        with torch.no_grad():
            assert torch.equal(variant(x), model(x))  # float32 buffers: the same function
        # parameters() sees only the two biases (42 elements); the hook counts the 64*32 + 32*10 frozen weights
        assert sum(p.numel() for p in variant.parameters()) == 42
        assert parameter_counts(variant) == ParamCounts(float_counts.total, float_counts.nonzero,
                                                        "stored weight elements")
    assert METHOD not in registered_methods() and RECIPE not in registered_recipes()
    assert FrozenLinear not in weight_counters()


def test_a_recipe_argument_out_of_range_is_a_config_error_naming_the_recipe() -> None:
    with frozen_method():
        for arg in ("8", "x", "nan"):
            with pytest.raises(ConfigError, match=re.escape(f"recipe {RECIPE!r}: bad argument {arg!r}; expected B, "
                                                            "the bits of the frozen weights")):
                build_variant(f"{RECIPE}:{arg}", _mlp(), _ctx())


def test_duplicate_names_config_types_and_recipe_names_are_refused_and_nothing_half_registered() -> None:
    def handler(model: nn.Module, config: object) -> tuple[nn.Module, dict[str, object]]:
        return model, {}

    class OtherConfig:
        pass

    with pytest.raises(ConfigError, match="a compression method named 'prune' is already registered "
                                          r"\(for PruneConfig\)"):
        register_method("prune", OtherConfig)(handler)
    with pytest.raises(ConfigError, match="already registered for PruneConfig \\('prune'\\)"):
        register_method("prune-again", PruneConfig)(handler)
    taken = RecipeSpec("int4", lambda m, a, c: m, trains=False, description="another int4")
    with pytest.raises(ConfigError, match="a recipe named 'int4' is already registered "
                                          r"\(by the compression method 'int4_weight'\)"):
        register_method("other", OtherConfig, recipe=taken)(handler)
    assert "other" not in registered_methods() and "prune-again" not in registered_methods()
    assert registered_recipes()["int4"].method == "int4_weight"
    with frozen_method():
        with pytest.raises(ConfigError, match=f"'{METHOD}' is already registered"):
            with frozen_method():
                pass
        assert registered_methods()[METHOD] is FreezeConfig  # the first registration stands
    with pytest.raises(ConfigError, match=f"no compression method named {METHOD!r}"):
        unregister_method(METHOD)


def test_the_records_check_themselves() -> None:
    def build(m: nn.Module, a: str | None, c: object) -> nn.Module:
        return m

    for bad in ("", "a:b", "two words"):
        with pytest.raises(ConfigError, match="recipe name"):
            RecipeSpec(bad, build, trains=False, description="x")
    with pytest.raises(ConfigError, match="recipe 'r': trains must be True or False"):
        RecipeSpec("r", build, trains=1, description="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="recipe 'r': build must be callable"):
        RecipeSpec("r", "build", trains=False, description="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="count_weights must map module types"):
        FactsHooks(count_weights={"Int4Linear": lambda m: WeightCount(0, 0)})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="quantized must be True or False"):
        FactsHooks(quantized="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="handler must be callable"):
        Method("m", FreezeConfig, handler=None)  # type: ignore[arg-type]
    method = Method("m", FreezeConfig, build, recipe=RecipeSpec("r", build, trains=False, description="x"))
    assert method.recipe is not None and method.recipe.method == "m"  # the recipe names its method
    assert RecipeSpec("r", build, trains=False, description="x").usage == "r"
    assert RecipeSpec("r", build, trains=False, description="x", arg_help="N").usage == "r[:arg]"


def test_the_builtin_hooks_keep_the_figures_of_int8_and_int4_models() -> None:
    model = _mlp()
    int4 = compress(model, Int4WeightConfig(group_size=16))
    counts = parameter_counts(int4)  # through int4's count_weights hook: real weights, not the packed bytes
    assert counts.kind == "stored weight elements" and counts.total == parameter_counts(model).total
    assert facts_hooks(int4.compression_info.method).quantized
    int8 = compress(copy.deepcopy(model), DynamicQuantConfig())
    assert facts_hooks(int8.compression_info.method).quantized
    assert parameter_counts(int8).total == parameter_counts(model).total


def test_a_hand_built_model_gets_the_hooks_of_the_method_whose_model_class_it_is() -> None:
    from greenmeter.compression import MultiExitModel

    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    hand_built = MultiExitModel(backbone, [1], torch.zeros(1, 4, 4))  # no compress(): no compression_info
    assert getattr(hand_built, "compression_info", None) is None
    assert facts_hooks_for(hand_built) is facts_hooks("early_exit")
    assert facts_hooks_for(hand_built).data_macs is not None
    assert facts_hooks_for(backbone) == FactsHooks()  # a plain model: no hooks
    quantized = compress(nn.Sequential(nn.Linear(16, 8)).eval(), DynamicQuantConfig())
    assert facts_hooks_for(quantized) is facts_hooks("dynamic_int8") and facts_hooks_for(quantized).quantized
    with pytest.raises(ConfigError, match="model_types must be classes"):
        FactsHooks(model_types=("MultiExitModel",))
