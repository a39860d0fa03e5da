"""The activity behind stored estimates, recovered by inverting the models of records the real backends made."""

from __future__ import annotations

import os
import time

import pytest

from greenmeter import Meter
from greenmeter.calibration import activity_of
from greenmeter.records.measurement import DomainEnergy, Measurement
from greenmeter.sources.cpu_estimate import CpuEstimateBackend
from greenmeter.sources.ram_estimate import BYTES_PER_GB, RamEstimateBackend
from tests.calibration import synthetic


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_machine_and_process_models_are_inverted_exactly() -> None:
    load = synthetic.Load(synthetic.T0, 50.0, 1.25, 0.75)
    activity = activity_of(synthetic.window(load))
    assert activity is not None
    assert activity.busy_cpu_s == pytest.approx(1.25 * 50.0) and activity.gb_s == pytest.approx(0.75 * 50.0)
    assert (activity.cpu_mode, activity.ram_mode) == ("machine", "process")
    assert activity.start_s == synthetic.T0 and activity.end_s == synthetic.T0 + 50.0
    process = CpuEstimateBackend("process").domain
    m = synthetic.window(load)
    cpu_j = 7.5 * process.provenance.constants["p_max_w_per_vcpu"]  # 7.5 CPU-seconds at a busy vCPU's power
    m = Measurement(**{**m.__dict__, "domains": (DomainEnergy(process.key, "cpu", cpu_j, True, process.provenance),)})
    found = activity_of(m)
    assert found is not None and found.busy_cpu_s == pytest.approx(7.5) and found.gb_s == 0.0
    assert found.ram_mode is None and found.estimate_j == pytest.approx(cpu_j)


def test_a_window_without_a_cpu_estimate_has_no_activity() -> None:
    m = synthetic.window(synthetic.Load(synthetic.T0, 10.0, 1.0, 1.0))
    only_ram = Measurement(**{**m.__dict__, "domains": m.domains[1:]})
    assert activity_of(only_ram) is None


def test_a_real_process_mode_record_gives_back_its_cpu_time_and_resident_memory() -> None:
    meter = Meter([CpuEstimateBackend("process"), RamEstimateBackend("process", sample_interval_s=0.05)], sync=None)
    before = os.times()
    with meter.window("busy") as w:
        _busy(0.4)
    after = os.times()
    meter.close()
    activity = activity_of(w.measurement)
    assert activity is not None
    cpu_s = (after[0] + after[1]) - (before[0] + before[1])
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert activity.busy_cpu_s == pytest.approx(cpu_s, abs=3 * tick)
    rss_gb = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / BYTES_PER_GB
    assert activity.gb_s == pytest.approx(rss_gb * w.measurement.duration_s, rel=0.3)


def test_a_real_machine_mode_record_gives_back_at_least_this_process_busy_time() -> None:
    meter = Meter([CpuEstimateBackend("machine"), RamEstimateBackend("machine")], sync=None)
    with meter.window("busy") as w:
        _busy(0.4)
    meter.close()
    activity = activity_of(w.measurement)
    assert activity is not None and activity.cpu_mode == "machine" and activity.ram_mode == "machine"
    assert activity.busy_cpu_s >= 0.3  # every process's busy time: this one's 0.4 s at least, less a tick or two
    import psutil

    total_gb = psutil.virtual_memory().total / BYTES_PER_GB
    assert activity.gb_s == pytest.approx(total_gb * w.measurement.duration_s, rel=1e-3)  # clocks read apart
