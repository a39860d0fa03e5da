"""Recording runs: the ``store=`` rule (open_store, opened_store) and one run's life (RunRecorder)."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

from greenmeter import ConfigError, Measurement, Meter, StoreError
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.store import database
from greenmeter.store.database import Store
from greenmeter.store.recorder import RunRecorder, open_store, opened_store
from tests.fakes.scripted import ScriptedBackend

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = CarbonSettings(intensity_g_per_kwh=300.0, pue=1.1)


def _measurement(name: str, joules: tuple[float, float], *, fail: bool = False) -> Measurement:
    meter = Meter([ScriptedBackend(joules)], sync=None, carbon=SETTINGS)
    window = meter.begin(name, samples=4)
    return meter.end(window, error=RuntimeError("diverged") if fail else None)


# ---- the store= rule ----------------------------------------------------------------------------------

def test_none_and_false_name_no_store() -> None:
    assert open_store(None) is None and open_store(False) is None
    with opened_store(None) as target:
        assert target is None


def test_a_given_store_is_used_as_it_is_and_left_open(tmp_path: Path) -> None:
    with Store(tmp_path / "given.db") as given:
        assert open_store(given) is given
        with opened_store(given) as target:
            assert target is given
        assert given.list_runs() == []  # still open after the block


@pytest.mark.parametrize("as_text", [False, True])
def test_a_path_opens_the_store_there_and_the_block_closes_it(tmp_path: Path, as_text: bool) -> None:
    path = tmp_path / "deep" / "runs.db"
    with opened_store(str(path) if as_text else path) as target:
        assert isinstance(target, Store) and target.path == path and path.is_file()
        target.start_run(name="x", kind="api")
    with pytest.raises(StoreError, match="closed"):
        target.list_runs()
    with Store(path) as again:
        assert [r.name for r in again.list_runs()] == ["x"]


def test_true_is_the_default_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GREENMETER_STORE", str(tmp_path / "env.db"))
    target = open_store(True)
    try:
        assert isinstance(target, Store) and target.path == tmp_path / "env.db"
    finally:
        target.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [5, 1.5, b"runs.db", ["runs.db"], object()])
def test_anything_else_is_a_config_error_naming_what_is_allowed(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(bad)
    assert str(info.value) == ("store must be a greenmeter.Store, a path, True (the default store) or None, "
                               f"not {type(bad).__name__}")


# ---- one run's life -----------------------------------------------------------------------------------------

def test_a_run_starts_running_keeps_its_windows_and_finishes_ok(tmp_path: Path) -> None:
    first, second = _measurement("a", (0.0, 3.0)), _measurement("b", (3.0, 10.0))
    with Store(tmp_path / "runs.db") as store:
        run = RunRecorder(store, name="job", kind="api", host=first.host, carbon_settings=SETTINGS)
        stored = store.get_run(run.run_id)
        assert (stored.status, stored.complete, stored.carbon_settings) == ("running", False, SETTINGS.to_dict())
        run.add_window(first)
        run.add_window(second)
        assert store.get_run(run.run_id).windows_count == 2 and not run.finished  # committed as added
        assert run.finish(note="done") == "ok" and run.finished
        done = store.get_run(run.run_id)
        assert store.windows(run.run_id) == [first, second]
    assert (done.name, done.kind, done.status, done.exit_code, done.note) == ("job", "api", "ok", None, "done")
    assert done.host == first.host and done.measurement is None


def test_a_failed_window_fails_the_run(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        run = RunRecorder(store, name="job", kind="api")
        run.add_window(_measurement("ok", (0.0, 1.0)))
        run.add_window(_measurement("bad", (1.0, 2.0), fail=True))
        assert run.failed_windows == 1
        assert run.finish() == "failed" and store.get_run(run.run_id).status == "failed"


@pytest.mark.parametrize("exit_code", [0, 3])
def test_a_window_the_store_could_not_take_fails_the_run_and_is_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int) -> None:
    monkeypatch.setattr(database, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "runs.db"
    with Store(path) as store:
        run = RunRecorder(store, name="job", kind="run", command=["train"])
        run.add_window(_measurement("kept", (0.0, 1.0)))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the lock longer than the busy timeout...
        with pytest.raises(StoreError, match="locked by another process"):
            run.add_window(_measurement("lost", (1.0, 2.0)))
        other.execute("ROLLBACK")  # ...then lets go, before the run ends
        other.close()
        assert run.lost_windows == 1
        assert run.finish(exit_code=exit_code, note="the command ended") == "failed"  # not ok: a window is missing
        done = store.get_run(run.run_id)
        assert [w.name for w in store.windows(run.run_id)] == ["kept"]
    assert done.status == "failed" and done.exit_code == exit_code
    assert done.note is not None and done.note.startswith("the command ended; 1 window(s) could not be stored (")
    assert "locked by another process" in done.note


@pytest.mark.parametrize(("exit_code", "interrupted_by", "status"), [
    (0, None, "ok"), (3, None, "failed"), (130, "SIGINT", "interrupted"), (0, "SIGTERM", "interrupted"),
])
def test_a_commands_run_finishes_by_exit_code_and_signal(tmp_path: Path, exit_code: int, interrupted_by: str | None,
                                                         status: str) -> None:
    whole = _measurement("cmd", (0.0, 8.0))
    with Store(tmp_path / "runs.db") as store:
        run = RunRecorder(store, name="sleep 1", kind="run", command=["sleep", "1"])
        run.add_window(whole)
        run.add_power_samples([(0.0, "scripted:dev", 4.0), (1.0, "scripted:dev", 5.0)])
        assert run.finish(exit_code=exit_code, interrupted_by=interrupted_by, measurement=whole) == status
        stored = store.get_run(run.run_id)
        assert store.power_samples(run.run_id) == [(0.0, "scripted:dev", 4.0), (1.0, "scripted:dev", 5.0)]
    assert (stored.status, stored.exit_code, stored.command) == (status, exit_code, ("sleep", "1"))
    assert stored.measurement == whole and stored.carbon == whole.carbon


def test_finishing_twice_is_a_store_error(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        run = RunRecorder(store, name="job", kind="api")
        run.finish()
        with pytest.raises(StoreError, match="already finished"):
            run.finish()


def test_a_recorder_needs_a_store() -> None:
    with pytest.raises(ConfigError, match="RunRecorder records in a greenmeter.Store, not str"):
        RunRecorder("runs.db", name="job", kind="api")  # type: ignore[arg-type]


def test_open_starts_a_run_where_store_says_and_closes_only_a_store_it_opened(tmp_path: Path) -> None:
    assert RunRecorder.open(None, name="job", kind="api") is None
    path = tmp_path / "runs.db"
    owned = RunRecorder.open(path, name="owned", kind="api")
    assert owned is not None and owned.owns_store
    owned.finish()
    owned.close()
    with pytest.raises(StoreError, match="closed"):
        owned.store.list_runs()
    with Store(path) as given:
        borrowed = RunRecorder.open(given, name="borrowed", kind="api")
        assert borrowed is not None and borrowed.store is given and not borrowed.owns_store
        borrowed.finish()
        borrowed.close()
        assert [(r.name, r.status) for r in given.list_runs()] == [("borrowed", "ok"), ("owned", "ok")]


def test_open_closes_the_store_it_opened_when_the_run_cannot_start(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    wal = path.with_name("runs.db-wal")
    with Store(path):
        assert wal.exists()  # an open connection keeps the write-ahead log; the last one to close removes it
    assert not wal.exists()
    with pytest.raises(ConfigError, match="kind"):
        RunRecorder.open(path, name="job", kind="batch")
    assert not wal.exists()
    with Store(path) as store:
        assert store.list_runs() == []


def test_the_store_stage_never_imports_the_metering_stage() -> None:
    offences = []
    for path in sorted((ROOT / "greenmeter" / "store").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offences += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.startswith("greenmeter.metering")]
    assert offences == []
