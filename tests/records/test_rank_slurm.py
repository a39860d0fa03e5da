"""RankInfo.from_env under SLURM: srun's variables give the rank when torchrun's are absent."""

from __future__ import annotations

import pytest

from greenmeter import ConfigError
from greenmeter.records.distributed import RankInfo


def _slurm(procid: int, ntasks: int, localid: int, nodeid: int, **extra: str) -> dict[str, str]:
    env = {"SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(localid),
           "SLURM_NODEID": str(nodeid), "SLURM_TASKS_PER_NODE": "2(x2)", "SLURMD_NODENAME": f"gpu{nodeid:02d}",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[00-01]", "SLURM_STEP_ID": "0"}
    env.update(extra)
    return env


def test_slurm_variables_give_rank_node_and_job_facts() -> None:
    info = RankInfo.from_env(_slurm(3, 4, 1, 1))
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size, info.node_rank) == (3, 4, 1, 2, 1)
    assert info.hostname == "gpu01" and info.node_id == "gpu01/node1"
    assert info.launcher == "slurm" and not info.reads_node
    assert dict(info.job) == {"job_id": "4242", "nodelist": "gpu[00-01]", "step_id": "0"}
    assert info.job_id == "4242"
    assert RankInfo.from_dict(info.to_dict()) == info


def test_ntasks_per_node_and_uneven_tasks_per_node() -> None:
    info = RankInfo.from_env(_slurm(0, 3, 0, 0, SLURM_NTASKS_PER_NODE="3"))
    assert info.local_world_size == 3
    uneven = RankInfo.from_env(_slurm(6, 7, 0, 3, SLURM_TASKS_PER_NODE="2(x3),1"))
    assert (uneven.node_rank, uneven.local_world_size, uneven.reads_node) == (3, 1, True)


def test_torchrun_variables_win_over_slurm_and_job_facts_are_kept() -> None:
    env = _slurm(3, 4, 1, 1, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2", GROUP_RANK="0")
    info = RankInfo.from_env(env)
    assert (info.rank, info.world_size, info.node_rank, info.launcher) == (0, 2, 0, "torchrun")
    assert info.job_id == "4242"


def test_single_process_outside_any_job() -> None:
    info = RankInfo.from_env({})
    assert (info.rank, info.world_size, info.launcher, info.job, info.job_id) == (0, 1, "none", (), None)
    alone = RankInfo.from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"})
    assert (alone.world_size, alone.local_world_size, alone.launcher, alone.job_id) == (1, 1, "slurm", "7")


def test_an_old_rank_dict_without_launcher_or_job_still_reads() -> None:
    old = {"rank": 1, "world_size": 2, "local_rank": 1, "local_world_size": 2, "node_rank": 0, "hostname": "h"}
    assert RankInfo.from_dict(old) == RankInfo(1, 2, 1, 2, 0, "h")


@pytest.mark.parametrize(("changes", "message"), [
    ({"SLURM_PROCID": "x"}, "SLURM_PROCID='x' is not a whole number"),
    ({"SLURM_NTASKS": "two"}, "SLURM_NTASKS='two' is not a whole number"),
    ({"SLURM_PROCID": "4"}, r"SLURM_PROCID=4 is not in 0\.\.3 \(SLURM_NTASKS is 4\)"),
    ({"SLURM_LOCALID": "2"}, "SLURM_LOCALID=2 is not in 0..1"),
    ({"SLURM_NTASKS": ""}, "SLURM_NTASKS is not set while SLURM_PROCID is"),
    ({"SLURM_TASKS_PER_NODE": "2(x"}, "SLURM_TASKS_PER_NODE='2\\(x' is not like"),
    ({"SLURM_NODEID": "5"}, "SLURM_NODEID=5 has no entry in SLURM_TASKS_PER_NODE"),
    ({"SLURM_TASKS_PER_NODE": "", "SLURM_LOCALID": ""}, "SLURM_LOCALID and SLURM_TASKS_PER_NODE are not both set"),
])
def test_bad_slurm_values_are_config_errors_naming_the_variable(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RankInfo.from_env({**_slurm(1, 4, 1, 0), **changes})
