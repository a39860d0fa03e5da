"""Measure an unmodified command and its whole process tree: what ``greenmeter run`` does.

The meter starts (probing hardware) before the command, one window spans the command's life, and a
power timeline is sampled while it runs. The command runs in its own process group, so Ctrl-C and
SIGTERM sent to greenmeter are forwarded to the command and all its children; what was measured up to
then is stored as an interrupted run, and greenmeter says so. A signal that comes while greenmeter is
starting (before the command runs) stops it there: the command is not started, the run is finished
``interrupted``, and the signal's interruption is raised. One that comes after the command ended waits
until the run is stored whole (with the command's own status and exit code), then takes effect.

The command is never orphaned by greenmeter: the store is written to (the run started) before the command
starts, so an unwritable store stops greenmeter first; once the command runs, a failing meter stops only
the measuring (the run keeps what was measured before, marked failed with why) and a failing store loses
only the record, and greenmeter still waits for the command and keeps its exit code. On Linux the command
is started with ``PR_SET_PDEATHSIG`` so that it gets SIGTERM if greenmeter itself is killed.

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
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from greenmeter._checks import number
from greenmeter._text import terminal_text
from greenmeter._errors import ConfigError, GreenmeterError, StoreError
from greenmeter.metering.cpu_load import LoadWatch, busy_flag
from greenmeter.metering.interrupts import Terminated
from greenmeter.metering.meter import Meter
from greenmeter.records.measurement import Measurement

if TYPE_CHECKING:
    from greenmeter.carbon.settings import CarbonSettings
    from greenmeter.store.database import Store
    from greenmeter.store.recorder import RunRecorder

__all__ = ["CommandResult", "run_command"]

_FORWARDED = (signal.SIGINT, signal.SIGTERM)
_GRACE_S = 10.0  # after a forwarded signal, how long the command gets before SIGKILL
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

T = TypeVar("T")


@dataclass(frozen=True)
class CommandResult:
    """The outcome of a measured command.

    Attributes:
        exit_code: the command's exit status as a shell reports it (128 + N when killed by signal N).
        measurement: the window spanning the command's life, carbon included.
        interrupted_by: ``"SIGINT"`` or ``"SIGTERM"`` when greenmeter received and forwarded one.
        run_id: the run's id in the store, or ``None`` when not stored.
        timeline: ``(seconds since start, domain key, watts)`` power samples taken while it ran.
        measuring_stopped: why measuring stopped before the command ended (the meter failed; the
            measurement then covers only the time before, is marked failed and says so in its flags), else ``None``.
        store_error: why the run could not be stored, or stored only in part, else ``None``.
    """

    exit_code: int
    measurement: Measurement
    interrupted_by: str | None
    run_id: str | None
    timeline: tuple[tuple[float, str, float], ...]
    measuring_stopped: str | None = None
    store_error: str | None = None


def _child_options() -> dict[str, Any]:
    """Popen arguments: the command in a process group of its own (same session and terminal) and, on Linux,
    ended by SIGTERM when greenmeter dies (:func:`_parent_death_signal`)."""
    arm = _parent_death_signal()
    if sys.version_info >= (3, 11):
        return {"process_group": 0} if arm is None else {"process_group": 0, "preexec_fn": arm}

    def setup() -> None:  # pragma: no cover - Python 3.10
        os.setpgrp()
        if arm is not None:
            arm()

    return {"preexec_fn": setup}  # pragma: no cover - Python 3.10


def _parent_death_signal() -> Callable[[], None] | None:
    """A function for the child (between fork and exec) that asks Linux for SIGTERM when greenmeter dies.

    ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: if greenmeter is killed (even by SIGKILL, which it cannot forward),
    the kernel sends the command SIGTERM. Linux sends it when the *thread* that started the command ends, which
    is never before :func:`run_command` returns, as that thread waits for the command. Everything the child
    calls is prepared here, in greenmeter, so the child imports nothing and takes no lock before ``exec``.
    ``None`` off Linux, or where libc has no ``prctl``.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a Linux libc without prctl
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent, sigterm, getppid, kill, getpid = os.getpid(), int(signal.SIGTERM), os.getppid, os.kill, os.getpid

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if getppid() != parent:  # greenmeter died before prctl took effect: end as the signal would have made us
            kill(getpid(), sigterm)

    return arm


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
            ``running`` just before the command starts (so a store that cannot be written is found first) and
            finished ``ok``, ``failed`` (a non-zero exit code, or measuring that stopped) or ``interrupted``
            (a forwarded signal), with the window and the power timeline.
        name: the run's name (default: the command line).
        interval_s: seconds between power-timeline samples.
        on_started: called with the command's pid once it runs (tests use it).

    Once the command runs, nothing greenmeter meets ends it early or loses its exit code: a meter that fails
    stops the measuring (``measuring_stopped`` and the measurement's flags say why; the measurement covers the
    time before), and a store that fails leaves ``store_error`` set; each is warned about in one line on
    standard error. On Linux the command gets SIGTERM if greenmeter dies (``PR_SET_PDEATHSIG``).

    Raises:
        ConfigError: no command, a command that does not exist or cannot run, a bad interval or ``store``.
            Nothing is stored, except for a command that passed the checks but failed to start: its run is
            finished ``failed`` with a note saying why.
        StoreError: the store cannot be opened or written (before the command runs).
        KeyboardInterrupt: SIGINT (or :class:`~greenmeter.metering.interrupts.Terminated`: SIGTERM) came before
            the command started, which is then not started (its run is finished ``interrupted``). A signal
            that comes after the command ended is delivered once the run is stored, to the handler in place
            before (Ctrl-C raises ``KeyboardInterrupt``; SIGTERM with its default action ends the process).
            Signals are caught only when this runs in the main thread; elsewhere they are the program's.
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
    with _Signals() as signals:  # from here SIGINT and SIGTERM are the command's (and held until it starts)
        meter.start()
        window = meter.begin(label)
        recorder: RunRecorder | None = None
        if store is not None:
            from greenmeter.store.recorder import RunRecorder

            # Started before the command: a store that cannot be written stops greenmeter here, before the command.
            try:
                recorder = RunRecorder(store, name=label, kind="run", command=argv, host=meter.host,
                                       carbon_settings=carbon, job=meter.cluster_job())
            except BaseException as err:
                with suppress(GreenmeterError):  # the store's error is the one to raise; the window is dropped
                    meter.end(window, error=err)
                raise
        watch = LoadWatch()
        try:
            signals.check()  # a signal before the command started: it is not started
            child = subprocess.Popen(argv, **_child_options())
        except BaseException as err:
            _not_started(meter, window, recorder, err)
            if isinstance(err, OSError):
                raise ConfigError(f"cannot run {argv[0]!r}: {err.strerror or err}") from err
            raise
        signals.started(child.pid)  # forwards a signal that came while it was being started
        # From here on the command runs: whatever fails in greenmeter, the command is waited for and its exit code kept.
        tracking = _Tracking(meter, window.t0, window.energy, interval_s)
        tracking.guard(lambda: _follow(meter, child.pid))
        if on_started is not None:
            on_started(child.pid)
        status = _wait(child, tracking, signals.received)
        signals.ended()  # a signal from now on waits until the run is stored, and then stops greenmeter
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code < 0:
            exit_code = 128 - exit_code
        busy = busy_flag(watch.other_cores(), "the command", remedy=(
            "measure on a quiet machine, or let the command use fewer threads than the cores left free "
            "(e.g. OMP_NUM_THREADS=1); processes the command left running in the background count as other load"))
        flags = () if busy is None else (busy,)
        end = tracking.guard(meter.read)  # the window's end, unless measuring stopped before
        if end is None:  # keep what was measured until the last good reading, marked failed with why
            flags = (f"measuring stopped after {tracking.measured_s:.2f} s ({tracking.stopped}); the command ran "
                     "on to its end, unmeasured: these figures cover only the time before", *flags)
        measurement = meter.end(window, error=tracking.error, flags=flags, reading=end or tracking.last)
        interrupted = signal.Signals(signals.received[0]).name if signals.received else None
        store_error = None
        if recorder is not None:
            store_error = _record(recorder, measurement, tracking, exit_code, interrupted)
    return CommandResult(exit_code, measurement, interrupted, recorder.run_id if recorder else None,
                         tuple(tracking.timeline), tracking.stopped, store_error)


class _Signals:
    """SIGINT and SIGTERM while greenmeter runs a command (a ``with`` block; main thread only, else inert).

    Before the command starts, a signal is only noted, and :meth:`check` then refuses to start it. While it
    runs, each signal is forwarded to its process group. Once it has ended, a signal is held until the block
    ends (the run stored whole), then delivered to the handler in place before: Ctrl-C then raises
    ``KeyboardInterrupt``, and the run keeps the command's own status and exit code.
    """

    def __init__(self) -> None:
        self.received: list[int] = []  # signals that came before the command ended (it was cut short by them)
        self._pending: list[int] = []  # those that came before its pid was known, to be forwarded
        self._late: list[int] = []  # those that came after it ended
        self._pid: int | None = None
        self._ended = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in _FORWARDED}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._late and self._previous:
            signal.raise_signal(self._late[0])

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._ended:
            self._late.append(signum)
            return
        self.received.append(signum)
        if self._pid is None:
            self._pending.append(signum)
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        try:
            os.killpg(self._pid, signum)  # type: ignore[arg-type]
        except ProcessLookupError:
            pass

    def check(self) -> None:
        """Raise the interruption of a signal that came before the command started."""
        if self.received:
            raise Terminated() if self.received[0] == signal.SIGTERM else KeyboardInterrupt()

    def started(self, pid: int) -> None:
        """The command runs as ``pid``: forward the signals that came while it was being started."""
        self._pid = pid
        while self._pending:
            self._send(self._pending.pop(0))

    def ended(self) -> None:
        """The command has ended and been reaped: nothing is forwarded any more."""
        self._ended = True


def _not_started(meter: Meter, window: Any, recorder: RunRecorder | None, err: BaseException) -> None:
    """End the window and finish the run of a command that never started (it could not, or a signal came first)."""
    measurement = meter.end(window, error=err)  # a failed window
    if recorder is None:
        return
    if isinstance(err, KeyboardInterrupt):
        said = getattr(err, "signal_name", "SIGINT")
        note = f"interrupted by {said} before the command started; it was not run"
    else:
        note = f"the command could not start: {err}"
    recorder.add_window(measurement)
    recorder.finish(exit_code=None, measurement=measurement, note=note, error=err,
                    interrupted_by=getattr(err, "signal_name", "SIGINT") if isinstance(err, KeyboardInterrupt)
                    else None)


def _follow(meter: Meter, pid: int) -> None:
    """Let the estimate backends in ``process`` mode follow the command's process tree."""
    for backend in meter.backends:
        follow = getattr(backend, "follow", None)
        if follow is not None and getattr(backend, "mode", None) == "process":
            follow(pid)


def _record(recorder: RunRecorder, measurement: Measurement, tracking: _Tracking, exit_code: int,
            interrupted: str | None) -> str | None:
    """Store the window and timeline and finish the run; returns why the store failed (warned about), else ``None``.

    The command has ended by now, so a store that fails here loses the record but not the command's exit code.
    The run is finished even when its window could not be stored, so it is not left ``running``.
    """
    notes = []
    if interrupted:
        notes.append(f"interrupted by {interrupted}; stored what was measured until the command ended")
    if tracking.stopped is not None:
        notes.append(f"measuring stopped after {tracking.measured_s:.2f} s ({tracking.stopped}); the command ran "
                     f"to its end and the measurement covers only the time before")
    error: StoreError | None = None
    try:
        recorder.add_window(measurement)
        recorder.add_power_samples(tracking.timeline)
    except StoreError as err:
        error = err
        notes.append(f"the window could not be stored: {err}")
    try:
        # interrupted by a forwarded signal, else failed for a failed window or a non-zero exit code, else ok
        recorder.finish(exit_code=exit_code, interrupted_by=interrupted, measurement=measurement,
                        note="; ".join(notes) or None)
    except StoreError as err:
        error = error or err
    if error is None:
        return None
    reason = " ".join(str(error).split())
    print(f"greenmeter: the run could not be stored ({terminal_text(reason)}); the command ended with exit code "
          f"{exit_code}",
          file=sys.stderr)
    return reason


class _Tracking:
    """The meter's side of a running command: power samples, and the latest good reading until the meter fails.

    A meter that fails while the command runs (a counter that becomes unreadable, a backend error) stops
    the measuring, never the command: the failure is kept in :attr:`stopped` and warned about once.
    """

    def __init__(self, meter: Meter, t0: float, energy: dict[str, float], interval_s: float) -> None:
        self.meter = meter
        self.t0 = t0
        self.interval_s = interval_s
        self.last: tuple[float, dict[str, float]] = (t0, energy)  # the latest good reading
        self.next_sample = t0  # the first sample is taken at once
        self.timeline: list[tuple[float, str, float]] = []
        self.error: Exception | None = None  # what stopped the measuring
        self.stopped: str | None = None  # the same, in one line

    @property
    def measured_s(self) -> float:
        """Seconds measured, from the window's start to the latest good reading."""
        return self.last[0] - self.t0

    def guard(self, action: Callable[[], T]) -> T | None:
        """Run a measuring step; if it fails, stop measuring (say why, once) and return ``None``."""
        if self.stopped is not None:
            return None
        try:
            return action()
        except Exception as err:  # recorded in the run and warned about: the command must not be orphaned
            self.error = err
            self.stopped = " ".join(f"{type(err).__name__}: {err}".split())
            print(f"greenmeter: measuring stopped after {self.measured_s:.2f} s ({terminal_text(self.stopped)}); the "
                  "command runs on to its end, and what was measured until then is kept", file=sys.stderr)
            return None

    def sample(self, now: float) -> None:
        """Read the meter when a timeline sample is due, and keep the reading."""
        if self.stopped is not None or now < self.next_sample:
            return
        reading = self.guard(self.meter.read)
        if reading is None:
            return
        t, energy = reading
        last_t, last_e = self.last
        dt = t - last_t
        if dt > 0:
            for key, joules in energy.items():
                self.timeline.append((t - self.t0, key, max(0.0, (joules - last_e[key]) / dt)))
        self.last = reading
        self.next_sample = t + self.interval_s


def _wait(child: subprocess.Popen[bytes], tracking: _Tracking, received: list[int]) -> int:
    """Reap the child (in this thread, so timeline reads never race the reaping) and sample power."""
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
        tracking.sample(now)
        time.sleep(min(0.02, tracking.interval_s / 4))
