"""Long runs stay bounded (issue 15, defect 13): a window of 100,000 steps costs the meter's memory, the
window's record and the run store no more than a window of 2,000 does, and its percentiles say their error.

The meter keeps a bounded quantile sketch of the step durations of a window longer than ``keep_steps``;
``benchmarks/long_run.py`` times the same up to 10^7 steps. Energy comes from a constant-power backend written
against the public contract; the meter and the store run unchanged.
"""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from pathlib import Path

from greenmeter import Meter
from greenmeter.store.database import Store
from tests.fakes.scripted import ConstantPowerBackend


def _stored_window(tmp_path: Path, steps: int) -> tuple[int, int, dict]:
    """(bytes of the stored window's JSON, rows in the steps table, the JSON) for one window of ``steps`` marks."""
    path = tmp_path / f"runs-{steps}.db"
    with Meter([ConstantPowerBackend(10.0)], sync=None, store=path) as meter:
        with meter.window("train"):
            for _ in range(steps):
                meter.step(16)
        run_id = meter.run_id
    with Store(path, readonly=True) as store:
        text = store.windows(run_id)[0].to_json()
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM steps").fetchone()[0]
    return len(text), rows, json.loads(text)


def test_the_stored_record_of_a_long_window_does_not_grow_with_its_steps(tmp_path: Path) -> None:
    short_b, short_rows, short = _stored_window(tmp_path, 2_000)
    long_b, long_rows, long = _stored_window(tmp_path, 100_000)
    assert (short["steps"], long["steps"]) == (2_000, 100_000) and long["samples"] == 1_600_000
    assert short_rows == long_rows == 0  # no per-step rows: windows longer than keep_steps keep a sketch
    assert long["step_durations_s"] == [] and long["step_sketch"]["count"] == 100_000
    assert long_b < 16_000 and long_b <= short_b + 4_000  # ~2 MB of JSON before
    assert long["latency"]["relative_error"] == 0.005  # the percentiles say how close they are


def test_a_long_window_holds_bounded_memory_while_it_runs_and_ends() -> None:
    meter = Meter([ConstantPowerBackend(10.0)], sync=None)
    meter.start()
    tracemalloc.start()
    try:
        with meter.window("train") as w:
            for _ in range(100_000):
                meter.step(16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.measurement is not None and w.measurement.steps == 100_000
    assert peak < 1_500_000  # ~8 MB before: every step's time and sample count, then its duration
