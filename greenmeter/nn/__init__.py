"""Architectures that cost less energy per token than their standard counterparts.

``LinearAttention`` is a drop-in for ``torch.nn.MultiheadAttention`` whose time and memory grow linearly
with sequence length (kernel feature-map attention); see ``docs/architectures.md`` for when it pays off::

    from greenmeter.nn import LinearAttention
    attn = LinearAttention(64, 4, batch_first=True)
    out, _ = attn(x, x, x, is_causal=True)

Importing this package imports torch (``import greenmeter`` alone does not).
"""

from __future__ import annotations

from greenmeter.nn import linear_attention
from greenmeter.nn.linear_attention import *  # noqa: F403

__all__ = sorted(linear_attention.__all__)
