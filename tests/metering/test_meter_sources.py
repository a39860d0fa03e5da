"""The Meter over its real backends: a fake RAPL tree, this machine's estimate, and the fallbacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import greenmeter
from greenmeter import Meter
from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading, SourceInfo
from greenmeter.sources.registry import register_source, unregister_source
from tests.fakes.powercap import FakePowercap

REPO_ROOT = Path(__file__).resolve().parents[2]


def _burn_cpu(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_auto_selection_uses_rapl_where_a_tree_exists(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    zones = tree.add_package(0, subzones=("core", "dram"))
    meter = Meter(sysfs_root=str(tmp_path), sync=None)
    meter.start()
    assert [b.name for b in meter.backends] == ["rapl"]  # DRAM measured too: no estimate needed
    assert meter.notes == ()
    base = {name: zone.energy_uj for name, zone in zones.items()}
    with meter.window("work") as w:
        zones["package"].set_energy_uj(base["package"] + 7_500_000)
        zones["core"].set_energy_uj(base["core"] + 5_000_000)
        zones["dram"].set_energy_uj(base["dram"] + 1_250_000)
        time.sleep(0.002)  # longer than RAPL's 1 ms update period
    meter.close()
    m = w.measurement
    assert m is not None
    energies = {d.key: d.energy_j for d in m.domains}
    assert energies == {"rapl:package-0": 7.5, "rapl:package-0/core": 5.0, "rapl:package-0/dram": 1.25}
    assert m.energy_j == 8.75  # package + dram; core lies inside package
    assert m.measured and m.flags == ()


def test_several_wraps_between_edges_are_seen_by_the_background_sampler(tmp_path: Path) -> None:
    # A 1000 J counter on a 1000 W domain wraps in 1 s: the sampler must poll every 0.25 s or faster.
    tree = FakePowercap(tmp_path)
    zone = tree.add_zone("intel-rapl:0", "package-0", energy_uj=600_000_000,
                         max_energy_range_uj=1_000_000_000, max_power_uw=1_000_000_000)
    meter = Meter(sysfs_root=str(tmp_path), sync=None)
    meter.start()
    (rapl,) = [b for b in meter.backends if b.name == "rapl"]
    assert rapl.poll_interval_s is not None and rapl.poll_interval_s <= 0.25
    wait = 4 * rapl.poll_interval_s
    # Raw counter path: 600 -> 100 (wrap) -> 700 -> 200 (wrap) -> 800 -> 300 (wrap) -> 500 J
    path_j = [100, 700, 200, 800, 300, 500]
    with meter.window("long") as w:
        for value in path_j:
            time.sleep(wait)
            zone.set_energy_uj(value * 1_000_000)
        time.sleep(wait)
    meter.close()
    assert w.measurement is not None
    package = next(d for d in w.measurement.domains if d.key == "rapl:package-0")
    expected = (1000 - 600 + 100) + 600 + (1000 - 700 + 200) + 600 + (1000 - 800 + 300) + 200
    assert expected == 2900
    assert package.energy_j == pytest.approx(2900.0, abs=1e-9)


def test_estimate_on_this_machine_is_cpu_time_times_modelled_power(tmp_path: Path) -> None:
    meter = Meter(sysfs_root=str(tmp_path / "no-sysfs"), gpus=None, sync=None)
    meter.start()
    names = [b.name for b in meter.backends]
    assert "cpu-estimate" in names and "ram-estimate" in names and "rapl" not in names
    cpu_domain = next(d for d in meter.domains if d.key == "cpu-estimate:cpu")
    p_max = cpu_domain.provenance.constants["p_max_w_per_vcpu"]
    t = os.times()
    before = t.user + t.system + t.children_user + t.children_system
    with meter.window("burn") as w:
        _burn_cpu(0.2)
    t = os.times()
    cpu_s = t.user + t.system + t.children_user + t.children_system - before
    meter.close()
    m = w.measurement
    assert m is not None and not m.measured
    cpu = next(d for d in m.domains if d.key == "cpu-estimate:cpu")
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert cpu.provenance.kind == "estimated"
    assert abs(cpu.energy_j - cpu_s * p_max) <= 2 * tick * p_max
    # CPU time is read in clock ticks, so 0.2 s burnt reads as at least 0.2 s less two ticks
    assert cpu.energy_j >= (0.2 - 2 * tick) * p_max
    assert any(f.startswith("CPU energy is estimated, not measured: RAPL is unusable (no RAPL interface")
               for f in m.flags)
    assert m.energy_j == pytest.approx(sum(d.energy_j for d in m.domains))


@pytest.fixture
def shared_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="greenmeter-meter-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops its uid to 65534, which needs root")
def test_permission_denied_falls_back_to_the_estimate_out_loud(shared_root: Path) -> None:
    tree = FakePowercap(shared_root)
    tree.add_package(0, subzones=("dram",))
    tree.restrict_energy(0o400)
    script = (
        "import json, os, sys, greenmeter\n"
        # Import every module as root (the checkout may sit in a 0700 folder); only the probing runs
        # unprivileged.
        "import importlib.metadata, psutil, greenmeter.sources.rapl, greenmeter.sources.nvml\n"
        "import greenmeter.sources.cpu_estimate, greenmeter.sources.ram_estimate, greenmeter.store.database\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "meter = greenmeter.Meter(sysfs_root=sys.argv[1], sync=None)\n"
        "with meter.window('w') as w:\n"
        "    sum(range(100000))\n"
        "print(json.dumps({'uid': os.getuid(), 'backends': [b.name for b in meter.backends],\n"
        "                  'flags': list(w.measurement.flags)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, str(shared_root)], capture_output=True, text=True,
                          env=env, cwd=shared_root, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["uid"] == 65534
    assert out["backends"][0] == "cpu-estimate"
    assert any("RAPL is unusable" in f and "chmod" in f for f in out["flags"])
    assert "CPU energy is estimated" in proc.stderr  # said out loud, not only recorded


def test_measure_uses_the_process_meter_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENMETER_SYSFS_ROOT", str(tmp_path))
    FakePowercap(tmp_path).add_package(0, subzones=("dram",))
    code = (
        "import greenmeter\n"
        "with greenmeter.measure('a') as a: pass\n"
        "with greenmeter.measure('b', samples=4) as b: pass\n"
        "m = greenmeter.default_meter()\n"
        "print([b.name for b in m.backends], len(m.measurements), b.measurement.samples)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['rapl'] 2 4"


def test_windows_from_several_threads_are_all_recorded() -> None:
    meter = Meter(["cpu-estimate"], sync=None)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(50):
                with meter.window(f"t{i}-{j}"):
                    meter.step()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(meter.measurements) == 200
    assert all(m.status == "ok" for m in meter.measurements)
    assert greenmeter.Measurement.from_json(meter.measurements[-1].to_json()) == meter.measurements[-1]


def test_the_meter_keywords_reach_a_registered_source_under_its_own_names(tmp_path: Path) -> None:
    created: list[dict[str, object]] = []

    class Scope(Backend):
        info = SourceInfo(name="test-scope", kind="estimate", domains=("ram",), options={"mode": "scope"})

        def __init__(self, **options: object) -> None:
            created.append(options)

        def probe(self) -> ProbeResult:
            provenance = Provenance("estimated", "test model", "constant power")
            return ProbeResult(self.name, True, domains=(Domain("test-scope:ram", "ram", True, provenance, 0.0),))

        def read(self) -> Reading:
            return Reading(time.monotonic(), {"test-scope:ram": 0.0})

    register_source(Scope)
    try:
        meter = Meter(["test-scope", "cpu-estimate"], mode="machine", sysfs_root=str(tmp_path), use_psys=True,
                      gpus=[0], sync=None)
        meter.start()
    finally:
        unregister_source("test-scope")
    assert created == [{"scope": "machine"}]  # not sysfs_root, use_psys or gpus: it does not declare them
    assert [b.name for b in meter.backends] == ["test-scope", "cpu-estimate"]
    assert meter.backends[1].mode == "machine"  # type: ignore[attr-defined]
    meter.close()
