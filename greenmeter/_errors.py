"""Every error greenmeter raises, in one place.

The tree::

    GreenmeterError                 root: catch this to catch anything greenmeter raises
    ├── ConfigError                 a wrong argument, option or environment variable (also a ValueError)
    ├── BackendError                an energy source failed while it was in use
    │   └── CounterReadError        a counter file or call could not be read
    ├── BackendUnavailable          a source that was asked for by name cannot be used here
    └── MeasurementError            a window was used the wrong way (ended twice, never begun, ...)

Vendor errors (``OSError`` from sysfs, ``pynvml.NVMLError``) are wrapped with ``raise ... from err``
so the original stays attached.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "CounterReadError",
    "GreenmeterError",
    "MeasurementError",
]


class GreenmeterError(Exception):
    """Root of every error greenmeter raises."""


class ConfigError(GreenmeterError, ValueError):
    """A configuration value (argument, option, environment variable) is wrong; the message says which."""


class BackendError(GreenmeterError):
    """An energy source failed while in use."""


class CounterReadError(BackendError):
    """A hardware counter (a sysfs file, an NVML call) could not be read."""


class BackendUnavailable(GreenmeterError):
    """A source the user asked for by name cannot be used on this machine; the message says why and the fix."""


class MeasurementError(GreenmeterError):
    """A window or meter was used the wrong way (ended twice, ended without a begin, ...)."""
