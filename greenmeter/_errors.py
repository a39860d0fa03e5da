"""Every error greenmeter raises, in one place.

The tree::

    GreenmeterError                 root: catch this to catch anything greenmeter raises
    ├── ConfigError                 a wrong argument, option or environment variable (also a ValueError)
    ├── BackendError                an energy source failed while it was in use
    │   └── CounterReadError        a counter file or call could not be read
    ├── BackendUnavailable          a source that was asked for by name cannot be used here
    ├── MeasurementError            a window was used the wrong way (ended twice, never begun, ...)
    ├── AggregationError            gathering torch.distributed ranks' results failed (a rank failed or timed out)
    ├── StoreError                  the run store cannot be used (unwritable, newer, unknown run id, ...)
    │   └── CorruptStoreError       the file at the store path is not a readable greenmeter store
    └── CompressionError            a compression method cannot run on this model or machine
        ├── UnsupportedModelError   the model has a layer or shape the method cannot handle (names both)
        └── EngineUnavailableError  a quantization engine or kernel the method needs is missing here

Vendor errors (``OSError`` from sysfs, ``pynvml.NVMLError``) are wrapped with ``raise ... from err``
so the original stays attached.
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "BackendError",
    "BackendUnavailable",
    "CompressionError",
    "ConfigError",
    "CorruptStoreError",
    "CounterReadError",
    "EngineUnavailableError",
    "GreenmeterError",
    "MeasurementError",
    "StoreError",
    "UnsupportedModelError",
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


class AggregationError(GreenmeterError):
    """Gathering the ranks' results of a torch.distributed job failed: a rank failed, or did not answer within
    the timeout. Each rank's own results were stored before; the message says where."""


class CompressionError(GreenmeterError):
    """A compression method cannot run on this model or machine; the message says why and what to do."""


class UnsupportedModelError(CompressionError):
    """The model has a layer or structure the method cannot handle; the message names the layer and method."""


class EngineUnavailableError(CompressionError):
    """A quantization engine or kernel the method needs is missing on this machine; the message names it."""


class StoreError(GreenmeterError):
    """The run store cannot be used as asked: an unwritable path, a store from a newer greenmeter, an unknown
    or ambiguous run id, a store locked too long by another process. The message names the store's path."""


class CorruptStoreError(StoreError):
    """The file at the store path is not a greenmeter store greenmeter can read (not SQLite, another program's
    database, truncated or damaged). The file is left untouched; the message says what to do."""
