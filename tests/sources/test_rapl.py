"""RaplBackend against fake powercap trees (tests/fakes/powercap.py); hardware faked at the boundary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmeter import BackendError, BackendUnavailable, CounterReadError
from greenmeter.sources.registry import create_backend
from greenmeter.sources.rapl import ASSUMED_MAX_POWER_W, SYSFS_ROOT_ENV, RaplBackend
from tests.fakes.clock import FakeClock
from tests.fakes.powercap import DEFAULT_MAX_RANGE_UJ, FakePowercap

REPO_ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
METHOD = "cumulative energy counter energy_uj; wraps unfolded with max_energy_range_uj"


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SYSFS_ROOT_ENV, raising=False)


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A sysfs root that an unprivileged user can traverse (tmp_path's parents may be 0700)."""
    root = Path(tempfile.mkdtemp(prefix="greenmeter-rapl-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root)


def _as_nobody(sysfs_root: Path, mode: str) -> dict[str, object]:
    """Run a RaplBackend step in a real subprocess whose uid is dropped to 65534 (nobody).

    greenmeter is imported before the uid drops (the interpreter may live under a 0700 home), so
    only the backend's own file access runs unprivileged. ``mode`` is ``"probe"`` (probe as nobody)
    or ``"read"`` (probe as root, then read as nobody).
    """
    script = (
        "import json, os, sys\n"
        "from greenmeter import CounterReadError\n"
        "from greenmeter.sources.rapl import RaplBackend\n"
        "backend = RaplBackend(sys.argv[1])\n"
        "if sys.argv[2] == 'read':\n"
        "    assert backend.probe().available\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "out = {'uid': os.getuid(), 'euid': os.geteuid()}\n"
        "if sys.argv[2] == 'probe':\n"
        "    r = backend.probe()\n"
        "    out.update(available=r.available, reason=r.reason)\n"
        "else:\n"
        "    try:\n"
        "        backend.read()\n"
        "        out.update(error=None)\n"
        "    except CounterReadError as err:\n"
        "        out.update(error=type(err).__name__, message=str(err), cause=type(err.__cause__).__name__)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(sysfs_root), mode],
        capture_output=True, text=True, env=env, cwd=sysfs_root, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["uid"], out["euid"]) == (NOBODY, NOBODY)
    return out


def _keys(backend: RaplBackend) -> dict[str, tuple[str, bool]]:
    return {d.key: (d.kind, d.in_total) for d in backend.probe().domains}


# Discovery ---------------------------------------------------------------------------------
def test_one_package_with_core_uncore_dram(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    zones = tree.add_package(0, energy_uj=1_000_000)
    backend = RaplBackend(tmp_path)
    result = backend.probe()
    assert result.available and result.backend == "rapl" and result.reason == "" and result.notes == ()
    assert _keys(backend) == {
        "rapl:package-0": ("package", True),
        "rapl:package-0/core": ("core", False),
        "rapl:package-0/uncore": ("uncore", False),
        "rapl:package-0/dram": ("dram", True),
    }
    package = result.domains[0]
    assert package.update_period_s == 0.001
    assert package.provenance.kind == "measured"
    assert package.provenance.source == f"RAPL powercap {tree.dir / 'intel-rapl:0'} (package-0)"
    assert package.provenance.method == METHOD
    assert result.domains[3].provenance.source == f"RAPL powercap {tree.dir / 'intel-rapl:0:2'} (package-0/dram)"
    assert backend.read().energy_j == {k: 0.0 for k in _keys(backend)}
    zones["package"].set_energy_uj(13_500_000)
    zones["core"].set_energy_uj(9_000_000)
    zones["dram"].set_energy_uj(3_250_000)
    assert backend.read().energy_j == {
        "rapl:package-0": 12.5,
        "rapl:package-0/core": 8.0,
        "rapl:package-0/uncore": 0.0,
        "rapl:package-0/dram": 2.25,
    }
    assert sum(e for k, e in backend.read().energy_j.items() if _keys(backend)[k][1]) == 14.75


def test_two_packages(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    p0 = tree.add_package(0, subzones=("dram",))
    p1 = tree.add_package(1, subzones=("dram",))
    backend = RaplBackend(tmp_path)
    assert _keys(backend) == {
        "rapl:package-0": ("package", True),
        "rapl:package-0/dram": ("dram", True),
        "rapl:package-1": ("package", True),
        "rapl:package-1/dram": ("dram", True),
    }
    p0["package"].set_energy_uj(2_000_000)
    p1["package"].set_energy_uj(7_000_000)
    p1["dram"].set_energy_uj(500_000)
    assert backend.read().energy_j == {
        "rapl:package-0": 2.0, "rapl:package-0/dram": 0.0, "rapl:package-1": 7.0, "rapl:package-1/dram": 0.5,
    }


def test_zones_sorted_numerically(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    for index in (10, 2):
        tree.add_package(index, subzones=())
    assert [d.key for d in RaplBackend(tmp_path).probe().domains] == ["rapl:package-2", "rapl:package-10"]


def test_psys_mode_counts_psys_alone(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    tree.add_package(0, subzones=("core", "dram"))
    psys = tree.add_zone("intel-rapl:1", "psys")
    assert _keys(RaplBackend(tmp_path)) == {
        "rapl:package-0": ("package", True),
        "rapl:package-0/core": ("core", False),
        "rapl:package-0/dram": ("dram", True),
        "rapl:psys": ("psys", False),
    }
    clock = FakeClock()
    backend = RaplBackend(tmp_path, use_psys=True, clock=clock)
    assert _keys(backend) == {
        "rapl:package-0": ("package", False),
        "rapl:package-0/core": ("core", False),
        "rapl:package-0/dram": ("dram", False),
        "rapl:psys": ("psys", True),
    }
    clock.advance(1.0)  # 42 J in 1 s: within the assumed 1000 W (psys here gives no constraint_0_max_power_uw)
    psys.set_energy_uj(42_000_000)
    assert backend.read().energy_j["rapl:psys"] == 42.0


def test_psys_mode_without_psys_is_unavailable(tmp_path: Path) -> None:
    FakePowercap(tmp_path).add_package(0)
    result = RaplBackend(tmp_path, use_psys=True).probe()
    assert not result.available and result.domains == ()
    assert "use_psys=True" in result.reason and "no psys" in result.reason


def test_mmio_duplicate_counted_once_from_msr(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    msr = tree.add_package(0, subzones=("dram",))
    mmio = tree.add_zone("intel-rapl-mmio:0", "package-0", energy_uj=5_000_000)
    backend = RaplBackend(tmp_path)
    result = backend.probe()
    assert [d.key for d in result.domains] == ["rapl:package-0", "rapl:package-0/dram"]
    assert result.domains[0].provenance.source.endswith("intel-rapl:0 (package-0)")
    assert result.notes == (
        "skipped intel-rapl-mmio:0 (package-0): duplicate of intel-rapl:0, counted once from it",
    )
    msr["package"].set_energy_uj(3_000_000)
    mmio.set_energy_uj(99_000_000)
    assert backend.read().energy_j == {"rapl:package-0": 3.0, "rapl:package-0/dram": 0.0}


def test_unreadable_zone_is_skipped_with_note(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    zones = tree.add_package(0, subzones=("dram",))
    zones["dram"].energy_path.write_text("")
    result = RaplBackend(tmp_path).probe()
    assert [d.key for d in result.domains] == ["rapl:package-0"]
    assert len(result.notes) == 1 and result.notes[0].startswith("skipped RAPL zone intel-rapl:0:0: unreadable")


# Missing hardware ----------------------------------------------------------------------------
def test_missing_tree_is_unavailable(tmp_path: Path) -> None:
    result = RaplBackend(tmp_path).probe()
    assert not result.available and result.domains == ()
    assert f"no RAPL interface at {tmp_path / 'class' / 'powercap'}" in result.reason
    assert "sudo modprobe intel_rapl_msr" in result.reason and "VM" in result.reason and "AMD" in result.reason
    with pytest.raises(BackendUnavailable, match="no RAPL interface"):
        RaplBackend(tmp_path).read()


def test_powercap_without_rapl_zones_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "class" / "powercap" / "intel-rapl").mkdir(parents=True)  # control type, no zones
    (tmp_path / "class" / "powercap" / "dtpm").mkdir()
    result = RaplBackend(tmp_path).probe()
    assert not result.available and "no RAPL interface" in result.reason


# Wraps and polling -------------------------------------------------------------------------
def test_one_wrap_without_intermediate_poll(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    package = tree.add_package(0, subzones=(), energy_uj=900_000_000, max_energy_range_uj=1_000_000_000)["package"]
    clock = FakeClock()
    backend = RaplBackend(tmp_path, clock=clock)
    start = backend.read()
    clock.advance(1.0)  # 250 J in 1 s: a plausible wrap for the assumed 1000 W
    package.set_energy_uj(150_000_000)  # 900 J -> wrap at 1000 J -> 150 J: 250 J used
    end = backend.read()
    assert start.energy_j == {"rapl:package-0": 0.0}
    assert end.energy_j == {"rapl:package-0": 250.0}
    assert end.timestamp_s - start.timestamp_s == 1.0
    assert backend.anomalies_since(0.0) == ()


def test_several_wraps_between_window_edges_counted_with_polls(tmp_path: Path) -> None:
    range_uj, step_uj, start_uj = 1_000_000_000, 300_000_000, 100_000_000  # 1000 J range, 300 J per poll
    tree = FakePowercap(tmp_path)
    package = tree.add_package(0, subzones=(), energy_uj=start_uj, max_energy_range_uj=range_uj)["package"]
    clock = FakeClock()
    backend = RaplBackend(tmp_path, clock=clock)
    assert backend.probe().available
    clock.advance(2.0)  # 300 J per second, within the assumed 1000 W
    package.set_energy_uj((start_uj + 2 * step_uj) % range_uj)
    edge_a = backend.read()
    for step in range(3, 13):  # 600 J -> 3600 J used: the raw counter wraps 3 times in between
        clock.advance(1.0)
        package.set_energy_uj((start_uj + step * step_uj) % range_uj)
        backend.poll()
    edge_b = backend.read()
    assert package.energy_uj == 700_000_000
    assert edge_a.energy_j["rapl:package-0"] == 600.0
    assert edge_b.energy_j["rapl:package-0"] == 3600.0
    assert edge_b.energy_j["rapl:package-0"] - edge_a.energy_j["rapl:package-0"] == 3000.0


def test_wraps_are_counted_once_under_concurrent_reads(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    package = tree.add_package(0, subzones=(), energy_uj=800_000_000, max_energy_range_uj=1_000_000_000)["package"]
    clock = FakeClock()
    backend = RaplBackend(tmp_path, clock=clock)
    backend.probe()
    clock.advance(1.0)  # 300 J in 1 s
    package.set_energy_uj(100_000_000)
    barrier = threading.Barrier(8)
    results: list[float] = []

    def worker() -> None:
        barrier.wait()
        results.append(backend.read().energy_j["rapl:package-0"])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [300.0] * 8


def test_poll_interval_from_range_and_constraint_power(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    backend = RaplBackend(tmp_path)
    assert backend.poll_interval_s is None  # set by the probe
    # Real Intel range (~262 kJ) at a 250 W limit wraps in ~1049 s: the 1 s cap applies.
    tree.add_package(0, subzones=(), max_power_uw=250_000_000)
    backend.probe()
    assert backend.poll_interval_s == 1.0
    # 1000 J range at a 500 W constraint: wraps in 2 s -> poll every 0.5 s.
    tree.add_zone("intel-rapl:1", "package-1", max_energy_range_uj=1_000_000_000, max_power_uw=500_000_000)
    assert _interval(tmp_path) == 0.5
    # 1200 J range with no constraint: the assumed 1000 W wraps it in 1.2 s -> 0.3 s (the shortest).
    tree.add_zone("intel-rapl:1:0", "dram", max_energy_range_uj=1_200_000_000)
    assert ASSUMED_MAX_POWER_W == 1000.0
    assert _interval(tmp_path) == pytest.approx(0.3, rel=1e-12)
    # constraint_0_max_power_uw of 0 means unknown: the assumption applies (1000 J / 1000 W / 4).
    tree.add_zone("intel-rapl:2", "package-2", max_energy_range_uj=1_000_000_000, max_power_uw=0)
    assert _interval(tmp_path) == pytest.approx(0.25, rel=1e-12)
    # A tiny range (10 J at 1000 W: 0.0025 s) hits the 5 ms floor.
    tree.add_zone("intel-rapl:3", "package-3", max_energy_range_uj=10_000_000)
    assert _interval(tmp_path) == 0.005


def _interval(sysfs_root: Path) -> float | None:
    backend = RaplBackend(sysfs_root)
    assert backend.probe().available
    return backend.poll_interval_s


# Permissions and read failures -------------------------------------------------------------
def test_permission_denied_names_the_fix(shared_root: Path) -> None:
    tree = FakePowercap(shared_root)
    tree.add_package(0, subzones=("dram",))
    paths = tree.restrict_energy(0o400)  # root-only, as since Linux 5.10
    if os.geteuid() == 0:  # root reads any file: ask a real unprivileged process
        out = _as_nobody(shared_root, "probe")
        available, reason = out["available"], str(out["reason"])
    else:
        result = RaplBackend(shared_root).probe()
        available, reason = result.available, result.reason
    assert available is False
    listed = " ".join(str(p) for p in paths)
    assert f"permission denied reading RAPL energy counters ({listed})" in reason
    assert "run as root" in reason and f"`sudo chmod o+r {listed}`" in reason and "lost at reboot" in reason
    assert "udev" in reason and "systemd-tmpfiles" in reason and "CVE-2020-8694" in reason


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to probe before dropping privileges")
def test_counter_unreadable_after_probe_raises_as_nobody(shared_root: Path) -> None:
    tree = FakePowercap(shared_root)
    tree.add_package(0, subzones=())
    tree.restrict_energy(0o400)
    out = _as_nobody(shared_root, "read")
    energy = tree.dir / "intel-rapl:0" / "energy_uj"
    assert out["error"] == "CounterReadError" and out["cause"] == "PermissionError"
    assert str(out["message"]).startswith(f"cannot read RAPL counter {energy}: ")


def test_counter_deleted_after_probe_raises(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    zones = tree.add_package(0, subzones=("dram",))
    backend = RaplBackend(tmp_path)
    assert backend.probe().available
    zones["dram"].energy_path.unlink()
    with pytest.raises(CounterReadError, match=f"cannot read RAPL counter {zones['dram'].energy_path}") as info:
        backend.read()
    assert isinstance(info.value.__cause__, FileNotFoundError)


# Configuration and lifecycle -----------------------------------------------------------------
def test_env_var_names_the_sysfs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakePowercap(tmp_path / "fake").add_package(0, subzones=())
    monkeypatch.setenv(SYSFS_ROOT_ENV, str(tmp_path / "fake"))
    backend = RaplBackend()
    assert backend.sysfs_root == tmp_path / "fake"
    assert [d.key for d in backend.probe().domains] == ["rapl:package-0"]
    assert RaplBackend(tmp_path).sysfs_root == tmp_path  # the argument wins
    monkeypatch.setenv(SYSFS_ROOT_ENV, str(tmp_path / "nowhere"))
    reason = RaplBackend().probe().reason
    assert f"no RAPL interface at {tmp_path / 'nowhere' / 'class' / 'powercap'} (from ${SYSFS_ROOT_ENV})" in reason


def test_default_root_is_sys() -> None:
    assert RaplBackend().sysfs_root == Path("/sys")


def test_created_by_name(tmp_path: Path) -> None:
    FakePowercap(tmp_path).add_package(0, subzones=())
    backend = create_backend("rapl", sysfs_root=tmp_path, use_psys=False)
    assert isinstance(backend, RaplBackend) and backend.probe().available


def test_probe_is_stable_once_open_and_close_is_idempotent(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    package = tree.add_package(0, subzones=(), energy_uj=DEFAULT_MAX_RANGE_UJ - 1_000_000)["package"]
    backend = RaplBackend(tmp_path)
    first = backend.read()  # opens without an explicit probe
    tree.add_package(1, subzones=())
    assert [d.key for d in backend.probe().domains] == ["rapl:package-0"]  # zones fixed at open
    package.set_energy_uj(2_000_000)
    assert first.energy_j == {"rapl:package-0": 0.0}
    assert backend.read().energy_j == {"rapl:package-0": 3.0}
    backend.close()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.read()
