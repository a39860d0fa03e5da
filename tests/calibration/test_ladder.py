"""The load ladder: four timed steps, each stored as a run with machine-mode CPU and process-mode RAM estimates."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmeter import ConfigError
from greenmeter.calibration import LADDER_STEPS, activity_of, run_load_ladder
from greenmeter.store.database import Store


def test_a_tiny_ladder_stores_one_run_per_step_with_the_activity_the_fit_needs(tmp_path: Path) -> None:
    lines: list[str] = []
    with Store(tmp_path / "runs.db") as store:
        ids = run_load_ladder(store, step_s=0.3, repeats=1, memory_gb=0.1, progress=lines.append)
        assert len(ids) == 4
        activities = {}
        for run_id, step in zip(ids, LADDER_STEPS):
            run = store.get_run(run_id)
            assert run.status == "ok" and run.name == f"calibrate ladder: {step} (1)"
            (window,) = store.windows(run_id)
            assert window.name == step and window.duration_s >= 0.3
            activity = activity_of(window)
            assert activity is not None and (activity.cpu_mode, activity.ram_mode) == ("machine", "process")
            activities[step] = activity
    assert lines[0] == "[1/4] idle for 0.3 s" and lines[-1].startswith("done: 4 runs stored")
    held = {step: a.gb_s / a.duration_s for step, a in activities.items()}
    assert held["memory"] > held["idle"] + 0.08  # the 0.1 GB buffer, resident while the step ran
    assert activities["one core"].busy_cpu_s >= 0.2  # this process was busy all step (less a tick or two)


def test_bad_ladder_arguments_are_refused_before_any_step(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="step_s must be a number of seconds > 0"):
        run_load_ladder(tmp_path / "runs.db", step_s=0)
    with pytest.raises(ConfigError, match="repeats must be a whole number >= 1"):
        run_load_ladder(tmp_path / "runs.db", repeats=0)
    assert not (tmp_path / "runs.db").exists()
