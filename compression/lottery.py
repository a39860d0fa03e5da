"""Lottery tickets: iterative magnitude pruning with weight rewinding (``LotteryTicketConfig``).

Round ``k`` trains the network with the current masks (``train_fn(model)``, in place), records its sparsity and
accuracy (``eval_fn``), prunes ``rate`` of the weights that are still alive by magnitude, and rewinds the
surviving weights to the rewind point: the model's weights as passed (its initialisation: pass the untrained
model) or ``rewind_state``, weights the user captured early in a training run (late rewinding). After the last
pruning step the ticket is trained once more and the masks are baked into the weights.

The masks are ``torch.nn.utils.prune`` forward-pre-hook masks while training runs: the forward pass uses
``weight_orig * weight_mask``, so a pruned weight is exactly zero at every step of the user's training, whatever
its optimiser does. With ``reinit=True`` the final training starts from fresh random weights instead of the
rewind point, with the same masks: the random-reinitialisation control of Frankle & Carbin (2019).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn.utils import prune

from greenmeter._checks import choice, fraction, module_names, whole_number
from greenmeter._errors import CompressionError, ConfigError, UnsupportedModelError
from greenmeter.compression._core import compress
from greenmeter.compression.pruning import (
    DEFAULT_LAYER_TYPES, SPARSE_EXECUTION, check_layer_types, check_scope, layer_sparsity, layers_to_prune,
    no_layers_error, prunable_layers, run_pruned,
)
from greenmeter.compression.registry import RecipeSpec, recipe_fraction, register_method

if TYPE_CHECKING:
    from greenmeter.comparison.recipes import RecipeContext

__all__ = ["LotteryTicketConfig"]


class _StateSnapshot(Mapping[str, torch.Tensor]):
    """A read-only copy of a state dict (so later training of the user's model cannot move the rewind point)."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self._state = {k: v.detach().clone() for k, v in state.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._state[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return f"<rewind state: {len(self._state)} tensors>"


@dataclass(frozen=True, eq=False)  # holds tensors: two configs are equal only if they are the same object
class LotteryTicketConfig:
    """Iterative magnitude pruning with rewinding (the lottery ticket procedure).

    Args:
        train_fn: the user's training function, ``train_fn(model)``, which trains the model in place. It must
            build its optimiser over ``model.parameters()`` each call (pruned layers then hold ``weight_orig``).
        rounds: pruning steps (>= 1); the model is trained ``rounds + 1`` times.
        rate: fraction of the still-alive weights pruned per round, in (0, 1); the final sparsity is about
            ``1 - (1 - rate) ** rounds`` of the prunable weights.
        rewind_state: a state dict to rewind to after each pruning step (e.g. captured after one epoch of a
            normal run); ``None`` rewinds to the model's weights as passed, so pass the untrained model. It is
            copied when the config is made.
        eval_fn: ``eval_fn(model) -> accuracy`` recorded after each training; ``None`` records no accuracy.
        reinit: random-reinitialisation control: the final training starts from fresh random weights (seeded by
            ``seed``) with the same masks, instead of the rewind point.
        scope: ``"global"`` ranks all prunable weights together, ``"layer"`` prunes each layer by ``rate``.
        layer_types: class names of the layers whose ``weight`` is pruned.
        seed: seed of the random re-initialisation (the global RNG state is left as it was).
        keep_layers: qualified module names (as in ``model.named_modules()``) of prunable layers never pruned:
            out of every round's ranking (they are still trained and rewound); ``rate`` applies to the other
            layers. Each must be a layer of ``layer_types`` (checked when the model is known), and not all of them.
        sparse_execution: ``"off"`` (the ticket's zeros run dense kernels; its flags say so) or ``"auto"`` (its
            pruned Linear layers run on sparse kernels where measured faster here), as in ``PruneConfig``.
        sparse_batch: rows per forward call to time the layers at when ``sparse_execution="auto"``, >= 1.
    """

    train_fn: Callable[[nn.Module], None]
    rounds: int
    rate: float = 0.2
    rewind_state: Mapping[str, torch.Tensor] | None = None
    eval_fn: Callable[[nn.Module], float] | None = None
    reinit: bool = False
    scope: Literal["global", "layer"] = "global"
    layer_types: tuple[str, ...] = DEFAULT_LAYER_TYPES
    seed: int = 0
    keep_layers: tuple[str, ...] = ()
    sparse_execution: Literal["off", "auto"] = "off"
    sparse_batch: int = 1

    def __post_init__(self) -> None:
        if not callable(self.train_fn):
            raise ConfigError("LotteryTicketConfig.train_fn must be a callable train_fn(model) that trains in place")
        whole_number("LotteryTicketConfig.rounds", self.rounds, minimum=1)
        rate = fraction("LotteryTicketConfig.rate", self.rate, low_open=True, high_open=True,
                        note="the share of alive weights pruned per round")
        object.__setattr__(self, "rate", rate)
        if self.rewind_state is not None:
            state = self.rewind_state
            if not isinstance(state, Mapping) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
            ):
                raise ConfigError("LotteryTicketConfig.rewind_state must be a state dict (str -> tensor) or None")
            if not isinstance(state, _StateSnapshot):
                object.__setattr__(self, "rewind_state", _StateSnapshot(state))
        if self.eval_fn is not None and not callable(self.eval_fn):
            raise ConfigError("LotteryTicketConfig.eval_fn must be a callable eval_fn(model) -> accuracy, or None")
        if not isinstance(self.reinit, bool):
            raise ConfigError(f"LotteryTicketConfig.reinit must be True or False, got {self.reinit!r}")
        object.__setattr__(self, "scope", check_scope("LotteryTicketConfig.scope", self.scope))
        object.__setattr__(self, "layer_types", check_layer_types("LotteryTicketConfig.layer_types", self.layer_types))
        whole_number("LotteryTicketConfig.seed", self.seed, minimum=None)
        object.__setattr__(self, "keep_layers", module_names("LotteryTicketConfig.keep_layers", self.keep_layers))
        choice("LotteryTicketConfig.sparse_execution", self.sparse_execution, SPARSE_EXECUTION)
        whole_number("LotteryTicketConfig.sparse_batch", self.sparse_batch, minimum=1)


def _rewind_point(model: nn.Module, given: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    if given is None:
        return {k: v.detach().clone() for k, v in own.items()}
    missing, extra = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    if missing or extra:
        raise ConfigError(f"LotteryTicketConfig.rewind_state does not match the model's state dict: "
                          f"missing {missing[:5]}, unexpected {extra[:5]}")
    wrong = [k for k in own if tuple(own[k].shape) != tuple(given[k].shape)]
    if wrong:
        raise ConfigError(f"LotteryTicketConfig.rewind_state has tensors of the wrong shape for {wrong[:5]}")
    return {k: given[k].detach().clone() for k in own}


def _rewind(model: nn.Module, point: Mapping[str, torch.Tensor]) -> None:
    """Copy ``point`` into the model in place; a pruned layer's weight goes into its ``weight_orig``."""
    live = model.state_dict()
    with torch.no_grad():
        for key, value in point.items():
            target = live.get(f"{key}_orig", live.get(key))
            target.copy_(value)  # type: ignore[union-attr]


def _fresh_init(template: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A new random initialisation of a dense copy (every module with ``reset_parameters``), seeded."""
    fresh = copy.deepcopy(template)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return {k: v.detach().clone() for k, v in fresh.state_dict().items()}


def _prune_step(layers: list[tuple[str, nn.Module]], config: LotteryTicketConfig) -> None:
    """Prune ``rate`` of the still-alive weights by the magnitude of their current (trained) values."""
    scores = {(m, "weight"): m.weight_orig.detach().abs() for _, m in layers}
    if config.scope == "global":
        prune.global_unstructured(list(scores), pruning_method=prune.L1Unstructured, amount=config.rate,
                                  importance_scores=scores)
    else:
        for (module, name), score in scores.items():
            prune.l1_unstructured(module, name, amount=config.rate, importance_scores=score)


def _train(model: nn.Module, layers: list[tuple[str, nn.Module]], config: LotteryTicketConfig) -> float | None:
    config.train_fn(model)
    lost = [name for name, m in layers if not (hasattr(m, "weight_mask") and hasattr(m, "weight_orig"))]
    if lost:
        raise CompressionError(f"lottery_ticket: train_fn removed the pruning masks of {lost}; it must train the "
                               "model in place (optimiser over model.parameters()) and leave torch's prune hooks on")
    if config.eval_fn is None:
        return None
    result = config.eval_fn(model)
    try:
        return float(result)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"LotteryTicketConfig.eval_fn must return a number (accuracy), got {result!r}") from err


_TICKET_HELP = "F, the fraction of Linear/Conv weights kept, a number in (0, 1) (default 0.2)"


_ticket_arg = functools.partial(recipe_fraction, "ticket", default=0.2, expected=_TICKET_HELP, zero_ok=False)


def _ticket_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    keep = _ticket_arg(arg)
    # at most half the alive weights per round; the rounds share the pruning equally so the density ends at F
    rounds = max(1, math.ceil(math.log(keep) / math.log(0.5) - 1e-9))
    rate = 1 - keep ** (1 / rounds)
    train = ctx.trainer("ticket")
    config = LotteryTicketConfig(train_fn=lambda m: train(m, None), rounds=rounds, rate=rate, seed=ctx.seed,
                                 keep_layers=ctx.keep_layers)
    # rewinds to the baseline's trained weights: iterative magnitude pruning with fine-tuning
    return compress(model, config), {"keep": keep, "rounds": rounds, "rate": rate, "rewind": "baseline weights",
                                     **ctx.trainer_details()}


@register_method("lottery_ticket", LotteryTicketConfig, recipe=RecipeSpec(
    "ticket", _ticket_recipe, trains=True, arg_help=_TICKET_HELP, parse_arg=_ticket_arg, keeps_layers=True,
    description="lottery ticket: iterative magnitude pruning with rewinding and retraining"))
def _lottery(model: nn.Module, config: LotteryTicketConfig) -> tuple[nn.Module, dict[str, Any]]:
    layers = prunable_layers(model, config.layer_types)
    if not layers:
        raise no_layers_error("lottery_ticket (LotteryTicketConfig)", model, config.layer_types)
    pruned = layers_to_prune("LotteryTicketConfig.keep_layers", "lottery ticket pruning", model, layers,
                             config.keep_layers)
    already = [name for name, m in layers if prune.is_pruned(m)]
    if already:
        raise UnsupportedModelError(f"lottery_ticket (LotteryTicketConfig): layers {already[:5]} already carry "
                                    "torch.nn.utils.prune masks; bake them in with prune.remove first")
    modes = {m: m.training for m in model.modules()}
    point = _rewind_point(model, config.rewind_state)
    fresh = _fresh_init(model, config.seed) if config.reinit else None
    for _, module in pruned:
        prune.identity(module, "weight")  # every round trains the same structure: weight_orig * weight_mask
    records = []
    for step in range(config.rounds + 1):
        acc = _train(model, pruned, config)
        records.append({"round": step, "sparsity": layer_sparsity(layers)[0], "accuracy": acc})
        if step == config.rounds:
            break
        _prune_step(pruned, config)
        last = step == config.rounds - 1
        _rewind(model, fresh if (last and fresh is not None) else point)
    for _, module in pruned:
        prune.remove(module, "weight")
    for module, training in modes.items():  # the result keeps the input model's train/eval modes
        module.train(training)
    real, zeros, total, per_layer = layer_sparsity(layers)
    model, execution = run_pruned(model, pruned, config.sparse_execution, config.sparse_batch)
    return model, {
        "rounds": records,
        "prune_steps": config.rounds,
        "rate": config.rate,
        "scope": config.scope,
        "target_sparsity": 1 - (1 - config.rate) ** config.rounds,
        "sparsity": real,
        "zero_weights": zeros,
        "prunable_weights": total,
        "layer_sparsity": per_layer,
        "accuracy": records[-1]["accuracy"],
        "rewind": "init" if config.rewind_state is None else "rewind_state",
        "reinit": config.reinit,
        **execution,
    }
