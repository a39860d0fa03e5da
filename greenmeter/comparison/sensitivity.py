"""Per-layer sensitivity: the metric drop when one layer alone is quantized or pruned.

For every Linear and Conv1d/2d/3d layer of a model and every probe, the layer's weight (and for ``"int8"`` its
input) is changed the way a compression method would change it, every other layer is left as it is, and the
model's metric is computed on all the data::

    sens = layer_sensitivity(model, (x_test, y_test))
    print(sens.table())
    sens.sensitive_layers("int8", 0.005)   # layers whose int8 drop exceeds half an accuracy point

Probes:

* ``"int8"``: what static int8 does to the layer: its weight quantize-dequantized per output channel on
  symmetric int8's grid (torch.ao's per-channel weight observer: ``scale = max|w| / 127.5``, codes -128..127),
  and its input fake-quantized per tensor on an affine 8-bit grid whose range is the minimum and maximum seen
  on calibration batches (a forward pre-hook on that one layer).
* ``"int4"`` / ``"int4:G"``: the weight quantize-dequantized on int4's grid, exactly as
  :class:`greenmeter.compression.Int4WeightConfig` (group size ``G``, 32 by default) would store it; Linear
  layers only (``None`` for a convolution).
* ``"prune:S"``: the weight magnitude-pruned to sparsity ``S`` in [0, 1): the ``round(S * numel)`` weights of
  smallest magnitude set to zero (as ``prune:S`` does to every layer).

The model is never changed: the probes run on one copy, in eval mode, each layer's weight restored exactly
before the next probe.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from greenmeter._checks import fraction, whole_number
from greenmeter._errors import ConfigError
from greenmeter.comparison.batches import (
    DEFAULT_TARGET_KEY,
    Batch,
    OutputFn,
    batch_size_of,
    call_model,
    calibration_inputs,
    check_output_fn,
    check_target_key,
    evaluation_batches,
    model_output,
)
from greenmeter.comparison.metrics import check_metric, correct_predictions, joined, metric_name as name_of_metric
from greenmeter.comparison.metrics import metric_value
from greenmeter.comparison.progress import Progress, progress_printer
from greenmeter.records.sensitivity import LayerSensitivity, Sensitivity

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["CALIBRATION_BATCHES", "DEFAULT_PROBES", "PROBE_FORMS", "layer_sensitivity", "probed_weight",
           "sensitivity_layers"]

#: the probes run when none are named
DEFAULT_PROBES = ("int8", "int4", "prune:0.5", "prune:0.8")
#: the probe names :func:`layer_sensitivity` takes, in words
PROBE_FORMS = ("int8", "int4", "int4:G (group size G, 2 to 4096)", "prune:S (sparsity S in [0, 1))")
#: batches of the evaluation data the int8 probe calibrates on when no ``calibration`` is given
#: (as many as int8-static calibrates on by default)
CALIBRATION_BATCHES = 8
#: the layer classes probed
_LAYER_KINDS = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def _probe_error(probe: object, why: str = "") -> ConfigError:
    return ConfigError(f"unknown sensitivity probe {probe!r}{why}; valid forms: {', '.join(PROBE_FORMS)}")


def _parse_probe(probe: Any) -> tuple[str, float]:
    """``(kind, argument)`` of a probe name: ``("int8", 0)``, ``("int4", group_size)``, ``("prune", sparsity)``."""
    if not isinstance(probe, str):
        raise _probe_error(probe)
    name, sep, arg = probe.partition(":")
    if name == "int8" and not sep:
        return "int8", 0.0
    if name == "int4":
        from greenmeter.compression.int4 import Int4WeightConfig

        if not sep:
            return "int4", float(Int4WeightConfig().group_size)
        try:
            return "int4", float(Int4WeightConfig(group_size=int(arg)).group_size)
        except (ValueError, ConfigError) as err:
            raise _probe_error(probe, f" ({err})" if isinstance(err, ConfigError) else " (G is not a whole number)") \
                from err
    if name == "prune" and sep:
        try:
            return "prune", fraction(f"the sparsity of {probe!r}", float(arg), high_open=True)
        except ValueError as err:
            raise _probe_error(probe, f" ({err})" if isinstance(err, ConfigError) else " (S is not a number)") \
                from err
    raise _probe_error(probe)


def _check_probes(probes: Any) -> dict[str, tuple[str, float]]:
    if isinstance(probes, str) or not isinstance(probes, Iterable):
        raise ConfigError(f"probes must be a sequence of probe names such as {list(DEFAULT_PROBES)}, not {probes!r}")
    out: dict[str, tuple[str, float]] = {}
    for probe in probes:
        parsed = _parse_probe(probe)
        if probe in out:
            raise ConfigError(f"the probe {probe!r} is named twice; name each probe once")
        out[probe] = parsed
    if not out:
        raise ConfigError(f"probes is empty; name at least one, e.g. {list(DEFAULT_PROBES)}")
    return out


def sensitivity_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers :func:`layer_sensitivity` probes: name -> module for every ``nn.Linear`` and
    ``nn.Conv1d/2d/3d`` (subclasses included) whose ``weight`` is a floating-point tensor, in module order.
    """
    import torch
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.is_floating_point()}


def _kind(module: nn.Module) -> str:
    """The probed class a module is (``"Linear"`` for a subclass of ``nn.Linear``)."""
    from torch import nn

    for base in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(module, base):
            return base.__name__
    return type(module).__name__


def _int8_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` quantize-dequantized per output channel (dim 0) on symmetric int8's grid, as torch.ao's
    per-channel weight observer sets it: ``scale = max|w| / 127.5`` (at least float32's eps), codes -128..127."""
    import torch

    w32 = w.detach().to(torch.float32)
    amax = w32.abs().reshape(len(w32), -1).amax(dim=1)
    scale = torch.clamp(amax / 127.5, min=torch.finfo(torch.float32).eps)
    zero = torch.zeros(len(w32), dtype=torch.int32, device=w32.device)
    return torch.fake_quantize_per_channel_affine(w32, scale, zero, 0, -128, 127).to(w.dtype)


def _int4_weight(module: nn.Module, group_size: int) -> torch.Tensor | None:
    """``module``'s weight as :class:`Int4Linear` would store it (dequantized), ``None`` for a convolution."""
    from torch import nn

    from greenmeter.compression.int4 import Int4Linear

    if not isinstance(module, nn.Linear):
        return None
    q = Int4Linear.from_linear(module, group_size=group_size, symmetric=True, use_kernel=False)
    return q.dequantize_weight().to(device=module.weight.device, dtype=module.weight.dtype)


def _pruned_weight(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``w`` with its ``round(sparsity * numel)`` smallest-magnitude weights set to zero (as
    ``torch.nn.utils.prune.l1_unstructured`` chooses them)."""
    import torch

    k = round(sparsity * w.numel())
    out = w.detach().clone()
    if k:
        idx = torch.topk(out.abs().reshape(-1), k=k, largest=False).indices
        out.view(-1)[idx] = 0
    return out


def probed_weight(module: nn.Module, probe: str) -> torch.Tensor | None:
    """The weight ``module`` has under ``probe`` (a new tensor; ``module`` is not changed).

    Args:
        module: a Linear or Conv1d/2d/3d layer with a float weight.
        probe: a probe name (see :data:`PROBE_FORMS`). For ``"int8"`` this is the weight only: the probe also
            fake-quantizes the layer's input, which needs calibration (see :func:`layer_sensitivity`).

    Returns:
        The perturbed weight, same shape, dtype and device as ``module.weight``; ``None`` where the probe does
        not apply (int4 on a convolution).

    Raises:
        ConfigError: an unknown probe name.
    """
    kind, arg = _parse_probe(probe)
    if kind == "int8":
        return _int8_weight(module.weight)
    if kind == "int4":
        return _int4_weight(module, int(arg))
    return _pruned_weight(module.weight, arg)


def _calibration_inputs(calibration: Any, batches: Sequence[Batch], target_key: str) -> tuple[list[Any], str]:
    """The inputs the int8 probe calibrates on (each as the model is called on it), and where they came from."""
    import torch

    if calibration is None:
        inputs = [b.inputs for b in batches[:CALIBRATION_BATCHES]]
        where = f"the first {len(inputs)} evaluation batches"
    else:
        if isinstance(calibration, (str, bytes)) or not isinstance(calibration, (torch.Tensor, Iterable)):
            raise ConfigError(f"calibration must be an iterable of input tensors, not {type(calibration).__name__}")
        inputs = calibration_inputs(calibration, target_key)
        if not inputs:
            raise ConfigError("calibration yielded no batches; give at least one input tensor or leave it None")
        where = f"{len(inputs)} given batches"
    return inputs, f"{where} ({sum(batch_size_of(x) or 0 for x in inputs)} samples)"


def _input_ranges(model: nn.Module, layers: dict[str, nn.Module], inputs: list[Any]) -> dict[str, Any]:
    """Each layer's input minimum and maximum over the calibration inputs (one pass, a pre-hook per layer)."""
    import torch

    ranges: dict[str, list[float]] = {}

    def observer(name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            low, high = float(x.min()), float(x.max())
            seen = ranges.setdefault(name, [low, high])
            seen[0], seen[1] = min(seen[0], low), max(seen[1], high)

        return hook

    handles = [m.register_forward_pre_hook(observer(n)) for n, m in layers.items()]
    try:
        with torch.inference_mode():
            for x in inputs:
                call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    return ranges


def _activation_quantizer(low: float, high: float) -> Callable[..., tuple[Any, ...]]:
    """A forward pre-hook that fake-quantizes the first input per tensor on the affine 8-bit grid of
    ``[min(low, 0), max(high, 0)]`` (256 levels: quint8 0..255 with a zero point; a qint8 range gives the
    same grid)."""
    import torch

    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255.0, torch.finfo(torch.float32).eps)
    zero = int(min(255, max(0, -round(low / scale))))

    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        q = torch.fake_quantize_per_tensor_affine(x.to(torch.float32), scale, zero, 0, 255).to(x.dtype)
        return (q, *args[1:])

    return hook


def _check_value(value: Any, what: str, metric_name: str) -> float:
    import math

    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the metric {metric_name!r} returned {value!r} for {what}, not a number") from err
    if not math.isfinite(number) and what == "the unchanged model":
        raise ConfigError(f"the metric {metric_name!r} returned {number} for {what}: check the model's outputs "
                          "and the metric function")
    return number


def _check_layers(layers: Any, candidates: dict[str, nn.Module]) -> dict[str, nn.Module]:
    if layers is None:
        if not candidates:
            raise ConfigError("the model has no Linear or Conv1d/2d/3d layer with a float weight to probe")
        return candidates
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, Iterable):
        raise ConfigError(f"layers must be a sequence of layer names, not {type(layers).__name__}")
    names = list(names)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise ConfigError(f"no probeable layer named {', '.join(map(repr, unknown))}; the Linear and Conv layers "
                          f"with a float weight are: {', '.join(candidates) or '(none)'}")
    if not names:
        raise ConfigError("layers is empty; name at least one layer, or pass None for all of them")
    return {n: candidates[n] for n in candidates if n in names}  # in model order


def layer_sensitivity(model: nn.Module, data: Any, *, metric: Callable[[Any, Any], float] | None = None,
                      metric_name: str | None = None, probes: Sequence[str] = DEFAULT_PROBES,
                      batch_size: int = 256, calibration: Iterable[Any] | None = None,
                      layers: Sequence[str] | None = None, progress: bool | Callable[[str], None] = True,
                      target_key: str = DEFAULT_TARGET_KEY, output_fn: OutputFn | None = None) -> Sensitivity:
    """Each layer's metric when that layer alone is quantized or pruned, against the unchanged model's.

    For every probed layer and every probe, only that layer is changed (the rest of the model stays float
    and dense) and the metric is computed on all of ``data``. The work runs on one copy of the model in eval
    mode, without gradients; ``model`` itself is not changed (weights, buffers, training mode).

    Args:
        model: a trained float ``nn.Module``.
        data: ``(inputs, targets)`` tensors, cut into batches of ``batch_size``, or an iterable of batches (a
            ``DataLoader``; dict batches too), as :func:`greenmeter.compare` takes.
        metric: ``metric(outputs, targets) -> float`` over all the data, higher is better, or a batch metric
            object (``reset``, ``update``, ``compute``); default top-1 accuracy of (N, classes) logits.
        metric_name: the metric's name in the record (default ``"accuracy"``, or the function's name).
        probes: probe names: ``"int8"``, ``"int4"``, ``"int4:G"``, ``"prune:S"`` (see the module's docstring).
        batch_size: samples per batch for tensor data, >= 1.
        calibration: input tensors (or ``(x, ...)`` batches, or dict batches) the int8 probe observes each layer's
            input range on; default the first :data:`CALIBRATION_BATCHES` batches of ``data`` (the record says
            which).
        layers: names of the layers to probe (default every Linear and Conv1d/2d/3d with a float weight).
        progress: ``True`` for a line per layer on stderr, ``False`` for none, or a callable given each line.
        target_key: how dict batches give their targets, as for :func:`greenmeter.compare`.
        output_fn: how the model's output is reduced to the tensor the metric sees, as for
            :func:`greenmeter.compare`.

    Returns:
        A :class:`~greenmeter.records.sensitivity.Sensitivity`: per layer, the metric, the drop
        (``baseline - probed``, positive is worse) and, with the built-in accuracy, the samples whose
        correctness changed, under each probe; ``None`` where a probe does not apply (int4 on a convolution;
        int8 on a layer the calibration inputs never call as a module, such as ``nn.MultiheadAttention``'s
        ``out_proj``, whose weight the attention reads directly and which torch.ao's int8 recipes leave in float).
        A probe that makes the metric NaN or infinite (a layer that overflows) keeps that value, and the
        record's ranking helpers count a NaN drop as the largest.

    Raises:
        ConfigError: an unknown probe (the message lists the valid forms), an unknown layer name (the message
            lists the candidates), a bad ``batch_size``, ``progress`` or ``calibration``, empty data, a model
            with no layer to probe, a metric that is not a finite number on the unchanged model, or a layer named
            in ``layers`` that the calibration inputs never call as a module (with an int8 probe).
    """
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    parsed = _check_probes(probes)
    batch_size = whole_number("batch_size", batch_size, minimum=1)
    progress_printer(progress)  # a bad progress fails here, before any work
    check_metric(metric)
    target_key, output_fn = check_target_key(target_key), check_output_fn(output_fn)
    chosen = _check_layers(layers, sensitivity_layers(model))
    batches = evaluation_batches(data, batch_size, target_key=target_key)
    cal_inputs, cal_words = (_calibration_inputs(calibration, batches, target_key)
                             if any(k == "int8" for k, _ in parsed.values()) else ([], "none (no int8 probe)"))
    metric_name = name_of_metric(metric, metric_name)
    targets = [b.targets for b in batches]
    n_samples = sum(b.size for b in batches)

    work = copy.deepcopy(model).eval()
    work_layers = dict(work.named_modules())
    layer_map = {name: work_layers[name] for name in chosen}

    def outputs() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [model_output(work, b.inputs, output_fn) for b in batches]

    def correct(outs: list[torch.Tensor]) -> torch.Tensor:
        return correct_predictions(joined(outs), joined(targets, "targets"))

    base_out = outputs()
    baseline = _check_value(metric_value(metric, base_out, targets), "the unchanged model", metric_name)
    base_correct = correct(base_out) if metric is None else None
    ranges = _input_ranges(work, layer_map, cal_inputs) if cal_inputs else {}

    show = Progress(progress, total=len(layer_map))
    rows = []
    for name, module in layer_map.items():
        metrics: dict[str, float | None] = {}
        drops: dict[str, float | None] = {}
        changed: dict[str, int | None] = {}
        original = module.weight.detach().clone()
        for probe, (kind, _) in parsed.items():
            new = probed_weight(module, probe)
            if new is None:
                metrics[probe] = drops[probe] = changed[probe] = None
                continue
            handle = None
            if kind == "int8":
                if name not in ranges and layers is not None:
                    raise ConfigError(f"the calibration inputs never reached layer {name!r} as a module call; "
                                      "give calibration inputs that run through it")
                if name not in ranges:  # used through its weight (nn.MultiheadAttention's out_proj): not int8's
                    metrics[probe] = drops[probe] = changed[probe] = None
                    continue
                handle = module.register_forward_pre_hook(_activation_quantizer(*ranges[name]))
            try:
                with torch.no_grad():
                    module.weight.copy_(new)
                out = outputs()
            finally:
                with torch.no_grad():
                    module.weight.copy_(original)
                if handle is not None:
                    handle.remove()
            value = _check_value(metric_value(metric, out, targets), f"layer {name!r} under {probe!r}", metric_name)
            metrics[probe], drops[probe] = value, baseline - value
            changed[probe] = None if base_correct is None else int((correct(out) != base_correct).sum())
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(LayerSensitivity(name, _kind(module), params, metrics, drops, changed))
        shown = ", ".join(f"{p} {d:.4f}" for p, d in drops.items() if d is not None)
        show(f"{name}: drop {shown}", advance=1)
    return Sensitivity(metric_name, baseline, n_samples, tuple(parsed), tuple(rows), cal_words)
