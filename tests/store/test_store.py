"""The run store: location, schema and migrations, runs and windows, foreign files, processes at once."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from greenmeter import ConfigError, CorruptStoreError, Measurement, Meter, StoreError
from greenmeter.carbon.settings import CarbonSettings, estimate_carbon
from greenmeter.store.database import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    RunRecord,
    Store,
    default_store_path,
    migrate,
)
from tests.fakes.scripted import ScriptedBackend

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = CarbonSettings(intensity_g_per_kwh=200.0, pue=1.2)


def _measurement(name: str = "train", joules: tuple[float, float] = (10.0, 46.0), steps: int = 3) -> Measurement:
    meter = Meter([ScriptedBackend(joules)], sync=None, carbon=SETTINGS)
    with meter.window(name, samples=12) as w:
        for _ in range(steps):
            meter.step()
    assert w.measurement is not None
    return w.measurement


def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


# ---- location --------------------------------------------------------------------------------------

def test_default_path_follows_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "xdg" / "greenmeter" / "runs.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / ".local" / "share" / "greenmeter" / "runs.db"


def test_env_var_then_explicit_path_and_parents_are_created(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with Store() as store:
        assert store.path == tmp_path / "xdg" / "greenmeter" / "runs.db" and store.path.is_file()
    monkeypatch.setenv("GREENMETER_STORE", str(tmp_path / "env" / "deep" / "env.db"))
    with Store() as store:
        assert store.path == tmp_path / "env" / "deep" / "env.db" and store.path.is_file()
    with Store(tmp_path / "given.db") as store:
        assert store.path == tmp_path / "given.db"


def test_unwritable_path_says_which_and_how_to_choose_another(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="GREENMETER_STORE") as info:
        Store(blocker / "sub" / "runs.db")
    assert str(blocker / "sub") in str(info.value)


# ---- schema -----------------------------------------------------------------------------------------

def test_new_store_is_marked_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"runs", "windows", "steps", "power_samples", "comparisons", "optimizations",
                      "searches", "search_steps", "calibrations", "run_jobs"}
    conn.close()


def test_an_empty_file_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.touch()
    with Store(path) as store:
        run_id = store.start_run(name="x", kind="api")
    with Store(path) as store:
        assert store.get_run(run_id).name == "x"


def test_migrations_run_in_order_in_one_transaction_and_newer_stores_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with Store(path) as store:
        store.start_run(name="kept", kind="api")
    conn = sqlite3.connect(path, isolation_level=None)
    broken = (*MIGRATIONS, ("ALTER TABLE runs ADD COLUMN tag TEXT", "CREATE TABLE half ("))
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken)
    conn.execute("ROLLBACK")  # nothing of the failed migration stays
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "tag" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    newer = (*MIGRATIONS, ("ALTER TABLE runs ADD COLUMN tag TEXT", "UPDATE runs SET tag = 'v2'"))
    conn.execute("BEGIN IMMEDIATE")
    assert migrate(conn, newer) == SCHEMA_VERSION  # from the file's version up: no table is re-created
    conn.execute("COMMIT")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT name, tag FROM runs").fetchall() == [("kept", "v2")]
    conn.close()
    before = _snapshot(path)
    with pytest.raises(StoreError, match="upgrade greenmeter") as info:
        Store(path)  # written by a "newer greenmeter" now
    assert not isinstance(info.value, CorruptStoreError) and str(path) in str(info.value)
    assert _snapshot(path) == before


def test_a_version_1_store_is_migrated_keeping_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    assert migrate(conn, MIGRATIONS[:1]) == 0  # a store as the first release wrote it
    conn.execute("INSERT INTO runs (id, name, kind, status, started_at) VALUES ('ab12', 'old', 'api', 'ok', 'x')")
    conn.execute("COMMIT")
    conn.close()
    with Store(path) as store:
        assert store.get_run("ab12").name == "old"
        assert store.list_comparisons() == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# ---- reading only (issue 15, defect 8) -----------------------------------------------------------------

def test_a_store_opened_read_only_reads_everything_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    measurement = _measurement()
    with Store(path) as writer:
        run_id = writer.start_run(name="kept", kind="api")
        writer.add_window(run_id, measurement)
        writer.add_power_samples(run_id, [(0.5, "scripted:dev", 12.0)])
        writer.finish_run(run_id, status="ok", measurement=measurement)
    before = _snapshot(path)
    time.sleep(0.01)
    with Store(path, readonly=True) as store:
        assert store.readonly and repr(store) == f"Store({str(path)!r}, readonly=True)"
        assert [r.name for r in store.list_runs()] == ["kept"] and store.windows(run_id) == [measurement]
        assert store.power_samples(run_id) == [(0.5, "scripted:dev", 12.0)] and store.last_comparison() is None
        writes = [lambda: store.start_run(name="x", kind="api"), lambda: store.add_window(run_id, measurement),
                  lambda: store.add_power_samples(run_id, [(1.0, "scripted:dev", 1.0)]),
                  lambda: store.finish_run(run_id, status="failed")]
        for write in writes:
            with pytest.raises(StoreError, match="opened read-only") as info:
                write()
            assert str(path) in str(info.value)
    assert _snapshot(path)[:2] == before[:2]  # the file unchanged (SQLite may add its -wal and -shm files beside it)


def test_a_read_only_store_sees_what_a_writer_has_not_yet_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with Store(path) as writer:
        run_id = writer.start_run(name="live", kind="api")  # in the WAL file, not yet in the main file
        with Store(path, readonly=True) as reader:
            assert reader.get_run(run_id).status == "running"
        writer.finish_run(run_id, status="ok")
        with Store(path, readonly=True) as reader:
            assert reader.get_run(run_id).status == "ok"


def test_opening_a_missing_store_for_reading_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "runs.db"
    with pytest.raises(StoreError, match="there is no run store at") as info:
        Store(path, readonly=True)
    assert str(path) in str(info.value) and "GREENMETER_STORE" in str(info.value)
    assert not path.parent.exists()


@pytest.mark.parametrize("old", ["version 1", "empty file"])
def test_an_older_store_opened_for_reading_is_upgraded_where_it_may_be_written(tmp_path: Path, old: str) -> None:
    path = tmp_path / "runs.db"
    if old == "empty file":
        path.touch()
    else:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        migrate(conn, MIGRATIONS[:1])
        conn.execute("INSERT INTO runs (id, name, kind, status, started_at) VALUES ('ab12', 'old', 'api', 'ok', 'x')")
        conn.execute("COMMIT")
        conn.close()
    with Store(path, readonly=True) as store:  # where it cannot be written: tests/faults/test_store_faults.py
        assert [r.name for r in store.list_runs()] == ([] if old == "empty file" else ["old"])
        assert store.list_comparisons() == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# ---- files that are not greenmeter stores -----------------------------------------------------------

def _text_file(path: Path) -> None:
    path.write_text("id,energy\n1,2\n" * 20)


def _other_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.commit()
    conn.close()


def _other_app_id(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()


def _greenmeter_store(path: Path) -> None:
    with Store(path) as store:
        run_id = store.start_run(name="big", kind="api")
        for i in range(40):
            store.add_window(run_id, dataclasses.replace(_measurement(steps=50), name=f"w{i}"))


def _truncated(path: Path) -> None:
    _greenmeter_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tables_dropped(path: Path) -> None:
    _greenmeter_store(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE steps")
    conn.commit()
    conn.close()


def _damaged_schema(path: Path) -> None:
    _greenmeter_store(path)
    data = bytearray(path.read_bytes())
    data[100:160] = b"\xff" * 60  # the b-tree header of page 1, which holds the schema
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("make", [_text_file, _other_sqlite, _other_app_id, _truncated, _tables_dropped,
                                  _damaged_schema])
def test_a_foreign_or_damaged_file_is_refused_and_never_modified(
        tmp_path: Path, make: Callable[[Path], None], readonly: bool) -> None:
    path = tmp_path / "runs.db"
    make(path)
    before = _snapshot(path)
    time.sleep(0.01)  # a write now would show in the mtime
    with pytest.raises(CorruptStoreError) as info:
        Store(path, readonly=readonly)
    message = str(info.value)
    assert str(path) in message and "GREENMETER_STORE" in message and "move the file away" in message
    # a reader cannot remove the -wal and -shm files SQLite makes beside a WAL file; the file is unchanged
    assert _snapshot(path)[:2 if readonly else 3] == before[:2 if readonly else 3]


def test_a_folder_at_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs.db").mkdir()
    with pytest.raises(CorruptStoreError, match="not a regular file"):
        Store(tmp_path / "runs.db")


# ---- runs and windows -------------------------------------------------------------------------------

def test_a_run_round_trips_with_windows_steps_and_power_samples(tmp_path: Path) -> None:
    first, second = _measurement("epoch-1", (10.0, 46.0)), _measurement("epoch-2", (0.0, 7.5), steps=2)
    whole = _measurement("whole", (0.0, 53.5), steps=0)
    with Store(tmp_path / "runs.db") as store:
        run_id = store.start_run(name="train", kind="run", command=["python", "train.py", "--lr", "0.1"],
                                 host=first.host, carbon_settings=SETTINGS)
        assert len(run_id) == 32 and int(run_id, 16) >= 0
        running = store.get_run(run_id)
        assert (running.status, running.complete, running.display_status) == ("running", False, "incomplete")
        ids = [store.add_window(run_id, first), store.add_window(run_id, second)]
        store.add_power_samples(run_id, [(0.5, "scripted:dev", 12.0), (0.25, "scripted:dev", 9.5)])
        store.finish_run(run_id, status="ok", exit_code=0, measurement=whole, note="fine")
        run = store.get_run(run_id[:6])
        assert store.windows(run_id) == [first, second]
        assert store.power_samples(run_id) == [(0.25, "scripted:dev", 9.5), (0.5, "scripted:dev", 12.0)]
        conn = sqlite3.connect(store.path)
        steps = conn.execute("SELECT window_id, idx, duration_s FROM steps ORDER BY window_id, idx").fetchall()
        row = conn.execute("SELECT energy_j, steps, samples, carbon FROM windows WHERE id = ?", (ids[0],)).fetchone()
        conn.close()
    assert steps == [(ids[0], i, d) for i, d in enumerate(first.step_durations_s)] + [
        (ids[1], i, d) for i, d in enumerate(second.step_durations_s)]
    assert row[:3] == (36.0, 3, 12) and json.loads(row[3])["co2e_g"] == first.carbon.co2e_g  # type: ignore[union-attr]
    assert (run.id, run.name, run.kind, run.status) == (run_id, "train", "run", "ok")
    assert (run.exit_code, run.note) == (0, "fine")
    assert run.complete and run.display_status == "ok" and run.ended_at is not None and run.ended_at >= run.started_at
    assert run.command == ("python", "train.py", "--lr", "0.1") and run.host == first.host
    assert run.carbon_settings == SETTINGS.to_dict() and run.windows_count == 2
    assert run.measurement == whole and whole.energy_j == 53.5
    assert run.carbon == whole.carbon == estimate_carbon(53.5, SETTINGS)
    assert run.carbon.co2e_g == 53.5 / 3.6e6 * 1.2 * 200.0  # type: ignore[union-attr]
    assert RunRecord.from_dict(json.loads(json.dumps(run.to_dict()))) == run


def test_an_explicit_carbon_figure_overrides_the_measurements(tmp_path: Path) -> None:
    m = _measurement()
    other = estimate_carbon(m.energy_j, CarbonSettings(country="FRA"))
    with Store(tmp_path / "runs.db") as store:
        run_id = store.start_run(name="x", kind="api")
        store.add_window(run_id, m, carbon=other)
        store.finish_run(run_id, status="failed", measurement=m, carbon=other)
        (window,) = store.windows(run_id)
        assert window.carbon == other != m.carbon and window == dataclasses.replace(m, carbon=other)
        run = store.get_run(run_id)
        assert run.carbon == other and run.measurement == m and run.status == "failed"


def test_listing_is_newest_first_and_ids_resolve_by_unique_prefix(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        assert store.list_runs() == [] and store.last_run() is None
        ids = [store.start_run(name=f"run{i}", kind="api") for i in range(20)]
        assert [r.id for r in store.list_runs()] == ids[::-1]
        assert [r.name for r in store.list_runs(limit=2)] == ["run19", "run18"]
        assert store.last_run().id == ids[-1]  # type: ignore[union-attr]
        assert store.get_run(ids[3][:10].upper()).id == ids[3]
        shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) >= 2)  # 20 ids, 16 digits
        with pytest.raises(StoreError, match="ambiguous") as info:
            store.get_run(shared)
        assert sum(i in str(info.value) for i in ids if i.startswith(shared)) >= 2
        unused = next(p for p in (f"{a}{b}" for a in "0123456789abcdef" for b in "0123456789abcdef")
                      if not any(i.startswith(p) for i in ids))
        for bad in (unused, "not-an-id", ""):
            with pytest.raises(StoreError, match="greenmeter runs"):
                store.get_run(bad)


def test_wrong_writes_raise_clear_errors(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        with pytest.raises(ConfigError, match="kind"):
            store.start_run(name="x", kind="batch")
        run_id = store.start_run(name="x", kind="api")
        with pytest.raises(ConfigError, match="status"):
            store.finish_run(run_id, status="running")
        with pytest.raises(StoreError, match="no run with id"):
            store.add_window("0" * 32, _measurement())
        with pytest.raises(ConfigError, match="Measurement"):
            store.add_window(run_id, {"energy_j": 1.0})  # type: ignore[arg-type]
        store.finish_run(run_id, status="interrupted")
        with pytest.raises(StoreError, match="already finished"):
            store.finish_run(run_id, status="ok")
        assert store.get_run(run_id).windows_count == 0
    with pytest.raises(StoreError, match="closed"):
        store.list_runs()


# ---- several processes -------------------------------------------------------------------------------

def _worker(path: str, index: int, measurement_json: str, barrier) -> None:  # type: ignore[no-untyped-def]
    base = Measurement.from_json(measurement_json)
    barrier.wait(timeout=60)
    with Store(path) as store:  # four processes create the same new store at once
        run_id = store.start_run(name=f"worker{index}", kind="api")
        for i in range(250):
            store.add_window(run_id, dataclasses.replace(base, name=f"w{index}-{i}"))
        store.finish_run(run_id, status="ok")


def test_four_processes_write_1000_windows_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    text = _measurement(steps=2).to_json()
    procs = [ctx.Process(target=_worker, args=(path, i, text, barrier)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with Store(path) as store:
        runs = store.list_runs()
        assert sorted(r.name for r in runs) == [f"worker{i}" for i in range(4)]
        assert all(r.status == "ok" and r.windows_count == 250 for r in runs)
        names = [m.name for r in runs for m in store.windows(r.id)]
    assert len(names) == 1000 and len(set(names)) == 1000
    assert set(names) == {f"w{i}-{j}" for i in range(4) for j in range(250)}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*), count(DISTINCT id) FROM windows").fetchone() == (1000, 1000)
    assert conn.execute("SELECT count(*) FROM steps").fetchone() == (2000,)
    conn.close()


KILLED_CHILD = """
import sys
from pathlib import Path
from greenmeter import Meter
from greenmeter.store.database import Store
from tests.fakes.scripted import ScriptedBackend

store = Store(sys.argv[1])
meter = Meter([ScriptedBackend([float(i) for i in range(0, 100, 3)])], sync=None)
run_id = store.start_run(name="doomed", kind="api", host=meter.host)
for i in range(5):
    with meter.window(f"step{i}") as w:
        meter.step()
    store.add_window(run_id, w.measurement)
store.add_power_samples(run_id, [(0.1, "scripted:dev", 30.0)])
Path(sys.argv[2]).write_text(run_id)
import time
time.sleep(60)
"""


def test_a_killed_run_stays_readable_as_incomplete_with_its_windows(tmp_path: Path) -> None:
    path, ready = tmp_path / "runs.db", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(path), str(ready)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text():
        assert child.poll() is None and time.monotonic() < deadline, "the child never stored its windows"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    with Store(path) as store:
        (run,) = store.list_runs()
        windows = store.windows(run.id)
        assert store.power_samples(run.id) == [(0.1, "scripted:dev", 30.0)]
    assert run.id == ready.read_text() and run.name == "doomed"
    assert (run.status, run.complete, run.display_status) == ("running", False, "incomplete")
    assert run.measurement is None and run.ended_at is None and run.windows_count == 5
    assert [m.name for m in windows] == [f"step{i}" for i in range(5)]
    assert [m.energy_j for m in windows] == [3.0] * 5 and all(m.steps == 1 for m in windows)
