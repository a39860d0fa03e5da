"""Counters that stall, jump, go backwards or become unreadable mid-window: no measured figure is invented
(issue 15, defect 2).

Hardware is faked at the boundary: a fake powercap tree in ``tmp_path`` for RAPL, a fake ``pynvml`` in
``sys.modules`` for NVML, and a fake clock (``clock=``) that each test moves along with the counter, so
that every counter step spans a known time. The backends and the meter run unchanged.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest

from greenmeter import CounterReadError, Meter
from greenmeter.sources.base import PLAUSIBLE_POWER_FACTOR, plausible_step_j
from greenmeter.sources.nvml import ASSUMED_GPU_MAX_POWER_W, NvmlBackend
from greenmeter.sources.rapl import RaplBackend
from tests.fakes import fake_pynvml as fake
from tests.fakes.clock import FakeClock
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.fakes.powercap import DEFAULT_MAX_RANGE_UJ, FakePowercap, FakeZone

PACKAGE = "rapl:package-0"
GPU = "nvml:gpu0"
LATER = "later readings count from the new value"


@pytest.fixture(autouse=True)
def _no_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _package(tmp_path: Path, energy_uj: int, *, max_power_uw: int | None = 65_000_000,
             max_energy_range_uj: int = DEFAULT_MAX_RANGE_UJ) -> tuple[FakeZone, RaplBackend, FakeClock]:
    """A 65 W package (``constraint_0_max_power_uw``) with a fake clock, probed at ``energy_uj``."""
    zone = FakePowercap(tmp_path).add_package(0, subzones=(), energy_uj=energy_uj, max_power_uw=max_power_uw,
                                              max_energy_range_uj=max_energy_range_uj)["package"]
    clock = FakeClock()
    backend = RaplBackend(tmp_path, clock=clock)
    assert backend.probe().available
    return zone, backend, clock


def _nvml(monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu) -> tuple[NvmlBackend, FakeClock]:
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(gpu))
    clock = FakeClock()
    backend = NvmlBackend(clock=clock)
    assert backend.probe().available
    return backend, clock


# RAPL ------------------------------------------------------------------------------------------------
def test_the_issue_sequence_counts_1_1_j_and_flags_the_backward_step(tmp_path: Path) -> None:
    # 1,000,000 -> 2,000,000 -> 1,500,000 -> 1,600,000 uJ within 1.85 s on a 65 W package. Counted as a
    # wrap, the decrease made 262,143.9 J (a mean of 142 kW) with no flag.
    zone, backend, clock = _package(tmp_path, 1_000_000)
    meter = Meter(backends=[backend], sync=None)
    window = meter.begin("issue")
    for advance_s, raw_uj in ((1.0, 2_000_000), (0.6, 1_500_000), (0.25, 1_600_000)):
        clock.advance(advance_s)
        zone.set_energy_uj(raw_uj)
        meter.read()
    time.sleep(0.002)  # a real window longer than RAPL's 1 ms update period: resolved
    m = meter.end(window)
    meter.close()
    assert m.energy_j == pytest.approx(1.1, abs=1e-9)  # 1.0 J, then 0 J for the backward step, then 0.1 J
    assert {d.key: d.energy_j for d in m.domains} == {PACKAGE: pytest.approx(1.1, abs=1e-9)}
    assert m.status == "ok" and m.measured  # still a counter reading, but not a clean one:
    (flag,) = m.flags
    assert flag.startswith("RAPL package-0 counter went from 2,000,000 to 1,500,000 uJ in ")
    assert "not a plausible wrap (it would mean 262,142.8 J, more than 4 x 65 W x " in flag
    assert flag.endswith(f"counted as 0 J (counter reset or bad read), {LATER}")
    assert f"! {flag}" in m.summary()


def test_a_genuine_wrap_is_unfolded_and_the_same_step_too_fast_is_not(tmp_path: Path) -> None:
    # 200 J across the wrap point: plausible in 1 s at 65 W (bound 4 x 65 W x 1.01 s = 262.6 J), not in
    # 0.1 s (28.6 J).
    start_uj = DEFAULT_MAX_RANGE_UJ - 150_000_000
    zone, backend, clock = _package(tmp_path, start_uj)
    clock.advance(1.0)
    zone.set_energy_uj(50_000_000)
    assert backend.read().energy_j == {PACKAGE: 200.0}
    assert backend.anomalies_since(0.0) == ()

    zone, backend, clock = _package(tmp_path / "fast", start_uj)
    clock.advance(0.1)
    zone.set_energy_uj(50_000_000)
    assert backend.read().energy_j == {PACKAGE: 0.0}
    (message,) = backend.anomalies_since(0.0)
    assert message.startswith(f"RAPL package-0 counter went from {start_uj:,} to 50,000,000 uJ in 0.1 s: ")
    assert "it would mean 200.0 J, more than 4 x 65 W x 0.11 s = 28.6 J" in message
    clock.advance(1.0)
    zone.set_energy_uj(80_000_000)  # counting goes on from the new value: +30 J
    assert backend.read().energy_j == {PACKAGE: 30.0}


def test_a_jump_is_flagged_and_not_counted(tmp_path: Path) -> None:
    zone, backend, clock = _package(tmp_path, 1_000_000)
    clock.advance(0.1)
    zone.set_energy_uj(5_001_000_000)  # +5000 J in 0.1 s on a 65 W package
    assert backend.read().energy_j == {PACKAGE: 0.0}
    clock.advance(1.0)
    zone.set_energy_uj(5_011_000_000)  # +10 J in 1 s: counted
    assert backend.read().energy_j == {PACKAGE: 10.0}
    (message,) = backend.anomalies_since(0.0)
    assert message == (
        "RAPL package-0 counter jumped from 1,000,000 to 5,001,000,000 uJ in 0.1 s: 5,000.0 J is not plausible "
        f"(more than 4 x 65 W x 0.11 s = 28.6 J); counted as 0 J (bad read or counter fault), {LATER}"
    )


def test_without_a_power_constraint_the_stated_assumption_is_used_and_named(tmp_path: Path) -> None:
    zone, backend, clock = _package(tmp_path, 0, max_power_uw=None)
    clock.advance(1.0)
    zone.set_energy_uj(3_000_000_000)  # 3000 J in 1 s: within 4 x the assumed 1000 W
    assert backend.read().energy_j == {PACKAGE: 3000.0}
    clock.advance(1.0)
    zone.set_energy_uj(8_000_000_000)  # 5000 J in 1 s: beyond it
    assert backend.read().energy_j == {PACKAGE: 3000.0}
    (message,) = backend.anomalies_since(0.0)
    assert "more than 4 x 1000 W, assumed: the zone gives no constraint_0_max_power_uw x 1.01 s = 4,040.0 J" in message


def test_a_stalled_counter_reads_0_j_and_is_not_flagged(tmp_path: Path) -> None:
    zone, backend, clock = _package(tmp_path, 7_000_000)
    for _ in range(5):
        clock.advance(10.0)
        assert backend.read().energy_j == {PACKAGE: 0.0}
    clock.advance(1.0)
    zone.set_energy_uj(7_500_000)
    assert backend.read().energy_j == {PACKAGE: 0.5}
    assert backend.anomalies_since(0.0) == ()


def test_a_value_outside_the_counter_range_is_skipped_not_rebased(tmp_path: Path) -> None:
    zone, backend, clock = _package(tmp_path, 1_000_000, max_energy_range_uj=1_000_000_000)
    clock.advance(0.5)
    zone.set_energy_uj(1_000_000_001)  # above max_energy_range_uj: no counter state
    assert backend.read().energy_j == {PACKAGE: 0.0}
    clock.advance(0.5)
    zone.set_energy_uj(21_000_000)  # +20 J since the last good value, over the 1 s since it
    assert backend.read().energy_j == {PACKAGE: 20.0}
    (message,) = backend.anomalies_since(0.0)
    assert message.startswith("RAPL package-0 counter read 1,000,000,001 uJ, outside its range 0 to 1,000,000,000 uJ")


def test_a_counter_that_vanishes_and_comes_back_restarted_is_not_a_wrap(tmp_path: Path) -> None:
    # The driver is unloaded mid-window (energy_uj gone: a read in between fails) and loaded again: the
    # counter restarts near 0. Read as a wrap, that would add ~222 kJ. (Backend level, no sampler thread:
    # the meter-level path of a failed read is in test_meter_faults.py.)
    zone, backend, clock = _package(tmp_path, 40_000_000_000)
    clock.advance(1.0)
    zone.set_energy_uj(40_050_000_000)  # +50 J
    assert backend.read().energy_j == {PACKAGE: 50.0}
    energy_uj = zone.energy_path.read_text()
    zone.energy_path.unlink()
    clock.advance(1.0)
    with pytest.raises(CounterReadError, match="cannot read RAPL counter"):
        backend.read()
    zone.energy_path.write_text(energy_uj)
    zone.set_energy_uj(3_000_000)  # reloaded: counting again from 3 J
    assert backend.read().energy_j == {PACKAGE: 50.0}
    clock.advance(1.0)
    zone.set_energy_uj(33_000_000)  # +30 J
    assert backend.read().energy_j == {PACKAGE: 80.0}  # 50 J before the reload, 30 J after, nothing for it
    (message,) = backend.anomalies_since(0.0)
    assert message.startswith("RAPL package-0 counter went from 40,050,000,000 to 3,000,000 uJ in 1 s: "
                              "not a plausible wrap (it would mean 222,096.3 J")


def test_an_anomaly_before_a_window_is_not_in_its_flags(tmp_path: Path) -> None:
    zone, backend, clock = _package(tmp_path, 2_000_000)
    meter = Meter(backends=[backend], sync=None)
    clock.advance(1.0)
    zone.set_energy_uj(1_000_000)
    meter.read()  # the backward step happens here, before the window
    window = meter.begin("after")
    clock.advance(1.0)
    zone.set_energy_uj(1_500_000)
    time.sleep(0.002)  # a real window longer than RAPL's 1 ms update period: resolved
    m = meter.end(window)
    meter.close()
    assert m.energy_j == pytest.approx(0.5, abs=1e-9) and m.flags == ()
    assert len(backend.anomalies_since(0.0)) == 1


def test_no_step_is_ever_counted_above_the_plausible_bound(tmp_path: Path) -> None:
    # The invariant, over a seeded mix of stalls, plausible steps, wraps, jumps, resets and bad reads.
    range_uj = 1_000_000_000
    zone, backend, clock = _package(tmp_path, 500_000_000, max_energy_range_uj=range_uj)
    rng = random.Random(15)
    previous = backend.read().energy_j[PACKAGE]
    raw, good_t = 500_000_000, clock()
    for _ in range(400):
        advance_s = rng.choice([0.0, 0.001, 0.05, 0.5, 2.0])
        clock.advance(advance_s)
        kind = rng.choice(["stall", "step", "step", "jump", "reset", "bad"])
        if kind == "step":
            raw = (raw + rng.randrange(0, int(65e6 * (advance_s + 0.01)) + 1)) % range_uj
        elif kind == "jump":
            raw = (raw + rng.randrange(int(300e6), range_uj)) % range_uj
        elif kind == "reset":
            raw = rng.randrange(0, range_uj)
        elif kind == "bad":
            raw = rng.randrange(0, 10 * range_uj)
        zone.set_energy_uj(raw)
        now = backend.read().energy_j[PACKAGE]
        # A step spans at most the time since the last in-range value (the backend skips the others).
        assert 0.0 <= now - previous <= plausible_step_j(65.0, clock() - good_t, 0.01) + 1e-9
        previous = now
        if raw <= range_uj:
            good_t = clock()
    assert backend.anomalies_since(0.0)  # the jumps, resets and bad reads were said


# NVML ------------------------------------------------------------------------------------------------
def test_nvml_the_issue_sequence_counts_1_1_j_and_flags_the_backward_step(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, clock = _nvml(monkeypatch, FakeGpu(energy_mj=(1_000, 1_000, 2_000, 1_500, 1_600)))
    meter = Meter(backends=[backend], sync=None)
    window = meter.begin("issue")  # 1,000 mJ
    for advance_s in (1.0, 0.6):
        clock.advance(advance_s)
        meter.read()  # 2,000 mJ, then 1,500 mJ: backwards
    clock.advance(0.25)
    time.sleep(0.11)  # a real window longer than NVML's 100 ms update period: resolved
    m = meter.end(window)  # 1,600 mJ
    meter.close()
    assert m.energy_j == pytest.approx(1.1, abs=1e-9)  # 1.0 J, 0 J for the backward step, 0.1 J
    assert m.flags == (
        f"{GPU} NVML energy counter went from 2,000 to 1,500 mJ in 0.6 s: it never decreases (the NVIDIA driver "
        f"was probably reloaded, restarting it); counted as 0 J, {LATER}",
    )


def test_nvml_a_jump_is_flagged_and_a_large_plausible_step_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # An H200: largest power limit 700 W. +10 kJ in 0.1 s is no GPU; +5 kJ in 10 s (500 W) is.
    backend, clock = _nvml(monkeypatch, FakeGpu(energy_mj=(0, 10_000_000, 15_000_000)))
    clock.advance(0.1)
    assert backend.read().energy_j == {GPU: 0.0}
    clock.advance(10.0)
    assert backend.read().energy_j == {GPU: 5000.0}
    (message,) = backend.anomalies_since(0.0)
    assert message == (
        f"{GPU} NVML energy counter went from 0 to 10,000,000 mJ in 0.1 s: 10,000.0 J is not plausible (more than "
        f"4 x 700 W (its largest power limit) x 0.3 s = 840.0 J); counted as 0 J (bad read or counter fault), {LATER}"
    )


def test_nvml_bound_falls_back_to_the_enforced_limit_then_the_stated_assumption(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend, clock = _nvml(monkeypatch, FakeGpu(energy_mj=(0, 10_000_000), power_limits_mw=None))
    backend.read()
    assert "4 x 700 W (its enforced power limit) x 0.2 s" in backend.anomalies_since(0.0)[0]
    gpu = FakeGpu(energy_mj=(0, 10_000_000), power_limits_mw=None, enforced_limit_mw=None)
    backend, clock = _nvml(monkeypatch, gpu)
    backend.read()
    bound = f"{PLAUSIBLE_POWER_FACTOR:g} x {ASSUMED_GPU_MAX_POWER_W:g} W (assumed: NVML gives no power limit)"
    assert bound in backend.anomalies_since(0.0)[0]


def test_nvml_a_stalled_counter_reads_0_j_and_is_not_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, clock = _nvml(monkeypatch, FakeGpu(energy_mj=(4_000, 4_000, 4_000, 4_250)))
    for _ in range(2):
        clock.advance(30.0)
        assert backend.read().energy_j == {GPU: 0.0}
    clock.advance(1.0)
    assert backend.read().energy_j == {GPU: 0.25}
    assert backend.anomalies_since(0.0) == ()


def test_nvml_a_counter_unreadable_mid_window_fails_that_read_and_invents_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    script = (1_000, 3_000, fake.NVMLError_GpuIsLost(), 4_000)
    backend, clock = _nvml(monkeypatch, FakeGpu(energy_mj=script))
    meter = Meter(backends=[backend], sync=None)
    window = meter.begin("w")  # 3,000 mJ
    clock.advance(1.0)
    with pytest.raises(CounterReadError, match="nvmlDeviceGetTotalEnergyConsumption failed: GPU is lost"):
        meter.read()
    clock.advance(1.0)
    time.sleep(0.11)  # a real window longer than NVML's 100 ms update period: resolved
    m = meter.end(window)  # 4,000 mJ: the counter's own difference across the failed read
    meter.close()
    assert m.energy_j == pytest.approx(1.0, abs=1e-9) and m.flags == ()
