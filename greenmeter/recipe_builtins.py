"""The built-in recipes of :mod:`greenmeter.recipes` (prune, channels, ticket, int8-dynamic, int8-static,
int4, qat, distill, early-exit), registered when ``greenmeter.recipes`` is imported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError, UnsupportedModelError
from greenmeter.recipes import RecipeContext, register_recipe

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["exit_positions"]


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
