"""Bands: how far off each source's figure may be, and how bands add, scale and divide."""

from __future__ import annotations

import json
import math
import sys

import pytest

from greenmeter.sources.band import Band, BandModel, BandTerm, ratio_band, sum_bands
from greenmeter.sources.cpu_estimate import CCF_COEFFICIENTS, CCF_MICROARCHITECTURES, SKU_SPREAD, CpuEstimateBackend
from greenmeter.sources.nvml import COUNTER_UPDATE_PERIOD_S, POWER_AVERAGING_S, NvmlBackend
from greenmeter.sources.ram_estimate import WATTS_PER_GB, WATTS_PER_GB_RANGE, RamEstimateBackend
from greenmeter.sources.rapl import RAPL_UPDATE_PERIOD_S, RaplBackend
from tests.fakes.cpuinfo import write_cpuinfo
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.fakes.powercap import FakePowercap

CPU = "cpu model"
RAM = "ram model"


def test_a_band_holds_its_value_within_the_model_range_and_the_spread() -> None:
    band = BandModel(CPU, 0.8, 1.25, fixed_j=0.5, power_period_s=0.1).band(100.0, 10.0)
    h = 0.5 + 0.1 * 100.0 / 9.9  # the highest mean power 100 J allows when an edge may miss 0.1 s: 100 J / 9.9 s
    assert band.spread_j == pytest.approx(h)
    assert band.low_j == pytest.approx(80.0 - h)
    assert band.high_j == pytest.approx(125.0 + h)
    assert band.describe() == "band 78.49-126.5 J (-22%/+27%)"
    assert band.basis == ()  # 100 periods long: not a short window


def test_a_window_of_few_update_periods_says_so_with_its_bound() -> None:
    band = BandModel(power_period_s=0.1, basis="counter").band(70.0, 0.15)
    assert band.spread_j == pytest.approx(0.1 * 70.0 / 0.05)  # up to 1400 W: the 70 J may be 2 periods' worth
    assert band.basis[0] == "counter" and "shorter than 10 update periods" in band.basis[1] and "67%" in band.basis[1]


def test_a_band_never_goes_below_zero_and_a_counter_has_no_model_term() -> None:
    band = BandModel(fixed_j=2.0).band(0.5, 1.0)
    assert band.terms == () and band.low_j == 0.0 and band.high_j == pytest.approx(2.5)


def test_a_band_model_must_hold_its_own_value() -> None:
    with pytest.raises(ValueError, match="low_factor"):
        BandModel(CPU, 1.1, 1.2)


def test_sums_add_spreads_and_keep_one_models_terms_together() -> None:
    a = BandModel(CPU, 0.8, 1.2, fixed_j=1.0).band(10.0, 1.0)
    b = BandModel(CPU, 0.8, 1.2, fixed_j=1.0).band(30.0, 1.0)
    c = BandModel(RAM, 0.9, 1.1).band(5.0, 1.0)
    total = sum_bands([a, b, c])
    assert total is not None and total.value_j == 45.0 and total.spread_j == 2.0
    assert {t.model: t.energy_j for t in total.terms} == {CPU: 40.0, RAM: 5.0}
    assert total.low_j == pytest.approx(40 * 0.8 + 5 * 0.9 - 2)
    assert total.high_j == pytest.approx(40 * 1.2 + 5 * 1.1 + 2)
    assert sum_bands([a, None]) is None


def test_scaling_is_per_sample_and_round_trips_through_json() -> None:
    band = BandModel(CPU, 0.8, 1.2, fixed_j=1.0, basis="why").band(10.0, 1.0).scaled(0.1)
    assert (band.value_j, band.low_j, band.high_j) == pytest.approx((1.0, 0.7, 1.3))
    again = Band.from_dict(json.loads(json.dumps(band.to_dict())))
    assert again == band and again.basis == ("why",)


def test_a_ratio_of_two_figures_of_one_model_cancels_its_constants() -> None:
    """The same constants scale variant and baseline alike: only the independent spreads are left."""
    variant = BandModel(CPU, 0.5, 2.0, fixed_j=0.1).band(20.0, 1.0)
    baseline = BandModel(CPU, 0.5, 2.0, fixed_j=0.1).band(100.0, 1.0)
    shared = ratio_band(variant, baseline)
    assert shared.value == pytest.approx(0.2) and shared.shared == (CPU,)
    # corners: factor 0.5 -> (10 - 0.1) / (50 + 0.1) ... factor 2 -> (40 + 0.1) / (200 - 0.1)
    assert shared.low == pytest.approx(min(9.9 / 50.1, 39.9 / 200.1))
    assert shared.high == pytest.approx(max(10.1 / 49.9, 40.1 / 199.9))
    assert shared.high - shared.low < 0.01
    # with different models nothing cancels: the full bands divide
    other = BandModel(RAM, 0.5, 2.0, fixed_j=0.1).band(100.0, 1.0)
    apart = ratio_band(variant, other)
    assert apart.shared == ()
    assert apart.low == pytest.approx(variant.low_j / other.high_j)
    assert apart.high == pytest.approx(variant.high_j / other.low_j)
    assert apart.high / apart.low > 15


def test_a_ratio_with_a_different_mix_of_models_keeps_part_of_the_error() -> None:
    """A variant that is mostly RAM against a baseline that is mostly CPU: the CPU factor does not cancel fully."""
    variant = Band(10.0, (BandTerm(CPU, 2.0, 0.5, 2.0), BandTerm(RAM, 8.0, 1.0, 1.0)))
    baseline = Band(100.0, (BandTerm(CPU, 90.0, 0.5, 2.0), BandTerm(RAM, 10.0, 1.0, 1.0)))
    r = ratio_band(variant, baseline)
    assert r.low == pytest.approx((4.0 + 8.0) / (180.0 + 10.0))
    assert r.high == pytest.approx((1.0 + 8.0) / (45.0 + 10.0))


def _cpu(tmp_path, model: str, **kwargs) -> CpuEstimateBackend:  # noqa: ANN001
    return CpuEstimateBackend(cpuinfo_path=write_cpuinfo(tmp_path, model, hypervisor=True), **kwargs)


def test_a_generic_amd_epyc_vcpu_spans_the_three_epyc_generations(tmp_path) -> None:  # noqa: ANN001
    backend = _cpu(tmp_path, "AMD EPYC")
    band = backend.domain.band
    used = CCF_COEFFICIENTS["ccf-amd-epyc-average"][1]
    assert (band.low_factor, band.high_factor) == pytest.approx((1.69 / used, 2.55 / used))
    assert band.fixed_j == pytest.approx(4 * backend.domain.update_period_s * used)  # 4 counters, one tick each
    assert "AMD EPYC 1st, 2nd and 3rd Gen" in band.basis


def test_machine_mode_bounds_the_idle_and_busy_parts_each(tmp_path) -> None:  # noqa: ANN001
    backend = _cpu(tmp_path, "AMD EPYC", mode="machine")
    idle, busy, _ = CCF_COEFFICIENTS["ccf-amd-epyc-average"]
    gens = [CCF_COEFFICIENTS[k] for k in ("ccf-amd-epyc-1st-gen", "ccf-amd-epyc-2nd-gen", "ccf-amd-epyc-3rd-gen")]
    ratios = [g[0] / idle for g in gens] + [(g[1] - g[0]) / (busy - idle) for g in gens]
    band = backend.domain.band
    assert (band.low_factor, band.high_factor) == pytest.approx((min(ratios), max(ratios)))


def test_an_unknown_cpu_spans_every_micro_architecture_and_a_named_one_a_stated_spread(tmp_path) -> None:  # noqa: ANN001
    unknown = _cpu(tmp_path, "QEMU Virtual CPU version 2.5+").domain.band
    used = CCF_COEFFICIENTS["ccf-aws-average"][1]
    maxima = [m for _, m in CCF_MICROARCHITECTURES.values()]
    assert (unknown.low_factor, unknown.high_factor) == pytest.approx((min(maxima) / used, max(maxima) / used))
    named = _cpu(tmp_path, "AMD EPYC 7R13 Processor").domain.band  # no TDP row: CCF's 3rd Gen mean
    assert (named.low_factor, named.high_factor) == pytest.approx(SKU_SPREAD)
    assert "assumed" in named.basis


def test_the_users_own_powers_carry_no_model_spread_only_the_tick(tmp_path) -> None:  # noqa: ANN001
    band = _cpu(tmp_path, "AMD EPYC", p_idle_w=10.0, p_max_w=50.0).domain.band
    assert (band.low_factor, band.high_factor) == (1.0, 1.0) and band.fixed_j > 0
    assert "taken as exact" in band.basis
    assert band.band(5.0, 1.0).terms == ()


def test_the_ram_estimate_spans_its_two_memory_sources() -> None:
    band = RamEstimateBackend().domain.band
    assert (band.low_factor, band.high_factor) == pytest.approx(tuple(w / WATTS_PER_GB for w in WATTS_PER_GB_RANGE))
    own = RamEstimateBackend(watts_per_gb=0.5).domain.band
    assert (own.low_factor, own.high_factor) == (1.0, 1.0)


def test_rapl_and_nvml_counters_state_their_unit_and_update_period(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    FakePowercap(tmp_path).add_package(0)
    rapl = RaplBackend(tmp_path).probe()
    assert rapl.available
    band = rapl.domains[0].band
    assert band.power_period_s == RAPL_UPDATE_PERIOD_S and 0 < band.fixed_j < 1e-3
    window = band.band(50.0, 1.0)  # 50 J over 1 s: +-(2 units + 1 ms x the highest power it allows, 50 J / 0.999 s)
    assert window.high_j - 50.0 == pytest.approx(band.fixed_j + 0.001 * 50.0 / 0.999)

    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(FakeGpu()))
    nvml = NvmlBackend().probe()
    gpu_band = nvml.domains[0].band
    assert gpu_band.power_period_s == COUNTER_UPDATE_PERIOD_S and gpu_band.fixed_j == pytest.approx(2e-3)
    # a 150 ms window at 700 W (105 J) that saw one 100 ms refresh reads 70 J: +-(2 mJ + 100 ms x the highest power
    # 70 J allows, 70 J / 50 ms), so the band holds the true 105 J (see tests/sources/test_nvml_clock.py)
    short = gpu_band.band(70.0, 0.15)
    assert (short.low_j, short.high_j) == (0.0, pytest.approx(70.0 + 140.0 + 2e-3))
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(FakeGpu(energy_mj=None)))
    sampled = NvmlBackend().probe().domains[0].band
    assert sampled.power_period_s > POWER_AVERAGING_S and "power samples" in sampled.basis
    assert math.isfinite(sampled.band(1.0, 1.0).high_j)


def test_a_ratio_whose_denominator_may_be_zero_is_unbounded_and_round_trips_through_strict_json() -> None:
    from greenmeter.records.encoding import finite_json
    from greenmeter.sources.band import RatioBand

    tiny = BandModel(fixed_j=1.0).band(0.5, 1.0)  # 0.5 J +- 1 J: may be 0
    r = ratio_band(BandModel(fixed_j=0.1).band(1.0, 1.0), tiny)
    assert r.high == math.inf
    text = json.dumps(finite_json(r.to_dict()), allow_nan=False)
    assert RatioBand.from_dict(json.loads(text)) == r
