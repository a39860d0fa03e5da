"""A plain meter (``Meter``, ``greenmeter.measure``, ``greenmeter run``) started under SLURM records the job's facts
with its run, as a distributed rank's meter does, so ``greenmeter runs --job`` finds it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import greenmeter
from greenmeter.cli.main import main
from greenmeter.metering.meter import Meter
from greenmeter.metering.runner import run_command
from greenmeter.records.distributed import RankInfo, slurm_job
from greenmeter.store.database import Store

JOB = {"job_id": "4242", "nodelist": "gpu[00-01]", "step_id": "0"}


@pytest.fixture
def under_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables of an sbatch script's single task (no torchrun's)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[00-01]")
    monkeypatch.setenv("SLURM_STEP_ID", "0")


def test_a_plain_meter_records_the_job(tmp_path: Path, under_slurm: None) -> None:
    db = tmp_path / "runs.db"
    with Meter(["cpu-estimate"], store=db) as meter:
        with meter.window("w"):
            pass
    with Store(db) as store:
        assert store.run_job(meter.run_id) == JOB  # type: ignore[arg-type]
        assert [r.id for r in store.list_runs(job="4242")] == [meter.run_id]


def test_each_srun_task_records_its_rank(tmp_path: Path, under_slurm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    db = tmp_path / "runs.db"
    with greenmeter.measure("task", store=db):
        pass
    with Store(db) as store:
        (run,) = store.list_runs(job="4242")
        assert run.name == "task" and store.run_job(run.id) == {**JOB, "rank": "2"}


def test_rank_variables_that_do_not_add_up_keep_the_jobs_facts(tmp_path: Path, under_slurm: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "5")  # not below SLURM_NTASKS: RankInfo.from_env refuses it
    monkeypatch.setenv("SLURM_NTASKS", "4")
    meter = Meter(["cpu-estimate"])
    assert meter.cluster_job() == JOB


def test_greenmeter_run_records_the_job(tmp_path: Path, under_slurm: None, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.db"
    result = run_command([sys.executable, "-c", "pass"], store=db)
    assert result.exit_code == 0
    with Store(db) as store:
        assert store.run_job(result.run_id) == JOB  # type: ignore[arg-type]
    assert main(["runs", "--store", str(db), "--job", "4242", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["id"] == result.run_id and listed["job"] == JOB


def test_outside_slurm_no_job_is_recorded(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with Meter(["cpu-estimate"], store=db) as meter:
        with meter.window("w"):
            pass
    assert meter.cluster_job() == {}
    with Store(db) as store:
        assert store.run_job(meter.run_id) is None  # type: ignore[arg-type]


def test_job_facts() -> None:
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
           "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2"}
    assert slurm_job(env) == (("job_id", "7"), ("nodelist", "n[1-2]"))
    assert slurm_job({"SLURM_JOB_NODELIST": "n1"}) == ()  # no job id: not a job
    assert RankInfo.from_env(env).job_facts == {"job_id": "7", "nodelist": "n[1-2]", "rank": "1"}
    assert RankInfo.from_env({"SLURM_JOB_ID": "7"}).job_facts == {"job_id": "7"}  # one process: no rank
    assert RankInfo.from_env({}).job_facts == {}
