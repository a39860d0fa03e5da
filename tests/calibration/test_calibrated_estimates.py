"""Later estimates use the host's calibration profile: the CPU and RAM estimates' constants, provenance and band."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from greenmeter import ConfigError, Meter
from greenmeter.calibration import CalibrationProfile, activity_of, calibrate, latest_profile
from greenmeter.sources.cpu_estimate import CpuEstimateBackend
from greenmeter.sources.ram_estimate import WATTS_PER_GB, RamEstimateBackend
from greenmeter.store.database import Store
from tests.calibration import synthetic


def _profile(**changes: object) -> CalibrationProfile:
    n = CpuEstimateBackend("machine").facts.logical_cpus
    base = CalibrationProfile(
        host=socket.gethostname(), cpu_model="test CPU", logical_cpus=n, idle_w=85.0, w_cpu=11.0, w_gb=3.0,
        r_squared=0.998, n_runs=8, residuals_j=(), held_out_error=0.03, meter_log="/logs/power.csv",
        meter_format="csv", offset_s=0.0, offset_range_s=120.0, created_at="2026-12-03T09:50:00+00:00",
        ram_modes=("process",), fit_error=0.01)
    return replace(base, **changes)


def test_the_calibrated_cpu_estimate_uses_the_fit_and_says_so() -> None:
    profile = _profile()
    backend = CpuEstimateBackend("machine", profile=profile)
    n = backend.vcpus
    c = backend.domain.provenance.constants
    assert c["p_idle_w_per_vcpu"] == pytest.approx(85.0 / n) and c["p_max_w_per_vcpu"] == pytest.approx(85.0 / n + 11)
    assert c["coefficients"] == "calibration" and c["calibration_r_squared"] == 0.998
    assert backend.domain.provenance.source == ("CPU power model (cpu-estimate), calibrated against /logs/power.csv, "
                                                "R^2 = 0.998, 8 runs")
    band = backend.domain.band
    assert band is not None and (band.low_factor, band.high_factor) == pytest.approx((0.97, 1.03))
    assert band.model == RamEstimateBackend("process", profile=profile).domain.band.model  # type: ignore[union-attr]
    assert "calibrated" in backend.probe().notes[0]
    import psutil

    busy0, t0 = backend.read().energy_j["cpu-estimate:cpu"], time.monotonic()
    cpu0 = psutil.cpu_times()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    reading = backend.read()
    busy = sum(getattr(psutil.cpu_times(), f) - getattr(cpu0, f) for f in ("user", "nice", "system", "irq", "softirq"))
    expected = 85.0 * (reading.timestamp_s - t0) + 11.0 * busy
    assert reading.energy_j["cpu-estimate:cpu"] - busy0 == pytest.approx(expected, rel=0.1)


def test_calibrated_records_still_give_back_their_activity() -> None:
    profile = _profile()
    cpu = CpuEstimateBackend("machine", profile=profile).domain
    ram = RamEstimateBackend("process", profile=profile).domain
    m = synthetic.window(synthetic.Load(synthetic.T0, 60.0, 1.5, 0.8))
    from greenmeter.records.measurement import DomainEnergy, Measurement

    energies = (85.0 * 60 + 11.0 * 90.0, 3.0 * 48.0)  # the calibrated figures of 90 busy CPU-s and 48 GB-s
    domains = (DomainEnergy(cpu.key, "cpu", energies[0], True, cpu.provenance),
               DomainEnergy(ram.key, "ram", energies[1], True, ram.provenance))
    activity = activity_of(Measurement(**{**m.__dict__, "domains": domains}))
    assert activity is not None
    assert activity.busy_cpu_s == pytest.approx(90.0) and activity.gb_s == pytest.approx(48.0)


def test_a_profile_of_another_host_or_with_overrides_is_refused_and_another_memory_mode_keeps_the_generic_constant(
) -> None:
    with pytest.raises(ConfigError, match=r"cpu-estimate: the calibration profile is of host 'elsewhere', not of this"):
        CpuEstimateBackend(profile=_profile(host="elsewhere"))
    with pytest.raises(ConfigError, match="ram-estimate: the calibration profile is of host 'elsewhere'"):
        RamEstimateBackend(profile=_profile(host="elsewhere"))
    with pytest.raises(ConfigError, match="a calibration profile or p_idle_w/p_max_w, not both"):
        CpuEstimateBackend(profile=_profile(), p_idle_w=10.0)
    with pytest.raises(ConfigError, match="profile must be a greenmeter CalibrationProfile"):
        CpuEstimateBackend(profile={"idle_w": 1.0})  # type: ignore[arg-type]
    machine = RamEstimateBackend("machine", profile=_profile())
    assert machine.watts_per_gb == WATTS_PER_GB and "calibrat" not in machine.domain.provenance.source
    assert any("fitted on process mode memory, not machine mode's" in n for n in machine.probe().notes)
    assert RamEstimateBackend("process", profile=_profile()).watts_per_gb == 3.0


def test_the_meter_passes_the_store_profile_to_the_estimates_it_chooses(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    assert latest_profile(db) is None
    with Store(db) as store:
        store.save_calibration(_profile())
        store.save_calibration(_profile(host="elsewhere", created_at="2026-12-09T00:00:00+00:00"))
    profile = latest_profile(db)
    assert profile == _profile()
    meter = Meter(["cpu-estimate", "ram-estimate"], sync=None, calibration=profile)
    with meter.window("work") as w:
        time.sleep(0.05)
    meter.close()
    sources = {d.key: d.provenance.source for d in w.measurement.domains}
    assert all(s.endswith("calibrated against /logs/power.csv, R^2 = 0.998, 8 runs") for s in sources.values())
    band = w.measurement.energy_band
    assert band is not None and band.relative[0] < 1.0 < band.relative[1]


def test_calibrated_backends_are_within_5_percent_of_the_meter_on_held_out_runs(tmp_path: Path) -> None:
    """The profile a calibration stores, applied through the backends' own constants to windows it never saw."""
    items = synthetic.loads(14, seed=9)
    train, held_out = items[:10], items[10:]
    with Store(tmp_path / "runs.db") as store:
        synthetic.store_runs(store, train)
        log = synthetic.write_csv(tmp_path / "power.csv", synthetic.meter_samples(items, offset_s=-18.0, noise=0.02))
        profile = calibrate(log, store).profile
    cpu = CpuEstimateBackend("machine", profile=profile).domain.provenance.constants
    w_per_gb = RamEstimateBackend("process", profile=profile).watts_per_gb
    for load in held_out:
        activity = activity_of(synthetic.window(load))
        assert activity is not None
        calibrated = (cpu["vcpus"] * cpu["p_idle_w_per_vcpu"] * load.duration_s
                      + activity.busy_cpu_s * (cpu["p_max_w_per_vcpu"] - cpu["p_idle_w_per_vcpu"])
                      + activity.gb_s * w_per_gb)
        meter = synthetic.true_energy(load)
        print(f"held out: calibrated {calibrated / meter - 1:+.1%}, "
              f"uncalibrated {activity.estimate_j / meter - 1:+.1%}")
        assert calibrated == pytest.approx(meter, rel=0.05)


def test_a_meter_uses_the_stores_profile_of_this_host_by_default_and_says_so(tmp_path: Path) -> None:
    """Later estimates on the same host use the stored calibration, unasked; calibration=None keeps the constants."""
    from greenmeter.store.database import default_store_path

    with Store(default_store_path()) as store:  # the test's own default store (conftest points it into tmp)
        store.save_calibration(_profile())

    def provenance(meter: Meter) -> str:
        with meter.window("w") as w:
            pass
        meter.close()
        assert w.measurement is not None
        return w.measurement.domains[0].provenance.source

    assert "calibrated against /logs/power.csv, R^2 = 0.998, 8 runs" in provenance(Meter(["cpu-estimate"]))
    assert "calibrated" not in provenance(Meter(["cpu-estimate"], calibration=None))
    # a store given to the meter is where it looks first: one without a profile gives the generic constants
    other = tmp_path / "other.db"
    Store(other).close()
    assert "calibrated" not in provenance(Meter(["cpu-estimate"], store=other))


def test_a_store_whose_profiles_cannot_be_read_is_said_not_skipped() -> None:
    from greenmeter.store.database import default_store_path

    bad = default_store_path()  # the test's own default store (conftest points it into tmp), here not a store
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not a greenmeter store at all" * 100)
    meter = Meter(["cpu-estimate"], sync=None)
    with meter.window("w") as w:
        pass
    meter.close()
    assert w.measurement is not None and "calibrated" not in w.measurement.domains[0].provenance.source
    assert any("could not be read" in f and "generic constants" in f for f in w.measurement.flags)
