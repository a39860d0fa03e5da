"""Backends written against the public Backend contract, for testing the meter itself.

They stand in for hardware at the backend boundary: the meter under test is used unchanged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading

PROV = Provenance(kind="measured", source="scripted test counter", method="scripted cumulative values")


class ScriptedBackend(Backend):
    """Returns the next cumulative joule value of a script on each read (the last one repeats)."""

    name = "scripted"

    def __init__(self, values: Iterable[float], *, update_period_s: float = 0.0, key: str = "scripted:dev") -> None:
        self.values = list(values)
        self.reads = 0
        self.key = key
        self.update_period_s = update_period_s
        self.closed = 0

    def probe(self) -> ProbeResult:
        domain = Domain(self.key, "package", True, PROV, self.update_period_s)
        return ProbeResult(self.name, True, domains=(domain,))

    def read(self) -> Reading:
        value = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        return Reading(time.monotonic(), {self.key: value})

    def close(self) -> None:
        self.closed += 1


class ConstantPowerBackend(Backend):
    """Cumulative energy of a device drawing a constant power, from the monotonic clock."""

    name = "constant"

    def __init__(self, power_w: float, *, poll_interval_s: float | None = None, fail_polls: bool = False) -> None:
        self.power_w = power_w
        self.t_open = time.perf_counter()
        self.poll_interval_s = poll_interval_s
        self.fail_polls = fail_polls
        self.polls = 0
        self._lock = threading.Lock()

    def probe(self) -> ProbeResult:
        prov = Provenance("estimated", "constant power test model", "power x time", {"power_w": self.power_w})
        return ProbeResult(self.name, True, domains=(Domain("constant:dev", "gpu", True, prov, 0.0),))

    def read(self) -> Reading:
        return Reading(time.monotonic(), {"constant:dev": self.power_w * (time.perf_counter() - self.t_open)})

    def poll(self) -> None:
        with self._lock:
            self.polls += 1
        if self.fail_polls:
            raise OSError("counter vanished")


class UnavailableBackend(Backend):
    name = "absent"

    def probe(self) -> ProbeResult:
        return ProbeResult(self.name, False, reason="no such device here; plug one in")

    def read(self) -> Reading:  # pragma: no cover - never used when unavailable
        raise AssertionError("read() on an unavailable backend")
