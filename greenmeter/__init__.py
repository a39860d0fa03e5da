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

import importlib
from typing import TYPE_CHECKING, Any

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
from greenmeter.meter import Meter
from greenmeter.records import (
    DomainEnergy,
    EpochRecord,
    HostInfo,
    LatencyStats,
    Measurement,
)
from greenmeter.window import Window

if TYPE_CHECKING:
    from greenmeter.comparison import Comparison, VariantResult
    from greenmeter.evaluate import Variant, compare
    from greenmeter.report import comparison_report, run_report, store_report, write_report
    from greenmeter.store import Store

# Loaded on first use, so that ``import greenmeter`` stays cheap for code that only measures.
_LAZY = {
    "Comparison": "greenmeter.comparison",
    "VariantResult": "greenmeter.comparison",
    "Variant": "greenmeter.evaluate",
    "compare": "greenmeter.evaluate",
    "comparison_report": "greenmeter.report",
    "run_report": "greenmeter.report",
    "store_report": "greenmeter.report",
    "write_report": "greenmeter.report",
    "Store": "greenmeter.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'greenmeter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
