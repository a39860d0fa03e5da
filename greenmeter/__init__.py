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

from greenmeter.metering.api import current_meter, default_meter, measure, track
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
from greenmeter.sources.base import Provenance
from greenmeter.carbon.settings import (
    CarbonEstimate,
    CarbonSettings,
    GridIntensity,
    estimate_carbon,
)
from greenmeter.metering.meter import Meter
from greenmeter.records.measurement import (
    DomainEnergy,
    EpochRecord,
    HostInfo,
    LatencyStats,
    Measurement,
)
from greenmeter.metering.meter import Window

if TYPE_CHECKING:
    from greenmeter.records.comparison import Comparison, VariantResult
    from greenmeter.comparison.compare import Variant, compare
    from greenmeter.comparison.optimize import optimize
    from greenmeter.records.optimization import OptimizeResult
    from greenmeter.output.report import comparison_report, optimize_report, run_report, store_report, write_report
    from greenmeter.store.database import Store

# Loaded on first use, so that ``import greenmeter`` stays cheap for code that only measures.
_LAZY = {
    "Comparison": "greenmeter.records.comparison",
    "VariantResult": "greenmeter.records.comparison",
    "Variant": "greenmeter.comparison.compare",
    "compare": "greenmeter.comparison.compare",
    "optimize": "greenmeter.comparison.optimize",
    "OptimizeResult": "greenmeter.records.optimization",
    "comparison_report": "greenmeter.output.report",
    "optimize_report": "greenmeter.output.report",
    "run_report": "greenmeter.output.report",
    "store_report": "greenmeter.output.report",
    "write_report": "greenmeter.output.report",
    "Store": "greenmeter.store.database",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'greenmeter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext greenmeter``: register the ``%%greenmeter`` cell magic (see ``greenmeter.integrations.notebook``).

    IPython is imported here, when IPython loads the extension, never by ``import greenmeter``.
    """
    from greenmeter.integrations.notebook import load_ipython_extension as load

    load(ipython)


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
    "OptimizeResult",
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
    "optimize",
    "optimize_report",
    "run_report",
    "store_report",
    "track",
    "write_report",
]
