"""Compression methods for PyTorch models (installed as ``greenmeter.compression``).

One config object per method and one verb::

    from greenmeter.compression import compress, PruneConfig
    small = compress(model, PruneConfig(sparsity=0.5))   # model itself is left intact
    print(small.compression_info.details)

Importing this package imports torch (``import greenmeter`` alone does not). Each method registers
itself, with its recipe and facts hooks, in :mod:`greenmeter.compression.registry`.
"""

from __future__ import annotations

from greenmeter.compression._core import CompressionInfo, compress
from greenmeter.compression.registry import register_method, registered_methods
from greenmeter.compression.distillation import *  # noqa: F403
from greenmeter.compression.early_exit import *  # noqa: F403
from greenmeter.compression.early_exit import calibrate_threshold, exit_report
from greenmeter.compression.int4 import *  # noqa: F403
from greenmeter.compression.lottery import *  # noqa: F403
from greenmeter.compression.pruning import *  # noqa: F403
from greenmeter.compression.qat import *  # noqa: F403
from greenmeter.compression.quantization import *  # noqa: F403
from greenmeter.compression.sparse import *  # noqa: F403
from greenmeter.compression import distillation, early_exit, int4, lottery, pruning, qat, quantization, sparse

__all__ = sorted(
    ["CompressionInfo", "calibrate_threshold", "compress", "exit_report", "register_method", "registered_methods"]
    + distillation.__all__ + early_exit.__all__ + int4.__all__ + lottery.__all__
    + pruning.__all__ + qat.__all__ + quantization.__all__ + sparse.__all__
)
