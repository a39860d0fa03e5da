"""Energy sources: RAPL, NVML, and the CPU and RAM estimates. See ``_base`` for the contract.

Backends are created by name through :func:`create_backend`, which imports their module only then,
so ``import greenmeter`` stays cheap and never touches hardware or vendor libraries.
"""

from __future__ import annotations

import importlib
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "Domain",
    "ProbeResult",
    "Provenance",
    "Reading",
    "create_backend",
]

_REGISTRY: dict[str, tuple[str, str]] = {
    "rapl": ("greenmeter.sources.rapl", "RaplBackend"),
    "nvml": ("greenmeter.sources.nvml", "NvmlBackend"),
    "cpu-estimate": ("greenmeter.sources.cpu_estimate", "CpuEstimateBackend"),
    "ram-estimate": ("greenmeter.sources.ram_estimate", "RamEstimateBackend"),
}

#: The names ``create_backend`` and ``Meter(backends=[...])`` accept.
BACKEND_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def create_backend(name: str, **options: Any) -> Backend:
    """Create the backend called ``name`` with its constructor options.

    Raises:
        ConfigError: for an unknown name (the message lists the known ones).
    """
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown energy backend {name!r}; choose from {', '.join(BACKEND_NAMES)}"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)
