"""A job launched as srun launches it: several processes on this machine with SLURM's variables, no torchrun's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from greenmeter.metering.distributed import DistributedResult
from greenmeter.store.database import Store
from tests.metering.test_distributed import REPO_ROOT, WORKER, _free_port, _job_env, _torch_distributed, _wait

JOB = "4242"


def _srun_env(rank: int, port: int) -> dict[str, str]:
    """What srun sets for task ``rank`` of ``--nodes=2 --ntasks-per-node=2`` (two nodes faked on this host)."""
    node = rank // 2
    env = {k: v for k, v in _job_env().items() if not k.startswith("SLURM")}
    env.update(SLURM_JOB_ID=JOB, SLURM_JOB_NODELIST="gpu[00-01]", SLURM_STEP_ID="0", SLURM_PROCID=str(rank),
               SLURM_NTASKS="4", SLURM_LOCALID=str(rank % 2), SLURM_NODEID=str(node), SLURM_TASKS_PER_NODE="2(x2)",
               SLURMD_NODENAME=f"gpu{node:02d}", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


@pytest.mark.slow
def test_srun_ranks_and_nodes_come_from_slurm_and_the_job_is_stored(tmp_path: Path) -> None:
    _torch_distributed()
    db, port = tmp_path / "runs.db", _free_port()
    tasks = [subprocess.Popen(
        [sys.executable, str(WORKER), "--store", str(db), "--out", str(tmp_path), "--timeout", "60"],
        cwd=REPO_ROOT, env=_srun_env(rank, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True) for rank in range(4)]
    logs = _wait(tasks, 180)
    assert [t.returncode for t in tasks] == [0, 0, 0, 0], "\n".join(logs)
    result = DistributedResult.from_dict(json.loads((tmp_path / "result.json").read_text()))
    assert result.world_size == 4
    assert [(r.info.rank, r.info.node_rank, r.info.local_rank, r.info.local_world_size) for r in result.ranks] == [
        (0, 0, 0, 2), (1, 0, 1, 2), (2, 1, 0, 2), (3, 1, 1, 2)]
    assert result.node_ids == ("gpu00/node0", "gpu01/node1")
    assert {r.info.launcher for r in result.ranks} == {"slurm"}
    assert all(r.info.job_id == JOB for r in result.ranks)
    window = result.window("train")
    assert [n.ranks for n in window.nodes] == [(0, 1), (2, 3)]
    assert window.energy_j == pytest.approx(sum(n.energy_j for n in window.nodes), rel=1e-12)
    with Store(db) as store:
        in_job = {r.id for r in store.list_runs(job=JOB)}
        assert in_job == {result.run_id, *(r.run_id for r in result.ranks)}
        assert store.run_job(result.run_id) == {"job_id": JOB, "nodelist": "gpu[00-01]", "step_id": "0"}  # type: ignore[arg-type]
        note = store.get_run(result.run_id).note  # type: ignore[arg-type]
        assert f"SLURM job {JOB}" in note and "ranks read from slurm variables" in note  # type: ignore[operator]
        assert store.list_runs(job="1") == []
