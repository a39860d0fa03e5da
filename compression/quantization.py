"""Post-training int8 quantization: dynamic (Linear, LSTM, ...) and static (conv nets, with calibration).

Both methods run on PyTorch's own int8 CPU kernels (FBGEMM / oneDNN / QNNPACK) through
``torch.ao.quantization``: ``quantize_dynamic`` for dynamic int8 and FX graph mode
(``prepare_fx`` / ``convert_fx``) for static int8, which fuses conv + batch norm + ReLU and places the
quantize / dequantize steps itself, so a plain ``nn.Sequential`` CNN needs no ``QuantStub``.
That API is deprecated (torch's own warning still says it "will be removed in 2.10", yet it ships and
works in 2.13; its successor, torchao, targets CUDA kernels and
``torch.compile``; in eager mode on this CPU its int8 path measured about 10x slower at batch 1), but
it is the path that runs real integer kernels on x86 CPUs today. Its deprecation warnings are caught inside
:func:`compress` and reported once in ``details["api"]`` and ``details["notices"]``; any other warning
is passed on to the caller unchanged. The choice lives behind each config's ``engine`` field.

The returned models hold real integer modules (``torch.ao.nn.quantized.Conv2d``, ``...dynamic.Linear``),
not fake-quant float modules. Save them with ``torch.save(model.state_dict(), path)``: pickling a whole
FX-converted model saves but does not load back in torch 2.13.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from greenmeter._checks import module_names
from greenmeter._errors import CompressionError, ConfigError, EngineUnavailableError, UnsupportedModelError
from greenmeter.compression._core import compress
from greenmeter.compression.registry import FactsHooks, RecipeSpec, check_kept_layers, register_method

if TYPE_CHECKING:
    from torch import Tensor

    from greenmeter.comparison.recipes import RecipeContext

__all__ = ["QUANT_ENGINES", "DynamicQuantConfig", "StaticQuantConfig", "calibration_batches"]

#: Engines a config may name; ``"auto"`` picks the first one this PyTorch build supports.
QUANT_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")
_DYNAMIC_TYPES = ("Linear", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell", "Embedding", "EmbeddingBag")
TORCH_AO_API = "torch.ao.quantization ({}; deprecated, still shipped in torch 2.13, see docs/compression.md)"

# Warnings torch.ao raises on every call; each is explained in docs/compression.md. Others pass through.
_KNOWN_NOTICES = {
    "torch.ao.quantization is deprecated": "torch.ao.quantization is deprecated (torch says removal in 2.10)",
    "quantized tensor creation functions": "quantized tensor dtypes (qint8/quint8) are deprecated",
    "reduce_range will be deprecated": "observer argument reduce_range is deprecated",
    "without Vector Neural Network Instruction": "oneDNN without VNNI: reduce_range=True set for it",
}


def check_engine(engine: str) -> None:
    if engine != "auto" and engine not in QUANT_ENGINES:
        raise ConfigError(f"engine must be 'auto' or one of {', '.join(QUANT_ENGINES)}, not {engine!r}")


@dataclass(frozen=True)
class DynamicQuantConfig:
    """Dynamic int8: weights stored as int8, activations quantized on the fly per batch.

    Attributes:
        layer_types: class names of the layers to quantize; any of Linear, LSTM, GRU, LSTMCell, GRUCell,
            RNNCell (int8 weights and kernels) and Embedding, EmbeddingBag (int8 weight-only lookup).
        engine: ``"auto"`` or a quantized engine name (see :data:`QUANT_ENGINES`).
        per_channel: one weight scale per output row of each Linear, LSTM, GRU or cell layer (more
            accurate where rows differ in range, same storage to within the scales) rather than one per
            tensor. Embedding tables always get one scale and offset per row.
        keep_layers: qualified module names (as in ``model.named_modules()``, e.g. ``("classifier.2",)``) of
            layers left in float, as they are. Each must be a layer of ``layer_types`` (checked when the model
            is known), and not all of them.
    """

    layer_types: tuple[str, ...] = ("Linear", "LSTM")
    engine: str = "auto"
    per_channel: bool = True
    keep_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        types = (self.layer_types,) if isinstance(self.layer_types, str) else tuple(self.layer_types)
        object.__setattr__(self, "layer_types", types)
        unknown = [t for t in types if t not in _DYNAMIC_TYPES]
        if not types or unknown:
            raise ConfigError(
                f"dynamic int8 layer_types must name some of {', '.join(_DYNAMIC_TYPES)}; got {types!r}"
            )
        check_engine(self.engine)
        if not isinstance(self.per_channel, bool):
            raise ConfigError(f"per_channel must be True or False, not {self.per_channel!r}")
        object.__setattr__(self, "keep_layers", module_names("DynamicQuantConfig.keep_layers", self.keep_layers))


@dataclass(frozen=True)
class StaticQuantConfig:
    """Static int8 for conv nets: weights and activations int8, activation ranges set by calibration.

    Attributes:
        calibration: the data to calibrate on: an iterable of input batches (a tensor, or an ``(x, y, ...)``
            tuple/list whose first item is the input; a single tensor counts as one batch), or a callable
            ``calibration(prepared_model)`` that runs batches through the model itself. Iterated once.
        engine: ``"auto"`` or a quantized engine name (see :data:`QUANT_ENGINES`).
        per_channel: one weight scale per output channel (more accurate) rather than per tensor.
        keep_layers: qualified module names (as in ``model.named_modules()``, e.g. ``("classifier.2",)``) of
            layers left in float, as they are: each stays the module it was (an ``nn.Conv2d`` keeps its own
            weights, with no BatchNorm folded into it; the BatchNorm after it is then quantized on its own), and
            the model quantizes and dequantizes around it. Each must be a layer that this method quantizes
            (Linear, Conv, BatchNorm, ...; checked when the model is known), and not all of them.
    """

    calibration: Iterable[Tensor] | Callable[[nn.Module], Any]
    engine: str = "auto"
    per_channel: bool = True
    keep_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.calibration, (str, bytes)) or not (
            callable(self.calibration) or isinstance(self.calibration, Iterable)
        ):
            raise ConfigError(
                "calibration must be an iterable of input batches or a callable(model), "
                f"not {type(self.calibration).__name__}"
            )
        check_engine(self.engine)
        if not isinstance(self.per_channel, bool):
            raise ConfigError(f"per_channel must be True or False, not {self.per_channel!r}")
        object.__setattr__(self, "keep_layers", module_names("StaticQuantConfig.keep_layers", self.keep_layers))


# ---------------------------------------------------------------------------------------------------
# shared by the int8 methods here, int4.py and qat.py


#: The flag of an int8 model made from a model on another device (``{device}``): it runs on the CPU.
INT8_ON_CPU = ("made on the CPU from a model on {device}: PyTorch's int8 kernels (torch.ao's quantized engines) "
               "run on the CPU only, so this variant runs there")


def int8_on_cpu(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` (a private copy) on the CPU, where the int8 kernels run, and what the method reports about it:
    ``{}`` for a model on the CPU already, else ``moved_from`` (its device) and the :data:`INT8_ON_CPU` flag."""
    from greenmeter.comparison.batches import model_device

    device = model_device(model)
    if device is None or device.type == "cpu":
        return model, {}
    return model.cpu(), {"moved_from": str(device), "flags": [INT8_ON_CPU.format(device=device)]}


def unfused_transformer_layers(model: nn.Module) -> list[str]:
    """Keep ``nn.TransformerEncoderLayer``s whose feed-forward Linear layers were replaced (int8, int4) off torch's
    fused fast path, and their ``nn.TransformerEncoder`` off nested tensors; returns the layers' names.

    In eval mode that fast path runs the layer as one kernel on ``linear1.weight`` and ``linear2.weight`` as float
    tensors; a replaced layer has no such tensor (an int8 Linear's ``weight`` is a method), so the path's own
    check fails with an AttributeError, and were it to pass it would run float weights. The layer then runs
    module by module, its replaced Linear layers with their own kernels. torch reads the flags set here
    (``activation_relu_or_gelu``, ``use_nested_tensor``) only to choose that path.
    """
    import torch
    from torch import nn

    changed = {name: m for name, m in model.named_modules() if isinstance(m, nn.TransformerEncoderLayer) and not all(
        isinstance(getattr(getattr(m, part, None), "weight", None), torch.Tensor) for part in ("linear1", "linear2"))}
    for layer in changed.values():
        layer.activation_relu_or_gelu = False
    unfused = {id(layer) for layer in changed.values()}
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and any(id(layer) in unfused for layer in m.layers):
            m.use_nested_tensor = False
    return list(changed)


def require_eval(model: nn.Module, method: str) -> None:
    """Raise :class:`CompressionError` unless every module of ``model`` is in eval mode."""
    training = next((name for name, m in model.named_modules() if m.training), None)
    if training is not None:
        where = f"its submodule {training!r} is" if training else f"the model ({type(model).__name__}) is"
        raise CompressionError(
            f"{method} needs a model in eval mode, but {where} in training mode "
            "(batch norm and dropout would change while calibrating): call model.eval() first"
        )


def resolve_engine(engine: str) -> str:
    """The quantized engine to use for ``engine`` ("auto" or a name), checked against this build.

    Raises:
        EngineUnavailableError: the engine is not in ``torch.backends.quantized.supported_engines``.
    """
    import torch

    available = [e for e in torch.backends.quantized.supported_engines if e in QUANT_ENGINES]
    if engine == "auto":
        if not available:
            raise EngineUnavailableError(
                "no int8 quantized engine (x86, fbgemm, onednn, qnnpack) is available in this PyTorch build; "
                "int4 weight-only (Int4WeightConfig) needs none"
            )
        return next(e for e in QUANT_ENGINES if e in available)
    if engine not in available:
        raise EngineUnavailableError(
            f"quantized engine {engine!r} is not available on this machine; available: "
            f"{', '.join(available) or 'none'} (use engine='auto' to pick one)"
        )
    return engine


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` for the block, restoring the previous one after."""
    import torch

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextlib.contextmanager
def torch_ao_notices(notices: list[str]) -> Iterator[None]:
    """Catch torch.ao's known deprecation warnings (their labels go to ``notices``); pass the rest on."""
    passed: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                for w in caught:
                    label = next((v for k, v in _KNOWN_NOTICES.items() if k in str(w.message)), None)
                    if label is None:
                        passed.append(w)
                    elif label not in notices:
                        notices.append(label)
    finally:  # outside the catch, so the caller's own filters decide, also when the block raised
        for w in passed:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def integer_modules(model: nn.Module) -> dict[str, int]:
    """Count the modules of ``model`` that run int8 kernels, by class name."""
    counts: dict[str, int] = {}
    for m in model.modules():
        name = type(m).__name__
        if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")) and not (
            name in ("Quantize", "DeQuantize") or name.endswith("PackedParams")
        ):
            counts[name] = counts.get(name, 0) + 1
    return counts


class _KeptFloat(nn.Module):
    """Holds a module that FX graph mode leaves in float: a leaf to its tracer, so neither fused nor observed."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


def inside_fx_calls(model: nn.Module, types: tuple[type, ...]) -> dict[str, list[str]]:
    """For each outermost module that FX graph mode's tracer calls whole (a module of ``torch.nn`` that is not a
    container nor of ``types``, such as ``nn.TransformerEncoder``) and that holds layers whose exact type is in
    ``types``, those layers' names: FX sees one call, and its convert step never reaches them."""
    from torch import nn

    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if (not name or type(module) in types or isinstance(module, containers)
                or not type(module).__module__.startswith(("torch.nn", "torch.ao.nn"))
                or any(name.startswith(f"{outer}.") for outer in out)):
            continue
        inner = [f"{name}.{n}" for n, m in module.named_modules() if n and type(m) in types]
        if inner:
            out[name] = inner
    return out


def keep_float_fx(model: nn.Module, keep: tuple[str, ...], mapping: Any, owner: str, method: str) -> Any:
    """Set up FX graph mode int8 (static, QAT) to leave the modules ``keep`` names in float, as they are.

    Each kept module is checked to be one FX quantizes here (a module with a weight whose type torch.ao maps to
    a quantized one: Linear, Conv, BatchNorm, ...), gets no qconfig in ``mapping`` (changed in place) and is
    wrapped in ``model`` (changed in place) in a holder that the tracer does not enter, so that FX neither fuses
    it with its neighbours (a conv keeps its weights, no BatchNorm folded in) nor observes it. Call
    :func:`unwrap_kept_fx` on the converted model.

    Returns:
        The ``PrepareCustomConfig`` to pass to ``prepare_fx`` / ``prepare_qat_fx``.

    Raises:
        ConfigError: a name is no module FX quantizes here, or they cover all of them (the message lists them).
    """
    import torch
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantization_mappings import get_default_static_quant_module_mappings

    quantized = get_default_static_quant_module_mappings()
    touched = [n for n, m in model.named_modules()
               if n and type(m) in quantized and isinstance(getattr(m, "weight", None), torch.Tensor)]
    check_kept_layers(owner, method, model, keep, touched)
    unseen = {n for names in inside_fx_calls(model, tuple(quantized)).values() for n in names}
    for name in keep:
        mapping.set_module_name(name, None)
        if name in unseen:  # inside a module FX calls whole: no qconfig is enough, and its owner reads its weight
            continue
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent)
        inner = getattr(holder, child)
        setattr(holder, child, _KeptFloat(inner).train(inner.training))
    return PrepareCustomConfig().set_non_traceable_module_classes([_KeptFloat])


def unwrap_kept_fx(model: nn.Module) -> nn.Module:
    """Put back, in place, each module :func:`keep_float_fx` wrapped, under its own name; returns ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, _KeptFloat):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.inner)
    return model


class _Flatten(nn.Module):
    """``nn.Flatten`` as the function ``torch.flatten``, optionally over the channels-last order of a 4-D input.

    FX graph mode int8 keeps ``torch.flatten`` on the quantized tensor but dequantizes and quantizes again
    around an ``nn.Flatten`` module. Quantized convolutions write channels-last (NHWC) memory, so flattening in
    NCHW order copies the tensor; with ``channels_last`` the flatten runs in NHWC order, a view, and the Linear
    layer after it has its input columns permuted to match (:func:`int8_layout`), which is exact.
    """

    def __init__(self, start_dim: int, end_dim: int, channels_last: bool = False) -> None:
        super().__init__()
        self.start_dim, self.end_dim, self.channels_last = start_dim, end_dim, channels_last

    def forward(self, x: Tensor) -> Tensor:
        import torch

        if self.channels_last:  # NCHW -> NHWC as two transposes: a view, as permute is, but one the ONNX
            x = x.transpose(1, 2).transpose(2, 3)  # exporter keeps quantized (it has no quantized permute)
        return torch.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}, channels_last={self.channels_last}"


def _flatten_channels(seq: nn.Sequential, index: int) -> tuple[int, nn.Linear] | None:
    """``(C, linear)`` when ``seq[index]`` (a Flatten over dims 1..-1) takes a Conv2d's C channels through
    channel-wise layers only and feeds an ``nn.Linear`` (through dropout only) whose input is C x H x W."""
    kept_channels = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d,
                     nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)
    flat = seq[index]
    if not (isinstance(flat, nn.Flatten) and flat.start_dim == 1 and flat.end_dim == -1):
        return None
    before = index - 1
    while before >= 0 and isinstance(seq[before], kept_channels):
        before -= 1
    after = index + 1
    while after < len(seq) and isinstance(seq[after], nn.Dropout):
        after += 1
    if before < 0 or after >= len(seq) or not isinstance(seq[before], nn.Conv2d):
        return None
    channels, linear = seq[before].out_channels, seq[after]
    if not isinstance(linear, nn.Linear) or linear.in_features % channels:
        return None
    return channels, linear


def int8_layout(model: nn.Module) -> list[str]:
    """Prepare ``model`` (changed in place) for FX graph mode int8: every ``nn.Flatten`` becomes the function
    ``torch.flatten`` (so the int8 graph flattens the quantized tensor instead of dequantizing around it), and
    one that flattens a convolution's output into a Linear layer runs in channels-last order, with that Linear
    layer's input columns permuted to match (exact in float; it removes a copy of the activations).

    Returns:
        One line per change, for the method's details.
    """
    import torch

    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    changes: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}
    for holder_name, holder in list(model.named_modules()):
        for child_name, child in list(holder.named_children()):
            if not isinstance(child, nn.Flatten):
                continue
            found = None
            if isinstance(holder, nn.Sequential):
                found = _flatten_channels(holder, list(holder._modules).index(child_name))
            where = f"{holder_name}.{child_name}" if holder_name else child_name
            if found is not None and uses.get(id(found[1]), 0) == 1:
                channels, linear = found
                with torch.no_grad():
                    w = linear.weight
                    w.copy_(w.reshape(w.shape[0], channels, -1).permute(0, 2, 1).reshape(w.shape))
                setattr(holder, child_name, _Flatten(1, -1, channels_last=True).train(child.training))
                changes.append(f"{where}: flattens channels-last; the input columns of {names[id(linear)]} are "
                               "permuted to match (exact)")
            else:
                setattr(holder, child_name, _Flatten(child.start_dim, child.end_dim).train(child.training))
                changes.append(f"{where}: nn.Flatten runs as torch.flatten on the int8 tensor")
    return changes


# ---------------------------------------------------------------------------------------------------
# handlers


#: Int8 models run ``quantized::`` kernels the flop counter cannot see: MACs are counted on the float model.
INT8_FACTS = FactsHooks(quantized=True)


def _int8_dynamic_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> nn.Module:
    return compress(model, DynamicQuantConfig(keep_layers=ctx.keep_layers))


@register_method("dynamic_int8", DynamicQuantConfig, facts=INT8_FACTS, recipe=RecipeSpec(
    "int8-dynamic", _int8_dynamic_recipe, trains=False, makes_quantized=True, keeps_layers=True,
    description="dynamic int8 quantization of Linear/LSTM layers (int8 kernels)"))
def _dynamic(model: nn.Module, config: DynamicQuantConfig) -> tuple[nn.Module, Mapping[str, Any]]:
    import torch
    from torch import nn

    require_eval(model, "dynamic int8 quantization")
    engine = resolve_engine(config.engine)
    model, moved = int8_on_cpu(model)
    wanted = tuple(getattr(nn, name) for name in config.layer_types)
    if not any(isinstance(m, wanted) for m in model.modules()):
        raise UnsupportedModelError(
            f"dynamic int8 quantization found no {'/'.join(config.layer_types)} layer in "
            f"{type(model).__name__}; use StaticQuantConfig for conv nets"
        )
    check_kept_layers("DynamicQuantConfig.keep_layers", "dynamic int8 quantization", model, config.keep_layers,
                      [n for n, m in model.named_modules() if n and isinstance(m, wanted)])
    notices: list[str] = []
    with torch_ao_notices(notices), quantized_engine(engine):
        from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        weights = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
        spec: dict[Any, Any] = {
            t: float_qparams_weight_only_qconfig if t in (nn.Embedding, nn.EmbeddingBag) else weights for t in wanted}
        spec.update({f"0.{name}": None for name in config.keep_layers})  # by name inside the holder: left in float
        holder = nn.Sequential(model)  # quantize_dynamic swaps children only; this lets the root be swapped
        quantize_dynamic(holder, spec, dtype=torch.qint8, inplace=True)
        result = holder[0]
    unfused = unfused_transformer_layers(result)
    counts = integer_modules(result)
    details = {
        "api": TORCH_AO_API.format("quantize_dynamic"),
        "engine": engine,
        "weight_dtype": "int8",
        "weight_scales": "per output channel" if config.per_channel else "per tensor",
        "integer_modules": counts,
        "quantized_layers": sum(counts.values()),
        "notices": notices,
        **({"unfused_transformer_layers": unfused} if unfused else {}),
        **moved,
    }
    return result, details


def calibration_batches(source: Iterable[Any]) -> Iterator[Tensor]:
    """The input tensors of calibration data: a tensor (one batch), or an iterable of tensors or of ``(x, ...)``
    tuples whose first item is the input.

    Raises:
        ConfigError: an item that is neither (raised when it is reached).
    """
    import torch

    if isinstance(source, torch.Tensor):
        yield source
        return
    for item in source:
        x = item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(x, torch.Tensor):
            raise ConfigError(
                f"calibration must yield tensors or (x, ...) tuples, got {type(item).__name__}"
            )
        yield x


def static_qconfig_mapping(engine: str, per_channel: bool) -> Any:
    """torch.ao's default mapping for ``engine``, with the global qconfig set to our choice of observers."""
    import torch
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import (
        HistogramObserver,
        default_per_channel_weight_observer,
        default_weight_observer,
    )

    # FBGEMM-style kernels on CPUs without VNNI can overflow 16-bit accumulators unless activations use
    # 7 bits (reduce_range); QNNPACK does not need it.
    reduce = engine in ("x86", "fbgemm") or (engine == "onednn" and not torch.cpu._is_vnni_supported())
    qconfig = QConfig(
        activation=HistogramObserver.with_args(reduce_range=reduce),
        weight=default_per_channel_weight_observer if per_channel else default_weight_observer,
    )
    return get_default_qconfig_mapping(engine).set_global(qconfig)


def _int8_static_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    import torch

    from greenmeter.comparison.batches import batch_size_of, call_model  # how compare reads and calls a batch

    inputs = ctx.calibration_inputs()
    source = "example_input" if ctx.train_data is None else "train_data"
    calibration: Any = inputs
    if not all(isinstance(x, torch.Tensor) for x in inputs):  # tuples and dicts: called as compare calls the model
        def calibration(prepared: nn.Module) -> None:
            for x in inputs:
                call_model(prepared, x)

    return compress(model, StaticQuantConfig(calibration=calibration, keep_layers=ctx.keep_layers)), {
        "calibration": source, "calibration_batches": len(inputs),
        "calibration_samples": sum(batch_size_of(x) or 0 for x in inputs)}


@register_method("static_int8", StaticQuantConfig, facts=INT8_FACTS, recipe=RecipeSpec(
    "int8-static", _int8_static_recipe, trains=False, makes_quantized=True, keeps_layers=True,
    description="static int8 quantization, calibrated on the first training batches"))
def _static(model: nn.Module, config: StaticQuantConfig) -> tuple[nn.Module, Mapping[str, Any]]:
    import torch

    require_eval(model, "static int8 quantization")
    engine = resolve_engine(config.engine)
    model, moved = int8_on_cpu(model)
    notices: list[str] = []
    batches = samples = 0
    with torch_ao_notices(notices), quantized_engine(engine):
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        layout = int8_layout(model)
        mapping = static_qconfig_mapping(engine, config.per_channel)
        custom = keep_float_fx(model, config.keep_layers, mapping, "StaticQuantConfig.keep_layers",
                               "static int8 quantization")
        try:
            prepared = prepare_fx(model, mapping, example_inputs=(), prepare_custom_config=custom)
        except Exception as err:  # FX tracing fails in many ways (TraceError, TypeError, ...)
            raise UnsupportedModelError(
                f"static int8 quantization (FX graph mode) cannot trace {type(model).__name__}: {err}; "
                "data-dependent control flow is not traceable, try DynamicQuantConfig"
            ) from err
        prepared.eval()
        with torch.no_grad():
            if callable(config.calibration) and not isinstance(config.calibration, torch.Tensor):
                config.calibration(prepared)
                batches = -1
            else:
                for x in calibration_batches(config.calibration):
                    prepared(x.cpu())
                    batches += 1
                    samples += len(x)
                if batches == 0:
                    raise ConfigError("calibration yielded no batches; static int8 needs some input data")
        result = unwrap_kept_fx(convert_fx(prepared))
    counts = integer_modules(result)
    if not counts:
        raise UnsupportedModelError(
            f"static int8 quantization found no layer it could quantize in {type(model).__name__}"
        )
    details: dict[str, Any] = {
        "api": TORCH_AO_API.format("quantize_fx.prepare_fx/convert_fx"),
        "engine": engine,
        "per_channel": config.per_channel,
        "integer_modules": counts,
        "quantized_layers": sum(counts.values()),
        "notices": notices,
        **({"layout": layout} if layout else {}),
        **moved,
    }
    if batches >= 0:
        details.update(calibration_batches=batches, calibration_samples=samples)
    return result.eval(), details
