"""Optimize results in the run store: the optimizations table (schema 3) and the search journal (schema 4), their
migrations, lookups, damage."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from greenmeter import ConfigError, CorruptStoreError, StoreError
from greenmeter.records.comparison import Comparison
from greenmeter.records.optimization import OptimizeResult
from greenmeter.store.database import (
    MIGRATIONS,
    OPTIMIZATIONS_MIGRATION,
    SCHEMA_VERSION,
    SEARCHES_MIGRATION,
    Store,
    migrate,
)
from tests.faults.test_run_faults import TIMEOUT_S, _env, _greenmeter, _unprivileged
from tests.output.conftest import FIXTURE, make_optimization


@pytest.fixture()
def comparison(tmp_path: Path) -> Comparison:
    """The comparison of the schema-2 fixture store (read from a private copy)."""
    path = tmp_path / "fixture.db"
    shutil.copyfile(FIXTURE, path)
    with Store(path) as store:
        found = store.last_comparison()
    assert found is not None
    return found


def test_schema_3_adds_the_optimizations_table_and_schema_4_the_search_journal() -> None:
    assert MIGRATIONS[2] is OPTIMIZATIONS_MIGRATION and MIGRATIONS[3] is SEARCHES_MIGRATION
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 4  # later migrations (5: calibrations) come after


def test_an_optimization_round_trips_and_points_at_its_stored_final_comparison(
        tmp_path: Path, comparison: Comparison) -> None:
    result = make_optimization(comparison)
    with Store(tmp_path / "runs.db") as store:
        assert store.last_optimization() is None and store.list_optimizations() == []
        comparison_id = store.add_comparison(comparison)  # as optimize's compare stores it
        store.add_comparison(Comparison.from_dict({**comparison.to_dict(), "created_at": "2026-11-29T04:00:00"}))
        first = store.add_optimization(result)
        later = store.add_optimization(make_optimization(comparison, name="second"))
        assert len(first) == 32 and first != later
        assert store.get_optimization(first) == result
        assert store.get_optimization(first[:6].upper()) == result  # a unique prefix, any case
        assert store.last_optimization().name == "second"  # same created_at: the later row
        rows = store.list_optimizations()
        assert rows == [(later, "second", result.created_at, "channels:0.5", comparison_id),
                        (first, "digits-optimize", result.created_at, "channels:0.5", comparison_id)]
        assert store.list_optimizations(limit=1) == rows[:1]
    conn = sqlite3.connect(tmp_path / "runs.db")
    row = conn.execute("SELECT name, run_id, chosen, comparison_id, data FROM optimizations WHERE id = ?",
                       (first,)).fetchone()
    conn.close()
    assert row[:4] == ("digits-optimize", comparison.run_id, "channels:0.5", comparison_id)
    assert OptimizeResult.from_json(row[4]) == result


def test_an_optimization_whose_comparison_is_not_stored_has_no_comparison_id(
        tmp_path: Path, comparison: Comparison) -> None:
    with Store(tmp_path / "runs.db") as store:
        oid = store.add_optimization(make_optimization(comparison))
        assert store.list_optimizations()[0][4] is None
        assert store.get_optimization(oid).comparison == comparison


def test_lookups_and_writes_of_optimizations_fail_clearly(tmp_path: Path, comparison: Comparison) -> None:
    path = tmp_path / "runs.db"
    with Store(path) as store:
        with pytest.raises(ConfigError, match="add_optimization takes a greenmeter OptimizeResult, not Comparison"):
            store.add_optimization(comparison)  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="'xyz' is not an optimization id"):
            store.get_optimization("xyz")
        with pytest.raises(StoreError, match="is not a comparison id .*run `greenmeter comparisons` to see them"):
            store.get_comparison("xyz")
        oid = store.add_optimization(make_optimization(comparison))
    conn = sqlite3.connect(path, isolation_level=None)
    for twin in ("abc1" + "0" * 28, "abc2" + "0" * 28):
        conn.execute("INSERT INTO optimizations (id, name, created_at, run_id, chosen, comparison_id, data) "
                     "SELECT ?, name, created_at, run_id, chosen, comparison_id, data FROM optimizations "
                     "WHERE id = ?", (twin, oid))
    conn.close()
    with Store(path, readonly=True) as store:
        with pytest.raises(StoreError, match="optimization id prefix 'abc' is ambiguous"):
            store.get_optimization("abc")
        assert store.get_optimization("abc2").name == "digits-optimize"
        with pytest.raises(StoreError, match="no optimization with an id starting with 'abc3'.*greenmeter optimizations"):
            store.get_optimization("abc3")


def test_an_unreadable_optimization_row_is_a_corrupt_store_naming_it(tmp_path: Path, comparison: Comparison) -> None:
    path = tmp_path / "runs.db"
    with Store(path) as store:
        oid = store.add_optimization(make_optimization(comparison))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE optimizations SET data = ? WHERE id = ?", ('{"name": "cut short', oid))
    conn.close()
    with Store(path, readonly=True) as store:
        for read in (lambda: store.get_optimization(oid), store.last_optimization):
            with pytest.raises(CorruptStoreError, match=f"holds an unreadable optimization {oid}") as info:
                read()
            assert str(path) in str(info.value)
        assert [row[0] for row in store.list_optimizations()] == [oid]  # the listing reads no JSON
    conn = sqlite3.connect(path, isolation_level=None)
    data = json.loads(make_optimization(comparison).to_json())
    del data["candidates"][0]["status"]
    conn.execute("UPDATE optimizations SET data = ? WHERE id = ?", (json.dumps(data), oid))
    conn.close()
    with Store(path, readonly=True) as store, pytest.raises(CorruptStoreError, match="unreadable optimization"):
        store.get_optimization(oid)


def _schema_2_store(path: Path, comparison: Comparison) -> None:
    """A store as the schema-2 greenmeter wrote it: the old migrations only, with a run and a comparison."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    assert migrate(conn, MIGRATIONS[:2]) == 0
    conn.execute("INSERT INTO runs (id, name, kind, status, started_at) VALUES ('ab12', 'old', 'api', 'ok', 'x')")
    conn.execute("INSERT INTO comparisons (id, name, created_at, run_id, variants, data) VALUES (?, ?, ?, ?, ?, ?)",
                 ("cd34", comparison.name, comparison.created_at, comparison.run_id, len(comparison.variants),
                  comparison.to_json(indent=None)))
    conn.execute("COMMIT")
    conn.close()


def test_a_schema_2_store_is_migrated_keeping_its_runs_and_comparisons(tmp_path: Path, comparison: Comparison) -> None:
    path = tmp_path / "runs.db"
    _schema_2_store(path, comparison)
    with Store(path) as store:
        assert store.get_run("ab12").name == "old"
        assert store.get_comparison("cd34") == comparison
        assert store.list_optimizations() == []
        oid = store.add_optimization(make_optimization(comparison))
        assert store.list_optimizations()[0][4] == "cd34"  # the stored comparison it rests on
        assert store.get_optimization(oid).chosen == "channels:0.5"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_a_schema_2_store_opened_for_reading_is_upgraded_where_it_may_be_written(
        tmp_path: Path, comparison: Comparison) -> None:
    path = tmp_path / "runs.db"
    _schema_2_store(path, comparison)
    with Store(path, readonly=True) as store:
        assert store.last_optimization() is None and store.get_comparison("cd") == comparison
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_a_schema_2_store_the_user_may_not_write_says_it_needs_an_upgrade(
        tmp_path: Path, comparison: Comparison) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "runs.db"
    _schema_2_store(path, comparison)
    before = path.read_bytes()
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    try:
        proc = _greenmeter("report", "--last-optimization", "-o", "-", env=_env(GREENMETER_STORE=str(path)),
                           prefix=_unprivileged())
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)
    assert proc.returncode == 1 and out == "" and err.count("\n") == 1 and str(path) in err, err
    assert f"needs an upgrade (schema version 2 to {SCHEMA_VERSION})" in err and "write access" in err
    assert path.read_bytes() == before and os.listdir(folder) == ["runs.db"]


FP = {"model": "ab", "evaluation data": "cd", "selection data": "cd", "training data": None, "settings": {"seed": 0}}


def test_a_search_journal_keeps_each_step_until_its_result_is_stored(tmp_path: Path, comparison: Comparison) -> None:
    with Store(tmp_path / "runs.db") as store:
        assert store.search_journal("k1") is None and store.unfinished_searches() == []
        store.save_search_step("k1", "digits", FP, 1.5, "sensitivity", {"layers": []})
        store.save_search_step("k1", "digits", FP, 3.0, "candidate:int4", {"outcome": {"spec": "int4"}}, b"\x00model")
        store.save_search_step("k1", "digits", FP, 4.0, "candidate:int4", {"outcome": {"spec": "int4", "metric": 0.9}},
                               b"\x01model")  # saved again: replaced
        store.save_search_step("k2", "other", FP, 9.0, "sensitivity", {})
        header, steps = store.search_journal("k1")
        assert header["name"] == "digits" and header["fingerprint"] == FP and header["spent_s"] == 4.0
        assert header["started_at"] <= header["updated_at"]
        assert steps == {"sensitivity": ({"layers": []}, None),
                         "candidate:int4": ({"outcome": {"spec": "int4", "metric": 0.9}}, b"\x01model")}
        rows = store.unfinished_searches()
        assert [(r[0], r[1], r[4], r[5]) for r in rows] == [("k2", "other", 9.0, 1), ("k1", "digits", 4.0, 2)]
        store.add_optimization(make_optimization(comparison), finished_search="k1")  # one transaction: stored, gone
        assert store.search_journal("k1") is None and [r[0] for r in store.unfinished_searches()] == ["k2"]
        store.drop_search("k2")
        store.drop_search("nothing")  # no journal: nothing happens
        assert store.unfinished_searches() == []
        assert len(store.list_optimizations()) == 1


def test_a_damaged_search_journal_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with Store(path) as store:
        store.save_search_step("k1", "digits", FP, 1.0, "sensitivity", {})
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE search_steps SET data = '{cut'")
    conn.close()
    with Store(path) as store, pytest.raises(CorruptStoreError, match="unreadable optimize search journal k1"):
        store.search_journal("k1")


def test_a_schema_3_store_is_migrated_keeping_its_optimizations(tmp_path: Path, comparison: Comparison) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    assert migrate(conn, MIGRATIONS[:3]) == 0
    conn.execute("COMMIT")
    conn.close()
    with Store(path) as store:
        oid = store.add_optimization(make_optimization(comparison))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA user_version = 3")
    conn.execute("DROP TABLE search_steps")
    conn.execute("DROP TABLE searches")
    conn.execute("DROP TABLE calibrations")  # added by schema 5, after the journal
    conn.close()
    with Store(path) as store:
        assert store.get_optimization(oid).chosen == "channels:0.5" and store.unfinished_searches() == []
        store.save_search_step("k", "n", FP, 1.0, "sensitivity", {})
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
