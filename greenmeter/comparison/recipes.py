"""Recipes: named, parameterised ways to build a compressed variant from a baseline model.

A recipe spec is ``name`` or ``name:arg`` (``"prune:0.5"``, ``"int8-dynamic"``, ``"early-exit:auto"``), or
a stacked recipe: steps joined by ``+`` (``"channels:0.5+int8-static"``), applied left to right, each step
starting from the model the step before made (:func:`recipe_steps`; a step that needs float weights may not
follow one that quantizes, which is refused before any work). A step may end with the modifier
``[keep=NAME,...]``: qualified module names (as in ``model.named_modules()``) that this step leaves as they
are, unpruned and in float (``"int8-static[keep=classifier.2]"``,
``"channels:0.5[keep=features.3]+int8-static[keep=classifier.2]"``); only recipes registered with
``keeps_layers=True`` take it (:func:`parse_step` splits a step, :func:`format_step` writes one).
:func:`build_variant` looks the name up in a registry, builds the variant from a private copy of the baseline
(the baseline itself is never changed) and attaches a :class:`Recipe` as ``variant.recipe``; variants made by
a compression method keep their ``compression_info`` too. Building does not measure anything: the comparison
harness wraps it in a meter window. Compression code never owns a dataset, so what recipes may use (an example
batch, training data or the user's trainer, validation data) comes in a :class:`RecipeContext`.

Each compression method registers its own recipe with it (``register_method(..., recipe=RecipeSpec(...))``
in :mod:`greenmeter.compression.registry`), so the recipes are read from the method registry, plug-ins of the
``greenmeter.methods`` entry-point group included. :func:`registered_recipes` returns them with their argument
help; :func:`format_recipes` renders that as text (``python -m greenmeter.comparison.recipes`` prints it).

A recipe that is not a compression method of its own is added with :func:`register_recipe` (also a
decorator)::

    from greenmeter.compression.registry import recipe_fraction

    sparsity = functools.partial(recipe_fraction, "prune-layer", default=0.3, expected="S in [0, 1)")

    @register_recipe("prune-layer", trains=False, description="magnitude pruning, each layer on its own",
                     arg_help="S, the sparsity of every layer (default 0.3)", parse_arg=sparsity)
    def prune_layer(baseline, arg, ctx):   # baseline is a private copy in eval mode: change it freely
        return compress(baseline, PruneConfig(sparsity=sparsity(arg), scope="layer"))
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from greenmeter._checks import module_names, number, whole_number
from greenmeter._text import text_table
from greenmeter._errors import ConfigError
from greenmeter.comparison.batches import (
    DEFAULT_TARGET_KEY,
    batch_size_of,
    call_model,
    check_target_key,
    default_output,
    describe,
)
from greenmeter.comparison.batches import calibration_inputs as read_calibration

if TYPE_CHECKING:
    import torch
    from torch import nn

    from greenmeter.compression.registry import BuildFn, RecipeSpec

__all__ = [
    "KEEP_MODIFIER", "STEP_SEPARATOR", "Recipe", "RecipeContext", "build_variant", "check_recipe", "format_recipes",
    "format_step", "parse_recipe", "parse_step", "recipe_steps", "register_recipe", "registered_recipes",
    "unregister_recipe",
]

LossFn = Callable[..., "torch.Tensor"]
#: What joins the steps of a stacked recipe: ``"channels:0.5+int8-static"``.
STEP_SEPARATOR = "+"
#: The key of the step modifier that names the modules a step leaves as they are: ``"int8-static[keep=fc]"``.
KEEP_MODIFIER = "keep"
#: ``step_window(index, step_spec)``: a context manager around one step of :func:`build_variant`.
StepWindow = Callable[[int, str], AbstractContextManager[Any]]


# ------------------------------------------------------------------------------------------ context

@dataclass(frozen=True, eq=False)  # holds tensors: two contexts are equal only if they are the same object
class RecipeContext:
    """What recipes may use; compression code never owns a dataset, so the caller provides these.

    Args:
        example_input: one batch of inputs (any batch size), to trace the model and size new layers: a tensor, a
            tuple of tensors or a dict (as :mod:`greenmeter.comparison.batches` reads a batch's inputs). Recipes that
            reshape layers (``channels``, ``early-exit``) need a tensor.
        train_data: re-iterable batches (a list, a DataLoader) or a callable returning a fresh iterable each
            time, read as ``compare`` reads a batch: ``(inputs, targets)`` pairs, the inputs a tensor or a tuple
            of tensors, or dicts with the targets under ``target_key``; used by the built-in trainer and for
            int8-static calibration.
        train_fn: the user's trainer, called as ``train_fn(model, loss_fn, epochs)``: it trains ``model`` in
            place for ``epochs`` epochs with ``loss_fn(model, x, y) -> scalar loss``, ``x`` a batch's inputs (a
            tensor, a tuple or a dict) and ``y`` its targets (``None`` means cross-entropy on the model's output,
            its ``.logits`` for a ``ModelOutput``), building its optimiser over ``model.parameters()`` at each
            call. Recipes that train use it when given, else a built-in Adam loop over ``train_data``.
        val_data: held-out ``(x, y)`` tensors for calibrations (the early-exit threshold of ``early-exit:auto``).
        calibration_batches: batches of ``train_data`` that int8-static calibrates on (>= 1).
        fine_tune_epochs: epochs of each training step of a recipe that adjusts trained weights (channels,
            ticket, qat, early-exit heads); passed to ``train_fn`` as ``epochs``.
        train_epochs: epochs of a recipe that trains a new network from scratch (the distill student).
        lr: Adam learning rate of the built-in trainer.
        seed: seed of the built-in trainer, of new layers (students, exit heads) and of re-initialisations.
        teacher: the model a ``distill`` step learns from; ``None``: the model the step starts from. For a
            stacked recipe :func:`build_variant` sets it to (a copy of) the baseline, so that
            ``"channels:0.5+distill:0.5"`` distils the baseline into a thinner copy of the pruned model.
        keep_layers: qualified module names (``("features.0", "classifier.2")``) that the recipe leaves as they
            are; a recipe registered with ``keeps_layers=True`` passes them to its method's config.
            :func:`build_variant` sets it for each step from the step's ``[keep=...]`` modifier (``()`` for a
            step without one), whatever the context given held.
        target_key: the key of the targets in dict batches of ``train_data`` (the built-in trainer's targets;
            removed from the calibration inputs); ``"labels"`` by default.
    """

    example_input: torch.Tensor
    train_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | Callable[[], Iterable[Any]] | None = None
    train_fn: Callable[..., Any] | None = None
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None
    calibration_batches: int = 8
    fine_tune_epochs: int = 3
    train_epochs: int = 10
    lr: float = 3e-3
    seed: int = 0
    teacher: nn.Module | None = None
    keep_layers: tuple[str, ...] = ()
    target_key: str = DEFAULT_TARGET_KEY

    def __post_init__(self) -> None:
        import torch

        x, data, fn, val = self.example_input, self.train_data, self.train_fn, self.val_data
        if not batch_size_of(x):
            raise ConfigError("RecipeContext.example_input must be a batch [N, ...] with N >= 1: a tensor, a tuple of "
                              f"tensors or a dict of tensors, not {describe(x)}")
        check_target_key(self.target_key)
        if data is not None and not callable(data) and (isinstance(data, (str, bytes, Iterator))
                                                        or not isinstance(data, Iterable)):
            raise ConfigError(f"RecipeContext.train_data must be re-iterable batches (a list, a DataLoader) or "
                              f"a callable returning them, not {type(data).__name__}: recipes read it more than once")
        if fn is not None:
            try:
                inspect.signature(fn).bind(None, None, 1)
            except TypeError as err:  # also: not callable
                raise ConfigError("RecipeContext.train_fn must be callable as train_fn(model, loss_fn, epochs) "
                                  f"(loss_fn and epochs may default to None): {err}") from err
            except ValueError:  # no signature to inspect (some builtins): trust the caller
                pass
        if val is not None:
            if not (isinstance(val, (tuple, list)) and len(val) == 2 and all(isinstance(t, torch.Tensor) for t in val)
                    and len(val[0]) == len(val[1]) > 0):
                raise ConfigError("RecipeContext.val_data must be an (x, y) pair of tensors of equal, non-zero length")
            object.__setattr__(self, "val_data", tuple(val))
        for name, low in (("calibration_batches", 1), ("fine_tune_epochs", 1), ("train_epochs", 1), ("seed", None)):
            whole_number(f"RecipeContext.{name}", getattr(self, name), minimum=low)
        number("RecipeContext.lr", self.lr, low=0, low_open=True)
        if self.teacher is not None and not isinstance(self.teacher, torch.nn.Module):
            raise ConfigError(f"RecipeContext.teacher must be a torch.nn.Module or None, not {type(self.teacher).__name__}")
        object.__setattr__(self, "keep_layers", module_names("RecipeContext.keep_layers", self.keep_layers))

    @property
    def can_train(self) -> bool:
        """Whether recipes that train have something to train with (``train_fn`` or ``train_data``)."""
        return self.train_fn is not None or self.train_data is not None

    def trainer(self, recipe: str, epochs: int | None = None) -> Callable[[nn.Module, LossFn | None], None]:
        """``train(model, loss_fn=None)``, in place: ``train_fn`` or the built-in Adam loop over ``train_data``.

        ``epochs`` per call defaults to ``fine_tune_epochs``. ConfigError (naming ``recipe``) when there is
        neither train_fn nor train_data.
        """
        if not self.can_train:
            raise ConfigError(f"recipe {recipe!r} trains, so it needs train_fn or train_data in the RecipeContext")
        n = self.fine_tune_epochs if epochs is None else epochs

        def train(model: nn.Module, loss_fn: LossFn | None = None) -> None:
            if self.train_fn is not None:
                self.train_fn(model, loss_fn, n)
                return
            from greenmeter.compression.distillation import fit

            params = [p for p in model.parameters() if p.requires_grad]  # at call time: prune hooks add weight_orig
            fit(model, loss_fn or _cross_entropy, params, self.train_data, n, self.lr, self.seed, self.target_key)

        return train

    def trainer_details(self, epochs: int | None = None) -> dict[str, Any]:
        """What a recipe that trains reports about its training: ``{"trainer": "train_fn" or "built-in",
        "epochs": epochs}``, ``epochs`` defaulting to ``fine_tune_epochs``."""
        return {"trainer": "train_fn" if self.train_fn is not None else "built-in",
                "epochs": self.fine_tune_epochs if epochs is None else epochs}

    def calibration_inputs(self) -> list[Any]:
        """The inputs of the first ``calibration_batches`` batches of ``train_data`` (or ``[example_input]``): each
        a tensor, a tuple of tensors or a dict (``target_key`` removed), as the model is called on them."""
        if self.train_data is None:
            return [self.example_input]
        data = self.train_data() if callable(self.train_data) else self.train_data
        inputs = read_calibration(data, self.target_key, limit=self.calibration_batches)
        if not inputs:
            raise ConfigError("RecipeContext.train_data yielded no batches to calibrate on")
        return inputs


def _cross_entropy(model: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
    """The built-in trainer's loss: cross-entropy of the model's output on the inputs ``x`` (a tensor, a tuple or a
    dict, called as ``compare`` calls the model; a ``ModelOutput`` gives its ``.logits``) against the labels ``y``."""
    from torch.nn import functional as F

    return F.cross_entropy(default_output(call_model(model, x)), y)


# ------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class Recipe:
    """How a variant was built: attached to it as ``variant.recipe`` by :func:`build_variant`.

    Attributes:
        name: the registered recipe name (``"prune"``).
        arg: the argument as given in the spec (``"0.5"``), ``None`` when the spec had none.
        trains: whether building it trained the model (fine-tuning, distillation, QAT...), not only converted it.
        description: the recipe's one-line description.
        details: what the recipe chose (the effective argument, exits, rounds, trainer...), plain values.
        steps: for a stacked recipe, each step's :class:`Recipe` in the order applied (then ``name`` is the whole
            spec, ``arg`` is ``None``, ``trains`` says whether any step trained); ``()`` for a single recipe.
        keep: the module names of the step's ``[keep=...]`` modifier, in the order given; ``()`` for none (and for
            a stacked recipe, whose steps hold theirs).
    """

    name: str
    arg: str | None
    trains: bool
    description: str
    details: Mapping[str, Any] = field(default_factory=dict)
    steps: tuple[Recipe, ...] = ()
    keep: tuple[str, ...] = ()

    @property
    def spec(self) -> str:
        """The spec text, ``name``, ``name:arg`` or ``name:arg[keep=a,b]`` (:func:`format_step`); a stacked recipe's
        whole spec, ``"channels:0.5[keep=3]+int8-static"``. :func:`parse_step` reads it back."""
        return format_step(self.name, self.arg, self.keep)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arg": self.arg, "keep": list(self.keep), "trains": self.trains,
                "description": self.description, "details": dict(self.details),
                "steps": [step.to_dict() for step in self.steps]}


def parse_step(spec: str) -> tuple[str, str | None, tuple[str, ...]]:
    """Split a one-step spec into its name, argument and kept modules.

    ``"prune:0.5"`` -> ``("prune", "0.5", ())``; ``"int8-dynamic"`` -> ``("int8-dynamic", None, ())``;
    ``"prune:0.7[keep=features.0, classifier.2]"`` -> ``("prune", "0.7", ("features.0", "classifier.2"))``.
    The modifier ``[keep=NAME,...]`` comes last and lists qualified module names (as in
    ``model.named_modules()``) that the step leaves as they are, in the order given. Whitespace around the name,
    the argument and each module name is dropped; nothing is looked up here (:func:`recipe_steps` checks the
    recipe, the method checks the module names against the model). A stacked spec is split into its steps first
    (:func:`recipe_steps`). :func:`format_step` writes the canonical text back.

    Raises:
        ConfigError: the spec is not a string, is stacked (has ``+``), has no name, has an empty argument after
            ``:``, unbalanced brackets or text after the modifier, a modifier other than ``keep``, an empty list
            of module names (or an empty name in it), a module name with spaces, or a module named twice.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"a recipe spec must be a string such as 'prune:0.5', not {type(spec).__name__}")
    if STEP_SEPARATOR in spec:
        raise ConfigError(f"recipe spec {spec!r} is stacked: split it into its steps with recipe_steps")
    body, keep = _split_modifier(spec)
    name, sep, arg = body.partition(":")
    name, arg = name.strip(), arg.strip()
    if not name:
        raise ConfigError(f"recipe spec {spec!r} has no recipe name; write name or name:arg, e.g. 'prune:0.5'")
    if sep and not arg:
        raise ConfigError(f"recipe spec {spec!r} has nothing after ':'; write {name!r} for the default argument")
    return name, (arg if sep else None), keep


def _split_modifier(spec: str) -> tuple[str, tuple[str, ...]]:
    """``"name:arg[keep=a, b]"`` -> ``("name:arg", ("a", "b"))``; a step without a modifier -> ``(spec, ())``."""
    opens, closes, text = spec.count("["), spec.count("]"), spec.rstrip()
    if not opens and not closes:
        return spec, ()
    start, end = text.find("["), text.find("]")
    if opens != 1 or closes != 1 or end < start:
        raise ConfigError(f"recipe step {spec!r} has unbalanced brackets; a step ends with at most one modifier, "
                          "e.g. 'int8-static[keep=classifier.2]'")
    if end != len(text) - 1:
        raise ConfigError(f"recipe step {spec!r} has text after its modifier; the modifier comes last, as in "
                          "'prune:0.7[keep=features.0]'")
    key, _, value = text[start + 1:end].partition("=")
    if key.strip() != KEEP_MODIFIER:
        raise ConfigError(f"recipe step {spec!r} has an unknown modifier {key.strip()!r}; the only modifier is "
                          "[keep=NAME,...], the modules the step leaves as they are")
    names = [n.strip() for n in value.split(",")]
    if not any(names):
        raise ConfigError(f"recipe step {spec!r} keeps no module; list the modules to leave as they are, e.g. "
                          "[keep=features.0,classifier.2], or drop the modifier")
    if not all(names):
        raise ConfigError(f"recipe step {spec!r} has an empty module name in its [keep=...] list; separate the "
                          "names with single commas")
    spaced = next((n for n in names if any(c.isspace() for c in n)), None)
    if spaced is not None:
        raise ConfigError(f"recipe step {spec!r} keeps {spaced!r}, which has a space in it; separate module names "
                          "with commas")
    return spec[:start], module_names(f"the [keep=...] list of recipe step {spec!r}", names)


def format_step(name: str, arg: str | None = None, keep: Iterable[str] = ()) -> str:
    """The canonical text of one step: ``name``, ``name:arg``, ``name[keep=a,b]`` or ``name:arg[keep=a,b]``.

    The inverse of :func:`parse_step` (module names in the order given, no spaces); nothing is checked here.
    """
    keep = tuple(keep)
    text = name if arg is None else f"{name}:{arg}"
    return f"{text}[{KEEP_MODIFIER}={','.join(keep)}]" if keep else text


def parse_recipe(spec: str) -> tuple[str, str | None]:
    """Split a one-step spec: ``"prune:0.5"`` -> ``("prune", "0.5")``, ``"int8-dynamic"`` -> ``("int8-dynamic", None)``.

    :func:`parse_step` without the kept modules: a ``[keep=...]`` modifier is checked and left out of the
    answer (use :func:`parse_step` for it). Whitespace around the name and the argument is dropped; the name is
    not looked up here. A stacked spec is split into its steps first (:func:`recipe_steps`).

    Raises:
        ConfigError: the spec is not a string, is stacked (has ``+``), has no name, has an empty argument after
            ``:``, or a malformed modifier (see :func:`parse_step`).
    """
    name, arg, _ = parse_step(spec)
    return name, arg


def register_recipe(name: str, build: BuildFn | None = None, *, trains: bool, description: str,
                    arg_help: str | None = None, parse_arg: Callable[[str | None], Any] | None = None,
                    keeps_layers: bool = False) -> Any:
    """Register ``build(baseline, arg, ctx) -> nn.Module`` under ``name``; usable as a decorator without ``build``.

    For a recipe that is not a compression method of its own (a method registers its recipe with
    ``register_method(..., recipe=RecipeSpec(...))``). ``build`` gets a private deep copy of the baseline in eval
    mode (change it freely), the argument string (or ``None``) and the :class:`RecipeContext`; it returns the
    variant, or ``(variant, details)`` with a mapping of plain values for :attr:`Recipe.details`. A recipe with
    ``trains=True`` is refused before ``build`` runs when the context has neither train_fn nor train_data.

    Args:
        name: the spec name: non-empty, without ``:`` or whitespace.
        trains: whether the recipe trains (its making cost then counts as training).
        description: one line for listings and reports.
        arg_help: what the argument means and its default; ``None`` when the recipe takes no argument.
        parse_arg: ``parse_arg(arg) -> value``: the argument text (``None`` when absent) parsed and checked,
            raising ConfigError for one the recipe refuses; :func:`check_recipe` calls it before any work, and
            ``build`` may call it for the value. ``None``: the argument is checked only by ``build``.
        keeps_layers: whether the recipe honours ``[keep=NAME,...]``: ``build`` then leaves the modules named in
            ``ctx.keep_layers`` as they are. ``False``: a spec with the modifier is refused before any work.

    Returns ``build``, or without it a decorator that registers and returns the function. Raises ConfigError for
    a bad name, a name already registered (see :func:`unregister_recipe`) or a build that is not callable.
    """
    from greenmeter.compression.registry import RecipeSpec, register_recipe_spec

    def add(fn: BuildFn) -> BuildFn:
        register_recipe_spec(RecipeSpec(name, fn, trains, str(description), arg_help, parse_arg=parse_arg,
                                        keeps_layers=keeps_layers))
        return fn

    return add if build is None else add(build)


def unregister_recipe(name: str) -> RecipeSpec:
    """Remove a recipe from the registry and return it (ConfigError if it is not registered).

    A method's recipe can be removed too (to register another under its name); the method stays.
    """
    from greenmeter.compression.registry import unregister_recipe_spec

    return unregister_recipe_spec(name)


def registered_recipes() -> dict[str, RecipeSpec]:
    """The registered recipes by name, sorted (a copy: changing it does not change the registry).

    Methods' recipes (built-in and plug-ins of the ``greenmeter.methods`` entry-point group) and those added
    with :func:`register_recipe`; each a :class:`~greenmeter.compression.registry.RecipeSpec` (``name``,
    ``build``, ``trains``, ``description``, ``arg_help``, ``method``).
    """
    from greenmeter.compression.registry import recipe_specs

    return recipe_specs()


def format_recipes() -> str:
    """The registered recipes as text: one line each (spec, whether it trains, method, description), then
    what each argument means."""
    specs = list(registered_recipes().values())
    table = text_table([("recipe", "trains", "method", "description")] + [
        (r.usage, "yes" if r.trains else "no", r.method or "-", r.description) for r in specs], left=range(4))
    takes = [r for r in specs if r.arg_help is not None]
    width = max((len(r.name) for r in takes), default=0)
    keeps = ", ".join(r.name for r in specs if r.keeps_layers) or "none"
    return "\n".join([table, "", "arguments:"] + [f"  {r.name.ljust(width)}  {r.arg_help}" for r in takes] + [
        "", f"[{KEEP_MODIFIER}=NAME,...] after a step leaves those modules as they are; taken by: {keeps}"])


def recipe_steps(spec: str) -> tuple[tuple[RecipeSpec, str | None], ...]:
    """Check a recipe spec, one step or stacked, before any work, and return its steps in the order applied.

    A stacked spec joins steps with ``+`` (``"channels:0.5+int8-static"``; so no argument may hold a ``+``).
    Each step must be a registered name with an argument that the recipe takes (checked by its ``parse_arg``:
    every built-in recipe has one, so ``"prune:7"`` is refused here, not when the variant is built), and a
    ``[keep=...]`` modifier only on a recipe that honours it (``RecipeSpec.keeps_layers``). The order
    must work: a step that needs float weights (``RecipeSpec.needs_float``: pruning, training, quantizing) may
    not come after one that quantizes (``RecipeSpec.makes_quantized``: ``int8-dynamic``, ``int8-static``,
    ``qat``, ``int4``), so ``"int8-dynamic+prune:0.5"`` is refused.

    Args:
        spec: ``name``, ``name:arg`` or ``name:arg[keep=NAME,...]``, or such steps joined by ``+``.

    Returns:
        Each step's :class:`~greenmeter.compression.registry.RecipeSpec` and argument text (``None`` when the
        step has none); one pair for a one-step spec. The kept modules are :func:`parse_step`'s to read.

    Raises:
        ConfigError: a malformed spec or an empty step, an unknown recipe (the message lists the registered
            ones), an argument given to a recipe that takes none, an argument the recipe refuses (the message
            says what it expects), a ``[keep=...]`` on a recipe that does not take it (the message lists those
            that do), or an order that cannot work (naming both steps and why).
    """
    return tuple((info, arg) for info, arg, _ in _checked_steps(spec))


def _checked_steps(spec: str) -> list[tuple[RecipeSpec, str | None, tuple[str, ...]]]:
    """:func:`recipe_steps` with each step's kept modules."""
    if not isinstance(spec, str):
        raise ConfigError(f"a recipe spec must be a string such as 'prune:0.5', not {type(spec).__name__}")
    parts = [part.strip() for part in spec.split(STEP_SEPARATOR)]
    if len(parts) > 1 and not all(parts):
        raise ConfigError(f"stacked recipe {spec!r} has an empty step; join steps with '+', e.g. "
                          "'channels:0.5+int8-static'")
    known = registered_recipes()
    steps: list[tuple[RecipeSpec, str | None, tuple[str, ...]]] = []
    for part in parts:
        name, arg, keep = parse_step(part)
        info = known.get(name)
        if info is None:
            raise ConfigError(f"unknown recipe {name!r}; registered recipes: {', '.join(known)}")
        if arg is not None and info.arg_help is None:
            raise ConfigError(f"recipe {name!r} takes no argument, got {arg!r}; write {name!r}")
        if keep and not info.keeps_layers:
            takers = ", ".join(n for n, r in known.items() if r.keeps_layers) or "none is registered"
            raise ConfigError(f"recipe {name!r} does not take [{KEEP_MODIFIER}=...] (it cannot leave chosen modules "
                              f"as they are); the recipes that do: {takers}")
        if info.parse_arg is not None:
            info.parse_arg(arg)
        quantized_by = next((p for (before, _, _), p in zip(steps, parts) if before.makes_quantized), None)
        if info.needs_float and quantized_by is not None:
            raise ConfigError(f"stacked recipe {spec!r} cannot work in this order: {part!r} needs a float model, but "
                              f"it comes after {quantized_by!r}, which leaves quantized weights; put {part!r} before "
                              f"{quantized_by!r}")
        steps.append((info, arg, keep))
    return steps


def check_recipe(spec: str) -> tuple[RecipeSpec, str | None]:
    """Check a recipe spec before any work: registered names, arguments the recipes take, a workable order.

    The checks of :func:`recipe_steps`, which returns every step of a stacked spec.

    Args:
        spec: ``name``, ``name:arg``, or such steps joined by ``+``.

    Returns:
        The :class:`~greenmeter.compression.registry.RecipeSpec` and argument text (``None`` when there is none)
        of the spec's last step (its only one for a spec that is not stacked).

    Raises:
        ConfigError: a malformed spec, an unknown recipe (the message lists the registered ones), an argument
            given to a recipe that takes none, an argument the recipe refuses (the message says what it
            expects), or a stacked order that cannot work.
    """
    return recipe_steps(spec)[-1]


def build_variant(spec: str, baseline: nn.Module, ctx: RecipeContext, *,
                  step_window: StepWindow | None = None) -> nn.Module:
    """Build the variant ``spec`` names from ``baseline``; ``baseline`` is never changed (weights or modes).

    A stacked spec (``"channels:0.5+int8-static"``) is a pipeline: the first step gets a private copy of the
    baseline, each later step the model the step before made; a ``distill`` step learns from (a copy of) the
    baseline, not from the step before (``RecipeContext.teacher``, unless the context names another teacher).
    Every step is checked (:func:`recipe_steps`, and a trainer for each step that trains) before the first runs.
    Each step's ``[keep=...]`` modules reach its ``build`` as ``ctx.keep_layers`` (``()`` for a step without the
    modifier); the method checks them against the model it gets.

    Args:
        spec: ``name``, ``name:arg`` (:func:`format_recipes` lists the registered ones), each optionally ending in
            ``[keep=NAME,...]``, or such steps joined by ``+``.
        baseline: the trained model to start from.
        ctx: what the recipe may use (example batch, training data or trainer, validation data).
        step_window: ``step_window(index, step_spec)`` returns a context manager that each step runs inside
            (``compare`` measures each step's making energy in its own meter window); ``None``: none.

    Returns:
        The variant in eval mode, with ``variant.recipe`` (:class:`Recipe`) attached; for a stacked spec its
        ``steps`` hold each step's. Built-ins that train or make new layers seed torch's global random generator
        with ``ctx.seed``.

    Raises:
        ConfigError: an unknown recipe (the message lists the registered ones), a bad argument, an order that
            cannot work, a recipe that trains with neither train_fn nor train_data, a build that returns no module.
        CompressionError: the compression method cannot run on this model or machine (its subclasses say why).
    """
    from torch import nn

    steps = _checked_steps(spec)
    if not isinstance(baseline, nn.Module):
        raise ConfigError(f"build_variant needs a torch.nn.Module baseline, not {type(baseline).__name__}")
    if not isinstance(ctx, RecipeContext):
        raise ConfigError(f"build_variant needs a RecipeContext, not {type(ctx).__name__}")
    for info, _, _ in steps:
        if info.trains and not ctx.can_train:
            raise ConfigError(f"recipe {info.name!r} trains, so it needs train_fn or train_data in the RecipeContext")
    if len(steps) > 1 and ctx.teacher is None:
        ctx = replace(ctx, teacher=copy.deepcopy(baseline).eval())
    window = step_window or (lambda index, text: contextlib.nullcontext())
    model, made = copy.deepcopy(baseline).eval(), []
    for index, (info, arg, keep) in enumerate(steps):
        step = format_step(info.name, arg, keep)
        with window(index, step):
            out = info.build(model, arg, replace(ctx, keep_layers=keep) if keep != ctx.keep_layers else ctx)
            model, details = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
            if not isinstance(model, nn.Module):
                raise ConfigError(f"recipe {info.name!r} returned {type(model).__name__}, not a torch.nn.Module")
            model.eval()
        made.append(Recipe(info.name, arg, info.trains, info.description, dict(details), keep=keep))
    if len(made) == 1:
        model.recipe = made[0]
    else:
        whole = STEP_SEPARATOR.join(r.spec for r in made)
        model.recipe = Recipe(whole, None, any(r.trains for r in made), ", then ".join(r.description for r in made),
                              steps=tuple(made))
    return model


if __name__ == "__main__":
    print(format_recipes())
