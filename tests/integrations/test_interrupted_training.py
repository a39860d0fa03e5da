"""A training stopped by an exception, Ctrl-C or SIGTERM ends its stored run ``failed`` or ``interrupted``, never
``ok`` or ``running``, and the exception goes on unchanged (issue 15).

The callbacks make their own meter (CPU and RAM estimates here) and store; the interruptions are raised
from the user's training code, where Ctrl-C lands in a real training.
"""

from __future__ import annotations

import importlib
import signal
from pathlib import Path
from typing import Any

import pytest

from greenmeter.integrations import TrainingRecorder
from greenmeter.metering.interrupts import Terminated
from greenmeter.store.database import Store
from tests.integrations.frameworks import framework, lightning



def _only_run(path: Path) -> tuple[Any, list[Any]]:
    with Store(path) as store:
        (run,) = store.list_runs()
        return run, store.windows(run.id)


@pytest.mark.parametrize(("raised", "status"), [(KeyboardInterrupt(), "interrupted"), (Terminated(), "interrupted"),
                                                (RuntimeError("loss went to NaN"), "failed")])
def test_the_recorder_ends_the_run_of_its_meter_by_the_exception(
        tmp_path: Path, raised: BaseException, status: str) -> None:
    recorder = TrainingRecorder(store=tmp_path / "runs.db", name="train")
    recorder.start()
    recorder.step(8)
    m = recorder.finish(error=raised)
    assert m is not None and m.status == "failed" and m.steps == 1
    run, windows = _only_run(tmp_path / "runs.db")
    assert run.status == status and windows == [m]
    assert type(raised).__name__ in (run.note or "")



@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_lightning_fit_cut_by_ctrl_c_or_sigterm_ends_its_run_interrupted(tmp_path: Path, stop: str) -> None:
    pl = lightning()
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from greenmeter.integrations.lightning import GreenmeterCallback

    sigterm_exception = getattr(importlib.import_module(f"{pl.__name__}.utilities.exceptions"), "SIGTERMException",
                                None)
    if stop == "sigterm" and sigterm_exception is None:
        pytest.skip("this Lightning has no SIGTERMException")
    raised = KeyboardInterrupt() if stop == "ctrl-c" else sigterm_exception()

    class Stopped(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 2:
                raise raised  # where Ctrl-C lands, or where Lightning's loop raises on SIGTERM
            return self.net(batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    store_path = tmp_path / "runs.db"
    energy = GreenmeterCallback(store=store_path, name="stopped")
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[energy],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning ends a fit cut by Ctrl-C with sys.exit(1), and by SIGTERM too
            trainer.fit(Stopped(), DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=8))
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C from then on; the tests must not
    m = energy.measurement
    assert m is not None and m.status == "failed" and m.steps == 2
    assert m.error == ("KeyboardInterrupt" if stop == "ctrl-c" else "Terminated: received SIGTERM")
    run, windows = _only_run(store_path)
    assert (run.name, run.status) == ("stopped", "interrupted") and windows == [m]


@pytest.mark.parametrize(("raised", "status"), [(KeyboardInterrupt(), "interrupted"),
                                                (RuntimeError("loss went to NaN"), "failed")])
def test_an_attached_hf_callback_ends_a_training_that_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException, status: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    framework("transformers")
    framework("accelerate")
    import torch
    from transformers import Trainer, TrainingArguments

    from greenmeter.integrations.huggingface import GreenmeterTrainerCallback

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            self.calls += 1
            if self.calls == 3:
                raise raised
            return {"loss": torch.nn.functional.cross_entropy(self.net(x), labels)}

    class Data(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": torch.full((4,), float(i)), "labels": i % 2}

    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=8,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=Model(), args=args, train_dataset=Data())
    store_path = tmp_path / "runs.db"
    energy = GreenmeterTrainerCallback(store=store_path, name="hf-stopped").attach(trainer)
    assert energy.attach(trainer) is energy  # attaching twice wraps train() once
    with pytest.raises(type(raised)) as info:
        trainer.train()
    assert info.value is raised  # unchanged
    m = energy.measurement
    assert m is not None and m.status == "failed" and m.steps == 2 and type(raised).__name__ in (m.error or "")
    run, windows = _only_run(store_path)
    assert (run.name, run.status) == ("hf-stopped", status) and windows == [m]
