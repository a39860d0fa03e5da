"""4-bit weight-only quantization with per-group scales and packed storage (two weights a byte).

Each Linear layer's weight is split, row by row, into groups of ``group_size`` input weights; every group
gets its own float32 scale (and, when asymmetric, a float32 offset: the group minimum). The 4-bit codes
are packed two to a ``uint8`` byte, low nibble first, and kept as buffers of :class:`Int4Linear`, so
``state_dict()`` and ``torch.save`` really shrink (about 6.4x for the weights at ``group_size=32``).
The forward pass unpacks and dequantizes the weight and runs the matmul in float: torchao's int4 kernels
need CUDA, so on the CPU this trades a little latency for memory and disk, and the latency is reported
as measured.

Rows whose length is not a multiple of ``group_size`` are padded with zeros up to the next multiple
(the padding is dropped again before the matmul); ``details["padded_layers"]`` names them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from greenmeter._checks import whole_number
from greenmeter._errors import ConfigError, UnsupportedModelError
from greenmeter.compression._core import compress
from greenmeter.compression.quantization import require_eval
from greenmeter.compression.registry import FactsHooks, RecipeSpec, WeightCount, recipe_number, register_method

if TYPE_CHECKING:
    from torch import Tensor

    from greenmeter.comparison.recipes import RecipeContext

__all__ = ["Int4Linear", "Int4WeightConfig", "pack_int4", "unpack_int4"]


#: The largest group size: rows are padded up to a whole group, so a larger one only wastes memory.
MAX_GROUP_SIZE = 4096


@dataclass(frozen=True)
class Int4WeightConfig:
    """4-bit weight-only quantization of Linear layers.

    Attributes:
        group_size: input weights sharing one scale, 2 to ``MAX_GROUP_SIZE`` (4096; a row shorter than a group
            is padded up to it); smaller is more accurate and a little larger.
        layer_types: layer class names to quantize; only ``("Linear",)`` is supported.
        symmetric: codes -8..7 around zero with a scale only (True), or 0..15 with a scale and an
            offset (False), which fits groups that are not centred on zero better.
    """

    group_size: int = 32
    layer_types: tuple[str, ...] = ("Linear",)
    symmetric: bool = True

    def __post_init__(self) -> None:
        whole_number("group_size", self.group_size, minimum=2, maximum=MAX_GROUP_SIZE)
        types = (self.layer_types,) if isinstance(self.layer_types, str) else tuple(self.layer_types)
        object.__setattr__(self, "layer_types", types)
        if types != ("Linear",):
            raise ConfigError(
                f"int4 weight-only quantization supports layer_types=('Linear',) only, not {types!r}; "
                "use StaticQuantConfig for conv layers"
            )
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"symmetric must be True or False, not {self.symmetric!r}")


def pack_int4(codes: Tensor) -> Tensor:
    """Pack 4-bit codes (integers 0..15, any shape) into a flat uint8 tensor of ``ceil(numel / 2)`` bytes.

    Code ``2i`` goes to the low nibble of byte ``i`` and code ``2i + 1`` to its high nibble; an odd count
    leaves the last high nibble zero. Does not change ``codes``.
    """
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 15):
        raise ValueError("pack_int4 needs codes in 0..15")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_int4`: the first ``numel`` codes as a flat uint8 tensor."""
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)
    return codes[:numel]


class Int4Linear(nn.Module):
    """A Linear layer whose weight is stored as packed 4-bit codes with per-group float32 scales.

    Buffers: ``qweight`` (uint8, ``ceil(out * padded_in / 2)`` bytes), ``scales`` (``[out, groups]``),
    ``zeros`` (``[out, groups]`` group offsets, asymmetric only) and ``bias`` (float, if any).
    """

    def __init__(
        self, in_features: int, out_features: int, group_size: int = 32, symmetric: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.symmetric = group_size, symmetric
        self.groups = math.ceil(in_features / group_size)
        numel = out_features * self.groups * group_size
        self.register_buffer("qweight", torch.zeros(math.ceil(numel / 2), dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, self.groups))
        self.register_buffer("zeros", None if symmetric else torch.zeros(out_features, self.groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32, symmetric: bool = True) -> Int4Linear:
        """Quantize ``linear``'s weight (the Linear itself is not changed)."""
        out = cls(linear.in_features, linear.out_features, group_size, symmetric, linear.bias is not None)
        w = linear.weight.detach().to(torch.float32)
        pad = out.groups * group_size - linear.in_features
        groups = F.pad(w, (0, pad)).reshape(linear.out_features, out.groups, group_size)
        if symmetric:
            scales = groups.abs().amax(dim=-1) / 7.0
            scales = torch.where(scales > 0, scales, torch.ones_like(scales))
            codes = torch.clamp(torch.round(groups / scales[..., None]), -8, 7) + 8
        else:
            low, high = groups.amin(dim=-1), groups.amax(dim=-1)
            scales = (high - low) / 15.0
            scales = torch.where(scales > 0, scales, torch.ones_like(scales))
            codes = torch.clamp(torch.round((groups - low[..., None]) / scales[..., None]), 0, 15)
            out.zeros.copy_(low)
        out.qweight.copy_(pack_int4(codes.to(torch.uint8)))
        out.scales.copy_(scales)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach())
        return out

    def dequantize_weight(self) -> Tensor:
        """The float32 weight ``[out_features, in_features]`` these codes stand for."""
        shape = (self.out_features, self.groups, self.group_size)
        codes = unpack_int4(self.qweight, math.prod(shape)).reshape(shape).to(torch.float32)
        if self.symmetric:
            w = (codes - 8.0) * self.scales[..., None]
        else:
            w = codes * self.scales[..., None] + self.zeros[..., None]
        return w.reshape(self.out_features, -1)[:, : self.in_features]

    def forward(self, x: Tensor) -> Tensor:
        weight = self.dequantize_weight().to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
            f"group_size={self.group_size}, symmetric={self.symmetric}, bias={self.bias is not None}"
        )


def _nbytes(t: Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _int4_weights(module: Int4Linear) -> WeightCount:
    """``out_features * in_features`` weights (the codes standing for real weights: the zero padding of a row
    and a spare nibble are stored but not counted), non-zero where dequantized ``!= 0``, and the bias."""
    nonzero = int(torch.count_nonzero(module.dequantize_weight()))
    bias = () if module.bias is None else (module.bias,)
    return WeightCount(module.out_features * module.in_features, nonzero, bias)


_INT4_HELP = f"G, the group size (input weights sharing one scale), an integer in [2, {MAX_GROUP_SIZE}] (default 32)"


def _int4_arg(arg: str | None) -> int:
    return int(recipe_number("int4", arg, 32, _INT4_HELP, lambda v: 2 <= v <= MAX_GROUP_SIZE and v == int(v)))


def _int4_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    g = _int4_arg(arg)
    return compress(model, Int4WeightConfig(group_size=g)), {"group_size": g}


# quantized: the MACs of a model with int4 layers are still counted directly (they run a float matmul);
# the baseline is passed as the float equivalent in case other layers run uncountable kernels
@register_method("int4_weight", Int4WeightConfig,
                 facts=FactsHooks(quantized=True, count_weights={Int4Linear: _int4_weights}),
                 recipe=RecipeSpec("int4", _int4_recipe, trains=False, arg_help=_INT4_HELP, parse_arg=_int4_arg,
                                   description="4-bit weight-only quantization of Linear layers "
                                               "(packed, per-group scales)"))
def _int4(model: nn.Module, config: Int4WeightConfig) -> tuple[nn.Module, Mapping[str, Any]]:
    require_eval(model, "int4 weight-only quantization")
    holder = nn.Sequential(model)  # so that a bare Linear root is replaced too
    done: dict[int, Int4Linear] = {}  # a Linear shared between places stays shared
    skipped: list[str] = []
    float_bytes = 0
    padded: list[str] = []
    for parent_name, parent in list(holder.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            full = f"{parent_name}.{child_name}".split(".", 1)[1] if parent_name else "(model)"
            if isinstance(parent, nn.MultiheadAttention):  # it reads out_proj.weight directly
                skipped.append(full)
                continue
            if id(child) not in done:
                done[id(child)] = Int4Linear.from_linear(child, config.group_size, config.symmetric)
                float_bytes += _nbytes(child.weight)
                if child.in_features % config.group_size:
                    padded.append(full)
            setattr(parent, child_name, done[id(child)])
    if not done:
        raise UnsupportedModelError(
            f"int4 weight-only quantization found no Linear layer in {type(model).__name__}"
        )
    layers = list(done.values())
    packed = sum(_nbytes(m.qweight) for m in layers)
    scale_bytes = sum(_nbytes(m.scales) + _nbytes(m.zeros) for m in layers)
    return holder[0], {
        "bits": 4,
        "group_size": config.group_size,
        "symmetric": config.symmetric,
        "layers": len(layers),
        "packed_bytes": packed,
        "scale_bytes": scale_bytes,
        "float_bytes": float_bytes,
        "weight_ratio": round(float_bytes / (packed + scale_bytes), 3),
        "padded_layers": padded,
        "skipped_layers": skipped,
        "api": "greenmeter Int4Linear (own packing; dequantizes in float on each forward)",
    }
