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
