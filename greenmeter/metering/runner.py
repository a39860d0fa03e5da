"""Measure an unmodified command and its whole process tree: what ``greenmeter run`` does.

The meter starts (probing hardware) before the command, one window spans the command's life, and a
power timeline is sampled while it runs. The command runs in its own process group, so Ctrl-C and
SIGTERM sent to greenmeter are forwarded to the command and all its children; what was measured up to
then is stored as an interrupted run, and greenmeter says so.

CPU time is counted for the whole tree: ``os.times()`` includes every reaped descendant once the
command has been waited for (a shell's short-lived grandchildren included), and while it runs the
estimate backends follow the live tree with psutil so the timeline shows its power.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from greenmeter._checks import number
from greenmeter._errors import ConfigError
from greenmeter.metering.cpu_load import LoadWatch, busy_flag
from greenmeter.metering.meter import Meter
from greenmeter.records.measurement import Measurement

if TYPE_CHECKING:
    from greenmeter.carbon.settings import CarbonSettings
    from greenmeter.store.database import Store
    from greenmeter.store.recorder import RunRecorder

__all__ = ["CommandResult", "run_command"]

_FORWARDED = (signal.SIGINT, signal.SIGTERM)
_GRACE_S = 10.0  # after a forwarded signal, how long the command gets before SIGKILL


@dataclass(frozen=True)
class CommandResult:
    """The outcome of a measured command.

    Attributes:
        exit_code: the command's exit status as a shell reports it (128 + N when killed by signal N).
        measurement: the window spanning the command's life, carbon included.
        interrupted_by: ``"SIGINT"`` or ``"SIGTERM"`` when greenmeter received and forwarded one.
        run_id: the run's id in the store, or ``None`` when not stored.
        timeline: ``(seconds since start, domain key, watts)`` power samples taken while it ran.
    """

    exit_code: int
    measurement: Measurement
    interrupted_by: str | None
    run_id: str | None
    timeline: tuple[tuple[float, str, float], ...]


def _own_process_group() -> dict[str, object]:
    """Popen arguments that start the command in a process group of its own (same session and terminal)."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}  # pragma: no cover - Python 3.10


def _resolve(argv: Sequence[str]) -> list[str]:
    if not argv:
        raise ConfigError("no command given: use `greenmeter run [OPTIONS] -- COMMAND [ARGS...]`")
    program = argv[0]
    if os.sep not in program and shutil.which(program) is None:
        raise ConfigError(f"command not found: {program!r} (not on PATH); check the spelling or give its path")
    if os.sep in program and not os.access(program, os.X_OK):
        raise ConfigError(f"cannot execute {program!r}: no such file, or it is not executable")
    return list(argv)


def run_command(
    argv: Sequence[str],
    *,
    meter: Meter | None = None,
    carbon: CarbonSettings | None = None,
    store: Store | str | os.PathLike[str] | bool | None = None,
    name: str | None = None,
    interval_s: float = 1.0,
    on_started: Callable[[int], None] | None = None,
) -> CommandResult:
    """Run ``argv`` to completion under a meter and return its measurement.

    Args:
        argv: the command and its arguments (no shell is involved; pass ``["sh", "-c", "..."]`` for one).
        meter: the meter to use (default: ``Meter(mode="process", sync=None)``, following the command's tree).
        carbon: grid intensity and PUE settings (default: the world average, marked as assumed).
        store: where to store the run: a :class:`~greenmeter.store.database.Store` (left open), a path or ``True``
            for the default store (opened and closed here); ``None`` stores nothing. The run is started as
            ``running`` once the command runs and finished ``ok``, ``failed`` (a non-zero exit code) or
            ``interrupted`` (a forwarded signal), with the window and the power timeline.
        name: the run's name (default: the command line).
        interval_s: seconds between power-timeline samples.
        on_started: called with the command's pid once it runs (tests use it).

    Raises:
        ConfigError: no command, a command that does not exist or cannot run, a bad interval or ``store``.
            Nothing is stored in that case.
        StoreError: the store cannot be opened (before the command runs).
    """
    number("the timeline interval", interval_s, low=0, low_open=True, unit="seconds")
    argv = _resolve(argv)
    if store is None:
        return _run(argv, meter, carbon, None, name, interval_s, on_started)
    from greenmeter.store.recorder import opened_store

    with opened_store(store) as target:
        return _run(argv, meter, carbon, target, name, interval_s, on_started)


def _run(
    argv: list[str], meter: Meter | None, carbon: CarbonSettings | None, store: Store | None, name: str | None,
    interval_s: float, on_started: Callable[[int], None] | None,
) -> CommandResult:
    """:func:`run_command` once its arguments are checked and its store (if any) is open."""
    meter = meter or Meter(mode="process", sync=None, carbon=carbon)
    label = name or " ".join(argv)
    meter.start()
    window = meter.begin(label)
    watch = LoadWatch()
    try:
        child = subprocess.Popen(argv, **_own_process_group())
    except OSError as err:
        meter.end(window, error=err)  # closes the window; the run is not stored
        raise ConfigError(f"cannot run {argv[0]!r}: {err.strerror or err}") from err
    for backend in meter.backends:
        follow = getattr(backend, "follow", None)
        if follow is not None and getattr(backend, "mode", None) == "process":
            follow(child.pid)
    recorder: RunRecorder | None = None
    if store is not None:
        from greenmeter.store.recorder import RunRecorder

        recorder = RunRecorder(store, name=label, kind="run", command=argv, host=meter.host, carbon_settings=carbon)
    if on_started is not None:
        on_started(child.pid)

    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    timeline: list[tuple[float, str, float]] = []
    try:
        status = _wait(child, meter, window.t0, interval_s, timeline, received)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code < 0:
        exit_code = 128 - exit_code
    busy = busy_flag(watch.other_cores(), "the command", remedy=(
        "measure on a quiet machine, or let the command use fewer threads than the cores left free "
        "(e.g. OMP_NUM_THREADS=1); processes the command left running in the background count as other load"))
    measurement = meter.end(window, flags=() if busy is None else (busy,))
    interrupted = signal.Signals(received[0]).name if received else None
    if recorder is not None:
        recorder.add_window(measurement)
        recorder.add_power_samples(timeline)
        recorder.finish(  # interrupted by a forwarded signal, else failed for a non-zero exit code, else ok
            exit_code=exit_code, interrupted_by=interrupted, measurement=measurement,
            note=f"interrupted by {interrupted}; stored what was measured until the command ended"
            if interrupted else None,
        )
    return CommandResult(exit_code, measurement, interrupted, recorder.run_id if recorder else None,
                         tuple(timeline))


def _wait(
    child: subprocess.Popen[bytes], meter: Meter, t0: float, interval_s: float,
    timeline: list[tuple[float, str, float]], received: list[int],
) -> int:
    """Reap the child (in this thread, so timeline reads never race the reaping) and sample power."""
    last_t, last_e = meter.read()
    next_sample = last_t + interval_s
    deadline: float | None = None
    while True:
        pid, status = os.waitpid(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return status
        now = time.perf_counter()
        if received and deadline is None:
            deadline = now + _GRACE_S
        if deadline is not None and now > deadline:
            print(f"greenmeter: the command did not stop within {_GRACE_S:.0f} s of the signal; killing it",
                  file=sys.stderr)
            os.killpg(child.pid, signal.SIGKILL)
            deadline = float("inf")
        if now >= next_sample:
            t, energy = meter.read()
            dt = t - last_t
            if dt > 0:
                for key, joules in energy.items():
                    timeline.append((t - t0, key, max(0.0, (joules - last_e[key]) / dt)))
            last_t, last_e = t, energy
            next_sample = t + interval_s
        time.sleep(min(0.02, interval_s / 4))
