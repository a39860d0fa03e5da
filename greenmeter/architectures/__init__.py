"""Architectures that cost less energy per token than their standard counterparts.

``LinearAttention`` is a drop-in for ``torch.nn.MultiheadAttention`` whose time and memory grow linearly
with sequence length (kernel feature-map attention); see ``docs/architectures.md`` for when it pays off::

    from greenmeter.architectures import LinearAttention
    attn = LinearAttention(64, 4, batch_first=True)
    out, _ = attn(x, x, x, is_causal=True)

Importing this package imports torch (``import greenmeter`` alone does not).
"""

from __future__ import annotations

from greenmeter.architectures import linear_attention
from greenmeter.architectures.linear_attention import *  # noqa: F403
from greenmeter.architectures.search import Evolution, Objective, SearchBudget, SuccessiveHalving, search_architectures
from greenmeter.architectures.search_cache import SearchCache, hardware_fingerprint
from greenmeter.architectures.search_compare import compare_found
from greenmeter.architectures.search_eval import SearchTask, digits_task
from greenmeter.architectures.search_records import Candidate, Correlation, RungResult, SearchResult, correlate
from greenmeter.architectures.search_space import DIGITS_BASELINE_CONFIG, SearchSpace, config_key, digits_cnn_space

_SEARCH = [
    "DIGITS_BASELINE_CONFIG", "Candidate", "Correlation", "Evolution", "Objective", "RungResult", "SearchBudget",
    "SearchCache", "SearchResult", "SearchSpace", "SearchTask", "SuccessiveHalving", "compare_found", "config_key",
    "correlate", "digits_cnn_space", "digits_task", "hardware_fingerprint", "search_architectures",
]
__all__ = sorted([*linear_attention.__all__, *_SEARCH])
