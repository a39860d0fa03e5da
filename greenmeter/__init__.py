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

Compare a model with compressed variants of it::

    result = greenmeter.compare({"float": model, "int8": "int8-dynamic", "pruned": "prune:0.5"}, (x, y))
    print(result.table())
    greenmeter.write_report(greenmeter.comparison_report(result), "report.html")

Importing greenmeter touches no hardware and loads none of torch, pandas, pynvml or codecarbon.
"""

from __future__ import annotations

from greenmeter._api import current_meter, default_meter, measure, track
from greenmeter._errors import (
    AggregationError,
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
from greenmeter.carbon import (
    CarbonEstimate,
    CarbonSettings,
    GridIntensity,
    estimate_carbon,
)
from greenmeter.comparison import Comparison, VariantResult
from greenmeter.evaluate import Variant, compare
from greenmeter.meter import Meter
from greenmeter.records import (
    DomainEnergy,
    EpochRecord,
    HostInfo,
    LatencyStats,
    Measurement,
)
from greenmeter.report import comparison_report, run_report, store_report, write_report
from greenmeter.store import Store
from greenmeter.window import Window

__all__ = [
    "AggregationError",
    "BackendError",
    "BackendUnavailable",
    "CarbonEstimate",
    "CarbonSettings",
    "Comparison",
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
    "Store",
    "StoreError",
    "UnsupportedModelError",
    "Variant",
    "VariantResult",
    "Window",
    "__version__",
    "compare",
    "comparison_report",
    "current_meter",
    "default_meter",
    "estimate_carbon",
    "measure",
    "run_report",
    "store_report",
    "track",
    "write_report",
]
