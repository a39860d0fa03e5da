"""One verb: ``compress(model, config) -> model``.

Each method has a frozen config dataclass (it validates itself in ``__post_init__``) and a handler
registered for that config type (see :mod:`greenmeter.compression.registry`). ``compress`` deep-copies the
model first, so the caller's baseline is never changed, runs the handler on the copy, and attaches a
:class:`CompressionInfo` to the result (``model.compression_info``): the method, its config, and what the
method reports (real sparsity, per-round accuracy, packed size...).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError
from greenmeter.compression.registry import method_for_config, registered_methods

if TYPE_CHECKING:
    from torch import nn

__all__ = ["CompressionInfo", "compress", "plain_value"]


@dataclass(frozen=True)
class CompressionInfo:
    """What ``compress`` did: the method name, its config as a dict, and the method's own report."""

    method: str
    config: Mapping[str, Any]
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "config": dict(self.config), "details": dict(self.details)}


def plain_value(value: Any) -> Any:
    """A config value as something JSON can hold: plain values as they are, tensors by shape, else repr."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return [plain_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"Tensor(shape={tuple(shape)}, dtype={dtype})"
    if callable(value):
        return getattr(value, "__qualname__", None) or repr(value)
    return repr(value)


def _config_dict(config: Any) -> dict[str, Any]:
    # not dataclasses.asdict: it deep-copies every value, and configs may hold loaders, generators,
    # modules and callables that cannot (or must not) be copied
    if not is_dataclass(config):
        return {}
    return {f.name: plain_value(getattr(config, f.name)) for f in fields(config)}


def compress(model: nn.Module, config: Any) -> nn.Module:
    """Return a compressed copy of ``model``; the input model is left exactly as it was.

    Args:
        model: a ``torch.nn.Module``.
        config: one method's config object (e.g. ``PruneConfig(sparsity=0.5)``).

    Returns:
        The compressed model, with ``compression_info`` (:class:`CompressionInfo`) attached; its details hold
        ``kept_layers`` when the config's ``keep_layers`` named any.

    Raises:
        ConfigError: ``config`` is not a registered method's config.
        UnsupportedModelError, EngineUnavailableError: the method cannot run on this model or machine.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ConfigError(f"compress() needs a torch.nn.Module, not {type(model).__name__}")
    method = method_for_config(config)
    if method is None:
        known = ", ".join(sorted(f"{n} ({c.__name__})" for n, c in registered_methods().items()))
        raise ConfigError(f"{type(config).__name__} is not a compression config; known methods: {known}")
    work = copy.deepcopy(model)
    result, details = method.handler(work, config)
    details = dict(details)
    kept = getattr(config, "keep_layers", ())
    if kept:  # every method with a keep_layers field: the layers it left as they were
        details.setdefault("kept_layers", list(kept))
    result.compression_info = CompressionInfo(method.name, _config_dict(config), details)
    return result
