"""Faults around ``greenmeter run``: the measured command is never orphaned, cut short or robbed of its exit code.

A meter that fails mid-run stops the measuring, not the command; a store that cannot be written is found
before the command starts; a store that fails after it started loses the record, not the exit code; and on
Linux, killing greenmeter with SIGKILL ends the command too (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenmeter import Meter, StoreError
from greenmeter.metering.runner import run_command
from greenmeter.store.database import Store
from tests.fakes.powercap import FakePowercap

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120.0  # generous: the suite may run on a busy machine


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _greenmeter(*args: str, env: dict[str, str], prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen([*prefix, sys.executable, "-m", "greenmeter", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"greenmeter ended (exit code {proc.returncode}) before the command started: {err}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_a_counter_that_becomes_unreadable_mid_run_stops_the_measuring_not_the_command(tmp_path: Path) -> None:
    zones = FakePowercap(tmp_path / "sysfs").add_package(0, subzones=(), energy_uj=1_000_000)
    store, pid_file, go, marker = (tmp_path / n for n in ("runs.db", "pid", "go", "marker"))
    command = (
        "import os, sys, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "deadline = time.monotonic() + 120\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "time.sleep(1.5)\n"
        f"open({str(marker)!r}, 'w').close()\n"
        "sys.exit(3)\n"
    )
    proc = _greenmeter("run", "--interval", "0.05", "--", sys.executable, "-c", command,
                       env=_env(GREENMETER_STORE=str(store), GREENMETER_SYSFS_ROOT=str(tmp_path / "sysfs")))
    try:
        _wait_for(pid_file, proc)
        zones["package"].set_energy_uj(6_000_000)  # +5 J, which greenmeter may or may not read before the fault
        time.sleep(0.3)
        zones["package"].energy_path.unlink()  # the counter becomes unreadable while the command runs
        go.touch()
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err  # the command's own exit code
    assert marker.exists()  # the command ran to its end
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("greenmeter: measuring stopped")]
    assert len(warnings) == 1 and "CounterReadError" in warnings[0], err
    with Store(store) as s:
        (run,) = s.list_runs()
        windows = s.windows(run.id)
    assert run.complete and run.status == "failed" and run.exit_code == 3  # finished, not left running
    assert "measuring stopped" in (run.note or "") and "CounterReadError" in (run.note or "")
    m = run.measurement
    assert m is not None and m.status == "failed" and windows == [m] and "CounterReadError" in (m.error or "")
    assert any(f.startswith("measuring stopped after") and "CounterReadError" in f for f in m.flags)
    (package,) = (d for d in m.domains if d.key.startswith("rapl:"))
    assert package.energy_j in (0.0, pytest.approx(5.0))  # what was read before the fault, nothing invented
    assert package.provenance.kind == "measured"


def _unprivileged() -> tuple[str, ...]:
    """A command prefix under which file modes bind (root ignores them unless it drops CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file read-only for greenmeter")
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner")


def test_a_read_only_store_is_refused_before_the_command_starts(tmp_path: Path) -> None:
    store, marker = tmp_path / "runs.db", tmp_path / "marker"
    Store(store).close()
    before = store.read_bytes()
    os.chmod(store, 0o444)
    proc = _greenmeter("run", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w').close()",
                       env=_env(GREENMETER_STORE=str(store)), prefix=_unprivileged())
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode != 0
    assert err.count("\n") == 1 and str(store) in err and "cannot write" in err, err
    time.sleep(3.0)  # a command started by mistake would have written its marker by now
    assert not marker.exists()  # the command never started
    os.chmod(store, 0o644)
    assert store.read_bytes() == before


def test_a_store_folder_that_cannot_be_created_is_refused_before_the_command_starts(tmp_path: Path) -> None:
    blocker, marker = tmp_path / "a-file", tmp_path / "marker"
    blocker.write_text("not a folder")
    store = blocker / "runs.db"
    proc = _greenmeter("run", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w').close()",
                       env=_env(GREENMETER_STORE=str(store)))
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode != 0
    assert err.count("\n") == 1 and str(store) in err, err
    time.sleep(3.0)
    assert not marker.exists()


class _StoreThatFailsAfterStart(Store):
    """A store that accepts the run's start, then cannot be written (as when its disk fills up mid-run)."""

    def add_window(self, *args: object, **kwargs: object) -> int:
        raise StoreError(f"cannot write to the run store {self.path} (database or disk is full)")

    def finish_run(self, *args: object, **kwargs: object) -> None:
        raise StoreError(f"cannot write to the run store {self.path} (database or disk is full)")


def test_a_store_that_fails_mid_run_loses_the_record_not_the_command(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    command = [sys.executable, "-c", f"import sys, time; time.sleep(0.5); open({str(marker)!r}, 'w').close(); "
                                     "sys.exit(3)"]
    with _StoreThatFailsAfterStart(tmp_path / "runs.db") as store:
        result = run_command(command, meter=Meter(["cpu-estimate"], sync=None), store=store, interval_s=0.05)
        (run,) = store.list_runs()
    assert result.exit_code == 3 and marker.exists()
    assert result.store_error is not None and "disk is full" in result.store_error
    assert run.status == "running"  # the store took no write after the start: `greenmeter runs` shows it incomplete
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("greenmeter:")]
    assert len(lines) == 1 and "the run could not be stored" in lines[0] and "exit code 3" in lines[0], err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_sigkill_to_greenmeter_ends_the_command_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    command = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    proc = _greenmeter("run", "--interval", "0.1", "--", sys.executable, "-c", command,
                       env=_env(GREENMETER_STORE=str(tmp_path / "runs.db")))
    child = None
    try:
        _wait_for(pid_file, proc)
        deadline = time.monotonic() + TIMEOUT_S
        while not pid_file.read_text():  # written, but maybe not yet flushed
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child = int(pid_file.read_text())
        assert not _gone(child)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT_S)
        deadline = time.monotonic() + 60
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), "the command outlived greenmeter"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)
