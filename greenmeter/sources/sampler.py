"""The background sampler: polls backends that must be read between window edges.

RAPL counters wrap (an AMD package counter within minutes) and some GPUs only report instantaneous
power, so such backends are polled at their ``poll_interval_s``. A failed poll is never hidden: it is
logged once and reported in the flags of every measurement that overlaps it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from greenmeter.sources.base import Backend

__all__ = ["Sampler"]

log = logging.getLogger("greenmeter")


class Sampler:
    """A daemon thread calling ``poll()`` on each backend every ``interval_s`` seconds."""

    def __init__(self, backends: Sequence[Backend], interval_s: float) -> None:
        self.backends = tuple(backends)
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._errors: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._run, name="greenmeter-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poll_once(self) -> None:
        """Poll every backend once, recording (not raising) failures."""
        for backend in self.backends:
            try:
                backend.poll()
            except Exception as err:  # recorded and reported in measurement flags, never hidden
                message = f"polling {backend.name} failed: {type(err).__name__}: {err}"
                if not self._errors or self._errors[-1][1] != message:
                    log.warning("greenmeter: %s", message)
                self._errors.append((time.perf_counter(), message))

    @property
    def has_errors(self) -> bool:
        """Whether any poll has failed since the sampler started."""
        return bool(self._errors)

    def errors_since(self, t0: float) -> list[str]:
        """Distinct poll failures recorded at or after ``time.perf_counter()`` value ``t0``."""
        seen: dict[str, None] = {}
        for t, message in self._errors:
            if t >= t0:
                seen.setdefault(message, None)
        return list(seen)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()

    def stop(self) -> None:
        """Stop the thread and wait for it (at most one interval plus a poll)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5.0)
