"""CPU time that other processes used while greenmeter measured.

On a machine that other work keeps busy, a PyTorch model's threads wait for a core (OpenMP threads spin
while they wait), so latency and the CPU-time based energy estimate both grow with the other load, not
with the model. ``compare`` watches for this and says so in its flags instead of letting the figures
pass as a quiet machine's. The counters are the CPU estimate's own (``greenmeter.sources.cpu_estimate``):
this process's CPU time with its reaped children, and the machine's busy time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from greenmeter.sources.cpu_estimate import machine_busy_s, process_cpu_s

__all__ = ["BUSY_LIMIT_CORES", "LoadWatch", "busy_flag", "machine_busy_s", "process_cpu_s"]

#: Other processes' mean load, in cores, above which a comparison is flagged as measured on a busy machine.
BUSY_LIMIT_CORES = 0.25


class LoadWatch:
    """Started on creation; :meth:`other_cores` is the mean number of cores other processes kept busy since.

    The clocks are arguments so that tests can script them.
    """

    def __init__(self, machine: Callable[[], float | None] = machine_busy_s, own: Callable[[], float] = process_cpu_s,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._machine, self._own, self._clock = machine, own, clock
        self._start = (clock(), machine(), own())

    def other_cores(self) -> float | None:
        """Other processes' mean load in cores since the start (>= 0), or None where it cannot be known."""
        t0, busy0, own0 = self._start
        t1, busy1, own1 = self._clock(), self._machine(), self._own()
        if busy0 is None or busy1 is None or t1 <= t0:
            return None
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


_COMPARE_REMEDY = ("measure on a quiet machine, or with fewer threads than the cores left free (compare(threads=1), "
                   "greenmeter compare --threads 1, torch.set_num_threads)")


def busy_flag(other_cores: float | None, what: str, threads: int | None = None,
              remedy: str = _COMPARE_REMEDY) -> str | None:
    """The warning for a measurement made while other processes used more than :data:`BUSY_LIMIT_CORES`."""
    if other_cores is None or other_cores <= BUSY_LIMIT_CORES:
        return None
    cores = os.cpu_count() or 1
    torch_threads = f"; torch used {threads} thread(s)" if threads else ""
    return (f"other processes kept {other_cores:.2f} of this machine's {cores} cores busy during {what}{torch_threads}: "
            f"threads waiting for a core inflate latency and CPU-time energy estimates; {remedy}")
