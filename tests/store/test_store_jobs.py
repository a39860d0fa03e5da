"""Runs of a cluster job: Store.set_run_job, run_job and list_runs(job=...), and migration 5 -> 6."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from greenmeter import ConfigError, StoreError
from greenmeter.store.database import MIGRATIONS, SCHEMA_VERSION, Store, migrate

FACTS = {"job_id": "4242", "nodelist": "gpu[00-01]", "step_id": "0"}


def test_runs_are_listed_by_job(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        first = store.start_run(name="a", kind="api")
        second = store.start_run(name="b", kind="api")
        other = store.start_run(name="c", kind="api")
        alone = store.start_run(name="d", kind="api")
        store.set_run_job(first, FACTS)
        store.set_run_job(second, FACTS)
        store.set_run_job(other, {"job_id": "99"})
        assert [r.name for r in store.list_runs(job="4242")] == ["b", "a"]
        assert [r.name for r in store.list_runs(job="99")] == ["c"]
        assert [r.name for r in store.list_runs(job="4242", limit=1)] == ["b"]
        assert store.list_runs(job="1") == []
        assert len(store.list_runs()) == 4
        assert store.run_job(first) == FACTS
        assert store.run_job(alone[:8]) is None


def test_bad_job_arguments_are_clear_errors(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        run = store.start_run(name="a", kind="api")
        with pytest.raises(ConfigError, match="job must be a cluster job id"):
            store.list_runs(job="")
        with pytest.raises(ConfigError, match="needs a job_id"):
            store.set_run_job(run, {"nodelist": "n1"})
        with pytest.raises(StoreError, match="no run with id"):
            store.set_run_job("ab" * 16, FACTS)


def test_a_version_5_store_gains_the_job_columns_and_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:5]) == 0  # a store as greenmeter wrote it before jobs
    conn.execute("INSERT INTO runs (id, name, kind, status, started_at) VALUES (?, 'old', 'api', 'ok', '2026-01-01')",
                 ("cd" * 16,))
    conn.close()
    with Store(path) as store:
        assert [r.name for r in store.list_runs()] == ["old"] and store.list_runs(job="1") == []
        store.set_run_job("cd" * 16, {"job_id": "1"})
        assert [r.name for r in store.list_runs(job="1")] == ["old"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    conn.close()
