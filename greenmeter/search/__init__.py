"""Hardware-aware architecture search: pick an architecture that is cheap on this machine to begin with.

See ``docs/architectures.md``. Importing this package imports torch (``import greenmeter`` alone does not).
"""

from __future__ import annotations

from greenmeter.search.strategy import Evolution, Objective, SearchBudget, SuccessiveHalving, search_architectures
from greenmeter.search.cache import SearchCache, hardware_fingerprint
from greenmeter.search.compare import compare_found
from greenmeter.search.evaluate import SearchTask, digits_task
from greenmeter.search.records import Candidate, Correlation, RungResult, SearchResult, correlate
from greenmeter.search.space import DIGITS_BASELINE_CONFIG, SearchSpace, config_key, digits_cnn_space

_SEARCH = [
    "DIGITS_BASELINE_CONFIG", "Candidate", "Correlation", "Evolution", "Objective", "RungResult", "SearchBudget",
    "SearchCache", "SearchResult", "SearchSpace", "SearchTask", "SuccessiveHalving", "compare_found", "config_key",
    "correlate", "digits_cnn_space", "digits_task", "hardware_fingerprint", "search_architectures",
]
__all__ = sorted(_SEARCH)
