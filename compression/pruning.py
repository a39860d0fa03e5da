"""Pruning: unstructured magnitude pruning (``PruneConfig``) and structured channel pruning (``ChannelPruneConfig``).

* **Unstructured** pruning zeroes the smallest-magnitude weights of the prunable layers (``torch.nn.utils.prune``),
  across all of them at once (``scope="global"``) or layer by layer (``scope="layer"``), then bakes the masks
  into the weights: no hooks, no ``weight_orig`` or ``weight_mask`` are left. The tensors keep their shapes, so
  the model is no smaller or faster on dense kernels; the zeros are what sparse storage or kernels can use.
  With ``sparse_execution="auto"`` each pruned Linear layer is timed dense and on PyTorch's sparse kernels
  (:mod:`greenmeter.compression.sparse`) and runs sparse where that measured faster here; the details' flags say
  which layers do, or that the model runs dense kernels (its MACs and energy are the dense model's).
* **Structured** pruning physically removes whole output channels of Conv layers (with their BatchNorm entries
  and the next layer's matching inputs) and hidden Linear neurons, so the model is really smaller and faster.
  Which channels must go together (a residual add ties every conv that feeds it) comes from Torch-Pruning's
  dependency graph (DepGraph), traced by running the model once on ``example_input``. The layers that produce
  the model's output are never pruned, so the output shape is unchanged.

Both run on ``compress``'s private copy of the model; the caller's model is left as it was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn.utils import prune

from greenmeter._checks import choice, fraction, module_names, whole_number
from greenmeter._errors import CompressionError, ConfigError, UnsupportedModelError
from greenmeter.compression._core import compress
from greenmeter.compression.registry import (
    FactsHooks, RecipeSpec, check_kept_layers, recipe_fraction, register_method,
)
from greenmeter.compression.sparse import SparseLinear, count_sparse_weights, dense_kernel_details, use_sparse_kernels

if TYPE_CHECKING:
    from greenmeter.comparison.recipes import RecipeContext

__all__ = ["ChannelPruneConfig", "PruneConfig", "channel_unprunable_layers", "sparsity"]

DEFAULT_LAYER_TYPES: tuple[str, ...] = ("Linear", "Conv2d")
#: The values of ``sparse_execution``: run pruned Linear layers on sparse kernels where measured faster, or never.
SPARSE_EXECUTION = ("off", "auto")

# Layers with parameters that Torch-Pruning prunes along with their channels (each checked on torch 2.13 here).
_STRUCTURED_SUPPORTED = (
    nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm, nn.PReLU,
)


def check_scope(owner: str, value: Any) -> str:
    if value not in ("global", "layer"):
        raise ConfigError(
            f"{owner} must be 'global' (one magnitude threshold across all layers) or 'layer', got {value!r}"
        )
    return str(value)


def check_layer_types(owner: str, value: Any) -> tuple[str, ...]:
    """Normalise layer types (class names or ``nn.Module`` subclasses) to a non-empty tuple of class names."""
    items = (value,) if isinstance(value, (str, type)) else value
    try:
        names = tuple(v.__name__ if isinstance(v, type) else v for v in items)
    except TypeError:
        names = ()
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{owner} must be layer class names such as ('Linear', 'Conv2d'), got {value!r}")
    return names


def prunable_layers(model: nn.Module, layer_types: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module whose class (or a base class) is named in ``layer_types`` and has a weight."""
    wanted = set(layer_types)
    found = []
    for name, module in model.named_modules():
        if not wanted.intersection(cls.__name__ for cls in type(module).__mro__):
            continue
        if isinstance(getattr(module, "weight_orig", None), torch.Tensor) or isinstance(
            getattr(module, "weight", None), torch.Tensor
        ):
            found.append((name or type(module).__name__, module))
    return found


def _effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight as the forward pass sees it (``weight_orig * weight_mask`` while prune masks are attached)."""
    if hasattr(module, "weight_mask") and hasattr(module, "weight_orig"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def no_layers_error(method: str, model: nn.Module, layer_types: Iterable[str]) -> UnsupportedModelError:
    present = sorted({type(m).__name__ for m in model.modules() if not list(m.children())}) or ["no layers"]
    return UnsupportedModelError(
        f"{method} found nothing to prune in {type(model).__name__}: it looks for layers of type "
        f"{', '.join(layer_types)} that have a weight tensor (layer_types), and the model has only "
        f"{', '.join(present)}. Pass layer_types naming the layers to prune."
    )


def layer_sparsity(layers: list[tuple[str, nn.Module]]) -> tuple[float, int, int, dict[str, float]]:
    zeros = total = 0
    per_layer = {}
    for name, module in layers:
        weight = _effective_weight(module)
        z, n = int((weight == 0).sum()), weight.numel()
        zeros, total = zeros + z, total + n
        per_layer[name] = z / n if n else 0.0
    return (zeros / total if total else 0.0), zeros, total, per_layer


def sparsity(model: nn.Module, layer_types: Iterable[str] = DEFAULT_LAYER_TYPES) -> float:
    """Fraction of exactly-zero weights among the weights of the layers named in ``layer_types``.

    Biases, BatchNorm and other layers are not counted. While ``torch.nn.utils.prune`` masks are attached the
    masked weight (``weight_orig * weight_mask``) is counted. Does not change the model.

    Raises:
        UnsupportedModelError: the model has no layer of those types.
    """
    types = check_layer_types("layer_types", layer_types)
    layers = prunable_layers(model, types)
    if not layers:
        raise no_layers_error("sparsity()", model, types)
    return layer_sparsity(layers)[0]


@dataclass(frozen=True)
class PruneConfig:
    """Unstructured magnitude pruning to a target sparsity.

    Args:
        sparsity: fraction of the prunable weights set to zero, in [0, 1).
        scope: ``"global"`` ranks all prunable weights together (layers end up with different sparsities);
            ``"layer"`` prunes each layer to ``sparsity`` on its own.
        layer_types: class names of the layers whose ``weight`` is pruned (subclasses count too).
        keep_layers: qualified module names (as in ``model.named_modules()``, e.g. ``("0", "classifier.2")``) of
            prunable layers left as they are: out of the ranking, their weights untouched; ``sparsity`` applies
            to the weights of the other layers. Each must be a layer of ``layer_types`` (checked when the model
            is known), and not all of them.
        sparse_execution: ``"off"``: the pruned weights stay in dense tensors and run dense kernels (the details'
            flags say so); ``"auto"``: each pruned Linear layer is timed dense and on sparse kernels (CSR, or BSR
            where the zeros come in blocks) at ``sparse_batch`` rows and the current thread count, and replaced by
            a :class:`~greenmeter.compression.sparse.SparseLinear` where that measured at least 10% faster
            (:func:`~greenmeter.compression.sparse.use_sparse_kernels`; on a 2-vCPU VM, a 4096-wide layer paid
            from 70-90% sparsity, a 1024-wide one from 80-95%, the higher figure at batch 1). The decisions,
            with their times, go into the details.
        sparse_batch: rows per forward call to time the layers at when ``sparse_execution="auto"`` (the batch
            size, times the sequence length where Linear layers see every token), >= 1.
    """

    sparsity: float
    scope: Literal["global", "layer"] = "global"
    layer_types: tuple[str, ...] = DEFAULT_LAYER_TYPES
    keep_layers: tuple[str, ...] = ()
    sparse_execution: Literal["off", "auto"] = "off"
    sparse_batch: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", fraction("PruneConfig.sparsity", self.sparsity, high_open=True,
                                                      note="the fraction removed"))
        object.__setattr__(self, "scope", check_scope("PruneConfig.scope", self.scope))
        object.__setattr__(self, "layer_types", check_layer_types("PruneConfig.layer_types", self.layer_types))
        object.__setattr__(self, "keep_layers", module_names("PruneConfig.keep_layers", self.keep_layers))
        choice("PruneConfig.sparse_execution", self.sparse_execution, SPARSE_EXECUTION)
        whole_number("PruneConfig.sparse_batch", self.sparse_batch, minimum=1)


def run_pruned(model: nn.Module, pruned: list[tuple[str, nn.Module]], mode: str, batch: int
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The pruned model, its pruned Linear layers on sparse kernels where measured faster (``mode="auto"``),
    and the details saying how it runs (``flags`` included); ``mode="off"`` leaves it dense and says so."""
    if mode == "off":
        return model, dense_kernel_details("off")
    ids = {id(m) for _, m in pruned if type(m) is nn.Linear}
    names = [name or "(model)" for name, m in model.named_modules() if id(m) in ids]
    if not names:
        return model, dense_kernel_details("auto", batch)
    return use_sparse_kernels(model, batch, layers=names)


def layers_to_prune(owner: str, method: str, model: nn.Module, layers: list[tuple[str, nn.Module]],
                    keep: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """The prunable ``layers`` less those named in ``keep``, after checking each kept name is one of them.

    Raises:
        ConfigError: a kept name is no prunable layer of the model, or every prunable layer is kept
            (:func:`~greenmeter.compression.registry.check_kept_layers`).
    """
    check_kept_layers(owner, method, model, keep, [name for name, _ in layers])
    return [(name, m) for name, m in layers if name not in keep]


_PRUNE_HELP = "S, the fraction of Linear/Conv weights set to zero, a number in [0, 1) (default 0.5)"


_prune_arg = functools.partial(recipe_fraction, "prune", default=0.5, expected=_PRUNE_HELP)


def _prune_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    s = _prune_arg(arg)
    return compress(model, PruneConfig(sparsity=s, keep_layers=ctx.keep_layers)), {"sparsity": s}


# facts: a SparseLinear keeps its weights in buffers, counted by its hook (whatever method made it)
@register_method("prune", PruneConfig, facts=FactsHooks(count_weights={SparseLinear: count_sparse_weights}),
                 recipe=RecipeSpec(
    "prune", _prune_recipe, trains=False, arg_help=_PRUNE_HELP, parse_arg=_prune_arg, keeps_layers=True,
    description="unstructured global magnitude pruning (weights zeroed, shapes kept)"))
def _prune(model: nn.Module, config: PruneConfig) -> tuple[nn.Module, dict[str, Any]]:
    layers = prunable_layers(model, config.layer_types)
    if not layers:
        raise no_layers_error("prune (PruneConfig)", model, config.layer_types)
    pruned = layers_to_prune("PruneConfig.keep_layers", "pruning (PruneConfig)", model, layers, config.keep_layers)
    params = [(module, "weight") for _, module in pruned]
    if config.sparsity > 0:
        if config.scope == "global":
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=config.sparsity)
        else:
            for module, name in params:
                prune.l1_unstructured(module, name, amount=config.sparsity)
    for module, name in params:
        if prune.is_pruned(module):
            prune.remove(module, name)  # bake the mask into the weight: no hooks, weight_orig or weight_mask left
    real, zeros, total, per_layer = layer_sparsity(layers)
    model, execution = run_pruned(model, pruned, config.sparse_execution, config.sparse_batch)
    details = {
        "scope": config.scope,
        "requested_sparsity": config.sparsity,
        "sparsity": real,
        "zero_weights": zeros,
        "prunable_weights": total,
        "layer_sparsity": per_layer,
        **execution,
    }
    return model, details


@dataclass(frozen=True, eq=False)  # holds tensors: two configs are equal only if they are the same object
class ChannelPruneConfig:
    """Structured pruning that physically removes a fraction of channels and neurons (via Torch-Pruning).

    Args:
        ratio: fraction of the output channels (Conv) and hidden neurons (Linear) removed from every prunable
            layer, in [0, 1). Parameters shrink by about ``(1 - ratio) ** 2`` where both sides of a weight shrink.
        example_input: one batch shaped like the model's input (a tensor, a tuple of positional inputs, or a dict
            of keyword inputs such as a tokenizer's ``input_ids`` and ``attention_mask``);
            required: the model is run on it once to trace which channels depend on each other.
        importance: channel score, the ``"l2"`` or ``"l1"`` norm of the channel's weights across its group.
        fine_tune: the user's training function, called as ``fine_tune(model)`` on the pruned model to train it
            in place (compression never owns data). ``None`` skips fine-tuning.
        ignored_layers: qualified module names (as in ``model.named_modules()``) whose outputs are kept whole
            (the ``keep_layers`` of the other methods; the ``channels`` recipe's ``[keep=...]``): layers whose
            channels it would remove (Conv, Linear), layers it cannot follow, or modules holding them. A
            normalisation layer follows its conv and cannot be kept on its own; a module without parameters is
            refused, as it has nothing to keep. The layers producing the model's output are always kept whole.
        layer_ratios: per-layer fractions removed instead of ``ratio``, by qualified module name of a Conv or
            Linear layer whose output channels it would remove (``{"features.3": 0.75}``), each in [0, 1): for
            layers that tolerate more pruning than the rest (``greenmeter optimize`` proposes them from the
            per-layer sensitivity). A layer kept whole or producing the model's output is refused.
    """

    ratio: float
    example_input: torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor] | None = None
    importance: Literal["l2", "l1"] = "l2"
    fine_tune: Callable[[nn.Module], None] | None = None
    ignored_layers: tuple[str, ...] = ()
    layer_ratios: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", fraction("ChannelPruneConfig.ratio", self.ratio, high_open=True,
                                                   note="the fraction removed"))
        inputs = self.example_input
        if inputs is None:
            raise ConfigError(
                "ChannelPruneConfig needs example_input: one batch shaped like the model's input, e.g. "
                "torch.zeros(1, 1, 8, 8). The model is run on it once to trace which channels depend on each "
                "other (a residual add ties the channels of every conv that feeds it)."
            )
        if not isinstance(inputs, torch.Tensor) and not (
            isinstance(inputs, (tuple, list, Mapping)) and inputs
            and all(isinstance(t, torch.Tensor) for t in (inputs.values() if isinstance(inputs, Mapping) else inputs))
        ):
            raise ConfigError(
                "ChannelPruneConfig.example_input must be a tensor, a tuple of tensors (model(*inputs)) or a dict of "
                f"tensors (model(**inputs)), got {type(inputs).__name__}"
            )
        if isinstance(inputs, list):
            object.__setattr__(self, "example_input", tuple(inputs))
        elif isinstance(inputs, Mapping):
            object.__setattr__(self, "example_input", dict(inputs))
        if self.importance not in ("l2", "l1"):
            raise ConfigError(f"ChannelPruneConfig.importance must be 'l2' or 'l1', got {self.importance!r}")
        if self.fine_tune is not None and not callable(self.fine_tune):
            raise ConfigError("ChannelPruneConfig.fine_tune must be a callable fine_tune(model) or None")
        ignored = (self.ignored_layers,) if isinstance(self.ignored_layers, str) else tuple(self.ignored_layers)
        if not all(isinstance(n, str) for n in ignored):
            raise ConfigError(
                f"ChannelPruneConfig.ignored_layers must be module names (str), got {self.ignored_layers!r}"
            )
        object.__setattr__(self, "ignored_layers", ignored)
        if not isinstance(self.layer_ratios, Mapping):
            raise ConfigError("ChannelPruneConfig.layer_ratios must map module names to fractions, e.g. "
                              f"{{'features.3': 0.75}}, not {type(self.layer_ratios).__name__}")
        ratios = {}
        for name, value in self.layer_ratios.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"ChannelPruneConfig.layer_ratios keys must be module names, got {name!r}")
            if name in ignored:
                raise ConfigError(f"ChannelPruneConfig.layer_ratios names {name!r}, which ignored_layers keeps "
                                  "whole: name it in one of the two")
            ratios[name] = fraction(f"ChannelPruneConfig.layer_ratios[{name!r}]", value, high_open=True,
                                    note="the fraction removed")
        object.__setattr__(self, "layer_ratios", ratios)


def _inputs(config: ChannelPruneConfig) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
    inputs = config.example_input
    if isinstance(inputs, dict):
        return inputs
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)  # type: ignore[arg-type]


def _output_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _output_tensors(item)]
    return []


def _trace_run(
    model: nn.Module, inputs: tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
) -> tuple[list[tuple[str, nn.Module]], list[nn.Module], Any]:
    """Run the model once: the modules in execution order, the layers that produce an output, the output."""
    from greenmeter.comparison.batches import call_model  # model(**inputs) for a dict, model(*inputs) for a tuple

    names = {m: (n or type(m).__name__) for n, m in model.named_modules()}
    executed: list[tuple[nn.Module, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: executed.append((mod, out))) for m in model.modules()]
    try:
        with torch.no_grad():
            out = call_model(model, inputs)
    except Exception as err:
        raise ConfigError(
            f"the model does not run on ChannelPruneConfig.example_input: {type(err).__name__}: {err}"
        ) from err
    finally:
        for hook in hooks:
            hook.remove()
    outputs = {id(t) for t in _output_tensors(out)}
    weighted = [m for m, _ in executed if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    heads = [m for m, o in executed if m in weighted and isinstance(o, torch.Tensor) and id(o) in outputs]
    if not heads and weighted:  # the output went through a reshape or softmax: keep the last Linear (or conv) whole
        linears = [m for m in weighted if isinstance(m, nn.Linear)]
        heads = [(linears or weighted)[-1]]
    seen: dict[nn.Module, str] = {}
    for module, _ in executed:
        seen.setdefault(module, names.get(module, type(module).__name__))
    return [(name, m) for m, name in seen.items()], heads, out


def _widths(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = {"in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
    return out


def channel_unprunable_layers(model: nn.Module) -> list[str]:
    """The modules of ``model`` that channel pruning cannot prune and must be told to keep whole
    (``ChannelPruneConfig(ignored_layers=...)``, the recipe's ``[keep=...]``): those holding parameters of their
    own that are not Conv, Linear or normalisation layers (an ``nn.Embedding``, an ``nn.MultiheadAttention``),
    outermost first, none inside another listed one. Channel pruning then prunes the rest (a transformer layer's
    feed-forward width)."""
    out: list[str] = []
    inside: set[int] = set()
    for name, module in model.named_modules():
        if id(module) not in inside and _unprunable(module):
            out.append(name or "(model)")
            inside.update(id(m) for m in module.modules())
    return out


def _unprunable(module: nn.Module) -> bool:
    """Whether ``module`` holds parameters of its own that Torch-Pruning is not trusted with here."""
    return any(True for _ in module.parameters(recurse=False)) and not isinstance(module, _STRUCTURED_SUPPORTED)


def _check_layers(method: str, executed: list[tuple[str, nn.Module]], ignored: list[nn.Module]) -> None:
    """Refuse a layer with parameters that Torch-Pruning is not trusted with here, unless the user keeps it whole."""
    kept = {id(m) for layer in ignored for m in layer.modules()}
    for name, module in executed:
        if _unprunable(module) and id(module) not in kept:
            raise UnsupportedModelError(
                f"{method} cannot prune layer {name!r} ({type(module).__name__}): it handles Conv, Linear and "
                f"normalisation layers. List {name!r} in ignored_layers to keep its channels as they are."
            )


def _remove_channels(model: nn.Module, config: ChannelPruneConfig, method: str) -> list[str]:
    """Trace the model (in eval mode), remove channels in place; returns the names of the layers kept whole."""
    try:
        import torch_pruning as tp
    except ImportError as err:
        raise CompressionError(
            f"{method} needs Torch-Pruning, which is not installed here: pip install torch-pruning"
        ) from err
    from greenmeter.comparison.batches import call_model  # model(**inputs) for a dict, model(*inputs) for a tuple

    inputs = _inputs(config)
    by_name = dict(model.named_modules())
    followers = tuple(t for t in _STRUCTURED_SUPPORTED if t not in (nn.modules.conv._ConvNd, nn.Linear))
    keepable = [n for n, m in by_name.items() if n and not isinstance(m, followers) and any(True for _ in m.parameters())]
    check_kept_layers("ChannelPruneConfig.ignored_layers", "channel pruning", model, config.ignored_layers, keepable)
    ignored = [by_name[n] for n in config.ignored_layers]
    model.eval()  # tracing must not move BatchNorm running statistics
    executed, heads, before_out = _trace_run(model, inputs)
    _check_layers(method, executed, ignored)
    if not any(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m not in heads for _, m in executed):
        raise no_layers_error(method, model, ("Conv1d/2d/3d", "Linear (other than the output layer)"))
    prunable = [n for n, m in executed
                if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m not in heads and m not in ignored]
    for name in config.layer_ratios:
        if name not in prunable:
            why = "the output layer and kept layers stay whole" if name in by_name else "no such module"
            raise ConfigError(
                f"ChannelPruneConfig.layer_ratios names {name!r}, which is not a layer whose channels channel pruning "
                f"removes in this model ({why}); those are: {', '.join(prunable)}")
    try:
        pruner = tp.pruner.BasePruner(
            model, inputs, importance=tp.importance.MagnitudeImportance(p=2 if config.importance == "l2" else 1),
            pruning_ratio=config.ratio, ignored_layers=ignored + heads,
            pruning_ratio_dict={by_name[n]: r for n, r in config.layer_ratios.items()} or None,
            forward_fn=call_model,  # never let Torch-Pruning unpack a single batch tensor into arguments
        )
        pruner.step()
        del pruner
        with torch.no_grad():
            after_out = call_model(model, inputs)
    except Exception as err:
        raise UnsupportedModelError(
            f"{method} failed inside Torch-Pruning on {type(model).__name__} ({type(err).__name__}: {err}); a layer "
            f"it cannot follow may be in the path: list it in ignored_layers, or prune with PruneConfig instead"
        ) from err
    if [tuple(t.shape) for t in _output_tensors(after_out)] != [tuple(t.shape) for t in _output_tensors(before_out)]:
        raise CompressionError(f"{method} changed the model's output shape; list the output layer in ignored_layers")
    return sorted({n for n, m in executed if m in heads} | set(config.ignored_layers))


def _restore(modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.train(training)


_CHANNELS_HELP = ("R[,NAME=R_NAME...]: R, the fraction of channels and hidden neurons removed from every layer, a "
                  "number in [0, 1) (default 0.5); R_NAME instead for the layer NAME ('channels:0.5,features.3=0.75')")


def _channels_arg(arg: str | None) -> tuple[float, dict[str, float]]:
    """``"0.5,features.3=0.75"`` -> ``(0.5, {"features.3": 0.75})``: the ratio, then per-layer ratios."""
    first, *rest = (None,) if arg is None else [part.strip() for part in arg.split(",")]
    ratio = recipe_fraction("channels", first, default=0.5, expected=_CHANNELS_HELP)
    layers: dict[str, float] = {}
    for part in rest:
        name, eq, value = (t.strip() for t in part.partition("="))
        if not eq or not name or name in layers:
            raise ConfigError(f"recipe 'channels' takes {_CHANNELS_HELP}; {part!r} in 'channels:{arg}' is not "
                              "NAME=R_NAME" + (f" (layer {name!r} is named twice)" if name in layers else ""))
        layers[name] = recipe_fraction("channels", value, default=ratio, expected=_CHANNELS_HELP)
    return ratio, layers


def _channels_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from greenmeter.comparison.batches import first_samples  # one sample of the inputs, in their form (a tuple)

    r, layers = _channels_arg(arg)
    train = ctx.trainer("channels")
    config = ChannelPruneConfig(ratio=r, example_input=first_samples(ctx.example_input, 1),
                                fine_tune=lambda m: train(m, None), ignored_layers=ctx.keep_layers,
                                layer_ratios=layers)
    return compress(model, config), {"ratio": r, **({"layer_ratios": layers} if layers else {}),
                                     **ctx.trainer_details()}


@register_method("channel_prune", ChannelPruneConfig, recipe=RecipeSpec(
    "channels", _channels_recipe, trains=True, arg_help=_CHANNELS_HELP, parse_arg=_channels_arg, keeps_layers=True,
    description="structured pruning: channels and neurons removed, then fine-tuned"))
def _channel_prune(model: nn.Module, config: ChannelPruneConfig) -> tuple[nn.Module, dict[str, Any]]:
    modes = {m: m.training for m in model.modules()}
    params_before, widths_before = sum(p.numel() for p in model.parameters()), _widths(model)
    try:
        kept = _remove_channels(model, config, "channel pruning (ChannelPruneConfig)")
    finally:
        _restore(modes)
    if config.fine_tune is not None:
        config.fine_tune(model)  # handed over in the input model's modes; trains in place
        _restore(modes)  # the result keeps the input model's train/eval modes
    params_after, widths_after = sum(p.numel() for p in model.parameters()), _widths(model)
    kept_layers = {"kept_layers": list(config.ignored_layers)} if config.ignored_layers else {}
    return model, {
        "ratio": config.ratio,
        "importance": config.importance,
        "params_before": params_before,
        "params_after": params_after,
        "param_ratio": params_after / params_before if params_before else 1.0,
        "channels": {n: {"before": w["out"], "after": widths_after.get(n, w)["out"]} for n, w in widths_before.items()},
        "kept_whole": kept,
        "fine_tuned": config.fine_tune is not None,
        **kept_layers,
        **({"layer_ratios": dict(config.layer_ratios)} if config.layer_ratios else {}),
    }
