"""``greenmeter run``: a whole command tree measured, stored, exit codes kept, signals forwarded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenmeter import ConfigError, Meter
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.metering.runner import run_command
from greenmeter.store.database import Store

BURN = "import time; end = time.process_time() + {s}; exec('while time.process_time() < end: pass')"


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def test_a_shell_and_its_short_lived_grandchildren_are_all_counted(tmp_path: Path) -> None:
    # sh starts two python grandchildren: one in the background that exits quickly, one in front.
    script = (
        f'"{sys.executable}" -c "{BURN.format(s=0.25)}" & '
        f'"{sys.executable}" -c "{BURN.format(s=0.15)}"; wait; exit 3'
    )
    meter = Meter(["cpu-estimate"], sync=None)
    before = _cpu_s()
    with Store(tmp_path / "runs.db") as store:
        result = run_command(["sh", "-c", script], meter=meter, store=store, interval_s=0.05)
        run = store.get_run(result.run_id)
        samples = store.power_samples(result.run_id)
    tree_cpu_s = _cpu_s() - before
    assert result.exit_code == 3
    p_max = meter.domains[0].provenance.constants["p_max_w_per_vcpu"]
    cpu_j = result.measurement.energy_j
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert tree_cpu_s >= 0.40  # both grandchildren's burns reached this process's os.times()
    assert abs(cpu_j - tree_cpu_s * p_max) <= 4 * tick * p_max
    assert run.status == "failed" and run.exit_code == 3 and run.complete
    assert run.measurement is not None and run.measurement.energy_j == pytest.approx(cpu_j)
    assert len(samples) >= 3  # the power timeline was sampled while it ran
    assert max(s[2] for s in samples) > 0  # the followed tree's CPU power shows while it runs


def test_exit_code_zero_and_carbon_from_settings(tmp_path: Path) -> None:
    settings = CarbonSettings(intensity_g_per_kwh=100.0, pue=1.5)
    meter = Meter(["cpu-estimate"], sync=None, carbon=settings)
    result = run_command([sys.executable, "-c", BURN.format(s=0.05)], meter=meter, carbon=settings)
    assert result.exit_code == 0 and result.run_id is None
    carbon = result.measurement.carbon
    assert carbon is not None
    assert carbon.co2e_g == pytest.approx(result.measurement.energy_j / 3.6e6 * 1.5 * 100.0)


def test_missing_command_is_a_clear_error_and_stores_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        with pytest.raises(ConfigError, match="command not found: 'no-such-command-xyz'"):
            run_command(["no-such-command-xyz"], store=store)
        with pytest.raises(ConfigError, match="no command given"):
            run_command([], store=store)
        assert store.list_runs() == []


def test_store_takes_a_path_or_true_as_everywhere_and_closes_what_it_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "runs.db"
    failing = run_command([sys.executable, "-c", "raise SystemExit(4)"], meter=Meter(["cpu-estimate"], sync=None),
                          store=path, name="by path", interval_s=0.05)
    assert not path.with_name("runs.db-wal").exists()  # the store opened from the path was closed again
    monkeypatch.setenv("GREENMETER_STORE", str(path))
    passing = run_command(["true"], meter=Meter(["cpu-estimate"], sync=None), store=True, name="default")
    with Store(path) as store:
        runs = {r.name: r for r in store.list_runs()}
        windows = store.windows(failing.run_id)
    assert (runs["by path"].id, runs["by path"].status, runs["by path"].exit_code) == (failing.run_id, "failed", 4)
    assert (runs["default"].id, runs["default"].status, runs["default"].exit_code) == (passing.run_id, "ok", 0)
    assert runs["by path"].kind == "run" and runs["by path"].command == (sys.executable, "-c", "raise SystemExit(4)")
    assert windows == [failing.measurement] and runs["by path"].measurement == failing.measurement


def test_a_bad_store_is_refused_before_the_command_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match="store must be a greenmeter.Store, a path, True"):
        run_command(["touch", str(marker)], store=3)  # type: ignore[arg-type]
    assert not marker.exists()


def _cli(*args: str, store: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greenmeter", *args], capture_output=True, text=True,
                          env={**os.environ, "GREENMETER_STORE": str(store)}, timeout=120, **kwargs)


def test_cli_run_prints_summary_stores_and_exports(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    out = _cli("run", "--country", "FRA", "--pue", "1.1", "--", sys.executable, "-c",
               BURN.format(s=0.1) + "; print('child says hi')", store=store)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child says hi"  # the command's own output stays clean
    assert "energy" in out.stderr and "co2e" in out.stderr and "France" in out.stderr
    assert "estimated: CPU power model" in out.stderr
    assert "stored as run" in out.stderr
    listing = _cli("runs", store=store)
    assert listing.returncode == 0 and " ok " in listing.stdout
    exported = _cli("export", "--last", "--format", "json", store=store)
    assert exported.returncode == 0, exported.stderr
    (record,) = json.loads(exported.stdout)
    assert record["status"] == "ok" and record["carbon"]["pue"] == 1.1
    assert record["carbon"]["intensity"]["region"] == "FRA"


def test_cli_run_keeps_the_commands_exit_code_and_rejects_bad_input(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    assert _cli("run", "--", sys.executable, "-c", "raise SystemExit(5)", store=store).returncode == 5
    bad = _cli("run", "--country", "XYZ", "--", "true", store=store)
    assert bad.returncode == 1 and "greenmeter carbon --list-countries" in bad.stderr
    bad = _cli("run", "--pue", "0.5", "--", "true", store=store)
    assert bad.returncode == 1 and "PUE" in bad.stderr.upper()
    bad = _cli("run", "--", "no-such-command-xyz", store=store)
    assert bad.returncode == 1 and "command not found" in bad.stderr
    bad = _cli("run", "--intensity", "-3", "--", "true", store=store)
    assert bad.returncode == 1 and "intensity" in bad.stderr
    bad = _cli("run", "--store", "/proc/greenmeter-cannot-write/runs.db", "--", "true", store=store)
    assert bad.returncode == 1 and "/proc/greenmeter-cannot-write/runs.db" in bad.stderr
    runs = json.loads(_cli("runs", "--json", store=store).stdout)
    assert [r["exit_code"] for r in runs] == [5]  # the bad invocations stored nothing


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_forwarded_and_the_run_is_stored_as_interrupted(tmp_path: Path, sig: signal.Signals) -> None:
    store = tmp_path / "runs.db"
    ready = tmp_path / "ready"
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(7))\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "greenmeter", "run", "--interval", "0.1", "--", sys.executable,
                             "-c", child], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GREENMETER_STORE": str(store)})
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert f"interrupted by {sig.name}" in err
    with Store(store) as s:
        (run,) = s.list_runs()
        assert run.status == "interrupted" and run.exit_code == 7
        assert run.measurement is not None and run.measurement.duration_s >= 0.3
        assert sig.name in (run.note or "")


def test_a_busy_machine_is_flagged_in_the_stored_run(tmp_path: Path) -> None:
    # another process (not part of the command) burns a core for the whole run
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with Store(tmp_path / "runs.db") as store:
            meter = Meter(["cpu-estimate"], sync=None)
            result = run_command([sys.executable, "-c", BURN.format(s=0.5)], meter=meter, store=store)
            stored = store.get_run(result.run_id).measurement
    finally:
        hog.kill()
        hog.wait()
    busy = [f for f in result.measurement.flags if f.startswith("other processes kept")]
    assert len(busy) == 1 and "during the command" in busy[0] and "OMP_NUM_THREADS=1" in busy[0]
    assert float(busy[0].split()[3]) >= 0.3  # "other processes kept X of ...": most of the hog's core
    assert stored is not None and busy[0] in stored.flags
    assert meter.measurements == [result.measurement]  # the meter's record and its listeners saw the flag too


def test_a_quiet_machine_adds_no_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from greenmeter.metering.cpu_load import LoadWatch

    monkeypatch.setattr(LoadWatch, "other_cores", lambda self: 0.1)
    result = run_command([sys.executable, "-c", "pass"], meter=Meter(["cpu-estimate"], sync=None))
    assert not any(f.startswith("other processes") for f in result.measurement.flags)
