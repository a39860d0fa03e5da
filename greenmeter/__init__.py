"""greenmeter: measure, compress and compare PyTorch models for energy and carbon."""

from __future__ import annotations

from greenmeter._errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    CounterReadError,
    GreenmeterError,
    MeasurementError,
)
from greenmeter._version import __version__

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "CounterReadError",
    "GreenmeterError",
    "MeasurementError",
    "__version__",
]
