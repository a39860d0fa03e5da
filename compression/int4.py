"""4-bit weight-only quantization with per-group scales, packed storage, and PyTorch's int4 CPU kernel.

Each Linear layer's weight is split, row by row, into groups of ``group_size`` input weights; every group
gets its own scale (and, when asymmetric, a zero point: the weight that code 8 stands for), so that a code
``c`` in 0..15 stands for ``(c - 8) * scale + zero`` (``zero = 0`` when symmetric). Scales and zero points are
bfloat16, the precision PyTorch's int4 kernel reads. The 4-bit codes are packed two to a ``uint8`` byte, low
nibble first, and kept as buffers of :class:`Int4Linear`, so ``state_dict()`` and ``torch.save`` really
shrink (about 7.1x for the weights at ``group_size=32``).

Two ways to run the forward pass, chosen per layer when it is quantized or loaded (``Int4Linear.path``):

* ``"kernel"``: PyTorch's CPU int4 matmul (``aten._weight_int4pack_mm_for_cpu``: bfloat16 activations, the
  4-bit weights unpacked inside the kernel), used where this PyTorch build has it and it computes correctly
  (:func:`probe_int4_kernel` tries it once per process on a small known case), the layer fits it (group size
  32, 64, 128 or 256; ``out_features`` a multiple of 16) and the input is on the CPU. The kernel's weight
  layout depends on the CPU's vector width (AVX-512 and AVX2 builds pack differently), so it is built from the
  portable codes when the layer is made or loaded and is not saved in the state dict.
* ``"dequantize"``: the codes are unpacked and dequantized to float on every call and a float matmul runs:
  smaller weights, the same compute as float plus the unpacking (slower than float on a CPU). Used where
  the kernel is missing or does not fit (``Int4Linear.path_reason`` says why), when ``use_kernel=False``,
  and when the input needs gradients.

Both paths use the same codes, scales and zero points; they differ by the kernel's bfloat16 rounding of the
activations and outputs, well inside the quantization error. Rows whose length is not a multiple of
``group_size`` are padded with zeros up to the next multiple (``details["padded_layers"]`` names them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from greenmeter._checks import module_names, whole_number
from greenmeter._errors import ConfigError, UnsupportedModelError
from greenmeter.compression._core import compress
from greenmeter.compression.quantization import require_eval, unfused_transformer_layers
from greenmeter.compression.registry import (
    FactsHooks, RecipeSpec, WeightCount, check_kept_layers, recipe_number, register_method,
)

if TYPE_CHECKING:
    from torch import Tensor

    from greenmeter.comparison.recipes import RecipeContext

__all__ = ["Int4Linear", "Int4WeightConfig", "int4_paths", "pack_int4", "probe_int4_kernel", "unpack_int4"]


#: The largest group size: rows are padded up to a whole group, so a larger one only wastes memory.
MAX_GROUP_SIZE = 4096
#: The group sizes PyTorch's int4 CPU kernel takes.
KERNEL_GROUP_SIZES = (32, 64, 128, 256)
#: ``out_features`` must be a multiple of this for the kernel (it packs rows in blocks of 16).
KERNEL_ROW_BLOCK = 16
#: The flag of a model whose int4 layers all run dequantized (the words ``compare`` shows).
DEQUANTIZED_FLAG = "int4 runs dequantized here: saves size, not compute"


@dataclass(frozen=True)
class Int4WeightConfig:
    """4-bit weight-only quantization of Linear layers.

    Attributes:
        group_size: input weights sharing one scale, 2 to ``MAX_GROUP_SIZE`` (4096; a row shorter than a group
            is padded up to it); smaller is more accurate and a little larger. PyTorch's int4 CPU kernel takes
            32, 64, 128 or 256 only: other sizes run dequantized.
        layer_types: layer class names to quantize; only ``("Linear",)`` is supported.
        symmetric: codes -8..7 around zero with a scale only (True), or with a scale and a zero point (False),
            which fits groups that are not centred on zero better.
        use_kernel: run PyTorch's int4 CPU kernel where this build has it and a layer fits it (True), or always
            dequantize to float and run a float matmul (False: the same codes, for comparison).
        keep_layers: qualified module names (as in ``model.named_modules()``, e.g. ``("classifier.2",)``) of
            Linear layers left as they are: float ``nn.Linear``. Each must be a Linear this method would
            quantize (checked when the model is known), and not all of them.
    """

    group_size: int = 32
    layer_types: tuple[str, ...] = ("Linear",)
    symmetric: bool = True
    use_kernel: bool = True
    keep_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        whole_number("group_size", self.group_size, minimum=2, maximum=MAX_GROUP_SIZE)
        types = (self.layer_types,) if isinstance(self.layer_types, str) else tuple(self.layer_types)
        object.__setattr__(self, "layer_types", types)
        if types != ("Linear",):
            raise ConfigError(
                f"int4 weight-only quantization supports layer_types=('Linear',) only, not {types!r}; "
                "use StaticQuantConfig for conv layers"
            )
        for name in ("symmetric", "use_kernel"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, not {getattr(self, name)!r}")
        object.__setattr__(self, "keep_layers", module_names("Int4WeightConfig.keep_layers", self.keep_layers))


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


# ------------------------------------------------------------------------------------- the CPU kernel


def _kernel_ops() -> tuple[Any, Any]:
    """PyTorch's int4 CPU ops (pack, matmul); AttributeError where this build has none."""
    aten = torch.ops.aten
    return aten._convert_weight_to_int4pack_for_cpu, aten._weight_int4pack_mm_for_cpu


def _dequantized(codes: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int) -> Tensor:
    """``(codes - 8) * scale + zero`` in float32: codes ``[rows, groups * group_size]``, scales ``[rows, groups]``."""
    rows = codes.shape[0]
    shape = (rows, scales.shape[1], group_size)
    w = (codes.reshape(shape).to(torch.float32) - 8.0) * scales.to(torch.float32)[..., None]
    if zeros is not None:
        w = w + zeros.to(torch.float32)[..., None]
    return w.reshape(rows, -1)


def _scales_and_zeros(scales: Tensor, zeros: Tensor | None) -> Tensor:
    """The kernel's ``[groups, rows, 2]`` bfloat16 table of (scale, zero) from ``[rows, groups]`` tensors."""
    zeros = torch.zeros_like(scales) if zeros is None else zeros
    return torch.stack([scales.t(), zeros.t()], dim=-1).to(torch.bfloat16).contiguous()


@functools.cache
def probe_int4_kernel() -> str | None:
    """Whether PyTorch's int4 CPU kernel can be used in this process: ``None`` if so, else why not, in words.

    Looks the ops up at run time (never from the version number) and runs them once on a small known case
    (16 x 64 weights, two groups of 32), checking the result against the dequantized weights. The answer is
    cached for the process (``probe_int4_kernel.cache_clear()`` asks again).
    """
    try:
        pack, matmul = _kernel_ops()
    except (AttributeError, RuntimeError) as err:
        return f"this PyTorch build ({torch.__version__}) has no int4 CPU kernel ({type(err).__name__}: {err})"
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (16, 64), generator=gen, dtype=torch.int32)
    scales = torch.rand(16, 2, generator=gen).add_(0.5).to(torch.bfloat16)
    zeros = torch.randn(16, 2, generator=gen).to(torch.bfloat16)
    x = torch.randn(3, 64, generator=gen).to(torch.bfloat16)
    try:
        got = matmul(x, pack(codes, 2), 32, _scales_and_zeros(scales, zeros)).to(torch.float32)
    except Exception as err:  # noqa: BLE001 - whatever stops the kernel here is the reason, said in the flag
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"PyTorch's int4 CPU kernel does not run here ({type(err).__name__}: {first})"
    want = x.to(torch.float32) @ _dequantized(codes, scales, zeros, 32).t()
    if got.shape != want.shape or not torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max())):
        return "PyTorch's int4 CPU kernel gave results that differ from the dequantized weights on a test case"
    return None


# ------------------------------------------------------------------------------------------ the layer


def _bf16_at_least(t: Tensor) -> Tensor:
    """``t`` (float32) rounded to bfloat16 values no smaller than it (as float32)."""
    low = t.to(torch.bfloat16)
    up = torch.nextafter(low, torch.full_like(low, math.inf))
    return torch.where(low.to(torch.float32) < t, up, low).to(torch.float32)


class Int4Linear(nn.Module):
    """A Linear layer whose weight is stored as packed 4-bit codes with per-group bfloat16 scales.

    A code ``c`` stands for ``(c - 8) * scale + zero`` (``zero`` is 0 when symmetric). Buffers saved in the
    state dict: ``qweight`` (uint8, ``ceil(out * padded_in / 2)`` bytes, low nibble first), ``scales``
    (``[out, groups]`` bfloat16), ``zeros`` (``[out, groups]`` bfloat16, asymmetric only) and ``bias`` (float,
    if any). Where the layer runs PyTorch's int4 CPU kernel (``path == "kernel"``) it also holds the kernel's
    copy of the codes in its CPU-specific layout (``kernel_weight``) and its scale table
    (``kernel_scales_zeros``): built from the buffers above when the layer is made or loaded, never saved.

    Attributes:
        path: ``"kernel"`` or ``"dequantize"``: how the forward pass runs on a CPU input.
        path_reason: why the layer runs dequantized, in words; ``None`` on the kernel path.
        use_kernel: whether the kernel was asked for (``Int4WeightConfig.use_kernel``).
    """

    _version = 2  # 1: float32 scales and, when asymmetric, zeros holding the group minimum (w = c * s + min)

    def __init__(
        self, in_features: int, out_features: int, group_size: int = 32, symmetric: bool = True,
        bias: bool = True, use_kernel: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.symmetric, self.use_kernel = group_size, symmetric, use_kernel
        self.groups = math.ceil(in_features / group_size)
        numel = out_features * self.groups * group_size
        self.register_buffer("qweight", torch.zeros(math.ceil(numel / 2), dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, self.groups, dtype=torch.bfloat16))
        self.register_buffer("zeros", None if symmetric else torch.zeros(out_features, self.groups,
                                                                          dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("kernel_weight", None, persistent=False)
        self.register_buffer("kernel_scales_zeros", None, persistent=False)
        self.path, self.path_reason = "dequantize", "not quantized yet"

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32, symmetric: bool = True,
                    use_kernel: bool = True) -> Int4Linear:
        """Quantize ``linear``'s weight (the Linear itself is not changed).

        Args:
            linear: the layer to quantize.
            group_size: input weights sharing one scale.
            symmetric: a scale per group only (True), or a scale and a zero point (False).
            use_kernel: run PyTorch's int4 CPU kernel where it is usable and the layer fits it.

        Returns:
            The new layer; its ``path`` says how it runs.
        """
        out = cls(linear.in_features, linear.out_features, group_size, symmetric, linear.bias is not None, use_kernel)
        w = linear.weight.detach().to(device=out.qweight.device, dtype=torch.float32)
        pad = out.groups * group_size - linear.in_features
        groups = F.pad(w, (0, pad)).reshape(linear.out_features, out.groups, group_size)
        if symmetric:  # scales rounded up to bfloat16, so that -7..7 steps still span every weight
            scales = _bf16_at_least(groups.abs().amax(dim=-1) / 7.0)
            scales = torch.where(scales > 0, scales, torch.ones_like(scales))
            codes = torch.clamp(torch.round(groups / scales[..., None]), -8, 7) + 8
        else:  # zero (code 8's weight) in bfloat16 first, then a step that reaches both ends of the group from it
            low, high = groups.amin(dim=-1), groups.amax(dim=-1)
            zeros = (low + (high - low) * (8.0 / 15.0)).to(torch.bfloat16).to(torch.float32)
            scales = _bf16_at_least(torch.maximum((high - zeros) / 7.0, (zeros - low) / 8.0))
            scales = torch.where(scales > 0, scales, torch.ones_like(scales))
            codes = torch.clamp(torch.round((groups - zeros[..., None]) / scales[..., None]) + 8, 0, 15)
            out.zeros.copy_(zeros)
        out.qweight.copy_(pack_int4(codes.to(torch.uint8)))
        out.scales.copy_(scales)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach())
        out._choose_path()
        return out

    def _codes(self) -> Tensor:
        shape = (self.out_features, self.groups * self.group_size)
        return unpack_int4(self.qweight, math.prod(shape)).reshape(shape)

    def dequantize_weight(self) -> Tensor:
        """The float32 weight ``[out_features, in_features]`` these codes stand for."""
        w = _dequantized(self._codes(), self.scales, self.zeros, self.group_size)
        return w[:, : self.in_features]

    def _kernel_misfit(self) -> str | None:
        """Why this layer cannot run the int4 CPU kernel, or None."""
        if not self.use_kernel:
            return "the dequantizing path was asked for (use_kernel=False)"
        why = probe_int4_kernel()
        if why is not None:
            return why
        if self.group_size not in KERNEL_GROUP_SIZES:
            sizes = ", ".join(map(str, KERNEL_GROUP_SIZES))
            return f"group size {self.group_size}: PyTorch's int4 CPU kernel takes {sizes} only"
        if self.out_features % KERNEL_ROW_BLOCK:
            return (f"out_features {self.out_features} is not a multiple of {KERNEL_ROW_BLOCK}, "
                    "as PyTorch's int4 CPU kernel needs")
        if self.qweight.device.type != "cpu":
            return f"the layer is on {self.qweight.device.type}; PyTorch's int4 kernel used here is for the CPU"
        return None

    def _choose_path(self) -> None:
        """Build the kernel's copy of the weights where the kernel is usable, else say why not."""
        self.kernel_weight = self.kernel_scales_zeros = None
        why = self._kernel_misfit()
        if why is not None:
            self.path, self.path_reason = "dequantize", why
            return
        pack, _ = _kernel_ops()
        self.kernel_weight = pack(self._codes().to(torch.int32).contiguous(), 2)  # inner k tiles: unused on the CPU
        self.kernel_scales_zeros = _scales_and_zeros(self.scales, self.zeros)
        self.path, self.path_reason = "kernel", None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              *args: Any) -> None:
        version = local_metadata.get("version")
        zeros, scales = state_dict.get(prefix + "zeros"), state_dict.get(prefix + "scales")
        if (version is None or version < 2) and zeros is not None and scales is not None:
            # version 1 stored the group minimum (w = c * s + min); now zero is code 8's weight: min + 8 * s
            state_dict[prefix + "zeros"] = zeros.to(torch.float32) + 8.0 * scales.to(torch.float32)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)
        self._choose_path()

    def __getstate__(self) -> dict[str, Any]:
        # a pickled layer (torch.save of the whole model, deepcopy) leaves the kernel's CPU-specific copy behind
        state = self.__dict__.copy()
        state["_buffers"] = {k: None if k in ("kernel_weight", "kernel_scales_zeros") else v
                             for k, v in self._buffers.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._choose_path()

    def forward(self, x: Tensor) -> Tensor:
        if (self.kernel_weight is not None and x.device.type == "cpu"
                and not (x.requires_grad and torch.is_grad_enabled())):
            return self._kernel_forward(x)
        weight = self.dequantize_weight().to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def _kernel_forward(self, x: Tensor) -> Tensor:
        _, matmul = _kernel_ops()
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        pad = self.groups * self.group_size - self.in_features
        flat = F.pad(flat, (0, pad)) if pad else flat.contiguous()
        table = self.kernel_scales_zeros
        if table.dtype != torch.bfloat16:  # after model.half() or .float(), which convert floating buffers
            table = table.to(torch.bfloat16)
        out = matmul(flat, self.kernel_weight, self.group_size, table).to(x.dtype)
        if self.bias is not None:
            out = out.add_(self.bias.to(x.dtype))
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
            f"group_size={self.group_size}, symmetric={self.symmetric}, bias={self.bias is not None}, "
            f"path={self.path}"
        )


def int4_paths(model: nn.Module) -> dict[str, str]:
    """How each :class:`Int4Linear` of ``model`` runs: module name -> ``"kernel"`` or ``"dequantize: why"``.

    A layer used in two places is listed once, under its first name; the model itself is named ``(model)``.
    """
    seen: set[int] = set()
    paths = {}
    for name, module in model.named_modules():
        if isinstance(module, Int4Linear) and id(module) not in seen:
            seen.add(id(module))
            paths[name or "(model)"] = module.path if module.path_reason is None else (
                f"{module.path}: {module.path_reason}")
    return paths


def _path_details(paths: Mapping[str, str]) -> dict[str, Any]:
    """``path`` (kernel, dequantize or mixed), the layers on each path and the flags of a dequantized run."""
    slow = {name: p.split(": ", 1)[1] for name, p in paths.items() if p != "kernel"}
    fast = [name for name, p in paths.items() if p == "kernel"]
    flags = []
    if slow and not fast:
        reasons = set(slow.values())
        flags.append(DEQUANTIZED_FLAG + (f" ({reasons.pop()})" if len(reasons) == 1 else ""))
    elif slow:
        names = ", ".join(list(slow)[:3]) + (", ..." if len(slow) > 3 else "")
        flags.append(f"int4 runs dequantized in {len(slow)} of {len(paths)} layers ({names}): "
                     "those save size, not compute")
    return {"path": "kernel" if not slow else ("dequantize" if not fast else "mixed"),
            "kernel_layers": fast, "dequantized_layers": slow, "flags": flags}


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
    return compress(model, Int4WeightConfig(group_size=g, keep_layers=ctx.keep_layers)), {"group_size": g}


# quantized: the flop counter cannot see the int4 kernel; facts count such layers from their shapes (and a
# dequantizing layer's float matmul directly); the baseline is the float equivalent for any other uncounted kernel
@register_method("int4_weight", Int4WeightConfig,
                 facts=FactsHooks(quantized=True, count_weights={Int4Linear: _int4_weights}),
                 recipe=RecipeSpec("int4", _int4_recipe, trains=False, arg_help=_INT4_HELP, parse_arg=_int4_arg,
                                   makes_quantized=True, keeps_layers=True,
                                   description="4-bit weight-only quantization of Linear layers "
                                               "(packed, per-group scales)"))
def _int4(model: nn.Module, config: Int4WeightConfig) -> tuple[nn.Module, Mapping[str, Any]]:
    require_eval(model, "int4 weight-only quantization")
    holder = nn.Sequential(model)  # so that a bare Linear root is replaced too
    done: dict[int, Int4Linear] = {}  # a Linear shared between places stays shared
    skipped: list[str] = []
    float_bytes = 0
    padded: list[str] = []
    linears = [(parent, child_name, child, f"{parent_name}.{child_name}".split(".", 1)[1] if parent_name else "(model)")
               for parent_name, parent in list(holder.named_modules())
               # _modules, not named_children(): that names a Linear used twice in one parent once, and its second
               # use would stay float
               for child_name, child in list(parent._modules.items()) if isinstance(child, nn.Linear)]
    check_kept_layers("Int4WeightConfig.keep_layers", "int4 weight-only quantization", model, config.keep_layers,
                      [full for parent, _, _, full in linears if not isinstance(parent, nn.MultiheadAttention)])
    for parent, child_name, child, full in linears:
        if full in config.keep_layers:
            continue
        if isinstance(parent, nn.MultiheadAttention):  # it reads out_proj.weight directly
            skipped.append(full)
            continue
        if id(child) not in done:
            done[id(child)] = Int4Linear.from_linear(child, config.group_size, config.symmetric, config.use_kernel)
            float_bytes += _nbytes(child.weight)
            if child.in_features % config.group_size:
                padded.append(full)
        setattr(parent, child_name, done[id(child)])
    if not done:
        raise UnsupportedModelError(
            f"int4 weight-only quantization found no Linear layer in {type(model).__name__}"
        )
    unfused = unfused_transformer_layers(holder[0])
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
        **({"unfused_transformer_layers": unfused} if unfused else {}),
        **_path_details(int4_paths(holder[0])),
        "api": "greenmeter Int4Linear (own packing; PyTorch's int4 CPU kernel where it runs, else dequantized "
               "to float on each forward)",
    }
