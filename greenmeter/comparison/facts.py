"""Facts about a torch model that a comparison reports next to its energy: size, weights and MACs.

* :func:`serialized_size_b`: bytes of ``torch.save(model.state_dict())``, the size on disk.
* :func:`parameter_counts`: how many weights the model holds and how many are non-zero, also for int8
  quantized models and modules that keep packed weights ``model.parameters()`` does not see (the 4-bit
  :class:`~greenmeter.compression.Int4Linear`): their compression method counts them, through the
  ``count_weights`` facts hook it registered (:class:`greenmeter.compression.registry.FactsHooks`).
* :func:`count_macs`: multiply-accumulates per sample, counted by ``torch.utils.flop_counter``.

None of them changes the model. torch is imported inside the functions, so ``import greenmeter`` stays
light. A model that runs outside PyTorch, where neither the parameters nor the flop counter can see (an ONNX
Runtime session, :class:`~greenmeter.comparison.export.OnnxModel`), counts its own: when it has the methods
``parameter_counts()`` and ``count_macs(example_input)``, :func:`parameter_counts` and :func:`count_macs` return
what they say.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from greenmeter._errors import ConfigError, UnsupportedModelError
from greenmeter.comparison.batches import batch_size_of, call_model, describe

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["MacCount", "ParamCounts", "count_macs", "parameter_counts", "serialized_size_b"]

CountKind = Literal["parameters", "stored weight elements"]


@dataclass(frozen=True)
class ParamCounts:
    """How many weights a model holds.

    Attributes:
        total: the count (see ``kind``).
        nonzero: how many of them are not zero (for quantized tensors: integer code != zero point).
        kind: ``"parameters"`` (a float model: its unique ``nn.Parameter`` elements) or ``"stored weight
            elements"`` (a quantized or packed model: weight and bias elements as stored, see
            :func:`parameter_counts`).
    """

    total: int
    nonzero: int
    kind: CountKind

    @property
    def sparsity(self) -> float:
        """Fraction of the counted elements that are zero (0.0 for an empty model)."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "nonzero": self.nonzero, "kind": self.kind}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamCounts:
        return cls(total=int(data["total"]), nonzero=int(data["nonzero"]), kind=data["kind"])


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates per sample of one forward pass.

    Attributes:
        macs_per_sample: MACs per sample (matmuls and convolutions only), ``None`` when they could not be
            counted.
        method: ``"flop-counter"`` (the model itself), ``"flop-counter and quantized layer shapes"`` (the
            model itself, its int8 Linear and convolution layers counted from their shapes), ``"flop-counter on
            float equivalent"`` (the float model a quantized one was made from), ``"onnx graph shapes"`` (an ONNX
            graph, :meth:`~greenmeter.comparison.export.OnnxModel.count_macs`) or ``"unavailable"``.
        note: why the count is missing or was taken from the float equivalent; ``None`` otherwise.
    """

    macs_per_sample: float | None
    method: str
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"macs_per_sample": self.macs_per_sample, "method": self.method, "note": self.note}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MacCount:
        macs = data.get("macs_per_sample")
        return cls(None if macs is None else float(macs), data["method"], data.get("note"))


# ---------------------------------------------------------------------------------------------- size


def serialized_size_b(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict(), buffer)``: what the weights take on disk.

    Includes torch's zip container (a few hundred bytes per tensor), so tiny models look bigger than their
    weights. Works for int8 quantized models (packed params are saved unpacked as int8 tensors), the
    packed 4-bit ``Int4Linear`` (its uint8 codes) and early-exit ``MultiExitModel`` (tensors shared between
    places are saved once). Does not change the model.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


# ------------------------------------------------------------------------------------------- weights


def parameter_counts(model: nn.Module) -> ParamCounts:
    """Count a model's weights and its non-zero weights. Does not change the model.

    A float model (no quantized tensor, no packed params, no module a compression method counts itself)
    counts its unique ``nn.Parameter`` elements (a parameter shared between layers once):
    ``kind="parameters"``.

    A quantized or packed model keeps its weights where ``model.parameters()`` does not see them, so its
    own state (what ``state_dict`` saves) is walked, module by module (a shared module once), and these
    elements are counted (``kind="stored weight elements"``):

    * quantized tensors (qint8, quint8, qint32): their element count (weights of quantized conv and
      linear layers, quantized embeddings);
    * packed params (the ``(weight, bias)`` tuple of a quantized Linear, the TorchScript objects of a
      dynamic LSTM/GRU): unpacked, every tensor inside, weights and biases;
    * ``nn.Parameter`` objects (float layers left unquantized) and float entries named ``bias``;
    * modules of a type a registered compression method counts itself (its ``FactsHooks.count_weights``):
      what that count says, plus the tensors it hands back (a bias) counted as above. ``Int4Linear``:
      ``out_features * in_features`` weights (the codes standing for real weights: the zero padding of a
      row up to ``group_size`` and a spare nibble are stored but not counted; so ``2 * qweight bytes`` is
      at least this) plus its bias.

    Not counted: scales and zero points (``scale``, ``zero_point``, ``Int4Linear.scales``/``zeros``, FX
    input qparams), batch-norm running statistics and other float buffers. A tensor reached twice (the
    bias of an LSTM gate sits both in its cell and in its packed linear) is counted once. So a quantized
    model's total equals the float model's parameter count, unless quantization fused layers away (static
    int8 folds batch norm into the convolution before it).

    Non-zero: a float element ``!= 0``; a quantized element whose integer code ``!= zero point`` (per
    tensor or per channel; for float zero points, its dequantized value ``!= 0``); an ``Int4Linear``
    weight whose dequantized value ``!= 0`` (symmetric: code ``!= 8``).

    A model with a ``parameter_counts()`` method of its own (:class:`~greenmeter.comparison.export.OnnxModel`)
    is counted by it.

    Raises:
        UnsupportedModelError: the model's state holds a TorchScript object that cannot be unpacked.
    """
    import torch

    own = getattr(model, "parameter_counts", None)
    if callable(own):  # a model run outside PyTorch counts its own weights (an ONNX graph's initializers)
        return own()

    from greenmeter.compression.registry import weight_counters

    counters = weight_counters()
    counted = tuple(counters)
    modules = list(model.modules())
    stored = any(isinstance(m, counted) for m in modules) or any(
        _is_packed(value) for m in modules for value in _own_state(m).values()
    )
    if not stored:
        params = list(model.parameters())  # unique already
        return ParamCounts(
            sum(p.numel() for p in params),
            sum(int(torch.count_nonzero(p.detach())) for p in params),
            "parameters",
        )
    seen: set[tuple[int, Any, tuple[int, ...]]] = set()
    total = nonzero = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total, nonzero
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.numel() == 0 or key in seen:
            return
        seen.add(key)
        total += t.numel()
        nonzero += _nonzero(t)

    for m in modules:
        if isinstance(m, counted):
            count = next(fn for t, fn in counters.items() if isinstance(m, t))(m)
            total += count.total
            nonzero += count.nonzero
            for t in count.tensors:
                add(t)
            continue
        for name, value in _own_state(m).items():
            if isinstance(value, torch.Tensor):
                if value.is_quantized or isinstance(value, torch.nn.Parameter) or (
                    name == "bias" and value.is_floating_point()
                ):
                    add(value)
            elif _is_packed(value):
                for t in _tensors_in(value, f"{type(m).__name__}.{name}"):
                    add(t)
    return ParamCounts(total, nonzero, "stored weight elements")


def _own_state(module: nn.Module) -> dict[str, Any]:
    """The entries ``module`` itself adds to ``state_dict`` (not its children's), as live objects."""
    state: dict[str, Any] = {}
    module._save_to_state_dict(state, "", keep_vars=True)
    return state


def _is_packed(value: Any) -> bool:
    """A quantized tensor, or a container that packed params are saved as (tuple, list, TorchScript object)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.is_quantized
    return isinstance(value, (tuple, list, torch.ScriptObject))


def _tensors_in(value: Any, where: str) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists and TorchScript objects (through ``__getstate__``)."""
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors_in(item, where)
    elif isinstance(value, torch.ScriptObject):
        if not value._has_method("__getstate__"):
            raise UnsupportedModelError(
                f"parameter_counts cannot unpack {where}: a TorchScript object "
                f"({value._type().qualified_name()}) without __getstate__"
            )
        yield from _tensors_in(value.__getstate__(), where)


def _nonzero(t: torch.Tensor) -> int:
    import torch

    if not t.is_quantized:
        return int(torch.count_nonzero(t.detach()))
    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return int(torch.count_nonzero(t.int_repr() != t.q_zero_point()))
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        shape = [1] * t.dim()
        shape[t.q_per_channel_axis()] = -1
        zero_points = t.q_per_channel_zero_points().reshape(shape)
        return int(torch.count_nonzero(t.int_repr() != zero_points))
    return int(torch.count_nonzero(t.dequantize()))  # float zero points (quantized embeddings)


# ---------------------------------------------------------------------------------------------- MACs

# Name parts (split at "_") of ops doing multiply-accumulates that the flop counter has no formula for:
# quantized and FBGEMM/oneDNN kernels, fused RNN kernels, fused attention and transformer fast paths.
_HEAVY_OP_TOKENS = frozenset({
    "quantized", "rnn", "lstm", "gru", "attention", "transformer", "conv", "conv1d", "conv2d", "conv3d",
    "convolution", "linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "einsum",
})


def count_macs(
    model: nn.Module, example_input: Any, *, float_equivalent: nn.Module | None = None,
) -> MacCount:
    """Multiply-accumulates per sample of one forward pass, counted by ``FlopCounterMode``.

    Runs ``model(example_input)`` once (``model(*example_input)`` for a tuple, ``model(**example_input)`` for a
    dict, as :func:`greenmeter.comparison.batches.call_model` calls it) in eval mode under
    ``torch.no_grad`` inside ``torch.utils.flop_counter.FlopCounterMode`` and returns FLOPs / 2 / batch
    size (the first dimension of the first input tensor). The counter counts matrix multiplications,
    convolutions and scaled-dot-product attention only: bias additions, activations, normalisation and
    pooling are not counted. The attention fast path of ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer`` (one opaque kernel) is switched off for the pass so that its matmuls
    are seen. Models whose work depends on the data (early exits) are counted as this batch ran.

    Int8 quantized models run ``quantized::`` kernels the counter does not see (it would report 0, or
    only the layers left in float). The quantized Linear and convolution layers (static, dynamic, QAT-converted,
    fused with a ReLU), and packed layers whose method counts their weights (``Int4Linear`` on PyTorch's int4
    kernel), are counted from their own shapes as the pass runs them, when the counter saw nothing in them: output elements x weight
    elements per output (``in_features``, or ``in_channels / groups`` x the kernel size), added to what the
    counter saw in the float rest (``method="flop-counter and quantized layer shapes"``). So a model that was
    pruned and then quantized reports the MACs of its pruned layers. When the pass runs any other uncounted
    kernel (a quantized LSTM, a fused RNN kernel), the count is incomplete: then ``float_equivalent`` (the
    float model the quantized one was made from), when given, is counted instead (``method="flop-counter on
    float equivalent"``, with a note); otherwise ``macs_per_sample`` is ``None``, ``method="unavailable"``
    and the note names the uncounted ops. An ``Int4Linear`` that dequantizes runs a float matmul, counted
    directly.

    The model's training flags (every submodule's) and weights are left as they were. A model with a
    ``count_macs(example_input)`` method of its own (:class:`~greenmeter.comparison.export.OnnxModel`, which counts
    its ONNX graph) is counted by it.

    Args:
        model: the model.
        example_input: a typical batch (a tensor, a tuple of tensors passed as positional arguments, or a dict
            passed as keyword arguments), put on the model's device as ``call_model`` does; its batch size is the first dimension of its first
            tensor.
        float_equivalent: the float model to count instead when ``model``'s kernels cannot be counted.

    Raises:
        ConfigError: ``example_input`` holds no tensor with a batch dimension, or its batch is empty.
        Whatever the model's forward pass raises, unchanged.
    """
    batch = _batch_size(example_input)
    own = getattr(model, "count_macs", None)
    if callable(own):  # a model run outside PyTorch, which the flop counter cannot see into, counts its own
        return own(example_input)
    flops, uncounted, layer_macs = _count_flops(model, example_input)
    if all(_counted_by_shapes(op) for op in uncounted):  # int8 and packed layers: counted from their shapes
        return MacCount((flops / 2 + layer_macs) / batch,
                        "flop-counter and quantized layer shapes" if layer_macs else "flop-counter")
    why = (f"{type(model).__name__} runs kernels the flop counter cannot count ({', '.join(sorted(uncounted))}); "
           f"it saw {flops / 2 / batch:g} MACs per sample in the rest")
    if float_equivalent is None:
        return MacCount(None, "unavailable", f"{why}; pass float_equivalent= (the float model it was made from) "
                        "to count that instead")
    float_flops, float_uncounted, _ = _count_flops(float_equivalent, example_input)
    method = "flop-counter on float equivalent"
    if float_uncounted:
        return MacCount(None, "unavailable", f"{why}; float_equivalent ({type(float_equivalent).__name__}) runs "
                        f"uncounted kernels too ({', '.join(sorted(float_uncounted))})")
    return MacCount(float_flops / 2 / batch, method, f"{why}; counted float_equivalent instead")


def _batch_size(example_input: Any) -> int:
    batch = batch_size_of(example_input)
    if batch is None:
        raise ConfigError(
            "count_macs needs example_input to be a batch tensor [N, ...] (or a tuple or dict whose first tensor "
            f"is); got {describe(example_input)}"
        )
    if batch == 0:
        raise ConfigError("count_macs needs a non-empty example batch (N >= 1)")
    return batch


def _shape_counted_types() -> tuple[type, ...]:
    """Layers whose kernels may hide from the flop counter, counted from their shapes instead: the quantized
    Linear and convolution modules (their fused and dynamic kinds are subclasses) and the packed modules that
    registered methods count the weights of (``Int4Linear``)."""
    from torch.ao.nn.quantized import Linear
    from torch.ao.nn.quantized.modules.conv import _ConvNd

    from greenmeter.compression.registry import weight_counters

    return (Linear, _ConvNd, *weight_counters())


def _macs_per_output(module: nn.Module) -> int | None:
    """Multiply-accumulates behind one output element of a Linear-like or convolution layer, from its weight
    (``weight()`` of a quantized module: ``in_features``, or ``in_channels / groups`` x the kernel) or its
    ``in_features``; ``None`` when neither says."""
    weight = getattr(module, "weight", None)
    if callable(weight):
        return int(weight()[0].numel())
    in_features = getattr(module, "in_features", None)
    return in_features if isinstance(in_features, int) else None


def _counted_by_shapes(op: str) -> bool:
    """Whether an op the flop counter has no formula for, seen outside the layers counted from their shapes,
    does no multiply-accumulates: a quantized op such as ``"aten.quantized_max_pool2d"`` or ``"quantized.add"``."""
    namespace, _, name = op.partition(".")
    tokens = name.split("_")
    return "quantized" in (namespace, *tokens) and _HEAVY_OP_TOKENS.isdisjoint(set(tokens) - {"quantized"})


def _count_flops(model: nn.Module, example_input: Any) -> tuple[int, set[str], int]:
    """FLOPs of one eval-mode pass, the names of heavy ops seen that the counter has no formula for, and the
    MACs of the pass's layers counted from their shapes.

    A quantized Linear or convolution layer, or a packed layer a method counts the weights of, is counted from
    its shapes (output elements x weight elements per output) when the counter saw no FLOPs in its forward pass
    (its kernel hides from it); the uncounted ops run inside such a layer are then accounted for. A packed
    layer that dequantizes and runs a float matmul is left to the counter."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    aten = torch.ops.aten
    flash = flop_registry[aten._scaled_dot_product_flash_attention]

    def cpu_flash(*args: Any, **kwargs: Any) -> int:  # CPU flash attention: the CUDA kernel's shape rule
        return flash(*args, **kwargs)

    cpu_flash._get_raw = True  # type: ignore[attr-defined]  # flash already takes tensors, not shapes
    extra = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}

    class _OpRecorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: set[Any] = set()
            self.inside: list[nn.Module] = []  # the shape-counted layers running now
            self.in_layers: set[Any] = set()  # ops run inside one of them

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            (self.in_layers if self.inside else self.ops).add(func.overloadpacket)
            return func(*args, **(kwargs or {}))

    layer_macs = 0
    hidden: set[Any] = set()  # uncounted ops run inside layers that were counted from their shapes
    started: list[int] = []

    def enter(module: nn.Module, inputs: Any) -> None:
        recorder.inside.append(module)
        started.append(counter.get_total_flops())

    def leave(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal layer_macs
        seen = counter.get_total_flops() - started.pop()
        per_output = _macs_per_output(module)  # while inside: unpacking a quantized weight is the layer's own op
        recorder.inside.pop()
        if not recorder.inside:
            ops, recorder.in_layers = recorder.in_layers, set()
            if seen == 0 and per_output is not None and isinstance(output, torch.Tensor):
                layer_macs += output.numel() * per_output  # each output element: a dot product over a weight row
                hidden.update(ops)
            else:  # the counter saw its work (or it cannot be counted from its shapes): judged as elsewhere
                recorder.ops.update(ops)

    flags = [(m, m.training) for m in model.modules()]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    layers = _shape_counted_types()
    handles = [h for m in model.modules() if isinstance(m, layers)
               for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    counter = FlopCounterMode(display=False, custom_mapping=extra)
    recorder = _OpRecorder()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), counter, recorder:
            call_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, training in flags:  # restored one by one: some models keep parts in eval on purpose
            m.training = training
    known = set(counter.flop_registry)
    uncounted = set()
    for op in recorder.ops:
        if op in known:
            continue
        namespace, _, name = str(op).partition(".")
        if namespace == "quantized" or not _HEAVY_OP_TOKENS.isdisjoint(name.split("_")):
            uncounted.add(str(op))
    return counter.get_total_flops(), uncounted, layer_macs
