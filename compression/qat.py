"""Quantization-aware training: fine-tune with fake quantization, then convert to a real int8 model.

The model is prepared in FX graph mode (``torch.ao.quantization.quantize_fx.prepare_qat_fx``: conv, batch
norm and ReLU fused, fake-quantize modules on weights and activations), handed in training mode to the
user's ``train_fn(model)`` (greenmeter never owns the data), then switched to eval mode and converted
with ``convert_fx``. The result holds real integer modules and no ``FakeQuantize`` module: fake
quantization in float32 is a training device, not a deployment. Same API choice, engines and
deprecation handling as static int8 (see :mod:`greenmeter.compression.quantization`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._checks import module_names
from greenmeter._errors import CompressionError, ConfigError, UnsupportedModelError
from greenmeter.compression._core import compress
from greenmeter.compression.quantization import (
    INT8_FACTS,
    TORCH_AO_API,
    check_engine,
    inside_fx_calls,
    int8_layout,
    int8_on_cpu,
    integer_modules,
    keep_float_fx,
    quantized_engine,
    resolve_engine,
    torch_ao_notices,
    unwrap_kept_fx,
)
from greenmeter.compression.registry import RecipeSpec, register_method

if TYPE_CHECKING:
    from torch import nn

    from greenmeter.comparison.recipes import RecipeContext

__all__ = ["QATConfig", "qat_float_layers"]


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware training followed by conversion to int8.

    Attributes:
        train_fn: ``train_fn(model) -> None`` fine-tunes the fake-quantized model in place; it gets the
            model in training mode (a few epochs at a lowered learning rate is typical).
        engine: ``"auto"`` or a quantized engine name (see ``QUANT_ENGINES``).
        keep_layers: qualified module names (as in ``model.named_modules()``, e.g. ``("classifier.2",)``) of
            layers left in float: no fake quantization, not fused with their neighbours, the same module in the
            result (``train_fn`` still trains its weights). Each must be a layer that this method quantizes
            (Linear, Conv, BatchNorm, ...; checked when the model is known), and not all of them.
    """

    train_fn: Callable[[nn.Module], Any]
    engine: str = "auto"
    keep_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not callable(self.train_fn):
            raise ConfigError(f"train_fn must be a callable train_fn(model), not {type(self.train_fn).__name__}")
        check_engine(self.engine)
        object.__setattr__(self, "keep_layers", module_names("QATConfig.keep_layers", self.keep_layers))


def _qat_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    train = ctx.trainer("qat")
    config = QATConfig(train_fn=lambda m: train(m, None), keep_layers=ctx.keep_layers)
    return compress(model, config), ctx.trainer_details()


def qat_float_layers(model: nn.Module) -> list[str]:
    """The layers quantization-aware training must be told to keep in float (``keep_layers``, the recipe's
    ``[keep=...]``) for this model: its embeddings (torch.ao's QAT cannot fake-quantize them) and the layers
    inside modules FX graph mode calls whole (an ``nn.TransformerEncoder``'s Linear layers, which it could
    train with fake-quantized weights but not convert to int8)."""
    from torch import nn

    embeddings = [n for n, m in model.named_modules() if n and isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    return embeddings + [n for names in _fake_quantized_unconverted(model).values() for n in names]


def _fake_quantized_unconverted(model: nn.Module) -> dict[str, list[str]]:
    """The layers QAT would swap for fake-quantized ones (torch.ao's QAT module mapping) inside modules FX calls
    whole, where convert cannot reach them, by outer module."""
    from torch.ao.quantization.quantization_mappings import get_default_qat_module_mappings

    return inside_fx_calls(model, tuple(get_default_qat_module_mappings()))


def _refuse_integer_observations(prepared: Any, fake_type: type) -> list[Any]:
    """Hooks on ``prepared``'s fake-quantize modules that stop training with an UnsupportedModelError naming the
    tensor when one is given an integer tensor (torch.ao's own error, "expected scalar type Float but found Long",
    names neither the tensor nor the fix). Returns the hook handles, to remove after training."""
    import torch

    what: dict[str, str] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.args and isinstance(node.args[0], torch.fx.Node):
            source = node.args[0]
            users = ", ".join(sorted(u.name for u in node.users)) or "the output"
            what[str(node.target)] = (f"the model's input {source.target!r}" if source.op == "placeholder" else
                                      f"the result of {source.name!r}") + f" (used by {users})"

    def check(name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex()):
                raise UnsupportedModelError(
                    f"quantization-aware training would fake-quantize {what.get(name, name)}, an integer tensor "
                    f"({str(x.dtype).removeprefix('torch.')}): torch.ao's QAT observes float tensors only. Cast it "
                    "to float in the model's forward before any arithmetic on it (attention_mask.float()), or leave "
                    "the module that takes it in float with keep_layers (the recipe's [keep=NAME])")
        return hook

    return [module.register_forward_pre_hook(check(name)) for name, module in prepared.named_modules()
            if isinstance(module, fake_type)]


@register_method("qat_int8", QATConfig, facts=INT8_FACTS, recipe=RecipeSpec(
    "qat", _qat_recipe, trains=True, makes_quantized=True, keeps_layers=True, description="quantization-aware fine-tuning, converted to int8"))
def _qat(model: nn.Module, config: QATConfig) -> tuple[nn.Module, Mapping[str, Any]]:
    engine = resolve_engine(config.engine)
    notices: list[str] = []
    with torch_ao_notices(notices), quantized_engine(engine):
        from torch.ao.quantization import FakeQuantizeBase, get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

        for outer, inner in _fake_quantized_unconverted(model).items():
            left = [n for n in inner if n not in config.keep_layers]
            if left:
                shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
                raise UnsupportedModelError(
                    f"quantization-aware training (FX graph mode) calls {outer!r} ({type(model.get_submodule(outer)).__name__}) "
                    f"as one module, so it cannot convert the {len(left)} layer(s) inside it to int8 ({shown}): it "
                    "would train them with fake-quantized weights and leave them float. Keep them in float with "
                    "keep_layers (the recipe's [keep=...]; qat_float_layers(model) lists them), or use int8-dynamic, "
                    "which quantizes them")
        model.train()
        layout = int8_layout(model)
        mapping = get_default_qat_qconfig_mapping(engine)
        custom = keep_float_fx(model, config.keep_layers, mapping, "QATConfig.keep_layers",
                               "quantization-aware training")
        try:
            prepared = prepare_qat_fx(model, mapping, example_inputs=(), prepare_custom_config=custom)
        except Exception as err:  # FX tracing fails in many ways (TraceError, TypeError, ...)
            raise UnsupportedModelError(
                f"quantization-aware training (FX graph mode) cannot trace {type(model).__name__}: {err}"
            ) from err
        fake = sum(isinstance(m, FakeQuantizeBase) for m in prepared.modules())
        prepared.train()
        handles = _refuse_integer_observations(prepared, FakeQuantizeBase)
        try:
            config.train_fn(prepared)
        finally:
            for handle in handles:
                handle.remove()
        prepared.eval()
        prepared, moved = int8_on_cpu(prepared)  # trained where it was; converted on the CPU, where int8 runs
        result = unwrap_kept_fx(convert_fx(prepared))
    left = [type(m).__name__ for m in result.modules() if isinstance(m, FakeQuantizeBase)]
    counts = integer_modules(result)
    if left or not counts:
        raise CompressionError(
            f"QAT conversion left {len(left)} fake-quantize modules and {sum(counts.values())} integer "
            "modules; the model is not really quantized"
        )
    details = {
        "api": TORCH_AO_API.format("quantize_fx.prepare_qat_fx/convert_fx"),
        "engine": engine,
        "fake_quant_modules_trained": fake,
        "integer_modules": counts,
        "quantized_layers": sum(counts.values()),
        "notices": notices,
        **({"layout": layout} if layout else {}),
        **moved,
    }
    return result.eval(), details
