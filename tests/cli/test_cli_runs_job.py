"""`greenmeter runs --job JOBID`: only the runs of one cluster job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greenmeter.cli.main import main
from greenmeter.store.database import Store


def _store(tmp_path: Path) -> Path:
    db = tmp_path / "runs.db"
    with Store(db) as store:
        for name, job in (("rank0", "4242"), ("rank1", "4242"), ("other", "77"), ("local", None)):
            run = store.start_run(name=name, kind="api")
            store.finish_run(run, status="ok")
            if job is not None:
                store.set_run_job(run, {"job_id": job, "nodelist": "gpu[00-01]"})
    return db


def test_runs_job_lists_only_that_jobs_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path)
    assert main(["runs", "--store", str(db), "--job", "4242", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in runs) == ["rank0", "rank1"]
    assert all(r["job"] == {"job_id": "4242", "nodelist": "gpu[00-01]"} for r in runs)
    assert main(["runs", "--store", str(db), "--job", "77"]) == 0
    table = capsys.readouterr().out
    assert "other" in table and "rank0" not in table and "local" not in table
    assert main(["runs", "--store", str(db), "--json"]) == 0
    every = {r["name"]: r["job"] for r in json.loads(capsys.readouterr().out)}
    assert len(every) == 4 and every["local"] is None


def test_runs_job_without_runs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path)
    assert main(["runs", "--store", str(db), "--job", "1"]) == 0
    assert capsys.readouterr().out.startswith("no runs of job 1 stored in ")


def test_runs_table_has_a_job_column_when_a_run_has_a_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path)
    with Store(db) as store:
        run = store.start_run(name="ranked", kind="api")
        store.finish_run(run, status="ok")
        store.set_run_job(run, {"job_id": "4242", "nodelist": "gpu[00-01]", "rank": "3"})
    assert main(["runs", "--store", str(db)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[-2:] == ["job", "name"]
    by_name = {row.split()[-1]: row for row in rows}
    assert by_name["ranked"].split()[-3:] == ["rank", "3", "ranked"]
    assert by_name["ranked"].split()[-4] == "4242"
    assert by_name["rank0"].split()[-2:] == ["4242", "rank0"]
    assert by_name["other"].split()[-2:] == ["77", "other"]
    assert by_name["local"].split()[-2:] == ["-", "local"]  # a run outside a job
    assert header.index("job") == by_name["ranked"].index("4242")  # the column lines up


def test_runs_table_has_no_job_column_without_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.db"
    with Store(db) as store:
        store.finish_run(store.start_run(name="plain", kind="api"), status="ok")
    assert main(["runs", "--store", str(db)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert "job" not in header.split() and header.split()[-1] == "name" and row.split()[-1] == "plain"
