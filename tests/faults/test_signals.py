"""SIGINT, SIGTERM and SIGKILL to ``greenmeter run`` and ``greenmeter compare`` at several points (issue 15).

After each, the store is checked: it opens, SQLite's integrity check passes, every run is ``ok``, ``failed``
or ``interrupted`` (or, after SIGKILL, left ``running`` and listed as ``incomplete``), every stored energy
is finite and non-negative, a comparison's figures come from stored windows, and the command line said one
line and no traceback. ``greenmeter run``'s command is gone afterwards, and its exit code is kept.

The commands run as subprocesses (``python -m greenmeter``), synchronised on their progress lines on
standard error or on a file the measured command writes, not on sleeps. Two moments no outside process can
hit on purpose, a signal while ``greenmeter run`` starts and one while it stores the run, are reached in
process: the signal is raised by a fake energy source or a fake store, at the hardware and store boundary.
What ``tests/faults/test_run_faults.py`` covers (the command ends with greenmeter on SIGKILL) and
``tests/metering/test_runner.py`` covers (a command that handles the forwarded signal keeps its exit code)
is not repeated here.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from greenmeter.cli.main import main
from greenmeter.metering.interrupts import Terminated, sigterm_interrupts
from greenmeter.metering.meter import Meter
from greenmeter.metering.runner import run_command
from greenmeter.records.measurement import Measurement
from greenmeter.store.database import Store
from tests.fakes.scripted import ScriptedBackend

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and /proc")

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120.0  # generous: only a hung process ever waits this long
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
SAID = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

TINY_MODULE = """
import torch

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
"""

# three variants, each repeat at least 0.2 s: a round lasts well over half a second, far longer than a signal takes
TINY_CONFIG = """
name = "tiny-signals"

[model]
factory = "tiny_signal_module:model"

[data]
eval = "tiny_signal_module:data"

[compare]
baseline = "float"
recipes = ["prune:0.5", "int8-dynamic"]
repeats = 1000
min_repeat_s = 0.2
threads = 1
"""
VARIANTS = ("float", "prune:0.5", "int8-dynamic")


# Helpers -----------------------------------------------------------------------------------------------
def _env(tmp_path: Path) -> dict[str, str]:
    """The tests' environment, plus the repository and ``tmp_path`` (the tiny module) on the path; estimates
    only (no RAPL tree), so that the figures do not depend on this machine's counters."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "GREENMETER_SYSFS_ROOT": str(tmp_path / "no-sysfs")}


class _Greenmeter:
    """``python -m greenmeter ARGS`` with its standard error read line by line as it comes."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "greenmeter", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=tmp_path)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, what: str, found: Callable[[list[str]], bool]) -> None:
        """Wait until ``found(lines)`` holds (the process still running)."""
        deadline = time.monotonic() + TIMEOUT_S
        with self._changed:
            while not found(self.lines):
                assert self.proc.poll() is None, f"greenmeter ended before {what}:\n" + "\n".join(self.lines)
                assert time.monotonic() < deadline, f"never saw {what}:\n" + "\n".join(self.lines)
                self._changed.wait(timeout=0.5)

    def wait_line(self, text: str) -> None:
        self.wait_for(repr(text), lambda lines: any(text in line for line in lines))

    def finish(self, sig: int | None = None) -> tuple[int, str]:
        """Send ``sig`` (if any), wait for the end; returns the exit code and all of standard error."""
        try:
            if sig is not None:
                self.proc.send_signal(sig)
            self.proc.wait(timeout=TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=TIMEOUT_S)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.returncode, "\n".join(self.lines)


def _one_interrupted_line(err: str, sig: int) -> None:
    """Standard error ends with greenmeter's one line for the interruption, and holds no traceback."""
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if line.startswith("greenmeter: interrupted")]
    assert said == [f"greenmeter: interrupted ({SAID[sig]}); what was stored so far is kept, its run marked "
                    "interrupted"], err
    assert err.splitlines()[-1] == said[0], err


def _finite(m: Measurement) -> None:
    assert math.isfinite(m.energy_j) and m.energy_j >= 0, m
    assert math.isfinite(m.duration_s) and m.duration_s >= 0, m
    for d in m.domains:
        assert math.isfinite(d.energy_j) and d.energy_j >= 0, d


def _check_store(path: Path) -> list:
    """The store is whole; every stored energy is finite and >= 0. Returns its runs, newest first."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with Store(path) as store:
        runs = store.list_runs()
        for run in runs:
            assert run.status in ("running", "ok", "failed", "interrupted"), run
            if run.complete:
                assert run.measurement is None or _finite(run.measurement) is None
            for window in store.windows(run.id):
                _finite(window)
    return runs


def _finished_runs(path: Path) -> int:
    """How many runs the store at ``path`` holds finished ``ok`` (0 before it is made), read without writing."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return len(conn.execute("SELECT 1 FROM runs WHERE status = 'ok'").fetchall())
    except sqlite3.OperationalError:  # not made yet, or its tables not yet
        return 0


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 60
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _gone(pid)


# greenmeter run ----------------------------------------------------------------------------------------
def _sleeper(tmp_path: Path) -> tuple[list[str], Path]:
    """A command that writes its pid, then sleeps with the default signal actions (no output of its own)."""
    pid_file = tmp_path / "pid"
    return ["sh", "-c", f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} && exec sleep 300"], pid_file


def _command_pid(gm: _Greenmeter, pid_file: Path) -> int:
    deadline = time.monotonic() + TIMEOUT_S
    while not pid_file.exists():
        assert gm.proc.poll() is None, "greenmeter ended before the command started:\n" + "\n".join(gm.lines)
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.02)
    return int(pid_file.read_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_a_signal_while_the_command_runs_ends_it_and_stores_an_interrupted_run(
        tmp_path: Path, sig: signal.Signals) -> None:
    command, pid_file = _sleeper(tmp_path)
    store = tmp_path / "runs.db"
    gm = _Greenmeter(tmp_path, "run", "--store", str(store), "--interval", "0.05", "--", *command)
    child = _command_pid(gm, pid_file)
    code, err = gm.finish(sig)
    assert _wait_gone(child), "the command outlived greenmeter"
    assert code == 128 + sig  # the command's own code: the forwarded signal ended it
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0].startswith(f"greenmeter: interrupted by {sig.name}: forwarded it"), err
    (run,) = _check_store(store)
    assert run.status == "interrupted" and run.exit_code == 128 + sig and sig.name in (run.note or "")
    assert run.measurement is not None and run.windows_count == 1


def test_run_sigkill_leaves_an_incomplete_run_that_greenmeter_runs_lists(tmp_path: Path) -> None:
    command, pid_file = _sleeper(tmp_path)
    store = tmp_path / "runs.db"
    gm = _Greenmeter(tmp_path, "run", "--store", str(store), "--interval", "0.05", "--", *command)
    child = _command_pid(gm, pid_file)
    code, _ = gm.finish(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert _wait_gone(child), "the command outlived greenmeter"
    (run,) = _check_store(store)
    assert run.status == "running" and not run.complete and run.display_status == "incomplete"
    assert run.measurement is None and run.windows_count == 0  # nothing was made up for the lost window
    listing = subprocess.run([sys.executable, "-m", "greenmeter", "runs", "--store", str(store)],
                             capture_output=True, text=True, env=_env(tmp_path), timeout=TIMEOUT_S)
    assert listing.returncode == 0, listing.stderr
    (row,) = [line for line in listing.stdout.splitlines() if line.startswith(run.id[:12])]
    assert row.split()[1] == "incomplete"


class _SignalAtFirstRead(ScriptedBackend):
    """A counter whose first read, when ``greenmeter run``'s window opens, comes with a signal to the process."""

    def __init__(self, sig: int) -> None:
        super().__init__([1.0, 2.0, 3.0])
        self.sig = sig

    def read(self):  # type: ignore[no-untyped-def]
        if self.reads == 0:
            signal.raise_signal(self.sig)
        return super().read()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_a_signal_before_the_command_starts_means_it_never_starts(tmp_path: Path, sig: signal.Signals) -> None:
    marker = tmp_path / "marker"
    with sigterm_interrupts():  # as `greenmeter` has SIGTERM (and so that a stray one cannot end the tests)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        with pytest.raises(KeyboardInterrupt) as info:
            run_command([sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"],
                        meter=Meter(backends=[_SignalAtFirstRead(sig)], sync=None), store=tmp_path / "runs.db")
        assert {s: signal.getsignal(s) for s in handlers} == handlers  # greenmeter's handlers are gone again
    assert isinstance(info.value, Terminated) == (sig == signal.SIGTERM)
    time.sleep(1.0)  # a command started by mistake would have written its marker by now
    assert not marker.exists()
    (run,) = _check_store(tmp_path / "runs.db")
    assert run.status == "interrupted" and run.exit_code is None
    assert run.note == f"interrupted by {sig.name} before the command started; it was not run"


class _StoreSignalledWhileStoring(Store):
    """A store that gets a signal as greenmeter stores the run's window (after the command ended)."""

    sig: int = signal.SIGINT

    def add_window(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        signal.raise_signal(self.sig)
        return super().add_window(*args, **kwargs)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_a_signal_while_storing_waits_until_the_run_is_stored_whole(tmp_path: Path, sig: signal.Signals) -> None:
    path = tmp_path / "runs.db"
    with sigterm_interrupts(), _StoreSignalledWhileStoring(path) as store:  # as `greenmeter` has SIGTERM
        store.sig = sig
        with pytest.raises(KeyboardInterrupt) as info:
            run_command([sys.executable, "-c", "import sys; sys.exit(3)"], meter=Meter(["cpu-estimate"], sync=None),
                        store=store, interval_s=0.05)
    assert isinstance(info.value, Terminated) == (sig == signal.SIGTERM)
    (run,) = _check_store(path)
    # the command was not cut short: its run keeps its own status and exit code, window and power timeline
    assert run.status == "failed" and run.exit_code == 3 and run.windows_count == 1 and run.note is None


# greenmeter compare ------------------------------------------------------------------------------------
def _compare(tmp_path: Path, *extra: str) -> tuple[_Greenmeter, Path]:
    (tmp_path / "tiny_signal_module.py").write_text(TINY_MODULE)
    (tmp_path / "compare.toml").write_text(TINY_CONFIG)
    store = tmp_path / "runs.db"
    return _Greenmeter(tmp_path, "compare", str(tmp_path / "compare.toml"), "--store", str(store), *extra), store


def _repeat_lines(lines: list[str], variant: str) -> int:
    return sum(1 for line in lines if re.search(rf"\] {re.escape(variant)} repeat \d+: ", line))


def test_compare_sigterm_during_the_first_variants_measurement_keeps_the_windows_and_no_comparison(
        tmp_path: Path) -> None:
    gm, store = _compare(tmp_path)
    gm.wait_line("checked int8-dynamic")  # the last check: the baseline's first repeat starts now
    code, err = gm.finish(signal.SIGTERM)
    assert code == 143
    _one_interrupted_line(err, signal.SIGTERM)
    (run,) = _check_store(store)
    assert run.status == "interrupted" and "Terminated" in (run.note or "")
    with Store(store) as s:
        names = [w.name for w in s.windows(run.id)]
        assert s.last_comparison() is None  # no round was complete: nothing to compare
    assert names[:2] == ["make:prune:0.5", "make:int8-dynamic"]
    assert not any(n.startswith("int8-dynamic/repeat-") for n in names)  # the round never reached the last one


def test_compare_ctrl_c_mid_round_stores_the_complete_rounds_as_an_interrupted_comparison(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sig = signal.SIGINT  # SIGTERM there: tests/comparison/test_compare_interrupted.py
    gm, store = _compare(tmp_path)
    gm.wait_for("two complete rounds", lambda lines: _repeat_lines(lines, "int8-dynamic") >= 2)
    code, err = gm.finish(sig)
    assert code == CODES[sig]
    _one_interrupted_line(err, sig)
    assert re.search(r"interrupted: stored the \d+ repeat\(s\) every variant completed", err), err
    (run,) = _check_store(store)
    with Store(store) as s:
        c = s.last_comparison()
        windows = {w.name: w for w in s.windows(run.id)}
    assert run.status == "interrupted"
    assert c is not None and c.status == "interrupted" and c.run_id == run.id and c.name == "tiny-signals"
    # the rounds whose last repeat was reported, but the last: the signal may land between its line and its count
    done = _repeat_lines(gm.lines, "int8-dynamic")
    assert c.repeats >= 1 and c.repeats in (done - 1, done), (c.repeats, done)
    flag = next(f for f in c.flags if f.startswith("interrupted by"))
    assert flag.startswith(f"interrupted by Ctrl-C (SIGINT) in repeat {c.repeats + 1} of 1000"), flag
    assert [v.name for v in c.variants] == list(VARIANTS)
    assert main(["comparisons", "--store", str(store)]) == 0  # the listing says it was cut short
    (row,) = capsys.readouterr().out.splitlines()[1:]
    assert " interrupted " in row and row.endswith("tiny-signals")
    for v in c.variants:  # every figure is a stored window's; the round in progress is not counted
        assert v.ok and len(v.energy_values_j) == c.repeats, v
        for k, value in enumerate(v.energy_values_j, start=1):
            w = windows[f"{v.name}/repeat-{k}"]
            assert value == pytest.approx(w.energy_j / w.samples) and value > 0


def test_compare_sigterm_while_the_result_is_written_keeps_the_complete_comparison(tmp_path: Path) -> None:
    fifo = tmp_path / "result.json"
    os.mkfifo(fifo)  # writing the JSON waits for a reader that never comes: greenmeter is then writing its result
    gm, store = _compare(tmp_path, "--repeats", "1", "--json", str(fifo))
    deadline = time.monotonic() + TIMEOUT_S
    while True:  # compare() has returned once its run is finished: the command line is printing and writing
        assert gm.proc.poll() is None, "greenmeter ended early:\n" + "\n".join(gm.lines)
        assert time.monotonic() < deadline, "the comparison never finished:\n" + "\n".join(gm.lines)
        if _finished_runs(store):
            break
        time.sleep(0.05)
    code, err = gm.finish(signal.SIGTERM)
    assert code == 143
    _one_interrupted_line(err, signal.SIGTERM)
    (run,) = _check_store(store)
    with Store(store) as s:
        c = s.last_comparison()
    assert run.status == "ok"  # the comparison was over: the interruption cut only the printing
    assert c is not None and c.status == "complete" and c.repeats == 1 and c.run_id == run.id
    assert all(v.ok and len(v.energy_values_j) == 1 for v in c.variants)


def test_compare_sigkill_leaves_an_incomplete_run_with_its_windows_and_no_comparison(tmp_path: Path) -> None:
    gm, store = _compare(tmp_path)
    gm.wait_for("a complete round", lambda lines: _repeat_lines(lines, "int8-dynamic") >= 1)
    code, _ = gm.finish(signal.SIGKILL)
    assert code == -signal.SIGKILL
    (run,) = _check_store(store)
    assert run.status == "running" and run.display_status == "incomplete"
    with Store(store) as s:
        names = [w.name for w in s.windows(run.id)]
        assert s.last_comparison() is None
    assert {"float/repeat-1", "prune:0.5/repeat-1", "int8-dynamic/repeat-1"} <= set(names)
    listing = subprocess.run([sys.executable, "-m", "greenmeter", "runs", "--json", "--store", str(store)],
                             capture_output=True, text=True, env=_env(tmp_path), timeout=TIMEOUT_S)
    assert listing.returncode == 0, listing.stderr
    (row,) = json.loads(listing.stdout)
    assert row["id"] == run.id and row["complete"] is False and row["status"] == "running"
