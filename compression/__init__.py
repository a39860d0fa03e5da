"""Compression methods for PyTorch models (installed as ``greenmeter.compression``).

One config object per method and one verb, ``compress(model, config) -> model``. The methods land
with issue #4; this package exists now so the layout and packaging are fixed and tested.
"""

from __future__ import annotations

__all__: list[str] = []
