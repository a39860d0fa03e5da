"""The load ladder: a short, timed series of known loads, stored as runs, for a wall meter to be fitted against.

``greenmeter calibrate --load-ladder`` runs, ``repeats`` times, four steps of ``step_s`` seconds each:

- ``idle``: nothing (this process sleeps);
- ``one core``: one CPU kept busy (a loop in this process);
- ``all cores``: every logical CPU kept busy (this process and ``n - 1`` child processes);
- ``memory``: a large buffer (``memory_gb``), made resident before the step, its pages written over and over
  (memory-bound, one core busy).

Each step is its own stored run (named ``calibrate ladder: <step> (<repeat>)``) with one window, measured by
the CPU estimate in machine mode (so every process's CPU time counts: the wall sees the whole machine) and
the RAM estimate in process mode (so the buffer shows: installed memory would be the same at every step).
With a meter logging all along, ``greenmeter calibrate LOG`` then fits this machine's coefficients from
these runs. The default (4 steps x 2 repeats x 20 s) takes under three minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenmeter._checks import number, whole_number

if TYPE_CHECKING:
    from greenmeter.store.database import Store

__all__ = ["DEFAULT_STEP_S", "LADDER_STEPS", "run_load_ladder"]

#: The ladder's steps, in the order they run.
LADDER_STEPS = ("idle", "one core", "all cores", "memory")
#: The default length of one step, in seconds.
DEFAULT_STEP_S = 20.0
_PAGE = 4096
_BUSY = "import time\nend = time.monotonic() + {seconds!r}\nwhile time.monotonic() < end:\n    pass\n"


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _all_cores(seconds: float) -> None:
    workers = [subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=seconds)])
               for _ in range(max(0, (os.cpu_count() or 1) - 1))]
    try:
        _busy(seconds)
    finally:
        for worker in workers:
            worker.wait()


def _buffer(memory_gb: float) -> bytearray:
    """A buffer of ``memory_gb`` GB with every page written, so it is resident before the step is measured."""
    buffer = bytearray(max(_PAGE, int(memory_gb * (1 << 30))))
    buffer[::_PAGE] = b"\x01" * len(range(0, len(buffer), _PAGE))
    return buffer


def _touch(buffer: bytearray, seconds: float) -> None:
    """Write every page of ``buffer`` over and over for ``seconds``: a memory-bound load."""
    pages = len(range(0, len(buffer), _PAGE))
    end = time.monotonic() + seconds
    value = 1
    while time.monotonic() < end:
        value = value % 255 + 1
        buffer[::_PAGE] = bytes([value]) * pages


def _default_memory_gb() -> float:
    try:
        import psutil

        available = psutil.virtual_memory().available / (1 << 30)
    except (ImportError, OSError):
        return 0.5
    return max(0.1, min(2.0, available / 4))


def run_load_ladder(store: Store | str | os.PathLike[str] | bool = True, *, step_s: float = DEFAULT_STEP_S,
                    repeats: int = 2, memory_gb: float | None = None,
                    progress: bool | Callable[[str], None] = True) -> list[str]:
    """Run the load ladder (see the module docstring) and store each step as a run.

    Args:
        store: where the runs go (the ``store=`` rule of :func:`~greenmeter.store.recorder.open_store`).
        step_s: the length of each step, in seconds (> 0).
        repeats: how many times the four steps run (>= 1); two or more give the fit held-out windows.
        memory_gb: the memory step's buffer, in GB (2**30 bytes); default a quarter of the available
            memory, from 0.1 to 2 GB.
        progress: ``True`` (a line per step on standard error), ``False``, or a callable given each line.

    Returns:
        The stored runs' ids, in the order they ran.

    Raises:
        ConfigError: a bad argument (checked before any step runs).
    """
    from greenmeter.comparison.progress import progress_printer
    from greenmeter.metering.meter import Meter
    from greenmeter.sources.cpu_estimate import CpuEstimateBackend
    from greenmeter.sources.ram_estimate import RamEstimateBackend
    from greenmeter.store.recorder import check_store, open_store

    step_s = number("step_s", step_s, low=0, low_open=True, unit="seconds")
    repeats = whole_number("repeats", repeats, minimum=1)
    memory_gb = _default_memory_gb() if memory_gb is None else number("memory_gb", memory_gb, low=0, low_open=True)
    show = progress_printer(progress, prefix="[ladder] ")
    check_store(store)
    loads: dict[str, Callable[[bytearray | None], Any]] = {
        "idle": lambda _: time.sleep(step_s),
        "one core": lambda _: _busy(step_s),
        "all cores": lambda _: _all_cores(step_s),
        "memory": lambda buffer: _touch(buffer, step_s),  # type: ignore[arg-type]
    }
    opened = open_store(store)
    run_ids: list[str] = []
    total = len(LADDER_STEPS) * repeats
    try:
        for repeat in range(1, repeats + 1):
            for step in LADDER_STEPS:
                show(f"[{len(run_ids) + 1}/{total}] {step} for {step_s:g} s")
                # the buffer is made resident before the RAM estimate's first sample, so all the step holds it
                buffer = _buffer(memory_gb) if step == "memory" else None
                backends = [CpuEstimateBackend("machine"),
                            RamEstimateBackend("process", sample_interval_s=min(0.5, step_s / 4))]
                with Meter(backends, store=opened, name=f"calibrate ladder: {step} ({repeat})", sync=None) as meter:
                    with meter.window(step):
                        loads[step](buffer)
                del buffer
                assert meter.run_id is not None
                run_ids.append(meter.run_id)
    finally:
        if opened is not None and opened is not store:
            opened.close()
    show(f"done: {total} runs stored; now run `greenmeter calibrate LOG` with the meter's log of this time")
    return run_ids
