"""The RAM energy estimate: sample-and-hold integration of this process's RSS, and machine memory."""

from __future__ import annotations

import json
import time

import psutil
import pytest

from greenmeter import ConfigError
from greenmeter.sources.ram_estimate import BYTES_PER_GB, WATTS_PER_GB, RamEstimateBackend

KEY = "ram-estimate:ram"


def test_process_mode_integrates_rss_between_two_polls():
    backend = RamEstimateBackend(sample_interval_s=0.25)
    t0, rss0 = backend.last_sample
    ballast = b"\x01" * (64 << 20)  # 64 MiB of written (resident) pages
    backend.poll()
    t1, rss1 = backend.last_sample
    backend.poll()
    t2, rss2 = backend.last_sample
    reading = backend.read()

    assert rss1 >= rss0 + (48 << 20)
    w_per_byte = WATTS_PER_GB / BYTES_PER_GB
    expected = w_per_byte * (rss0 * (t1 - t0) + rss1 * (t2 - t1) + rss2 * (reading.timestamp_s - t2))
    assert reading.energy_j[KEY] == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert t0 < t1 < t2 <= reading.timestamp_s
    del ballast


def test_read_between_polls_extends_the_last_sample_and_never_goes_back():
    backend = RamEstimateBackend(watts_per_gb=2.0)
    t0, rss0 = backend.last_sample
    first = backend.read()
    expected = rss0 * 2.0 / BYTES_PER_GB * (first.timestamp_s - t0)
    assert first.energy_j[KEY] == pytest.approx(expected, rel=1e-12)
    backend.poll()
    second = backend.read()
    assert second.energy_j[KEY] >= first.energy_j[KEY]


def test_process_domain_and_provenance():
    backend = RamEstimateBackend(sample_interval_s=0.2)
    probe = backend.probe()
    assert probe.available
    (domain,) = probe.domains
    assert (domain.key, domain.kind, domain.in_total) == (KEY, "ram", True)
    assert domain.update_period_s == time.get_clock_info("monotonic").resolution
    assert backend.poll_interval_s == 0.2
    prov = domain.provenance
    assert prov.kind == "estimated" and prov.source == "RAM power model (ram-estimate)"
    assert prov.constants["w_per_gb"] == 0.392
    assert "Cloud Carbon Footprint" in prov.constants["w_per_gb_source"]
    assert prov.constants["bytes_per_gb"] == 2**30
    assert any("live descendants" in note for note in probe.notes)
    json.dumps(prov.to_dict())


def test_rss_sample_agrees_with_psutil():
    backend = RamEstimateBackend()
    backend.poll()
    _, rss = backend.last_sample
    assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.05)


def test_machine_mode_is_memory_size_times_constant_power():
    before = time.monotonic()
    backend = RamEstimateBackend("machine", watts_per_gb=0.5)
    after = time.monotonic()
    reading = backend.read()
    total = psutil.virtual_memory().total
    power_w = total * 0.5 / BYTES_PER_GB
    assert backend.power_w == pytest.approx(power_w, rel=1e-12)
    energy = reading.energy_j[KEY]
    assert power_w * (reading.timestamp_s - after) * (1 - 1e-12) <= energy
    assert energy <= power_w * (reading.timestamp_s - before) * (1 + 1e-12)
    assert backend.poll_interval_s is None
    backend.poll()  # a no-op in machine mode
    const = backend.domain.provenance.constants
    assert const["w_per_gb_source"] == "user override watts_per_gb"
    assert const["memory_gb"] == total / BYTES_PER_GB and const["power_w"] == backend.power_w


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "children"},
        {"watts_per_gb": -0.1},
        {"watts_per_gb": float("inf")},
        {"sample_interval_s": 0},
        {"sample_interval_s": float("nan")},
    ],
)
def test_bad_configuration_is_a_config_error(options):
    with pytest.raises(ConfigError):
        RamEstimateBackend(**options)
