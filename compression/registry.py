"""The registry of compression methods: each method registers once, with its recipe and its facts hooks.

A method is a frozen config dataclass and a handler, registered for that config type under a name. It may
carry two more things, so that nothing else in greenmeter keeps a list of methods:

* a :class:`RecipeSpec`: the recipe name (``"prune"``) that ``compare`` and ``build_variant`` accept as
  ``name`` or ``name:arg``, what the argument means, whether building trains, and ``build(baseline_copy,
  arg, ctx)`` (``ctx`` is a :class:`greenmeter.comparison.recipes.RecipeContext`);
* a :class:`FactsHooks`: how :mod:`greenmeter.comparison.facts` and ``compare`` count what the method's
  models hold (weights packed where ``model.parameters()`` does not see them), whether their MACs are
  counted on the float model they were made from, and MACs that depend on the data (early exits).

::

    @register_method("half", HalfPrecisionConfig,
                     recipe=RecipeSpec("half", build_half, trains=False, description="float16 weights"),
                     facts=FactsHooks(quantized=False))
    def _half(model, config):
        return model.half(), {"dtype": "float16"}

Third-party methods come in through the ``greenmeter.methods`` entry-point group, read the first time the
registry is asked for its entries (:func:`registered_methods`, a recipe or facts lookup), never at import.
An entry point names a module or a config class whose import registered the method with
:func:`register_method` (the entry point's name is the method's name), or a :class:`Method` record, which
is registered as it is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, Union

from greenmeter._errors import ConfigError
from greenmeter.plugins import load_plugins

if TYPE_CHECKING:
    import torch
    from torch import nn

    from greenmeter.comparison.recipes import RecipeContext

__all__ = [
    "DataMacs", "FactsHooks", "Method", "RecipeSpec", "WeightCount", "check_kept_layers", "facts_hooks",
    "facts_hooks_for", "method_for_config", "methods", "recipe_fraction", "recipe_number", "recipe_specs", "register_method", "register_recipe_spec",
    "registered_methods", "unregister_method", "unregister_recipe_spec", "weight_counters",
]

C = TypeVar("C")
#: ``handler(model_copy, config) -> (model, details)``.
Handler = Callable[[Any, Any], "tuple[nn.Module, Mapping[str, Any]]"]
#: ``build(baseline_copy, arg, ctx)`` returns the variant, or ``(variant, details)``.
BuildFn = Callable[["nn.Module", Union[str, None], "RecipeContext"], Any]
#: The entry-point group third-party methods are read from.
GROUP = "greenmeter.methods"


# ------------------------------------------------------------------------------------------ records

@dataclass(frozen=True)
class RecipeSpec:
    """A recipe: a named, parameterised way to build a variant from a baseline (``"prune:0.5"``).

    Attributes:
        name: the spec name: non-empty, without ``:`` or whitespace.
        build: ``build(baseline_copy, arg, ctx)``: gets a private deep copy of the baseline in eval mode (change
            it freely), the argument string (``None`` when the spec has none) and the ``RecipeContext``; returns
            the variant, or ``(variant, details)`` with a mapping of plain values.
        trains: whether building trains (its making cost then counts as training); such a recipe is refused
            before ``build`` runs when the context has neither ``train_fn`` nor ``train_data``.
        description: one line for listings and reports.
        arg_help: what the argument means, its range and default; ``None`` when the recipe takes no argument
            (``"name:arg"`` is then refused).
        method: the compression method the recipe belongs to; set by :func:`register_method`, ``None`` for a
            recipe registered on its own (``greenmeter.comparison.recipes.register_recipe``).
        parse_arg: ``parse_arg(arg) -> value``: the argument text (``None`` when the spec has none) parsed and
            checked, raising ConfigError for one the recipe refuses (:func:`recipe_number`,
            :func:`recipe_fraction`). ``compare`` calls it for every recipe before any work, so that a bad
            argument stops the comparison at once rather than failing its variant; ``build`` calls it for the
            value. ``None``: the argument is checked only when ``build`` runs.
        needs_float: whether the recipe needs a float model to start from (float weights in ``nn.Linear`` and
            ``nn.Conv`` layers, to prune, train or quantize): in a stacked recipe (``"channels:0.5+int8-static"``)
            such a step may not come after one that ``makes_quantized``. ``True`` by default, the safe
            assumption for a plug-in; ``False`` for a recipe that works on quantized models too.
        makes_quantized: whether the model it makes holds quantized or packed weights (int8, int4) that a later
            step needing float weights cannot work on. ``False`` by default; a method whose ``FactsHooks`` say
            ``quantized=True`` gets ``True`` when it registers the recipe.
        keeps_layers: whether the recipe honours the step modifier ``[keep=NAME,...]``
            (``"int8-static[keep=classifier.2]"``): ``build`` then reads the module names from
            ``ctx.keep_layers`` and leaves those modules as they are (unpruned, in float), refusing a name that is
            no module it would change (:func:`check_kept_layers`). ``False`` by default: such a recipe is refused
            with a ``[keep=...]`` before any work.
    """

    name: str
    build: BuildFn
    trains: bool
    description: str
    arg_help: str | None = None
    method: str | None = None
    parse_arg: Callable[[str | None], Any] | None = None
    needs_float: bool = True
    makes_quantized: bool = False
    keeps_layers: bool = False

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name or ":" in name or any(c.isspace() for c in name):
            raise ConfigError(f"a recipe name must be a non-empty string without ':' or spaces, got {name!r}")
        if not isinstance(self.trains, bool):
            raise ConfigError(f"recipe {name!r}: trains must be True or False, got {self.trains!r}")
        if not callable(self.build):
            raise ConfigError(f"recipe {name!r}: build must be callable as build(baseline, arg, ctx)")
        if not isinstance(self.description, str):
            raise ConfigError(f"recipe {name!r}: description must be a string, got {type(self.description).__name__}")
        if self.arg_help is not None and not isinstance(self.arg_help, str):
            raise ConfigError(f"recipe {name!r}: arg_help must be a string or None, got {self.arg_help!r}")
        if self.parse_arg is not None and not callable(self.parse_arg):
            raise ConfigError(f"recipe {name!r}: parse_arg must be callable as parse_arg(arg) or None")
        for flag in ("needs_float", "makes_quantized", "keeps_layers"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"recipe {name!r}: {flag} must be True or False, got {getattr(self, flag)!r}")

    @property
    def usage(self) -> str:
        """How to write the spec: ``name`` for a recipe without an argument, else ``name[:arg]``."""
        return self.name if self.arg_help is None else f"{self.name}[:arg]"


@dataclass(frozen=True)
class WeightCount:
    """The weights of one module that keeps them where ``model.parameters()`` does not see them.

    Attributes:
        total: weight elements the module stands for (not its padding or spare storage).
        nonzero: how many of them are not zero once dequantized.
        tensors: further tensors of the module (a float bias) that facts counts the usual way, once.
    """

    total: int
    nonzero: int
    tensors: tuple[torch.Tensor, ...] = ()


@dataclass(frozen=True)
class DataMacs:
    """Multiply-accumulates per sample of a model whose work depends on the data (early exits).

    Attributes:
        macs_per_sample: MACs per sample averaged over the evaluation data.
        method: how they were counted, in words (shown as the comparison's ``macs_method``).
        note: what else to know (an exit histogram), or ``None``.
    """

    macs_per_sample: float
    method: str
    note: str | None = None


#: ``count(module) -> WeightCount`` for a module of one type.
WeightCounter = Callable[["nn.Module"], WeightCount]
#: ``macs(model, x, y) -> DataMacs``, the model in eval mode, ``x``/``y`` the whole evaluation data.
DataMacsFn = Callable[["nn.Module", "torch.Tensor", "torch.Tensor"], DataMacs]


@dataclass(frozen=True)
class FactsHooks:
    """How the model facts of a comparison (size, weights, MACs) treat the models a method makes.

    Attributes:
        quantized: the models run integer kernels the flop counter cannot see. :func:`greenmeter.comparison.facts.count_macs`
            counts their quantized Linear and convolution layers (and the modules in ``count_weights``) from their
            own shapes; ``compare`` passes the baseline as ``float_equivalent`` for a model that runs other uncounted
            kernels (a quantized LSTM), counted in its place with a note.
        count_weights: module types that keep their weights where ``model.parameters()`` does not see them
            (packed codes), mapped to ``count(module) -> WeightCount``; used by
            :func:`greenmeter.comparison.facts.parameter_counts` for every such module, whatever made it.
        data_macs: ``macs(model, x, y) -> DataMacs`` for models whose MACs depend on the data; ``compare``
            then reports these instead of counting one pass.
        model_types: the model classes the method makes (``MultiExitModel``): a model of one of them gets these
            hooks even when it was built by hand rather than by ``compress`` (so it has no ``compression_info``).
    """

    quantized: bool = False
    count_weights: Mapping[type, WeightCounter] = field(default_factory=dict)
    data_macs: DataMacsFn | None = None
    model_types: tuple[type, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.quantized, bool):
            raise ConfigError(f"FactsHooks.quantized must be True or False, got {self.quantized!r}")
        if not isinstance(self.count_weights, Mapping) or not all(
            isinstance(t, type) and callable(fn) for t, fn in self.count_weights.items()
        ):
            raise ConfigError("FactsHooks.count_weights must map module types to count(module) -> WeightCount")
        object.__setattr__(self, "count_weights", dict(self.count_weights))
        if self.data_macs is not None and not callable(self.data_macs):
            raise ConfigError("FactsHooks.data_macs must be callable as data_macs(model, x, y) -> DataMacs, or None")
        types = (self.model_types,) if isinstance(self.model_types, type) else tuple(self.model_types)
        if not all(isinstance(t, type) for t in types):
            raise ConfigError(f"FactsHooks.model_types must be classes, got {self.model_types!r}")
        object.__setattr__(self, "model_types", types)


@dataclass(frozen=True)
class Method:
    """A registered compression method.

    Attributes:
        name: the method's name, as in ``CompressionInfo.method`` (``"prune"``).
        config_type: its frozen config dataclass; ``compress(model, config)`` picks the method by it.
        handler: ``handler(model_copy, config) -> (model, details)``.
        recipe: its recipe for ``compare``, or ``None``.
        facts: how model facts treat its models.
    """

    name: str
    config_type: type
    handler: Handler
    recipe: RecipeSpec | None = None
    facts: FactsHooks = field(default_factory=FactsHooks)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ConfigError(f"a compression method name must be a non-empty string without spaces, got {self.name!r}")
        if not isinstance(self.config_type, type):
            raise ConfigError(f"method {self.name!r}: config_type must be a class, got {self.config_type!r}")
        if not callable(self.handler):
            raise ConfigError(f"method {self.name!r}: handler must be callable as handler(model, config)")
        if self.recipe is not None and not isinstance(self.recipe, RecipeSpec):
            raise ConfigError(f"method {self.name!r}: recipe must be a RecipeSpec or None, got "
                              f"{type(self.recipe).__name__}")
        if not isinstance(self.facts, FactsHooks):
            raise ConfigError(f"method {self.name!r}: facts must be a FactsHooks, got {type(self.facts).__name__}")
        if self.recipe is not None and self.recipe.method != self.name:
            object.__setattr__(self, "recipe", replace(self.recipe, method=self.name))
        if self.recipe is not None and self.facts.quantized and not self.recipe.makes_quantized:
            object.__setattr__(self, "recipe", replace(self.recipe, makes_quantized=True))  # its models are quantized


# ------------------------------------------------------------------------------------------ registry

_METHODS: dict[str, Method] = {}
_BY_CONFIG: dict[type, Method] = {}
_RECIPES: dict[str, RecipeSpec] = {}
_NO_HOOKS = FactsHooks()


def _add(method: Method) -> None:
    """Register ``method`` (and its recipe) after checking that neither clashes with what is registered."""
    if method.name in _METHODS:
        raise ConfigError(f"a compression method named {method.name!r} is already registered "
                          f"(for {_METHODS[method.name].config_type.__name__}); choose another name")
    if method.config_type in _BY_CONFIG:
        raise ConfigError(f"a compression method is already registered for {method.config_type.__name__} "
                          f"({_BY_CONFIG[method.config_type].name!r})")
    if method.recipe is not None:
        _check_recipe_free(method.recipe.name)
    _METHODS[method.name] = method
    _BY_CONFIG[method.config_type] = method
    if method.recipe is not None:
        _RECIPES[method.recipe.name] = method.recipe


def _check_recipe_free(name: str) -> None:
    if name in _RECIPES:
        owner = _RECIPES[name].method
        by = f" (by the compression method {owner!r})" if owner else ""
        raise ConfigError(f"a recipe named {name!r} is already registered{by}; unregister_recipe({name!r}) first "
                          "to replace it, or choose another name")


def register_method(name: str, config_type: type[C], *, recipe: RecipeSpec | None = None,
                    facts: FactsHooks | None = None) -> Callable[[Handler], Handler]:
    """Register ``handler(model_copy, config) -> (model, details)`` for ``config_type`` under ``name``.

    A decorator. The handler receives a private deep copy of the user's model and may change it in place or
    return a new module. ``details`` is a mapping of plain values reported in ``CompressionInfo.details``.

    Args:
        name: the method's name (``CompressionInfo.method``), unique.
        config_type: the method's config class, unique.
        recipe: the method's recipe for ``compare``/``build_variant`` (see :class:`RecipeSpec`); its name is
            unique among all recipes.
        facts: how model facts treat the method's models (see :class:`FactsHooks`); none by default.

    Raises:
        ConfigError: the name, the config type or the recipe name is already registered, or a record is
            malformed; nothing is registered then.
    """

    def decorate(handler: Handler) -> Handler:
        _add(Method(name, config_type, handler, recipe, _NO_HOOKS if facts is None else facts))
        return handler

    return decorate


def unregister_method(name: str) -> Method:
    """Remove the method ``name`` and its recipe from the registry and return it (ConfigError if unknown)."""
    _load()
    if name not in _METHODS:
        raise ConfigError(f"no compression method named {name!r} is registered; registered: {', '.join(sorted(_METHODS))}")
    method = _METHODS.pop(name)
    del _BY_CONFIG[method.config_type]
    if method.recipe is not None and _RECIPES.get(method.recipe.name) is method.recipe:
        del _RECIPES[method.recipe.name]
    return method


def registered_methods() -> dict[str, type]:
    """Method names and their config types."""
    _load()
    return {name: m.config_type for name, m in _METHODS.items()}


def methods() -> dict[str, Method]:
    """The registered methods by name, sorted (a copy)."""
    _load()
    return {name: _METHODS[name] for name in sorted(_METHODS)}


def method_for_config(config: Any) -> Method | None:
    """The method registered for ``config``'s type (or the nearest base class), ``None`` if there is none."""
    found = next((_BY_CONFIG[t] for t in type(config).__mro__ if t in _BY_CONFIG), None)
    if found is None:
        _load()  # a plug-in may register it
        found = next((_BY_CONFIG[t] for t in type(config).__mro__ if t in _BY_CONFIG), None)
    return found


def facts_hooks(method: str | None) -> FactsHooks:
    """The facts hooks of the method ``method`` (a ``CompressionInfo.method``); no hooks when unknown or ``None``."""
    if method is None:
        return _NO_HOOKS
    _load()
    found = _METHODS.get(method)
    return _NO_HOOKS if found is None else found.facts


def facts_hooks_for(model: Any) -> FactsHooks:
    """The facts hooks that apply to ``model``: its method's (from ``model.compression_info``), else those of the
    first method whose ``model_types`` it is an instance of; no hooks when neither applies."""
    info = getattr(model, "compression_info", None)
    if info is not None:
        return facts_hooks(info.method)
    _load()
    return next((m.facts for m in _METHODS.values() if m.facts.model_types and isinstance(model, m.facts.model_types)),
                _NO_HOOKS)


def weight_counters() -> dict[type, WeightCounter]:
    """Every registered method's weight counters, by module type."""
    _load()
    return {t: fn for m in _METHODS.values() for t, fn in m.facts.count_weights.items()}


def recipe_specs() -> dict[str, RecipeSpec]:
    """The registered recipes (methods' and those registered on their own) by name, sorted (a copy)."""
    _load()
    return {name: _RECIPES[name] for name in sorted(_RECIPES)}


def register_recipe_spec(spec: RecipeSpec) -> RecipeSpec:
    """Register a recipe that is not a method's (``spec.method`` must be ``None``); ConfigError if the name is taken."""
    if not isinstance(spec, RecipeSpec):
        raise ConfigError(f"register_recipe_spec needs a RecipeSpec, not {type(spec).__name__}")
    if spec.method is not None:
        raise ConfigError(f"recipe {spec.name!r} belongs to the method {spec.method!r}: register it with "
                          "register_method(..., recipe=...)")
    _load()
    _check_recipe_free(spec.name)
    _RECIPES[spec.name] = spec
    return spec


def unregister_recipe_spec(name: str) -> RecipeSpec:
    """Remove a recipe and return it; a method's recipe goes too (the method stays). ConfigError if unknown."""
    _load()
    if name not in _RECIPES:
        raise ConfigError(f"no recipe named {name!r} is registered; registered recipes: {', '.join(sorted(_RECIPES))}")
    return _RECIPES.pop(name)


# ------------------------------------------------------------------------------------------ plug-ins

def _load() -> None:
    load_plugins(GROUP, _register_plugin)


def _register_plugin(name: str, obj: Any) -> None:
    """The ``greenmeter.methods`` entry point ``name`` loaded as ``obj``: a :class:`Method`, or a module or
    config class whose import registered a method named ``name``."""
    if isinstance(obj, Method):
        if obj.name != name:
            raise ConfigError(f"the entry point is named {name!r} but its Method is named {obj.name!r}; "
                              "name them alike")
        if _METHODS.get(name) is not obj:
            _add(obj)
        return
    method = _METHODS.get(name)
    if method is None:
        raise ConfigError(f"importing it registered no compression method named {name!r}: point the entry point "
                          "at a Method, or at the module or config class whose import calls "
                          f"register_method({name!r}, ...)")
    if isinstance(obj, type) and obj is not method.config_type:
        raise ConfigError(f"it points at {obj.__name__}, but the method {name!r} is registered for "
                          f"{method.config_type.__name__}")


# ------------------------------------------------------------------------------------------ recipe arguments

def recipe_number(recipe: str, arg: str | None, default: float, expected: str, ok: Callable[[float], bool]) -> float:
    """A recipe's argument as a number accepted by ``ok``, ``default`` when absent.

    Args:
        recipe: the recipe's name, for the message.
        arg: the argument text from the spec, or ``None``.
        default: the value when there is no argument.
        expected: what the argument should be (the recipe's ``arg_help``), for the message.
        ok: the test a parsed number must pass.

    Raises:
        ConfigError: ``"recipe 'name': bad argument 'arg'; expected ..."`` for text that is not a number, NaN,
            infinity, or a number ``ok`` refuses.
    """
    if arg is None:
        return default
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not ok(value):
        raise ConfigError(f"recipe {recipe!r}: bad argument {arg!r}; expected {expected}")
    return value


def recipe_fraction(recipe: str, arg: str | None, default: float, expected: str, zero_ok: bool = True) -> float:
    """A recipe's argument as a fraction in [0, 1) (``zero_ok``) or (0, 1); see :func:`recipe_number`."""
    return recipe_number(recipe, arg, default, expected, lambda v: (0 <= v if zero_ok else 0 < v) and v < 1)


# ------------------------------------------------------------------------------------------ kept layers

#: How many module names the message of :func:`check_kept_layers` lists before "...".
_LISTED = 12


def check_kept_layers(owner: str, method: str, model: nn.Module, keep: Iterable[str], touched: Iterable[str]) -> None:
    """Check, when the model is known, that each module a method is asked to keep is one it would change.

    Args:
        owner: the config field, for the message (``"StaticQuantConfig.keep_layers"``).
        method: what the method does, in words, for the message (``"static int8 quantization"``).
        model: the model being compressed; its ``named_modules()`` names are the names a user may give.
        keep: the module names to leave as they are.
        touched: the names of the modules the method would change in this model, in model order.

    Raises:
        ConfigError: a name is no module of the model, names one that the method leaves as it is anyway (a
            ReLU), or the names cover every module it changes; the message lists the modules it would change
            (the first 12, then "...").
    """
    keep, touched = tuple(keep), list(dict.fromkeys(touched))
    shown = ", ".join(touched[:_LISTED]) + (", ..." if len(touched) > _LISTED else "") or "none"
    modules = dict(model.named_modules())
    unknown = [n for n in keep if n not in modules]
    if unknown:
        raise ConfigError(f"{owner} names no module of the model: {', '.join(map(repr, unknown))}; the modules "
                          f"{method} changes in {type(model).__name__} are: {shown}")
    idle = [n for n in keep if n not in touched]
    if idle:
        what = ", ".join(f"{n!r} ({type(modules[n]).__name__})" for n in idle)
        raise ConfigError(f"{owner} names {what}, which {method} leaves as it is anyway; the modules it changes in "
                          f"{type(model).__name__} are: {shown}")
    if keep and all(n in keep for n in touched):
        raise ConfigError(f"{owner} keeps every module that {method} changes in {type(model).__name__} ({shown}), "
                          "so it would do nothing; keep fewer")
