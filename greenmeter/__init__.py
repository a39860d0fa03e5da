"""greenmeter: measure, compress and compare PyTorch models for energy and carbon.

Measure a block or a training function::

    import greenmeter

    with greenmeter.measure("inference", samples=len(x)) as m:
        model(x)
    print(m.measurement.summary())

    @greenmeter.track
    def train():
        for batch in greenmeter.current_meter().iterate(loader):
            ...

Importing greenmeter touches no hardware and loads none of torch, pandas, pynvml or codecarbon.
"""

from __future__ import annotations

from greenmeter._api import current_meter, default_meter, measure, track
from greenmeter._errors import (
    BackendError,
    BackendUnavailable,
    CompressionError,
    ConfigError,
    CorruptStoreError,
    CounterReadError,
    EngineUnavailableError,
    GreenmeterError,
    MeasurementError,
    StoreError,
    UnsupportedModelError,
)
from greenmeter._version import __version__
from greenmeter.backends import Provenance
from greenmeter.carbon import CarbonEstimate, CarbonSettings, GridIntensity, estimate_carbon
from greenmeter.meter import Meter
from greenmeter.records import DomainEnergy, EpochRecord, HostInfo, LatencyStats, Measurement
from greenmeter.window import Window

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "CarbonEstimate",
    "CarbonSettings",
    "CompressionError",
    "ConfigError",
    "CorruptStoreError",
    "CounterReadError",
    "DomainEnergy",
    "EngineUnavailableError",
    "EpochRecord",
    "GreenmeterError",
    "GridIntensity",
    "HostInfo",
    "LatencyStats",
    "Measurement",
    "MeasurementError",
    "Meter",
    "Provenance",
    "StoreError",
    "UnsupportedModelError",
    "Window",
    "__version__",
    "current_meter",
    "default_meter",
    "estimate_carbon",
    "measure",
    "track",
]
