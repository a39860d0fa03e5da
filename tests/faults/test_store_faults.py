"""Faults of the run store: read-only, full or locked, before or while a run is being stored (issue 15).

For each: the user sees one clear error naming the store and what to do; the measured command or code runs
to its end with its own exit code or exception; nothing already stored is lost or damaged (SQLite's
integrity check and the store's API agree afterwards); and the run is finished, or left incomplete with a
reason that ``greenmeter runs`` shows. Reading a store needs no write access to it (defect 8).

Faults are made at the boundary: another SQLite connection holding the write lock, ``PRAGMA query_only``
on the store's own connection (a disk remounted read-only), ``RLIMIT_FSIZE`` on the greenmeter process
(a full disk: writes past the limit fail with ``EFBIG``, for root too), and file modes with root's
``CAP_DAC_OVERRIDE`` dropped by ``setpriv``.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from greenmeter import Meter, StoreError
from greenmeter.cli.main import main
from greenmeter.metering.runner import run_command
from greenmeter.store import database
from greenmeter.store.database import Store
from tests.fakes.scripted import ScriptedBackend
from tests.faults.test_run_faults import TIMEOUT_S, _env, _greenmeter, _unprivileged, _wait_for

UNFINISHED = "incomplete: never finished"


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _store_with_an_earlier_run(path: Path) -> str:
    """A store that already holds one finished run with one window (what must not be lost)."""
    with Meter([ScriptedBackend([1.0, 4.0])], sync=None, store=path, name="earlier") as meter:
        with meter.window("kept"):
            pass
        assert meter.run_id is not None
        return meter.run_id


def _earlier_run_is_intact(path: Path, run_id: str) -> None:
    assert _integrity(path) == "ok"
    with Store(path, readonly=True) as store:
        run = store.get_run(run_id)
        assert run.status == "ok" and [(w.name, w.energy_j) for w in store.windows(run_id)] == [("kept", 3.0)]


def _runs_listing(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["runs", "--store", str(path)]) == 0
    return capsys.readouterr().out


# ---- the faults, each made from outside the code under test -------------------------------------------

@contextmanager
def _locked(path: Path) -> Iterator[Callable[[Store], None]]:
    """Another process's connection holds the store's write lock from the moment ``start`` is called."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        yield lambda store: other.execute("BEGIN EXCLUSIVE")
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


@contextmanager
def _read_only(path: Path) -> Iterator[Callable[[Store], None]]:
    """The store's disk turns read-only under the open connection: SQLite then refuses every write."""
    yield lambda store: store._conn.execute("PRAGMA query_only = ON")  # type: ignore[union-attr]


FAULTS = {"locked": (_locked, "is locked by another process"), "read-only": (_read_only, "cannot write to")}


@pytest.fixture()
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait 0.2 s (not 30 s) for a lock, so that a lock held through the run outlasts the wait."""
    monkeypatch.setattr(database, "BUSY_TIMEOUT_S", 0.2)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_greenmeter_run_keeps_the_command_and_what_was_stored_when_the_store_fails_mid_run(
        tmp_path: Path, fault: str, short_busy_timeout: None, capfd: pytest.CaptureFixture[str]) -> None:
    path, marker = tmp_path / "runs.db", tmp_path / "marker"
    earlier = _store_with_an_earlier_run(path)
    make_fault, said = FAULTS[fault]
    command = [sys.executable, "-c", f"import sys, time; time.sleep(0.3); open({str(marker)!r}, 'w').close(); "
                                     "sys.exit(3)"]
    with make_fault(path) as start, Store(path) as store:
        result = run_command(command, meter=Meter(["cpu-estimate"], sync=None), store=store, interval_s=0.05,
                             on_started=lambda pid: start(store))
    assert result.exit_code == 3 and marker.exists()  # the command ran to its end, its exit code kept
    assert result.store_error is not None and said in result.store_error and str(path) in result.store_error
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("greenmeter:")]
    assert len(lines) == 1 and "the run could not be stored" in lines[0] and said in lines[0], lines
    assert str(path) in lines[0] and "exit code 3" in lines[0]
    _earlier_run_is_intact(path, earlier)
    with Store(path, readonly=True) as reader:
        run = reader.get_run(result.run_id or "")
    assert run.status == "running" and run.windows_count == 0 and run.measurement is None  # nothing invented
    listing = _runs_listing(path, capfd)
    assert run.id[:12] in listing and f"{UNFINISHED}" in listing


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("raises", [True, False])
def test_a_meter_whose_store_fails_mid_run_keeps_the_users_exception_or_says_which_store(
        tmp_path: Path, fault: str, raises: bool, short_busy_timeout: None) -> None:
    path = tmp_path / "runs.db"
    earlier = _store_with_an_earlier_run(path)
    make_fault, said = FAULTS[fault]
    users = ValueError("the user's own error")
    ran_to_the_end = []
    with make_fault(path) as start, pytest.raises((ValueError, StoreError)) as info:
        with Meter([ScriptedBackend([1.0, 2.0, 5.0, 9.0])], sync=None, store=path, name="job") as meter:
            with meter.window("before"):
                pass
            assert meter.store is not None
            start(meter.store)
            with meter.window("during"):
                ran_to_the_end.append(True)
                if raises:
                    raise users
    assert ran_to_the_end == [True]
    if raises:
        assert info.value is users  # never replaced by the store's error
    else:
        assert isinstance(info.value, StoreError) and said in str(info.value) and str(path) in str(info.value)
        assert "GREENMETER_STORE" in str(info.value)  # what to do
    _earlier_run_is_intact(path, earlier)
    with Store(path, readonly=True) as reader:
        (run,) = [r for r in reader.list_runs() if r.id != earlier]
        windows = reader.windows(run.id)
    assert run.status == "running"  # incomplete: `greenmeter runs` says why (test above)
    assert [(w.name, w.energy_j) for w in windows] == [("before", 1.0)]  # stored before the fault, kept


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="prlimit (a limit set on another process) is Linux only")
def test_greenmeter_run_on_a_store_whose_disk_fills_up_mid_run(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """RLIMIT_FSIZE on greenmeter: once the command runs, no store file may grow (a full disk, ``EFBIG``)."""
    path, pid_file, go, marker = (tmp_path / n for n in ("runs.db", "pid", "go", "marker"))
    earlier = _store_with_an_earlier_run(path)
    command = (f"import os, sys, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
               f"deadline = time.monotonic() + {TIMEOUT_S}\n"
               f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n    time.sleep(0.02)\n"
               f"open({str(marker)!r}, 'w').close()\nsys.exit(3)\n")
    # SIGXFSZ ignored (its default kills the process), so a write past the limit fails with EFBIG instead
    wrapper = ("import runpy, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "runpy.run_module('greenmeter', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, "run", "--interval", "0.05", "--", sys.executable, "-c",
                             command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(GREENMETER_STORE=str(path)))
    try:
        _wait_for(pid_file, proc)  # the run is started (stored) before the command starts
        wal = path.with_name(path.name + "-wal")
        limit = wal.stat().st_size + 16  # room for no further WAL frame
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        go.touch()
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3 and marker.exists(), err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "could not be stored" in line]
    assert len(lines) == 1 and str(path) in lines[0] and "disk may be full" in lines[0], err
    assert "exit code 3" in lines[0]
    _earlier_run_is_intact(path, earlier)
    with Store(path, readonly=True) as reader:
        (run,) = [r for r in reader.list_runs() if r.id != earlier]
    assert run.status == "running" and run.windows_count == 0 and run.measurement is None
    assert f"{UNFINISHED}" in _runs_listing(path, capsys)


def test_a_store_locked_before_the_command_starts_is_said_and_the_command_never_runs(
        tmp_path: Path, short_busy_timeout: None) -> None:
    path, marker = tmp_path / "runs.db", tmp_path / "marker"
    earlier = _store_with_an_earlier_run(path)
    with _locked(path) as start, Store(path) as store:
        start(store)
        with pytest.raises(StoreError, match="is locked by another process") as info:
            run_command([sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"],
                        meter=Meter(["cpu-estimate"], sync=None), store=store)
    assert str(path) in str(info.value) and "try again" in str(info.value)
    assert not marker.exists()
    _earlier_run_is_intact(path, earlier)


# ---- reading needs only read access (defect 8) --------------------------------------------------------

def test_runs_report_and_export_read_a_store_they_may_not_write(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    path = folder / "runs.db"
    earlier = _store_with_an_earlier_run(path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)  # no -shm or -wal file can be made either
    try:
        env = _env(GREENMETER_STORE=str(path))
        outputs = []
        for args in (("runs",), ("export", "--last", "--format", "csv"), ("report", "--last-run", "-o", "-",
                                                                          "--format", "md"), ("comparisons",)):
            proc = _greenmeter(*args, env=env, prefix=_unprivileged())
            out, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, (args, err)
            outputs.append(out)
    finally:
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)
    runs, csv_text, report, comparisons = outputs
    assert earlier[:12] in runs and " ok " in runs and "earlier" in runs
    assert csv_text.splitlines()[1].startswith(f"{earlier},earlier,api,ok,")
    assert "kept" in report
    assert comparisons.startswith("no comparisons stored in")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written, nothing created


def test_an_older_store_the_user_may_not_write_says_it_needs_an_upgrade(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "runs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    database.migrate(conn, database.MIGRATIONS[:1])  # as the first release wrote it
    conn.execute("COMMIT")
    conn.close()
    before = path.read_bytes()
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    try:
        proc = _greenmeter("runs", env=_env(GREENMETER_STORE=str(path)), prefix=_unprivileged())
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)
    assert proc.returncode == 1 and err.count("\n") == 1 and str(path) in err, err
    assert f"needs an upgrade (schema version 1 to {database.SCHEMA_VERSION})" in err and "write access" in err
    assert path.read_bytes() == before and os.listdir(folder) == ["runs.db"]


def test_a_store_in_a_folder_the_user_may_not_write_is_refused_for_writing_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    path = folder / "runs.db"
    _store_with_an_earlier_run(path)
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    try:
        proc = _greenmeter("run", "--", sys.executable, "-c", "pass", env=_env(GREENMETER_STORE=str(path)),
                           prefix=_unprivileged())
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)
    assert proc.returncode == 1 and err.count("\n") == 1 and str(path) in err and "cannot write" in err, err


def test_reading_commands_on_a_fresh_machine_say_nothing_is_stored_and_create_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "none" / "runs.db"
    assert main(["runs", "--store", str(path)]) == 0
    assert capsys.readouterr().out == f"no runs stored in {path}\n"
    assert main(["runs", "--json", "--store", str(path)]) == 0
    assert capsys.readouterr().out == "[]\n"
    assert main(["comparisons", "--store", str(path)]) == 0
    assert capsys.readouterr().out == f"no comparisons stored in {path}\n"
    for args in (["export", "--last"], ["report", "--last"]):
        assert main([*args, "--store", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"there is no run store at {path}" in err, err
    assert not path.parent.exists()  # not even its folder

