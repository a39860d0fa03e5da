"""Measurement records: the step summary they keep, and older records read as they were written."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from greenmeter import ConfigError, Measurement, Meter
from greenmeter.records.measurement import SCHEMA_VERSION, LatencyStats
from greenmeter.stats import QuantileSketch, percentile
from greenmeter.store.database import Store
from tests.fakes.scripted import ConstantPowerBackend

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_schema2.db"


def _window(steps: int, keep_steps: bool | int = 1000) -> Measurement:
    meter = Meter([ConstantPowerBackend(10.0)], sync=None, keep_steps=keep_steps)
    with meter.window("train") as w:
        for _ in range(steps):
            meter.step(4)
    assert w.measurement is not None
    return w.measurement


def test_schema_2_records_in_a_real_store_read_with_their_exact_percentiles(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    shutil.copy(FIXTURE, path)
    raw = {json.loads(text)["name"]: json.loads(text)
           for (text,) in sqlite3.connect(path).execute("SELECT measurement FROM windows")}
    with Store(path, readonly=True) as store:
        run_ids = [r.id for r in store.list_runs()]
        windows = [m for run_id in run_ids for m in store.windows(run_id)]
    train = next(m for m in windows if m.name == "train")
    stored = raw["train"]
    assert stored["schema_version"] == 2 and "relative_error" not in stored["latency"]
    assert train.schema_version == 2 and train.step_sketch is None
    assert train.latency is not None and train.latency.relative_error == 0.0  # every duration was kept: exact
    assert train.latency == LatencyStats.from_durations(train.step_durations_s)  # the same percentiles as stored
    assert train.latency.p95_s == stored["latency"]["p95_s"] == percentile(stored["step_durations_s"], 0.95)
    rebuilt = train.step_duration_sketch()  # an old record still merges with new ones
    assert rebuilt is not None and rebuilt.count == 110
    assert abs(rebuilt.quantile(0.99) - train.latency.p99_s) <= 0.005 * train.latency.p99_s * (1 + 1e-12)


def test_a_window_of_many_steps_keeps_a_bounded_sketch_that_round_trips() -> None:
    m = _window(5_000)
    assert m.steps == 5_000 and m.samples == 20_000
    assert m.step_durations_s == () and m.step_samples == () and m.step_energies_j() == ()
    assert m.step_sketch is not None and m.step_sketch.count == 5_000
    assert m.latency is not None and m.latency.relative_error == 0.005
    assert m.latency == LatencyStats.from_sketch(m.step_sketch)
    data = json.loads(m.to_json())
    assert data["schema_version"] == SCHEMA_VERSION == 4
    assert data["latency"]["relative_error"] == 0.005 and data["step_sketch"]["count"] == 5_000
    again = Measurement.from_json(m.to_json())
    assert again == m and again.step_sketch == m.step_sketch
    copy = again.step_duration_sketch()
    assert copy == m.step_sketch and copy is not again.step_sketch  # a copy, free to merge into
    assert "within 0.5%" in m.summary()


def test_a_short_window_keeps_every_step_and_exact_percentiles() -> None:
    m = _window(50)
    assert len(m.step_durations_s) == 50 and m.step_samples == (4,) * 50 and m.step_sketch is None
    assert m.latency == LatencyStats.from_durations(m.step_durations_s) and m.latency.relative_error == 0.0
    assert sum(m.step_energies_j()) == pytest.approx(m.energy_j)
    assert "within" not in m.summary()
    sketch = m.step_duration_sketch()
    assert isinstance(sketch, QuantileSketch) and sketch.count == 50


def test_a_newer_schema_is_refused() -> None:
    data = _window(3).to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ConfigError, match="upgrade greenmeter"):
        Measurement.from_dict(data)


def test_every_window_of_the_estimates_carries_a_band_that_sums_and_reads_back(tmp_path: Path) -> None:
    from greenmeter.sources.cpu_estimate import CpuEstimateBackend
    from greenmeter.sources.ram_estimate import RamEstimateBackend

    def busy_cpu(seconds: float) -> None:
        import time

        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    meter = Meter([CpuEstimateBackend(), RamEstimateBackend()], sync=None)
    with meter.window("work", samples=4) as w:
        busy_cpu(0.2)
    m = w.measurement
    assert m is not None and all(d.band is not None for d in m.domains)
    cpu, ram = (m.domains[0].band, m.domains[1].band)
    band = m.energy_band
    assert band is not None and band.value_j == pytest.approx(m.energy_j)
    assert band.low_j == pytest.approx(cpu.low_j + ram.low_j) and band.high_j == pytest.approx(cpu.high_j + ram.high_j)
    assert band.low_j < m.energy_j < band.high_j
    per_sample = m.energy_per_sample_band
    assert per_sample is not None and per_sample.high_j == pytest.approx(band.high_j / 4)
    again = Measurement.from_json(m.to_json())
    assert again.energy_band == band and json.loads(m.to_json())["energy_band"]["high_j"] == pytest.approx(band.high_j)
    assert "band " in m.summary() and "not the run-to-run spread" in m.summary()


def test_a_record_from_before_bands_reads_without_one_and_says_why() -> None:
    data = json.loads(_window(3).to_json())
    data["schema_version"] = 3
    for domain in data["domains"]:
        domain.pop("band")
    old = Measurement.from_dict(data)
    assert old.energy_band is None and old.energy_per_sample_band is None
    assert old.band_note() == "band: not stated (recorded before greenmeter stated bands)"
    # a source that states no band (the scripted test source) is named
    assert _window(3).band_note() == "band: not stated (constant:dev states no band)"


def test_each_epoch_has_the_band_of_its_own_energy() -> None:
    from greenmeter.sources.ram_estimate import RamEstimateBackend

    meter = Meter([RamEstimateBackend(mode="machine")], sync=None)
    with meter.window("train") as w:
        for _ in range(2):
            meter.step(4)
            meter.epoch()
    m = w.measurement
    assert m is not None and len(m.epochs) == 2
    for epoch in m.epochs:
        assert epoch.band is not None and epoch.band.value_j == pytest.approx(epoch.energy_j)
        assert epoch.band.low_j < epoch.energy_j < epoch.band.high_j
    again = Measurement.from_json(m.to_json())
    assert again.epochs == m.epochs
    data = json.loads(m.to_json())
    for epoch in data["epochs"]:
        del epoch["band"]  # as written before bands
    assert Measurement.from_dict(data).epochs[0].band is None
