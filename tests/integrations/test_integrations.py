"""Framework callbacks: the shared recorder, the import guards, a real Lightning fit and a real HF Trainer run.

The training runs use tiny models built here (no download) on the CPU. Without a framework installed its
test is skipped, except in CI (``CI=true``), which installs the test extras: there a missing framework fails.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from greenmeter import ConfigError, Measurement, MeasurementError, Meter
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.integrations import METRICS, TrainingRecorder
from greenmeter.store.database import Store
from tests.integrations.frameworks import framework, lightning
from tests.fakes.scripted import ScriptedBackend

STEP_KEYS = ("greenmeter/power_w", "greenmeter/step_energy_j", "greenmeter/step_co2e_g", "greenmeter/energy_j",
             "greenmeter/co2e_g")
EPOCH_KEYS = ("greenmeter/epoch_energy_j", "greenmeter/epoch_power_w", "greenmeter/epoch_co2e_g")
INTENSITY = CarbonSettings(intensity_g_per_kwh=360.0, pue=1.5)  # 1 J -> 1/3.6e6 kWh x 1.5 x 360 g = 1.5e-4 g
G_PER_J = 1.5e-4



def _estimated_meter(store: Path) -> Meter:
    """This machine's CPU and RAM estimates, whatever counters it has, so the provenance is known."""
    return Meter(["cpu-estimate", "ram-estimate"], store=store, name="integration-test", carbon=INTENSITY)


def _check_stored_run(store_path: Path, m: Measurement, *, steps: int, samples: int | None) -> None:
    """The run in the store holds one window equal to ``m``: 2 epochs, ``steps`` steps, estimated provenance."""
    with Store(store_path) as store:
        (run,) = store.list_runs()
        assert run.status == "ok" and run.name == "integration-test" and run.windows_count == 1
        (window,) = store.windows(run.id)
    assert window == m and m.status == "ok"
    assert m.steps == steps and m.latency is not None and m.latency.count == steps
    assert m.samples == samples
    assert len(m.epochs) == 2 and sum(e.steps for e in m.epochs) == steps
    assert all(e.energy_j > 0 for e in m.epochs)
    # The epochs cover the window but for the time after the last epoch mark: within a few counter ticks.
    tick_j = max(d.provenance.constants.get("p_max_w_per_vcpu", 0.0) for d in m.domains) * 0.01
    epochs_j = sum(e.energy_j for e in m.epochs)
    assert epochs_j <= m.energy_j + 1e-9
    assert m.energy_j - epochs_j <= max(0.05 * m.energy_j, 3 * tick_j)
    kinds = {d.key: d.provenance.kind for d in m.domains}
    assert kinds == {"cpu-estimate:cpu": "estimated", "ram-estimate:ram": "estimated"}
    cpu = next(d for d in m.domains if d.key == "cpu-estimate:cpu")
    assert cpu.provenance.constants["p_max_w_per_vcpu"] > 0 and cpu.provenance.constants["cpu_time_resolution_s"] > 0
    assert m.carbon is not None and m.carbon.co2e_g == pytest.approx(m.energy_j * G_PER_J)


def _check_figures(rows: list[dict[str, float]], keys: tuple[str, ...]) -> None:
    assert rows, f"no log row holds {keys}"
    for row in rows:
        for key in keys:
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)


# The shared recorder, on scripted counters ---------------------------------------------------------
def test_recorder_figures_are_differences_of_counter_reads() -> None:
    # Reads: begin 100, interval 130, epoch mark 160, epoch read 160, interval 190, end 190.
    backend = ScriptedBackend([100.0, 130.0, 160.0, 160.0, 190.0, 190.0])
    meter = Meter([backend], sync=None, carbon=INTENSITY)
    recorder = TrainingRecorder(meter, window="fit")
    recorder.start()
    for _ in range(3):
        recorder.step(4)
    first = recorder.interval()
    assert first is not None
    assert first["greenmeter/energy_j"] == pytest.approx(30.0)
    assert first["greenmeter/step_energy_j"] == pytest.approx(10.0)
    assert first["greenmeter/step_co2e_g"] == pytest.approx(10.0 * G_PER_J)
    assert first["greenmeter/co2e_g"] == pytest.approx(30.0 * G_PER_J)
    assert first["greenmeter/power_w"] > 0
    recorder.step(4)
    epoch = recorder.epoch()
    assert epoch["greenmeter/epoch_energy_j"] == pytest.approx(60.0)
    assert epoch["greenmeter/epoch_co2e_g"] == pytest.approx(60.0 * G_PER_J)
    assert epoch["greenmeter/epoch_power_w"] > 0
    second = recorder.interval()
    assert second is not None
    assert second["greenmeter/energy_j"] == pytest.approx(90.0)  # since the start
    assert second["greenmeter/step_energy_j"] == pytest.approx(60.0)  # 60 J over the one step since the last log
    m = recorder.finish()
    assert m is not None and recorder.measurement is m and not recorder.active
    assert m.energy_j == pytest.approx(90.0) and m.steps == 4 and m.samples == 16
    assert [(e.energy_j, e.steps, e.samples) for e in m.epochs] == [(pytest.approx(60.0), 4, 16)]
    assert recorder.finish() is m  # a second finish changes nothing
    assert set(METRICS) == {k.removeprefix("greenmeter/") for k in (*STEP_KEYS, *EPOCH_KEYS)}


def test_recorder_puts_off_an_interval_shorter_than_the_counters_resolve() -> None:
    backend = ScriptedBackend([0.0, 5.0, 7.0], update_period_s=3600.0)
    recorder = TrainingRecorder(Meter([backend], sync=None))
    recorder.start()
    assert recorder.interval() is None
    with pytest.raises(MeasurementError, match="already open"):
        recorder.start()
    assert recorder.finish() is not None


def test_recorder_refuses_store_or_name_with_a_given_meter_and_bad_carbon() -> None:
    meter = Meter([ScriptedBackend([0.0])], sync=None)
    with pytest.raises(ConfigError, match=r"Meter\(store=\.\.\., name=\.\.\.\)"):
        TrainingRecorder(meter, store=True)
    with pytest.raises(ConfigError, match="CarbonSettings"):
        TrainingRecorder(carbon={"country": "FRA"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="greenmeter.Meter"):
        TrainingRecorder("meter")  # type: ignore[arg-type]


def test_importing_the_package_imports_no_framework() -> None:
    code = ("import sys, greenmeter.integrations;"
            "print(','.join(m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers', 'accelerate',"
            " 'mlflow', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(("module", "frameworks", "extra"), [
    ("greenmeter.integrations.lightning", ("lightning", "pytorch_lightning"), "lightning"),
    ("greenmeter.integrations.huggingface", ("transformers",), "huggingface"),
    ("greenmeter.integrations.mlflow", ("mlflow",), "mlflow"),
    ("greenmeter.integrations.prometheus", ("prometheus_client",), "metrics"),
])
def test_a_missing_framework_raises_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, frameworks: tuple[str, ...], extra: str,
) -> None:
    monkeypatch.delitem(sys.modules, module, raising=False)
    for name in frameworks:
        monkeypatch.setitem(sys.modules, name, None)  # what an absent package looks like to the import system
    with pytest.raises(ConfigError, match=rf"pip install greenmeter\[{extra}\]"):
        importlib.import_module(module)


# PyTorch Lightning ---------------------------------------------------------------------------------


def test_lightning_fit_is_measured_stored_and_logged(tmp_path: Path) -> None:
    pl = lightning()
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from greenmeter.integrations.lightning import GreenmeterCallback

    class Regressor(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(760, 64), torch.randn(760, 1))
    loader = DataLoader(data, batch_size=64)  # 12 batches per epoch, the last one of 56 samples
    store_path = tmp_path / "runs.db"
    energy = GreenmeterCallback(_estimated_meter(store_path), log_every_n_steps=2)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="logs")
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, accumulate_grad_batches=2, logger=logger,
                          callbacks=[energy], enable_progress_bar=False, enable_model_summary=False,
                          enable_checkpointing=False, log_every_n_steps=1)
    trainer.fit(Regressor(), loader)
    energy.meter.close()

    assert trainer.global_step == 12  # 2 epochs x 12 batches / 2 accumulated
    m = energy.measurement
    assert m is not None and m.name == "fit"
    _check_stored_run(store_path, m, steps=12, samples=2 * 760)
    assert [(e.steps, e.samples) for e in m.epochs] == [(6, 760), (6, 760)]

    with open(logger.experiment.metrics_file_path, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
    step_rows = [r for r in rows if "greenmeter/power_w" in r and "greenmeter/step_energy_j" in r]
    epoch_rows = [r for r in rows if "greenmeter/epoch_energy_j" in r]
    _check_figures(step_rows, STEP_KEYS)
    _check_figures(epoch_rows, EPOCH_KEYS)
    assert [r["epoch"] for r in epoch_rows] == [0, 1]
    for row, record in zip(epoch_rows, m.epochs):  # the logged epoch is the stored one, to a counter tick
        assert row["greenmeter/epoch_energy_j"] == pytest.approx(record.energy_j, abs=0.05)
        assert row["greenmeter/epoch_co2e_g"] == pytest.approx(row["greenmeter/epoch_energy_j"] * G_PER_J)
    totals = [r["greenmeter/energy_j"] for r in step_rows]
    assert totals == sorted(totals) and totals[-1] <= m.energy_j + 1e-9  # cumulative, never past the window


def test_lightning_callback_makes_its_own_meter_and_stores_a_failed_fit(tmp_path: Path) -> None:
    pl = lightning()
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from greenmeter.integrations.lightning import GreenmeterCallback

    class Failing(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 2:
                raise RuntimeError("loss went to NaN")
            return self.net(batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    store_path = tmp_path / "runs.db"
    energy = GreenmeterCallback(store=store_path, name="failing", carbon=INTENSITY)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[energy],
                          enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(RuntimeError, match="NaN"):
        trainer.fit(Failing(), DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=8))
    m = energy.measurement
    assert m is not None and m.status == "failed" and m.error == "RuntimeError: loss went to NaN" and m.steps == 2
    with Store(store_path) as store:
        (run,) = store.list_runs()
        assert (run.name, run.status) == ("failing", "failed")  # the meter made by the callback was closed
        assert store.windows(run.id) == [m]


# Hugging Face transformers -------------------------------------------------------------------------
def test_hf_trainer_run_is_measured_stored_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    framework("transformers")
    framework("accelerate")
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from greenmeter.integrations.huggingface import GreenmeterTrainerCallback

    class Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self, n: int) -> None:
            generator = torch.Generator().manual_seed(0)
            self.ids = torch.randint(0, 100, (n, 32), generator=generator)
            self.labels = (self.ids[:, 0] % 2).tolist()

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": self.ids[i], "attention_mask": torch.ones(32, dtype=torch.long),
                    "labels": self.labels[i]}

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=32, num_labels=2)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16,
                             logging_steps=2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, seed=0)
    class Reporter(TrainerCallback):  # stands for report_to's integrations: they read the logs in on_log
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            self.seen.append(dict(logs))

    reporter = Reporter()
    trainer = Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Tokens(80),
                      callbacks=[reporter])
    store_path = tmp_path / "runs.db"
    energy = GreenmeterTrainerCallback(_estimated_meter(store_path)).attach(trainer)
    assert trainer.callback_handler.callbacks[0] is energy
    trainer.train()
    energy.meter.close()

    assert trainer.state.global_step == 10  # 2 epochs x 80 samples / 16
    m = energy.measurement
    assert m is not None and m.name == "train"
    _check_stored_run(store_path, m, steps=10, samples=None)
    assert [e.steps for e in m.epochs] == [5, 5]

    history = trainer.state.log_history
    step_rows = [r for r in history if "greenmeter/step_energy_j" in r]
    epoch_rows = [r for r in history if "greenmeter/epoch_energy_j" in r]
    _check_figures(step_rows, STEP_KEYS)
    _check_figures(epoch_rows, EPOCH_KEYS)
    assert [r["step"] for r in epoch_rows] == [5, 10]  # epoch 0 at the log it asked for; epoch 1 at the summary
    assert "train_runtime" in epoch_rows[-1] and "loss" in epoch_rows[0]
    for row, record in zip(epoch_rows, m.epochs):
        assert row["greenmeter/epoch_energy_j"] == pytest.approx(record.energy_j, abs=0.05)
    assert [{k: v for k, v in r.items() if k != "step"} for r in history] == reporter.seen  # same figures
    totals = [r["greenmeter/energy_j"] for r in history if "greenmeter/energy_j" in r]
    assert totals == sorted(totals) and totals[-1] <= m.energy_j + 1e-9  # cumulative, never past the window


def test_hf_callback_says_when_reporting_callbacks_run_before_it(caplog: pytest.LogCaptureFixture) -> None:
    framework("transformers")
    from transformers import TrainerControl, TrainerState

    from greenmeter.integrations.huggingface import GreenmeterTrainerCallback

    energy = GreenmeterTrainerCallback(Meter([ScriptedBackend([0.0, 1.0])], sync=None))
    args = SimpleNamespace(report_to=["tensorboard", "wandb"], logging_strategy="steps")
    with caplog.at_level("WARNING", logger="greenmeter"):
        energy.on_train_begin(args, TrainerState(), TrainerControl())
    assert "(tensorboard, wandb) before GreenmeterTrainerCallback" in caplog.text and "attach(trainer)" in caplog.text
    energy.on_train_end(args, TrainerState(), TrainerControl())
    assert energy.measurement is not None and energy.measurement.energy_j == pytest.approx(1.0)


def test_hf_callback_ends_a_crashed_training_as_failed_at_the_next_one(tmp_path: Path) -> None:
    framework("transformers")
    from transformers import TrainerControl, TrainerState

    from greenmeter.integrations.huggingface import GreenmeterTrainerCallback

    energy = GreenmeterTrainerCallback(store=tmp_path / "runs.db", name="retry", carbon=INTENSITY)
    args = SimpleNamespace(report_to=[], logging_strategy="steps")
    energy.on_train_begin(args, TrainerState(), TrainerControl())
    energy.on_step_end(args, TrainerState(), TrainerControl())
    first_meter = energy.meter  # train() raised here: the Trainer calls no hook
    energy.on_train_begin(args, TrainerState(), TrainerControl())
    assert energy.measurement is None  # the measurement of the training now running, not the crashed one
    (crashed,) = first_meter.measurements  # type: ignore[union-attr]
    assert crashed.status == "failed" and crashed.steps == 1
    assert "without reaching on_train_end" in (crashed.error or "")
    energy.on_train_end(args, TrainerState(), TrainerControl())
    assert energy.meter is not first_meter and energy.measurement is not None and energy.measurement.status == "ok"
    with Store(tmp_path / "runs.db") as store:
        runs = store.list_runs()
        assert sorted((r.status, r.windows_count) for r in runs) == [("failed", 1), ("ok", 1)]
