"""A small third-party-style compression method for the registry tests: Linear weights frozen as float16 buffers.

``FrozenLinear`` keeps its weight as a float16 buffer, where ``model.parameters()`` does not see it, so
:func:`greenmeter.comparison.facts.parameter_counts` counts it only through the method's ``count_weights``
hook. The ``data_macs`` hook reports a fixed, recognisable figure. Nothing is registered on import:
``with frozen_method():`` registers the method (and its recipe ``test-freeze``) for the block only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from greenmeter.compression import compress, register_method
from greenmeter.compression.registry import (
    DataMacs,
    FactsHooks,
    RecipeSpec,
    WeightCount,
    recipe_number,
    unregister_method,
)

METHOD, RECIPE = "test_freeze", "test-freeze"
HOOK_MACS = DataMacs(1234.5, "test hook: a fixed figure", "counted by the test method's data_macs hook")
ARG_HELP = "B, the bits of the frozen weights: 16 (default) or 32"


class FrozenLinear(nn.Module):
    """A Linear layer whose weight is a float16 buffer (not a parameter) and whose bias is a parameter."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("frozen_weight", linear.weight.detach().to(dtype).clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.frozen_weight.to(x.dtype), self.bias)


@dataclass(frozen=True)
class FreezeConfig:
    bits: int = 16


def _count(module: FrozenLinear) -> WeightCount:
    weight = module.frozen_weight
    return WeightCount(weight.numel(), int(torch.count_nonzero(weight)),
                       () if module.bias is None else (module.bias,))


def _build(model: nn.Module, arg: str | None, ctx: Any) -> tuple[nn.Module, dict[str, int]]:
    bits = int(recipe_number(RECIPE, arg, 16, ARG_HELP, lambda v: v in (16, 32)))
    return compress(model, FreezeConfig(bits)), {"bits": bits}


def _freeze(model: nn.Module, config: FreezeConfig) -> tuple[nn.Module, dict[str, Any]]:
    dtype = torch.float16 if config.bits == 16 else torch.float32
    frozen = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, FrozenLinear(child, dtype))
                frozen += 1
    return model, {"frozen_layers": frozen, "bits": config.bits}


def _data_macs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DataMacs:
    return HOOK_MACS


SPEC = RecipeSpec(RECIPE, _build, trains=False, arg_help=ARG_HELP, description="Linear weights frozen as buffers")
HOOKS = FactsHooks(count_weights={FrozenLinear: _count}, data_macs=_data_macs)


@contextlib.contextmanager
def frozen_method() -> Iterator[None]:
    """Register the method with its recipe and facts hooks for the block; unregister it after."""
    register_method(METHOD, FreezeConfig, recipe=SPEC, facts=HOOKS)(_freeze)
    try:
        yield
    finally:
        unregister_method(METHOD)
