"""greenmeter.metering.distributed: rank facts, who reads what, combining ranks, storing, and real multi-process jobs.

Hardware is faked at the boundary (a powercap tree in ``tmp_path``, a fake ``pynvml`` module); the
multi-process tests run real processes on this machine's own sources: two torchrun agents on localhost as
two nodes of two ranks each, and a job where one rank fails before it aggregates.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenmeter import ConfigError, MeasurementError
from greenmeter.metering.distributed import (
    DistributedResult,
    RankInfo,
    RankMeter,
    RankResult,
    combine,
    split_domain_key,
    store_result,
    track,
)
from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading, SourceInfo
from greenmeter.sources.registry import register_source, unregister_source
from greenmeter.store.database import Store
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.fakes.powercap import FakePowercap, FakeZone

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = REPO_ROOT / "tests" / "distributed_worker.py"
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
                  "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@pytest.fixture(autouse=True)
def _no_gpus_and_no_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine where NVML works but sees no GPU, outside any torch.distributed job."""
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml())
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _torchrun_env(rank: int, world: int, local: int, local_world: int, node: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local),
            "LOCAL_WORLD_SIZE": str(local_world), "GROUP_RANK": str(node)}


# Rank facts ------------------------------------------------------------------------------------
def test_rank_facts_come_from_the_variables_torchrun_sets() -> None:
    info = RankInfo.from_env(_torchrun_env(3, 4, 1, 2, 1))
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size, info.node_rank) == (3, 4, 1, 2, 1)
    assert info.node_id == f"{info.hostname}/node1"
    assert not info.reads_node
    assert RankInfo.from_env({}) == RankInfo(0, 1, 0, 1, 0, info.hostname)
    derived = RankInfo.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert derived.node_rank == 1 and derived.reads_node is False
    assert RankInfo.from_dict(info.to_dict()) == info


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "1", "WORLD_SIZE": "2"}, "LOCAL_RANK and LOCAL_WORLD_SIZE are not set"),
    ({"RANK": "1"}, "RANK and WORLD_SIZE must be set together"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, "rank 2 is not below world_size 2"),
])
def test_unreadable_rank_facts_are_config_errors_that_say_why(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RankInfo.from_env(env)


# Who reads what ------------------------------------------------------------------------------------
def _package(tmp_path: Path, name: str) -> dict[str, FakeZone]:
    return FakePowercap(tmp_path / name).add_package(0, subzones=("dram",))


def _meters(tmp_path: Path, hosts: tuple[str, ...], **options: object) -> list[RankMeter]:
    """Two ranks per node, node n on ``hosts[n]`` with its own fake RAPL tree ``sysfs-<n>``."""
    world = 2 * len(hosts)
    return [RankMeter(rank=RankInfo(r, world, r % 2, 2, r // 2, hosts[r // 2]),  # type: ignore[arg-type]
                      sysfs_root=str(tmp_path / f"sysfs-{r // 2}"), sync=None, name="job", **options)
            for r in range(world)]


def _add(zone: FakeZone, joules: float) -> None:
    zone.set_energy_uj(zone.energy_uj + round(joules * 1e6))


def test_local_rank_0_reads_the_node_and_the_others_say_they_read_nothing(tmp_path: Path) -> None:
    zones = _package(tmp_path, "sysfs-0")
    first, second = _meters(tmp_path, ("a",))
    with first.window("train") as w0, second.window("train") as w1:
        _add(zones["package"], 6.0)
        _add(zones["dram"], 1.5)
        time.sleep(0.002)
    m0, m1 = w0.measurement, w1.measurement
    assert m0 is not None and m1 is not None
    assert {d.key: d.energy_j for d in m0.domains} == {"rapl:package-0": 6.0, "rapl:package-0/dram": 1.5}
    assert m0.energy_j == 7.5
    node_note = "node-wide sources (rapl) are read by this rank, local rank 0 of 2 on node a/node0"
    assert any(node_note in f for f in m0.flags)
    assert m1.domains == () and m1.energy_j == 0.0
    assert any(f.startswith("no energy source of its own: rank 1 of 2") and "0 J is by construction" in f
               for f in m1.flags)


def test_without_rapl_local_rank_0_estimates_the_whole_machine(tmp_path: Path) -> None:
    meter = RankMeter(rank=RankInfo(0, 2, 0, 2, 0, "a"), sysfs_root=str(tmp_path / "none"), sync=None, store=None)
    meter.start()
    modes = {d.key: d.provenance.constants["mode"] for d in meter.domains}
    assert modes == {"cpu-estimate:cpu": "machine", "ram-estimate:ram": "machine"}
    assert any("CPU energy is estimated, not measured" in note for note in meter.notes)
    meter.close()


def test_each_rank_measures_its_own_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [FakeGpu(uuid=f"GPU-{i}", energy_mj=[10_000]) for i in range(2)]
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(*gpus))
    zones = _package(tmp_path, "sysfs-0")
    first, second = _meters(tmp_path, ("a",), store=None)
    third = RankMeter(rank=RankInfo(2, 3, 2, 3, 0, "a"), sysfs_root=str(tmp_path / "sysfs-0"), sync=None, store=None)
    with first.window("train") as w0, second.window("train") as w1, third.window("train") as w2:
        _add(zones["package"], 6.0)
        _add(zones["dram"], 1.5)
        gpus[0].energy_mj, gpus[1].energy_mj = [12_000], [13_500]  # +2 J, +3.5 J
        time.sleep(0.11)  # longer than NVML's 100 ms counter update
    assert [d.key for d in first.domains] == ["rapl:package-0", "rapl:package-0/dram", "nvml:gpu0"]
    assert [d.key for d in second.domains] == ["nvml:gpu1"]
    assert third.domains == ()
    assert any("2 GPU(s) visible and this is local rank 2" in f for f in third.notes)
    assert w0.measurement is not None and w1.measurement is not None and w2.measurement is not None
    assert w0.measurement.energy_j == 9.5 and w1.measurement.energy_j == 3.5 and w2.measurement.energy_j == 0.0
    pairs = ((first, w0.measurement), (second, w1.measurement))
    result = combine([RankResult(meter.rank, (m,)) for meter, m in pairs])
    (node,) = result.windows[0].nodes
    assert (node.energy_j, node.node_wide_j, node.rank_j, node.ranks) == (13.0, 7.5, 5.5, (0, 1))



class _Accelerator(Backend):
    """A per-device source (not NVML) on a machine with two accelerators, each at a constant 10 J."""

    info = SourceInfo(name="test-accel", kind="counter", domains=("gpu",), options={"gpus": "devices"},
                      per_device=True, selection="usable")

    def __init__(self, devices: list[int] | None = None) -> None:
        self.devices = list(range(2)) if devices is None else list(devices)

    def probe(self) -> ProbeResult:
        provenance = Provenance("measured", "test accelerator", "test counter")
        return ProbeResult(self.name, True, domains=tuple(
            Domain(f"test-accel:gpu{i}", "gpu", True, provenance, 0.0) for i in self.devices))

    def read(self) -> Reading:
        return Reading(time.monotonic(), {f"test-accel:gpu{i}": 10.0 for i in self.devices})


def test_ranks_get_their_device_from_any_per_device_source(tmp_path: Path) -> None:
    _package(tmp_path, "sysfs-0")
    register_source(_Accelerator)  # NVML sees no GPU here: the ranks' devices come from this source's metadata
    try:
        first, second = _meters(tmp_path, ("a",), store=None)
        third = RankMeter(rank=RankInfo(2, 3, 2, 3, 0, "a"), sysfs_root=str(tmp_path / "sysfs-0"), sync=None,
                          store=None)
        for meter in (first, second, third):
            meter.start()
    finally:
        unregister_source("test-accel")
    assert [d.key for d in first.domains] == ["rapl:package-0", "rapl:package-0/dram", "test-accel:gpu0"]
    assert [d.key for d in second.domains] == ["test-accel:gpu1"]
    assert third.domains == ()
    assert any("node-wide sources (rapl) are read by this rank" in note for note in first.notes)
    assert any("2 GPU(s) visible and this is local rank 2" in note for note in third.notes)
    for meter in (first, second, third):
        meter.close()


# Combining and storing ------------------------------------------------------------------------------
def _two_nodes(tmp_path: Path, hosts: tuple[str, str], store: Path | None) -> list[RankResult]:
    trees = [_package(tmp_path, "sysfs-0"), _package(tmp_path, "sysfs-1")]
    meters = _meters(tmp_path, hosts, store=store)
    blocks = [m.window("train", samples=32) for m in meters]
    windows = [b.__enter__() for b in blocks]
    for m in meters:
        m.step(32)
    _add(trees[0]["package"], 10.0)
    _add(trees[1]["package"], 4.0)
    _add(trees[1]["dram"], 0.5)
    time.sleep(0.002)
    for b in blocks:
        b.__exit__(None, None, None)
    for m in meters:
        m.close()
    return [RankResult(m.rank, (w.measurement,), m.run_id, str(store) if store else None)  # type: ignore[arg-type]
            for m, w in zip(meters, windows)]


def test_node_totals_sum_their_ranks_and_the_total_sums_the_nodes(tmp_path: Path) -> None:
    result = combine(list(reversed(_two_nodes(tmp_path, ("a", "b"), None))))
    assert [r.info.rank for r in result.ranks] == [0, 1, 2, 3]
    (window,) = result.windows
    assert [(n.node_id, n.ranks, n.energy_j, n.node_wide_j) for n in window.nodes] == [
        ("a/node0", (0, 1), 10.0, 10.0), ("b/node1", (2, 3), 4.5, 4.5)]
    assert window.ranks == (0, 1, 2, 3) and window.rank_energy_j == (10.0, 0.0, 4.5, 0.0)
    m = window.measurement
    assert m.energy_j == 14.5 and m.samples == 128 and m.steps == 1
    assert {d.key: d.energy_j for d in m.domains} == {
        "rapl:package-0@a/node0/rank0": 10.0, "rapl:package-0/dram@a/node0/rank0": 0.0,
        "rapl:package-0@b/node1/rank2": 4.0, "rapl:package-0/dram@b/node1/rank2": 0.5}
    assert m.carbon is not None and window.co2e_g == pytest.approx(m.carbon.co2e_g)
    assert m.carbon.co2e_g == pytest.approx(14.5 / 3.6e6 * m.carbon.pue * m.carbon.intensity_g_per_kwh)
    assert result.flags == ()
    assert [r for r in (1, 3) if any(f.startswith(f"rank {r}: no energy source of its own") for f in m.flags)] == [1, 3]
    assert DistributedResult.from_dict(json.loads(result.to_json())) == result


def test_nodes_on_one_host_and_ranks_reading_the_node_twice_are_flagged(tmp_path: Path) -> None:
    results = _two_nodes(tmp_path, ("a", "a"), None)
    flags = combine(results).flags
    assert flags == (("nodes a/node0, a/node1 run on one host (a): each one's local rank 0 read the whole machine, "
                      "so the node-wide figures overlap and the total counts this host once per node"),)
    assert combine(results).windows[0].measurement.flags[0] == flags[0]
    doubled = RankResult(results[1].info, results[0].measurements)  # rank 1 with node-wide domains of its own
    flagged = combine([results[0], doubled, results[2], results[3]]).flags
    expected = "rank 1 of 4 (local rank 1 of 2 on node a/node0) read node-wide sources too"
    assert any(f.startswith(expected) for f in flagged)
    with pytest.raises(ConfigError, match="do not come from one job"):
        combine([results[0], results[0]])


def test_the_aggregate_is_stored_as_one_run_with_every_rank_in_its_domains(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    results = _two_nodes(tmp_path, ("a", "b"), db)
    with Store(db) as store:
        stored = store_result(combine(results), store, name="job")
        assert stored.run_id is not None and stored.store_path == str(db)
        run = store.get_run(stored.run_id)
        (window,) = store.windows(stored.run_id)
        rank_runs = [store.get_run(r.run_id) for r in results]  # type: ignore[arg-type]
    assert (run.name, run.kind, run.status, run.windows_count) == ("job [4 ranks]", "api", "ok", 1)
    assert run.measurement == window == stored.windows[0].measurement
    per_node: dict[str, float] = {}
    for d in window.domains:
        key, node, rank = split_domain_key(d.key)
        assert rank in (0, 2) and key.startswith("rapl:")
        per_node[node] = per_node.get(node, 0.0) + d.energy_j * d.in_total
    assert per_node == {"a/node0": 10.0, "b/node1": 4.5} and window.energy_j == 14.5
    assert [r.name for r in rank_runs] == [f"job [rank {i} of 4]" for i in range(4)]
    assert all(r.status == "ok" and r.windows_count == 1 for r in rank_runs)
    assert run.note is not None and all(f"{i}={r.run_id}" in run.note for i, r in enumerate(results))
    with pytest.raises(ConfigError, match="not a combined domain key"):
        split_domain_key("rapl:package-0")


# aggregate() and track() in one process ----------------------------------------------------------
def test_one_process_aggregates_without_torch(tmp_path: Path) -> None:
    code = ("import sys, greenmeter.metering.distributed as d\n"
            "assert 'torch' not in sys.modules\n"
            f"m = d.rank_meter(store={str(tmp_path / 'runs.db')!r}, sysfs_root='/nonexistent', sync=None)\n"
            "with m.window('w'): sum(range(10**5))\n"
            "r = m.aggregate()\n"
            "assert 'torch' not in sys.modules, 'a job of one process imported torch'\n"
            "print(r.run_id, r.windows[0].energy_j)\n")
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    run_id, energy = done.stdout.split()
    with Store(tmp_path / "runs.db") as store:
        assert store.get_run(run_id).measurement.energy_j == float(energy) > 0  # type: ignore[union-attr]


def test_track_measures_each_call_and_aggregates_it(tmp_path: Path) -> None:
    import greenmeter

    zones = _package(tmp_path, "sysfs")
    db = tmp_path / "runs.db"

    @track(name="fit", samples=10, store=str(db), sysfs_root=str(tmp_path / "sysfs"), sync=None, timeout_s=5,
           carbon=greenmeter.CarbonSettings(country="FRA"))
    def fit(joules: float) -> str:
        greenmeter.current_meter().step(10)
        _add(zones["package"], joules)
        time.sleep(0.002)
        if joules < 0:
            raise ValueError("diverged")
        return "done"

    assert fit(2.5) == "done"
    result = fit.last_result  # type: ignore[attr-defined]
    assert result is not None and result.windows[0].energy_j == 2.5 and result.windows[0].measurement.steps == 1
    assert fit.last_measurement.energy_j == 2.5  # type: ignore[attr-defined]
    carbon = result.windows[0].measurement.carbon
    france = greenmeter.CarbonSettings(country="FRA").resolve_intensity().intensity_g_per_kwh
    assert carbon.intensity.region == "FRA" and carbon.co2e_g == pytest.approx(2.5 / 3.6e6 * france)
    with pytest.raises(ValueError, match="diverged"):
        fit(-1.0)
    assert fit.last_result is None  # type: ignore[attr-defined]
    with Store(db) as store:
        runs = store.list_runs()
        assert [(r.name.rpartition(" [")[2], r.status) for r in runs] == [  # newest first
            ("rank 0 of 1]", "failed"), ("1 ranks]", "ok"), ("rank 0 of 1]", "ok")]
        (failed,) = store.windows(runs[0].id)
    assert runs[1].carbon_settings == {"country": "FRA", "cloud": None, "intensity_g_per_kwh": None, "pue": 1.0}
    assert failed.status == "failed" and failed.error == "ValueError: diverged"  # no aggregate for a failed call


def test_aggregate_refuses_open_windows_and_bad_timeouts(tmp_path: Path) -> None:
    meter = RankMeter(rank=RankInfo(0, 1, 0, 1, 0, "a"), sysfs_root=str(tmp_path), sync=None, store=None)
    with pytest.raises(ConfigError, match=r"timeout_s must be a number of seconds > 0"):
        meter.aggregate(timeout_s=0)
    with meter.window("open"), pytest.raises(MeasurementError, match=r"\['open'\] are still open"):
        meter.aggregate()
    meter.close()


# Real jobs: torchrun with two nodes, and a rank that fails -----------------------------------------
def _torch_distributed() -> None:
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _job_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return env


def _wait(processes: list[subprocess.Popen[str]], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    logs = []
    for p in processes:
        try:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in processes:  # each was started in a session of its own: end it with its workers
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            pytest.fail(f"the job did not finish within {timeout_s} s: it hangs")
    return logs


@pytest.mark.slow
def test_torchrun_two_nodes_count_node_wide_energy_once_per_node(tmp_path: Path) -> None:
    _torch_distributed()
    db, port = tmp_path / "runs.db", _free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2", f"--node_rank={node}",
         "--master_addr=127.0.0.1", f"--master_port={port}", "--monitor_interval=0.1", str(WORKER),
         "--store", str(db), "--out", str(tmp_path), "--init", "--timeout", "30"],
        cwd=REPO_ROOT, env=_job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True) for node in (0, 1)]
    logs = _wait(agents, 120)
    assert [a.returncode for a in agents] == [0, 0], "\n".join(logs)
    result = DistributedResult.from_dict(json.loads((tmp_path / "result.json").read_text()))
    print(result.summary())
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    with Store(db) as store:
        run = store.get_run(result.run_id)  # type: ignore[arg-type]
        (window,) = store.windows(run.id)
        own = [store.windows(r["run_id"]) for r in reports]
    assert (run.name, run.status, result.world_size) == ("distributed-test [4 ranks]", "ok", 4)
    assert [(r.info.node_rank, r.info.local_rank) for r in result.ranks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    node_ids = result.node_ids
    assert len(node_ids) == 2 and node_ids[0].endswith("/node0") and node_ids[1].endswith("/node1")
    # Node-wide domains come from local rank 0 of each node only; ranks without a GPU say they read nothing.
    by_rank: dict[int, list] = {r: [] for r in range(4)}
    for d in window.domains:
        key, node, rank = split_domain_key(d.key)
        by_rank[rank].append((key, node, d))
    for rank, domains in by_rank.items():
        wide = [key for key, _, d in domains if d.kind != "gpu"]
        assert bool(wide) == (rank in (0, 2)), (rank, wide)
        assert {node for _, node, _ in domains} <= {node_ids[rank // 2]}
        if not domains:
            assert own[rank][0].energy_j == 0.0
            assert any("no energy source of its own" in f for f in own[rank][0].flags)
    # Totals: each node is the sum of its ranks, the whole the sum of the nodes, also in what was stored.
    combined = result.windows[0]
    for node in combined.nodes:
        assert node.energy_j == pytest.approx(sum(own[r][0].energy_j for r in node.ranks), rel=1e-12)
        stored = sum(d.energy_j for d in window.domains if d.in_total and split_domain_key(d.key)[1] == node.node_id)
        assert node.energy_j == pytest.approx(stored, rel=1e-12) and node.node_wide_j > 0
    assert window.energy_j == pytest.approx(sum(n.energy_j for n in combined.nodes), rel=1e-12)
    assert window.carbon is not None and window.carbon.co2e_g == pytest.approx(combined.co2e_g, rel=1e-12)
    assert any("run on one host" in f for f in window.flags)  # both nodes are this machine: said, not hidden
    # Real values: a machine-mode CPU estimate lies between idle and full power over the rank's window.
    for rank in (0, 2):
        m = own[rank][0]
        for d in m.domains:
            c = d.provenance.constants
            if d.key == "cpu-estimate:cpu":
                assert c["p_idle_w"] * m.duration_s * 0.98 <= d.energy_j <= c["p_max_w"] * m.duration_s * 1.02
            if d.key == "ram-estimate:ram":
                assert d.energy_j == pytest.approx(c["power_w"] * m.duration_s, rel=0.02)


@pytest.mark.slow
def test_a_failed_rank_leaves_the_others_stored_and_unblocked(tmp_path: Path) -> None:
    _torch_distributed()
    db, port, timeout_s = tmp_path / "runs.db", _free_port(), 5.0
    env = _job_env()
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    started = time.monotonic()
    workers = [subprocess.Popen(
        [sys.executable, str(WORKER), "--store", str(db), "--out", str(tmp_path), "--init", "--timeout",
         str(timeout_s), "--fail-rank", "3"],
        cwd=REPO_ROOT, env={**env, **_torchrun_env(r, 4, r % 2, 2, r // 2)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True) for r in range(4)]
    logs = _wait(workers, 90)
    elapsed = time.monotonic() - started
    # the failed rank exits 1 with its error; or, now and then, torch's c10d threads abort the interpreter while
    # it exits on that error ("terminate called without an active exception", SIGABRT): torch's doing, not ours
    assert [w.returncode for w in workers][:3] == [3, 3, 3] and workers[3].returncode in (1, -signal.SIGABRT), \
        "\n".join(logs)
    assert "RuntimeError: injected failure on rank 3" in logs[3]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    for report in reports:
        assert report["aggregate"] == "AggregationError"
        assert report["aggregate_s"] < timeout_s + 10, report  # the timeout, not a hang
        assert f"its own results are stored as run {report['run_id']}" in report["error"]
    assert not (tmp_path / "rank3.json").exists() and not (tmp_path / "result.json").exists()
    with Store(db) as store:
        runs = {r.name: r for r in store.list_runs()}
        assert sorted(runs) == [f"distributed-test [rank {r} of 4]" for r in range(4)]  # no aggregate run
        for r, report in enumerate(reports):
            run = store.get_run(report["run_id"])
            (m,) = store.windows(run.id)
            assert (run.status, m.status, m.steps) == ("ok", "ok", 4)
            assert m.energy_j == report["energy_j"]
        failed = runs["distributed-test [rank 3 of 4]"]
        (m,) = store.windows(failed.id)
    assert failed.display_status == "incomplete" and m.status == "failed" and "injected failure" in str(m.error)
    waits = ", ".join(f"{r['aggregate_s']:.2f}" for r in reports)
    print(f"failure test: ranks 0-2 raised AggregationError after {waits} s (timeout {timeout_s:g} s); "
          f"job {elapsed:.1f} s")
