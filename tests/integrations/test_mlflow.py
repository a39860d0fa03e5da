"""MLflow: measurements and comparisons logged to a real MLflow file store in tmp_path, read back with MlflowClient.

MLflow is imported once per module (it takes ~1 s), with its telemetry off, before any test; each test points
``MLFLOW_TRACKING_URI`` at its own folder, so nothing leaves the machine or lands in the user's home. Without
``mlflow`` installed the module is skipped, except in CI, which installs the test extras.
"""

from __future__ import annotations

import importlib
import logging
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from greenmeter import ConfigError, Measurement, Meter
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.sources.band import BandModel
from greenmeter.sources.base import Domain, ProbeResult, Provenance
from tests.fakes.scripted import ScriptedBackend
from tests.integrations.frameworks import framework

INTENSITY = CarbonSettings(intensity_g_per_kwh=360.0, pue=1.5)  # 1 J -> 1/3.6e6 kWh x 1.5 x 360 g = 1.5e-4 g
G_PER_J = 1.5e-4
BAND = BandModel("test counter scale", 0.9, 1.2, fixed_j=0.5, basis="test counter: 0.9-1.2 x, 0.5 J per read")
COUNTER = Provenance("measured", "banded test counter", "scripted cumulative values")


class BandedBackend(ScriptedBackend):
    """A scripted measured counter whose domain states a band."""

    name = "banded"

    def probe(self) -> ProbeResult:
        return ProbeResult(self.name, True, domains=(Domain(self.key, "package", True, COUNTER, 0.0, BAND),))


@pytest.fixture(scope="module")
def ml(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """``mlflow``, imported with its telemetry off (it decides at import, and would keep an id under
    ``~/.config``), and greenmeter's integration with it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("DO_NOT_TRACK", "true")
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
        mlflow = framework("mlflow")
        importlib.import_module("greenmeter.integrations.mlflow")
    return mlflow


@pytest.fixture()
def tracking(ml: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A file-store tracking URI in tmp_path (MLflow 3 asks for an opt-in to its file store); the client."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    yield ml.tracking.MlflowClient()
    while ml.active_run() is not None:  # a failed test must not leave its run active for the next one
        ml.end_run()


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifact(client: Any, run_id: str, path: str, tmp_path: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp_path / "downloads"))).read_text(encoding="utf-8")


def _trained(meter: Meter, name: str = "train") -> Measurement:
    """A window of 2 epochs of 3 steps of 4 samples each (the scripted counter sets its energy)."""
    with meter.window(name) as w:
        for _ in range(2):
            for _ in range(3):
                meter.step(4)
            meter.epoch()
    assert w.measurement is not None
    return w.measurement


def test_log_measurement_logs_the_measurements_figures_bands_epochs_steps_and_report(
    ml: ModuleType, tracking: Any, tmp_path: Path,
) -> None:
    from greenmeter.integrations.mlflow import log_measurement

    # reads: begin 100 J, epoch marks at 130 and 190 J, end 200 J
    meter = Meter([BandedBackend([100.0, 130.0, 190.0, 200.0])], sync=None, carbon=INTENSITY)
    m = _trained(meter)
    band = m.energy_band
    assert m.energy_j == 100.0 and band is not None and len(m.epochs) == 2 and m.samples == 24
    with ml.start_run() as run:
        assert log_measurement(m, step=3) == run.info.run_id
    rid = run.info.run_id
    data = tracking.get_run(rid).data
    assert _history(tracking, rid, "greenmeter.energy_j") == [(3, 100.0)]
    assert data.metrics["greenmeter.power_w"] == pytest.approx(m.power_w)
    assert data.metrics["greenmeter.duration_s"] == pytest.approx(m.duration_s)
    assert data.metrics["greenmeter.co2e_g"] == pytest.approx(100.0 * G_PER_J)
    assert data.metrics["greenmeter.energy_band_low_j"] == pytest.approx(band.low_j)
    assert data.metrics["greenmeter.energy_band_high_j"] == pytest.approx(band.high_j)
    assert (band.low_j, band.high_j) == pytest.approx((100.0 * 0.9 - 0.5, 100.0 * 1.2 + 0.5))
    assert data.metrics["greenmeter.energy_per_sample_j"] == pytest.approx(100.0 / 24)
    assert data.metrics["greenmeter.domain.scripted.dev.energy_j"] == 100.0
    assert data.metrics["greenmeter.domain.scripted.dev.energy_band_high_j"] == pytest.approx(band.high_j)
    # epochs as metric steps: 30 J and 60 J
    assert _history(tracking, rid, "greenmeter.epoch_energy_j") == [(0, 30.0), (1, 60.0)]
    co2e = _history(tracking, rid, "greenmeter.epoch_co2e_g")
    assert [s for s, _ in co2e] == [0, 1] and [v for _, v in co2e] == pytest.approx([30 * G_PER_J, 60 * G_PER_J])
    assert [v for _, v in _history(tracking, rid, "greenmeter.epoch_power_w")] == pytest.approx(
        [e.energy_j / e.duration_s for e in m.epochs])
    assert [v for _, v in _history(tracking, rid, "greenmeter.epoch_energy_band_high_j")] == pytest.approx(
        [e.band.high_j for e in m.epochs])  # type: ignore[union-attr]
    # steps as metric steps: the window's energy split by step time
    steps = _history(tracking, rid, "greenmeter.step_energy_j")
    assert [s for s, _ in steps] == list(range(6))
    assert [v for _, v in steps] == pytest.approx(list(m.step_energies_j()))
    # tags: sources and provenance
    assert data.tags["greenmeter.sources"] == "banded"
    assert data.tags["greenmeter.provenance"] == "measured"
    assert data.tags["greenmeter.domain.scripted.dev.provenance"] == COUNTER.describe()
    assert data.tags["greenmeter.step_energy_method"] == m.step_energy_method
    assert data.tags["greenmeter.band"] == m.band_note() and band.describe() in m.band_note()
    assert data.tags["greenmeter.band_basis"] == BAND.basis
    assert data.tags["greenmeter.carbon"] == m.carbon.describe()  # type: ignore[union-attr]
    # the report and the record as artifacts
    assert sorted(a.path for a in tracking.list_artifacts(rid, "greenmeter")) == [
        "greenmeter/train-3.html", "greenmeter/train-3.json"]
    html = _artifact(tracking, rid, "greenmeter/train-3.html", tmp_path)
    assert html.lstrip().lower().startswith("<!doctype html") and band.describe() in html
    assert Measurement.from_json(_artifact(tracking, rid, "greenmeter/train-3.json", tmp_path)) == m


def test_log_measurement_without_an_active_run_logs_nothing_and_says_so(ml: ModuleType, tracking: Any) -> None:
    from greenmeter.integrations.mlflow import log_measurement

    meter = Meter([ScriptedBackend([0.0, 5.0])], sync=None)
    with meter.window("w") as w:
        pass
    assert w.measurement is not None
    with pytest.raises(ConfigError, match=r"no MLflow run is active.*mlflow\.start_run\(\)"):
        log_measurement(w.measurement)
    assert ml.active_run() is None  # MLflow's own log_metric would have started one
    assert tracking.search_runs([e.experiment_id for e in tracking.search_experiments()]) == []
    with pytest.raises(ConfigError, match="Measurement"):
        log_measurement({"energy_j": 1.0})  # type: ignore[arg-type]
    with ml.start_run() as run, pytest.raises(ConfigError, match="step"):
        log_measurement(w.measurement, step=-1)
    assert tracking.get_run(run.info.run_id).data.metrics == {}  # refused before anything was logged


def test_autolog_logs_each_window_while_a_run_is_active_and_stops_when_detached(
    ml: ModuleType, tracking: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    from greenmeter.integrations.mlflow import MlflowLogger, autolog

    # each window: a begin and an end read, 10 J, 20 J, 40 J, 80 J apart
    meter = Meter([ScriptedBackend([0.0, 10.0, 10.0, 30.0, 30.0, 70.0, 70.0, 150.0])], sync=None, carbon=INTENSITY)
    with caplog.at_level(logging.DEBUG, logger="greenmeter"):
        logger = autolog(meter, report=False)
        assert isinstance(logger, MlflowLogger) and logger.attached
        with meter.window("before"):  # no run active: not logged, one debug line
            pass
    assert [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()] == [
        "greenmeter: window 'before' not logged to MLflow: no MLflow run is active"]
    with ml.start_run() as run, logger:
        for name in ("a", "b"):
            with meter.window(name):
                pass
    assert not logger.attached and meter.listeners == []
    with ml.start_run() as later:
        with meter.window("after"):  # detached: not logged
            pass
    rid = run.info.run_id
    assert logger.logged(rid) == 2 and logger.logged(later.info.run_id) == 0
    assert _history(tracking, rid, "greenmeter.energy_j") == [(0, 20.0), (1, 40.0)]
    co2e = _history(tracking, rid, "greenmeter.co2e_g")
    assert [s for s, _ in co2e] == [0, 1] and [v for _, v in co2e] == pytest.approx([20 * G_PER_J, 40 * G_PER_J])
    assert tracking.list_artifacts(rid) == []  # report=False
    assert tracking.get_run(later.info.run_id).data.metrics == {}
    assert len(tracking.search_runs(["0"])) == 2  # only the two runs started here


def test_a_logger_can_choose_windows_and_a_prefix_and_logs_the_report_of_each(
    ml: ModuleType, tracking: Any, tmp_path: Path,
) -> None:
    from greenmeter.integrations.mlflow import MlflowLogger

    meter = Meter([BandedBackend([0.0, 10.0, 10.0, 30.0, 30.0, 70.0])], sync=None)
    with ml.start_run() as run, MlflowLogger(meter, windows=("eval",), prefix="energy/"):
        for name in ("eval", "train", "eval"):
            with meter.window(name):
                pass
    rid = run.info.run_id
    assert _history(tracking, rid, "energy/energy_j") == [(0, 10.0), (1, 40.0)]
    assert "greenmeter.energy_j" not in tracking.get_run(rid).data.metrics
    assert sorted(a.path for a in tracking.list_artifacts(rid, "greenmeter")) == [
        "greenmeter/eval-0.html", "greenmeter/eval-0.json", "greenmeter/eval-1.html", "greenmeter/eval-1.json"]
    second = Measurement.from_json(_artifact(tracking, rid, "greenmeter/eval-1.json", tmp_path))
    assert second.energy_j == 40.0 and second.energy_band is not None
    assert second.energy_band.describe() in _artifact(tracking, rid, "greenmeter/eval-1.html", tmp_path)
    with pytest.raises(ConfigError, match="window names"):
        MlflowLogger(meter, windows="eval")
    with pytest.raises(ConfigError, match="greenmeter.Meter"):
        MlflowLogger("meter")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="prefix must be"):
        MlflowLogger(meter, prefix="energy:")  # refused now, not at every window


def test_log_comparison_logs_each_variants_energy_band_and_ratio_and_the_report(
    ml: ModuleType, tracking: Any, tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from greenmeter.comparison.compare import compare
    from greenmeter.integrations.mlflow import log_comparison

    torch.manual_seed(0)
    x, y = torch.randn(128, 16), torch.randint(0, 4, (128,))
    big = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 4))
    small = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    meter = Meter(["cpu-estimate", "ram-estimate"])
    try:
        comparison = compare({"big": big, "small:8": small}, (x, y), meter=meter, repeats=2, min_repeat_s=0.02,
                             progress=False)
    finally:
        meter.close()
    with ml.start_run() as run:
        log_comparison(comparison)
    rid = run.info.run_id
    metrics, tags = tracking.get_run(rid).data.metrics, tracking.get_run(rid).data.tags
    for v, key in ((comparison.variant("big"), "big"), (comparison.variant("small:8"), "small.8")):
        assert v.energy_per_sample_j is not None and v.energy_band is not None
        prefix = f"greenmeter.variant.{key}."
        assert metrics[prefix + "energy_per_sample_j"] == pytest.approx(v.energy_per_sample_j.mean)
        assert metrics[prefix + "energy_per_sample_band_low_j"] == pytest.approx(v.energy_band.low_j)
        assert metrics[prefix + "energy_per_sample_band_high_j"] == pytest.approx(v.energy_band.high_j)
        assert metrics[prefix + "metric"] == pytest.approx(v.metric)
    delta = comparison.variant("small:8").vs_baseline
    assert delta is not None and delta.energy_ratio is not None and delta.energy_ratio_band is not None
    assert metrics["greenmeter.variant.small.8.energy_ratio"] == pytest.approx(delta.energy_ratio)
    ratio_band = delta.energy_ratio_band
    for end, value in (("low", ratio_band.low), ("high", ratio_band.high)):
        if math.isfinite(value):
            assert metrics[f"greenmeter.variant.small.8.energy_ratio_band_{end}"] == pytest.approx(value)
        else:  # an unbounded end (a baseline band reaching 0 J) is not a number MLflow can chart: left out
            assert f"greenmeter.variant.small.8.energy_ratio_band_{end}" not in metrics
    assert "greenmeter.variant.big.energy_ratio" not in metrics  # the baseline has no ratio to itself
    assert tags["greenmeter.baseline"] == "big" and tags["greenmeter.provenance"] == "estimated"
    assert tags["greenmeter.variant.small.8.measurable_saving"] == str(delta.measurable_saving).lower()
    html = _artifact(tracking, rid, f"greenmeter/comparison-{comparison.name}.html", tmp_path)
    band = comparison.variant("small:8").energy_band
    assert f"{band.low_j * 1e3:.3g} – {band.high_j * 1e3:.3g}" in html  # type: ignore[union-attr]
    assert f"×{ratio_band.low:.3g} – ×{ratio_band.high:.3g}" in html


def test_a_refused_log_is_a_warning_for_the_listener_and_an_error_for_the_explicit_call(
    ml: ModuleType, tracking: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    from greenmeter.integrations.mlflow import MlflowLogger, log_measurement

    meter = Meter([ScriptedBackend([0.0, 10.0])], sync=None)
    with MlflowLogger(meter, report=False) as logger:
        run = ml.start_run()
        tracking.delete_run(run.info.run_id)  # MLflow refuses metrics for a deleted run
        with caplog.at_level(logging.WARNING, logger="greenmeter"), meter.window("w") as w:
            pass
    assert w.measurement is not None and w.measurement.energy_j == 10.0  # the measurement goes on
    assert logger.logged(run.info.run_id) == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"MLflow refused greenmeter's figures for window 'w' in run {run.info.run_id}" in warning
    with pytest.raises(ConfigError, match="MLflow refused"):
        log_measurement(w.measurement, report=False)
    tracking.restore_run(run.info.run_id)
    ml.end_run()
