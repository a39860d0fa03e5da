"""Recipes: named, parameterised ways to build a compressed variant from a baseline model.

A recipe spec is ``name`` or ``name:arg`` (``"prune:0.5"``, ``"int8-dynamic"``, ``"early-exit:auto"``).
:func:`build_variant` looks the name up in a registry, builds the variant from a private copy of the baseline
(the baseline itself is never changed) and attaches a :class:`Recipe` as ``variant.recipe``; variants made by
a compression method keep their ``compression_info`` too. Building does not measure anything: the comparison
harness wraps it in a meter window. Compression code never owns a dataset, so what recipes may use (an example
batch, training data or the user's trainer, validation data) comes in a :class:`RecipeContext`.

Built-in recipes (``registered_recipes()`` lists them with their argument help)::

    prune:S          unstructured global magnitude pruning to sparsity S (default 0.5)     PruneConfig
    channels:R       remove a fraction R of channels/neurons, fine-tune (default 0.5)      ChannelPruneConfig
    ticket:F         lottery ticket keeping a fraction F of the weights (default 0.2)      LotteryTicketConfig
    int8-dynamic     dynamic int8 of Linear/LSTM layers                                    DynamicQuantConfig
    int8-static      static int8, calibrated on the first training batches                 StaticQuantConfig
    int4:G           4-bit weight-only Linear layers, group size G (default 32)            Int4WeightConfig
    qat              quantization-aware fine-tuning, converted to int8                     QATConfig
    distill:W        a student of width W (default 0.5) distilled from the baseline        DistillConfig
    early-exit:T     exits near 1/3 and 2/3 of the compute, threshold T (0.9) or "auto"    EarlyExitConfig

Add your own with :func:`register_recipe` (also a decorator)::

    @register_recipe("prune-layer", trains=False, description="magnitude pruning, each layer on its own",
                     arg_help="S, the sparsity of every layer (default 0.3)")
    def prune_layer(baseline, arg, ctx):   # baseline is a private copy in eval mode: change it freely
        return compress(baseline, PruneConfig(sparsity=float(arg or 0.3), scope="layer"))
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from greenmeter._errors import ConfigError, UnsupportedModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "Recipe", "RecipeContext", "RecipeInfo", "build_variant", "exit_positions", "parse_recipe", "register_recipe",
    "registered_recipes", "unregister_recipe",
]

LossFn = Callable[..., "torch.Tensor"]
#: ``build(baseline_copy, arg, ctx)`` returns the variant, or ``(variant, details)``.
BuildFn = Callable[["nn.Module", Union[str, None], "RecipeContext"], Any]


# ------------------------------------------------------------------------------------------ context

@dataclass(frozen=True, eq=False)  # holds tensors: two contexts are equal only if they are the same object
class RecipeContext:
    """What recipes may use; compression code never owns a dataset, so the caller provides these.

    Args:
        example_input: one batch of inputs (any batch size), to trace the model and size new layers.
        train_data: re-iterable ``(x, y)`` batches (a list, a DataLoader) or a callable returning a fresh
            iterable each time; used by the built-in trainer and for int8-static calibration.
        train_fn: the user's trainer, called as ``train_fn(model, loss_fn, epochs)``: it trains ``model`` in
            place for ``epochs`` epochs with ``loss_fn(model, x, y) -> scalar loss`` (``None`` means
            cross-entropy on ``model(x)``), building its optimiser over ``model.parameters()`` at each call.
            Recipes that train use it when given, else a built-in Adam loop over ``train_data``.
        val_data: held-out ``(x, y)`` tensors for calibrations (the early-exit threshold of ``early-exit:auto``).
        calibration_batches: batches of ``train_data`` that int8-static calibrates on (>= 1).
        fine_tune_epochs: epochs of each training step of a recipe that adjusts trained weights (channels,
            ticket, qat, early-exit heads); passed to ``train_fn`` as ``epochs``.
        train_epochs: epochs of a recipe that trains a new network from scratch (the distill student).
        lr: Adam learning rate of the built-in trainer.
        seed: seed of the built-in trainer, of new layers (students, exit heads) and of re-initialisations.
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

    def __post_init__(self) -> None:
        import torch

        x, data, fn, val = self.example_input, self.train_data, self.train_fn, self.val_data
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or len(x) < 1:
            raise ConfigError("RecipeContext.example_input must be a tensor batch [N, ...] with N >= 1")
        if data is not None and not callable(data) and (isinstance(data, (str, bytes, Iterator))
                                                        or not isinstance(data, Iterable)):
            raise ConfigError(f"RecipeContext.train_data must be re-iterable (x, y) batches (a list, a DataLoader) or "
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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                raise ConfigError(f"RecipeContext.{name} must be an integer{'' if low is None else ' >= 1'}, "
                                  f"got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"RecipeContext.lr must be a number > 0, got {self.lr!r}")

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
            fit(model, loss_fn or _cross_entropy, params, self.train_data, n, self.lr, self.seed)

        return train

    def calibration_inputs(self) -> list[torch.Tensor]:
        """The inputs of the first ``calibration_batches`` batches of ``train_data`` (or ``[example_input]``)."""
        if self.train_data is None:
            return [self.example_input]
        data = self.train_data() if callable(self.train_data) else self.train_data
        inputs = []
        for batch in data:
            inputs.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
            if len(inputs) == self.calibration_batches:
                break
        if not inputs:
            raise ConfigError("RecipeContext.train_data yielded no batches to calibrate on")
        return inputs


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from torch.nn import functional as F

    return F.cross_entropy(model(x), y)


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
    """

    name: str
    arg: str | None
    trains: bool
    description: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The spec text, ``name`` or ``name:arg``."""
        return self.name if self.arg is None else f"{self.name}:{self.arg}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arg": self.arg, "trains": self.trains, "description": self.description,
                "details": dict(self.details)}


@dataclass(frozen=True)
class RecipeInfo:
    """A registered recipe: ``build(baseline_copy, arg, ctx)``, whether it trains, and what its argument means.

    ``arg_help`` is ``None`` for a recipe that takes no argument (``"name:arg"`` is then refused).
    """

    name: str
    build: BuildFn
    trains: bool
    description: str
    arg_help: str | None = None


_RECIPES: dict[str, RecipeInfo] = {}


def parse_recipe(spec: str) -> tuple[str, str | None]:
    """Split a spec: ``"prune:0.5"`` -> ``("prune", "0.5")``, ``"int8-dynamic"`` -> ``("int8-dynamic", None)``.

    Whitespace around the name and the argument is dropped; the name is not looked up here.

    Raises:
        ConfigError: the spec is not a string, has no name, or has an empty argument after ``:``.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"a recipe spec must be a string such as 'prune:0.5', not {type(spec).__name__}")
    name, sep, arg = spec.partition(":")
    name, arg = name.strip(), arg.strip()
    if not name:
        raise ConfigError(f"recipe spec {spec!r} has no recipe name; write name or name:arg, e.g. 'prune:0.5'")
    if sep and not arg:
        raise ConfigError(f"recipe spec {spec!r} has nothing after ':'; write {name!r} for the default argument")
    return name, (arg if sep else None)


def register_recipe(name: str, build: BuildFn | None = None, *, trains: bool, description: str,
                    arg_help: str | None = None) -> Any:
    """Register ``build(baseline, arg, ctx) -> nn.Module`` under ``name``; usable as a decorator without ``build``.

    ``build`` gets a private deep copy of the baseline in eval mode (change it freely), the argument string (or
    ``None``) and the :class:`RecipeContext`; it returns the variant, or ``(variant, details)`` with a mapping
    of plain values for :attr:`Recipe.details`. A recipe with ``trains=True`` is refused before ``build`` runs
    when the context has neither train_fn nor train_data.

    Args:
        name: the spec name: non-empty, without ``:`` or whitespace.
        trains: whether the recipe trains (its making cost then counts as training).
        description: one line for listings and reports.
        arg_help: what the argument means and its default; ``None`` when the recipe takes no argument.

    Returns ``build``, or without it a decorator that registers and returns the function. Raises ConfigError for
    a bad name, a name already registered (see :func:`unregister_recipe`) or a build that is not callable.
    """
    if not isinstance(name, str) or not name or ":" in name or any(c.isspace() for c in name):
        raise ConfigError(f"a recipe name must be a non-empty string without ':' or spaces, got {name!r}")
    if not isinstance(trains, bool):
        raise ConfigError(f"register_recipe: trains must be True or False, got {trains!r}")

    def add(fn: BuildFn) -> BuildFn:
        if not callable(fn):
            raise ConfigError(f"register_recipe: build for {name!r} must be callable as build(baseline, arg, ctx)")
        if name in _RECIPES:
            raise ConfigError(f"a recipe named {name!r} is already registered; unregister_recipe({name!r}) first "
                              "to replace it")
        _RECIPES[name] = RecipeInfo(name, fn, trains, str(description), arg_help)
        return fn

    return add if build is None else add(build)


def unregister_recipe(name: str) -> RecipeInfo:
    """Remove a recipe from the registry and return it (ConfigError if it is not registered)."""
    if name not in _RECIPES:
        raise ConfigError(f"no recipe named {name!r} is registered; registered recipes: {', '.join(sorted(_RECIPES))}")
    return _RECIPES.pop(name)


def registered_recipes() -> dict[str, RecipeInfo]:
    """The registered recipes by name, sorted (a copy: changing it does not change the registry)."""
    return {name: _RECIPES[name] for name in sorted(_RECIPES)}


def build_variant(spec: str, baseline: nn.Module, ctx: RecipeContext) -> nn.Module:
    """Build the variant ``spec`` names from ``baseline``; ``baseline`` is never changed (weights or modes).

    Args:
        spec: ``name`` or ``name:arg`` (see the module docstring for the built-ins).
        baseline: the trained model to start from.
        ctx: what the recipe may use (example batch, training data or trainer, validation data).

    Returns:
        The variant in eval mode, with ``variant.recipe`` (:class:`Recipe`) attached. Built-ins that train or
        make new layers seed torch's global random generator with ``ctx.seed``.

    Raises:
        ConfigError: an unknown recipe (the message lists the registered ones), a bad argument, a recipe that
            trains with neither train_fn nor train_data, a build that returns no module.
        CompressionError: the compression method cannot run on this model or machine (its subclasses say why).
    """
    from torch import nn

    name, arg = parse_recipe(spec)
    info = _RECIPES.get(name)
    if info is None:
        raise ConfigError(f"unknown recipe {name!r}; registered recipes: {', '.join(sorted(_RECIPES))}")
    if arg is not None and info.arg_help is None:
        raise ConfigError(f"recipe {name!r} takes no argument, got {arg!r}; write {name!r}")
    if not isinstance(baseline, nn.Module):
        raise ConfigError(f"build_variant needs a torch.nn.Module baseline, not {type(baseline).__name__}")
    if not isinstance(ctx, RecipeContext):
        raise ConfigError(f"build_variant needs a RecipeContext, not {type(ctx).__name__}")
    if info.trains and not ctx.can_train:
        raise ConfigError(f"recipe {name!r} trains, so it needs train_fn or train_data in the RecipeContext")
    work = copy.deepcopy(baseline).eval()
    out = info.build(work, arg, ctx)
    variant, details = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
    if not isinstance(variant, nn.Module):
        raise ConfigError(f"recipe {name!r} returned {type(variant).__name__}, not a torch.nn.Module")
    variant.eval()
    variant.recipe = Recipe(name, arg, info.trains, info.description, dict(details))
    return variant


# the built-in recipes register themselves on import (kept in their own module)

# ------------------------------------------------------------------------------------------ arguments

def _number(recipe: str, arg: str | None, default: float, expected: str, ok: Callable[[float], bool]) -> float:
    """``arg`` as a number accepted by ``ok``, ``default`` when absent; else ConfigError naming the recipe."""
    if arg is None:
        return default
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if math.isnan(value) or not ok(value):
        raise ConfigError(f"recipe {recipe!r}: bad argument {arg!r}; expected {expected}")
    return value


def _fraction_arg(recipe: str, arg: str | None, default: float, expected: str, zero_ok: bool = True) -> float:
    return _number(recipe, arg, default, expected, lambda v: (0 <= v if zero_ok else 0 < v) and v < 1)


# ------------------------------------------------------------------------------------------ built-ins

_PRUNE_HELP = "S, the fraction of Linear/Conv weights set to zero, a number in [0, 1) (default 0.5)"
_CHANNELS_HELP = "R, the fraction of channels and hidden neurons removed, a number in [0, 1) (default 0.5)"
_TICKET_HELP = "F, the fraction of Linear/Conv weights kept, a number in (0, 1) (default 0.2)"
_INT4_HELP = "G, the group size (input weights sharing one scale), an integer >= 2 (default 32)"
_DISTILL_HELP = "W, the student's width relative to the baseline, a number in (0, 1] (default 0.5)"
_EXIT_HELP = ("T, the exit confidence threshold in (0, 1] (default 0.9), or 'auto' to calibrate it on val_data "
              "(accuracy within 0.5 points of the final exit)")


def _prune(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.compression import PruneConfig, compress

    s = _fraction_arg("prune", arg, 0.5, _PRUNE_HELP)
    return compress(model, PruneConfig(sparsity=s)), {"sparsity": s}


def _channels(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.compression import ChannelPruneConfig, compress

    r = _fraction_arg("channels", arg, 0.5, _CHANNELS_HELP)
    train = ctx.trainer("channels")
    config = ChannelPruneConfig(ratio=r, example_input=ctx.example_input[:1], fine_tune=lambda m: train(m, None))
    return compress(model, config), {"ratio": r, **_trainer_details(ctx)}


def _ticket(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.compression import LotteryTicketConfig, compress

    keep = _fraction_arg("ticket", arg, 0.2, _TICKET_HELP, zero_ok=False)
    # at most half the alive weights per round; the rounds share the pruning equally so the density ends at F
    rounds = max(1, math.ceil(math.log(keep) / math.log(0.5) - 1e-9))
    rate = 1 - keep ** (1 / rounds)
    train = ctx.trainer("ticket")
    config = LotteryTicketConfig(train_fn=lambda m: train(m, None), rounds=rounds, rate=rate, seed=ctx.seed)
    # rewinds to the baseline's trained weights: iterative magnitude pruning with fine-tuning
    return compress(model, config), {"keep": keep, "rounds": rounds, "rate": rate, "rewind": "baseline weights",
                                     **_trainer_details(ctx)}


def _int8_dynamic(model: nn.Module, arg: str | None, ctx: RecipeContext) -> nn.Module:
    from greenmeter.compression import DynamicQuantConfig, compress

    return compress(model, DynamicQuantConfig())


def _int8_static(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.compression import StaticQuantConfig, compress

    inputs = ctx.calibration_inputs()
    source = "example_input" if ctx.train_data is None else "train_data"
    return compress(model, StaticQuantConfig(calibration=inputs)), {
        "calibration": source, "calibration_batches": len(inputs), "calibration_samples": sum(len(x) for x in inputs)}


def _int4(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.compression import Int4WeightConfig, compress

    g = _number("int4", arg, 32, _INT4_HELP, lambda v: v >= 2 and v == int(v))
    return compress(model, Int4WeightConfig(group_size=int(g))), {"group_size": int(g)}


def _qat(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.compression import QATConfig, compress

    train = ctx.trainer("qat")
    return compress(model, QATConfig(train_fn=lambda m: train(m, None))), _trainer_details(ctx)


def _distill(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.compression import DistillConfig, compress, make_student

    w = _number("distill", arg, 0.5, _DISTILL_HELP, lambda v: 0 < v <= 1)
    student = make_student(model, w, seed=ctx.seed)  # model is build_variant's copy: the teacher stays unchanged
    train = ctx.trainer("distill", ctx.train_epochs)
    config = DistillConfig(teacher=model, train_fn=lambda m, loss: train(m, loss), seed=ctx.seed)
    return compress(student, config), {"width": w, **_trainer_details(ctx, ctx.train_epochs)}


def _early_exit(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.compression import EarlyExitConfig, calibrate_threshold, compress

    auto = arg is not None and arg.lower() == "auto"
    if auto and ctx.val_data is None:
        raise ConfigError("recipe 'early-exit:auto' calibrates the threshold on held-out data: give val_data "
                          "in the RecipeContext, or a threshold such as 'early-exit:0.9'")
    threshold = 0.9 if auto else _number("early-exit", arg, 0.9, _EXIT_HELP, lambda v: 0 < v <= 1)
    exits = exit_positions(model, ctx.example_input)
    train = ctx.trainer("early-exit")
    config = EarlyExitConfig(exits_after=exits, example_input=ctx.example_input[:1], threshold=threshold,
                             train_fn=lambda m, loss: train(m, loss), seed=ctx.seed)
    variant = compress(model, config)
    if auto:
        variant.eval()
        variant.threshold = calibrate_threshold(variant, *ctx.val_data)  # type: ignore[misc]
    return variant, {"exits_after": exits, "threshold": variant.threshold, "calibrated": auto,
                     **_trainer_details(ctx)}


def _trainer_details(ctx: RecipeContext, epochs: int | None = None) -> dict[str, Any]:
    return {"trainer": "train_fn" if ctx.train_fn is not None else "built-in",
            "epochs": ctx.fine_tune_epochs if epochs is None else epochs}


def _is_follower(module: nn.Module) -> bool:
    """A layer that belongs with the one before it (norm, activation, dropout): no exit goes in between."""
    kind = type(module).__name__
    return type(module).__module__ == "torch.nn.modules.activation" or kind.startswith(
        ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "Dropout", "LocalResponseNorm"))


def exit_positions(model: nn.Module, example_input: torch.Tensor) -> list[int]:
    """Layer indices after which ``early-exit`` attaches heads: two cuts nearest 1/3 and 2/3 of the backbone's MACs.

    A cut may follow any layer of the ``nn.Sequential`` except the last, where the next layer is not a norm,
    activation or dropout layer (they belong to the layer before) and the features are ``[C, H, W]`` or
    ``[F]``. Of the possible pairs, the one whose cumulative MAC shares are closest (summed distance) to 1/3
    and 2/3 wins; MACs (Conv and Linear layers) are counted on one example sample, and a model without any
    uses the layer count. A model with a single possible cut gets one. Does not change ``model``.

    Raises:
        UnsupportedModelError: the model is not an ``nn.Sequential`` of at least two layers, or has no such cut.
    """
    import torch
    from torch import nn

    if not isinstance(model, nn.Sequential) or len(model) < 2:
        what = f"a {len(model)}-layer nn.Sequential" if isinstance(model, nn.Sequential) else type(model).__name__
        raise UnsupportedModelError(f"recipe 'early-exit' cuts an nn.Sequential backbone of at least two layers "
                                    f"into blocks, and the model is {what}; build exits with EarlyExitConfig instead")
    macs = 0
    cumulative, dims = [], []

    def count(m: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        nonlocal macs
        conv = isinstance(m, nn.modules.conv._ConvNd)
        per_out = m.weight[0].numel() if conv else m.in_features  # type: ignore[union-attr, index]
        macs += int(out.numel() // out.shape[0]) * int(per_out)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        h = example_input[:1]
        with torch.no_grad():
            for layer in model:
                h = layer(h)
                cumulative.append(macs)
                dims.append(h.dim() if isinstance(h, torch.Tensor) else 0)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
    n = len(model)
    cuts = [i for i in range(n - 1) if dims[i] in (2, 4) and not _is_follower(model[i + 1])]
    if not cuts:
        raise UnsupportedModelError(
            f"recipe 'early-exit' found no place for an exit in this {n}-layer nn.Sequential: an exit needs [C, H, W] "
            "or [F] features after a layer that is not followed by its norm, activation or dropout layer")
    total = cumulative[-1]

    def share(i: int) -> float:
        return cumulative[i] / total if total else (i + 1) / n

    if len(cuts) == 1:
        return cuts
    pairs = itertools.combinations(cuts, 2)
    return list(min(pairs, key=lambda p: (abs(share(p[0]) - 1 / 3) + abs(share(p[1]) - 2 / 3), p)))


register_recipe("prune", _prune, trains=False, arg_help=_PRUNE_HELP,
                description="unstructured global magnitude pruning (weights zeroed, shapes kept)")
register_recipe("channels", _channels, trains=True, arg_help=_CHANNELS_HELP,
                description="structured pruning: channels and neurons removed, then fine-tuned")
register_recipe("ticket", _ticket, trains=True, arg_help=_TICKET_HELP,
                description="lottery ticket: iterative magnitude pruning with rewinding and retraining")
register_recipe("int8-dynamic", _int8_dynamic, trains=False,
                description="dynamic int8 quantization of Linear/LSTM layers (int8 kernels)")
register_recipe("int8-static", _int8_static, trains=False,
                description="static int8 quantization, calibrated on the first training batches")
register_recipe("int4", _int4, trains=False, arg_help=_INT4_HELP,
                description="4-bit weight-only quantization of Linear layers (packed, per-group scales)")
register_recipe("qat", _qat, trains=True, description="quantization-aware fine-tuning, converted to int8")
register_recipe("distill", _distill, trains=True, arg_help=_DISTILL_HELP,
                description="knowledge distillation into a thinner student of the same architecture")
register_recipe("early-exit", _early_exit, trains=True, arg_help=_EXIT_HELP,
                description="early exits after about 1/3 and 2/3 of the compute (heads trained, backbone frozen)")
