"""Faults around a measured block: the user's exception always wins, and every stored run ends ``ok``,
``failed`` or ``interrupted`` with what was measured kept (issue 15, defects 3 and 4).

Hardware is faked at the backend boundary (backends written against the public contract, passed with
``Meter(backends=[...])``); the meter, the store and the CLI run unchanged.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import greenmeter
from greenmeter import CounterReadError, Meter
from greenmeter.sources.base import Reading
from greenmeter.store.database import Store
from tests.fakes.scripted import ScriptedBackend

REPO_ROOT = Path(__file__).resolve().parents[2]


class BreakableBackend(ScriptedBackend):
    """A scripted counter that becomes unreadable once ``broken`` is set (a counter file gone, NVML lost)."""

    def __init__(self, values: list[float], *, error: type[Exception] = CounterReadError) -> None:
        super().__init__(values)
        self.broken = False
        self.error = error

    def read(self) -> Reading:
        if self.broken:
            raise self.error("scripted counter became unreadable")
        return super().read()


def _only_run(path: Path) -> tuple[object, list[object]]:
    with Store(path) as store:
        runs = store.list_runs()
        assert len(runs) == 1, runs
        return runs[0], list(store.windows(runs[0].id))


# Defect 4: a counter failure never replaces the user's exception -------------------------------------
def test_user_exception_comes_out_unchanged_when_the_counter_fails_at_the_window_end(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = BreakableBackend([1.0, 2.0, 3.0])
    path = tmp_path / "runs.db"
    raised = ValueError("the user's own error")
    with caplog.at_level(logging.WARNING, logger="greenmeter"), pytest.raises(ValueError) as info:
        with Meter(backends=[backend], sync=None, store=path, name="job") as meter:
            with meter.window("w") as w:
                backend.broken = True
                raise raised
    assert info.value is raised and type(info.value) is ValueError
    assert w.measurement is not None and w.measurement.status == "failed"
    assert w.measurement.error == "ValueError: the user's own error"
    assert any("measurement failed" in f and "scripted counter became unreadable" in f for f in w.measurement.flags)
    warnings = [r for r in caplog.records if "scripted counter became unreadable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    run, windows = _only_run(path)
    assert run.status == "failed"
    assert [x.name for x in windows] == ["w"] and windows[0].status == "failed"
    assert any("measurement failed" in f for f in windows[0].flags)


def test_user_exception_wins_over_an_oserror_from_a_counter_without_a_store() -> None:
    backend = BreakableBackend([1.0, 2.0], error=OSError)
    meter = Meter(backends=[backend], sync=None)
    raised = KeyError("mine")
    with pytest.raises(KeyError) as info, meter.window("w") as w:
        backend.broken = True
        raise raised
    assert info.value is raised and info.value.__context__ is None
    assert w.measurement is not None and w.measurement.status == "failed"
    assert meter.open_windows == ()
    meter.close()


def test_a_counter_failure_at_the_end_of_a_clean_block_raises_and_the_run_is_failed(tmp_path: Path) -> None:
    backend = BreakableBackend([1.0, 2.0, 3.0])
    path = tmp_path / "runs.db"
    meter = Meter(backends=[backend], sync=None, store=path, name="job")
    with meter.window("good"):
        pass
    with pytest.raises(CounterReadError, match="scripted counter became unreadable"), meter.window("bad"):
        backend.broken = True
    assert meter.open_windows == ()
    meter.close()
    run, windows = _only_run(path)
    assert run.status == "failed"
    assert [(x.name, x.status) for x in windows] == [("good", "ok"), ("bad", "failed")]
    assert windows[0].energy_j == pytest.approx(1.0)  # what was measured before the fault is kept


# Defect 3: exceptions and interrupts mark the run -----------------------------------------------------
@pytest.mark.parametrize(("error", "status"), [
    (RuntimeError("crash"), "failed"),
    (KeyboardInterrupt(), "interrupted"),
    (SystemExit(3), "failed"),
    (SystemExit(0), "ok"),
])
def test_a_stored_meter_as_a_context_manager_ends_its_run_by_the_block(
        tmp_path: Path, error: BaseException, status: str) -> None:
    path = tmp_path / "runs.db"
    with pytest.raises(type(error)) as info:
        with Meter(backends=[ScriptedBackend([1.0, 3.0, 6.0])], sync=None, store=path, name="job") as meter:
            with meter.window("before"):
                pass
            raise error
    assert info.value is error
    run, windows = _only_run(path)
    assert run.status == status
    assert [(x.name, x.status, x.energy_j) for x in windows] == [("before", "ok", 2.0)]


def test_keyboard_interrupt_in_a_tracked_function_with_a_store_is_interrupted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENMETER_SYSFS_ROOT", str(tmp_path / "no-sysfs"))  # estimates only: no real hardware
    path = tmp_path / "runs.db"
    raised = KeyboardInterrupt()

    @greenmeter.track(store=path, name="train")
    def train() -> None:
        greenmeter.current_meter().step(4)
        raise raised

    with pytest.raises(KeyboardInterrupt) as info:
        train()
    assert info.value is raised
    run, windows = _only_run(path)
    assert run.status == "interrupted" and [x.name for x in windows] == ["train"]
    assert train.last_measurement is not None and train.last_measurement.steps == 1


def test_keyboard_interrupt_in_a_tracked_function_on_a_stored_meter_is_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with pytest.raises(KeyboardInterrupt):
        with Meter(backends=[ScriptedBackend([1.0, 2.0])], sync=None, store=path, name="job") as meter:
            @greenmeter.track(meter=meter)
            def train() -> None:
                raise KeyboardInterrupt

            train()
    run, windows = _only_run(path)
    assert run.status == "interrupted" and len(windows) == 1 and windows[0].status == "failed"


def test_measure_with_a_store_that_raises_ends_failed_with_the_exception_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENMETER_SYSFS_ROOT", str(tmp_path / "no-sysfs"))
    path = tmp_path / "runs.db"
    raised = ZeroDivisionError("x")
    with pytest.raises(ZeroDivisionError) as info, greenmeter.measure("eval", store=path):
        raise raised
    assert info.value is raised
    run, _ = _only_run(path)
    assert run.status == "failed"


# Ctrl-C during `greenmeter compare` -------------------------------------------------------------------
TINY_MODULE = """
import torch

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
"""

TINY_CONFIG = """
name = "tiny-interrupted"

[model]
factory = "tiny_compare_module:model"

[data]
eval = "tiny_compare_module:data"

[compare]
recipes = ["prune:0.5"]
repeats = 1000
min_repeat_s = 0.2
"""


def test_ctrl_c_during_compare_exits_130_with_one_line_and_an_interrupted_run(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    (tmp_path / "tiny_compare_module.py").write_text(TINY_MODULE)
    config = tmp_path / "compare.toml"
    config.write_text(TINY_CONFIG)
    path = tmp_path / "runs.db"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(tmp_path)]),
               GREENMETER_SYSFS_ROOT=str(tmp_path / "no-sysfs"))
    proc = subprocess.Popen([sys.executable, "-m", "greenmeter", "compare", str(config), "--store", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path, bufsize=0)
    lines: list[str] = []
    try:
        sel = selectors.DefaultSelector()
        assert proc.stderr is not None
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 180
        while not any(" repeat 1: " in line for line in lines):  # the first measured window is stored
            assert time.monotonic() < deadline, "compare never started measuring:\n" + "".join(lines)
            assert proc.poll() is None, "compare ended early:\n" + "".join(lines) + proc.stderr.read().decode()
            if sel.select(timeout=1.0):
                lines.append(proc.stderr.readline().decode())
        sel.close()
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines) + rest.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("greenmeter: interrupted"), err
    run, windows = _only_run(path)
    assert run.name == "tiny-interrupted" and run.status == "interrupted"
    assert windows and all(x.energy_j >= 0 for x in windows)
    assert any(x.name == "baseline/repeat-1" for x in windows)
    with Store(path) as store:
        partial = store.last_comparison()  # none, or the rounds every variant completed, marked interrupted
        assert partial is None or (partial.status == "interrupted" and partial.repeats >= 1)
