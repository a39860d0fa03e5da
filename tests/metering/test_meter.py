"""The Meter: windows, nesting, steps, epochs, failures, flags, baseline and records."""

from __future__ import annotations

import json
import time

import pytest

import greenmeter
from greenmeter import ConfigError, Measurement, MeasurementError, Meter
from greenmeter.records.measurement import SCHEMA_VERSION, LatencyStats
from greenmeter.stats import QuantileSketch
from tests.fakes.scripted import ConstantPowerBackend, ScriptedBackend, UnavailableBackend


def test_window_energy_is_the_difference_of_two_snapshots() -> None:
    backend = ScriptedBackend([100.0, 112.5])
    meter = Meter([backend], sync=None)
    with meter.window("infer", samples=50) as w:
        pass
    m = w.measurement
    assert m is not None and m.status == "ok"
    assert m.energy_j == pytest.approx(12.5)
    assert m.energy_per_sample_j == pytest.approx(0.25)
    assert [d.key for d in m.domains] == ["scripted:dev"]
    assert m.domains[0].provenance.kind == "measured"
    assert m.backends == ("scripted",)
    assert meter.measurements == [m]


def test_windows_nest_and_overlap() -> None:
    backend = ScriptedBackend([0.0, 10.0, 25.0, 40.0])
    meter = Meter([backend], sync=None)
    outer = meter.begin("outer")  # reads 0
    inner = meter.begin("inner")  # reads 10
    assert meter.open_windows == ("outer", "inner")
    m_outer = meter.end(outer)  # reads 25 (outer ends first: overlapping, not nested)
    assert meter.open_windows == ("inner",)
    m_inner = meter.end("inner")  # reads 40
    assert meter.open_windows == ()
    assert m_outer.energy_j == pytest.approx(25.0)
    assert m_inner.energy_j == pytest.approx(30.0)
    assert inner.measurement is m_inner


def test_callers_flags_are_recorded_after_the_meters() -> None:
    meter = Meter([ScriptedBackend([0.0, 1.0])], sync=None)
    seen: list[Measurement] = []
    meter.listeners.append(seen.append)
    m = meter.end(meter.begin("a"), flags=("measured on a busy machine",))
    assert m.flags[-1] == "measured on a busy machine" and m.flags[:-1] == meter.notes
    assert seen == [m]


def test_ending_a_window_twice_or_unknown_raises() -> None:
    meter = Meter([ScriptedBackend([0.0, 1.0])], sync=None)
    w = meter.begin("a")
    meter.end(w)
    with pytest.raises(MeasurementError, match="not open"):
        meter.end(w)
    with pytest.raises(MeasurementError, match="no open window named 'b'"):
        meter.end("b")


def test_exception_in_block_records_failed_measurement_and_reraises() -> None:
    meter = Meter([ScriptedBackend([5.0, 9.0])], sync=None)
    seen: list[Measurement] = []
    meter.listeners.append(seen.append)
    with pytest.raises(ZeroDivisionError):
        with meter.window("boom") as w:
            1 / 0  # noqa: B018
    m = w.measurement
    assert m is not None and m.status == "failed"
    assert m.error is not None and m.error.startswith("ZeroDivisionError")
    assert m.energy_j == pytest.approx(4.0)
    assert seen == [m] and meter.measurements == [m]


def test_window_shorter_than_update_period_is_flagged_not_silent() -> None:
    meter = Meter([ScriptedBackend([3.0, 3.0], update_period_s=60.0)], sync=None)
    with meter.window("tiny") as w:
        pass
    m = w.measurement
    assert m is not None
    assert m.domains[0].resolved is False
    assert any("shorter than the update period of scripted:dev" in f for f in m.flags)


def test_steps_give_latency_and_samples() -> None:
    meter = Meter([ScriptedBackend([0.0, 30.0])], sync=None)
    with meter.window("train") as w:
        for _ in range(10):
            time.sleep(0.002)
            meter.step(samples=8)
    m = w.measurement
    assert m is not None
    assert m.steps == 10 and m.samples == 80
    assert m.latency is not None and m.latency.count == 10
    assert sorted(m.step_durations_s)[4] == m.latency.p50_s
    assert m.latency.min_s >= 0.002
    assert sum(m.step_durations_s) <= m.duration_s
    assert m.step_energy_method == "split-by-step-time"
    assert sum(m.step_energies_j()) == pytest.approx(30.0)
    assert m.energy_per_step_j == pytest.approx(3.0)
    assert m.step_samples == (8,) * 10
    per_sample = m.step_energies_per_sample_j()
    assert per_sample == pytest.approx([j / 8 for j in m.step_energies_j()])
    assert sum(per_sample) * 8 == pytest.approx(30.0)  # type: ignore[arg-type]
    assert Measurement.from_json(m.to_json()).step_samples == m.step_samples


def test_steps_without_sample_counts_and_older_records() -> None:
    meter = Meter([ScriptedBackend([0.0, 6.0])], sync=None)
    with meter.window("mixed") as w:
        meter.step(samples=4)
        meter.step()
        meter.step(samples=2)
    m = w.measurement
    assert m is not None and m.step_samples == (4, None, 2)
    assert m.samples is None  # one step without a count: the window's total is unknown
    per_sample = m.step_energies_per_sample_j()
    assert per_sample[1] is None
    assert per_sample[0] == pytest.approx(m.step_energies_j()[0] / 4)
    older = m.to_dict()
    del older["step_samples"]  # records from before per-step counts were kept
    assert Measurement.from_dict(older).step_energies_per_sample_j() == ()


def test_iterate_marks_a_step_per_batch_and_counts_samples() -> None:
    torch = pytest.importorskip("torch")
    batches = [(torch.zeros(4, 3), torch.zeros(4)) for _ in range(3)] + [(torch.zeros(2, 3), torch.zeros(2))]
    meter = Meter([ScriptedBackend([0.0, 1.0])], sync=None)
    with meter.window("epoch") as w:
        consumed = list(meter.iterate(batches))
    assert len(consumed) == 4
    assert w.measurement is not None
    assert w.measurement.steps == 4 and w.measurement.samples == 14


def test_epochs_get_their_own_energy() -> None:
    # reads: begin 0, epoch mark 10, epoch mark 25, end 26
    meter = Meter([ScriptedBackend([0.0, 10.0, 25.0, 26.0])], sync=None)
    with meter.window("fit") as w:
        meter.step(4)
        meter.epoch()
        meter.step(4)
        meter.step(4)
        meter.epoch()
    m = w.measurement
    assert m is not None
    assert [e.energy_j for e in m.epochs] == [10.0, 15.0]
    assert [e.steps for e in m.epochs] == [1, 2]
    assert [e.samples for e in m.epochs] == [4, 8]
    assert m.energy_j == 26.0


def _same_sketch(a: QuantileSketch, b: QuantileSketch) -> None:
    """Equal bucket for bucket (the sums may differ in the last bit: added in another order)."""
    da, db = a.to_dict(), b.to_dict()
    assert da.pop("sum") == pytest.approx(db.pop("sum"), rel=1e-9) and da == db


def test_sketched_windows_hold_exactly_their_own_steps_across_nesting_and_overlap() -> None:
    # An outer window keeps every step: its durations give the exact step times (each a float difference of
    # two close perf_counter values, so adding them back up is exact). The others keep only sketches, folded
    # every 4,096 steps: B from the start, C from step 3,000 to 8,000, D from 6,000 to 9,000 (C and D overlap).
    meter = Meter([ConstantPowerBackend(10.0)], sync=None, keep_steps=0)
    a = meter.begin("exact", keep_steps=True)
    b = meter.begin("b")
    c = d = None
    ended = {}
    for i in range(10_000):
        if i == 3_000:
            c = meter.begin("c")
        if i == 6_000:
            d = meter.begin("d")
        if i == 8_000:
            ended["c"] = meter.end(c)
        if i == 9_000:
            ended["d"] = meter.end(d)
        meter.step(2)
    ended["b"] = meter.end(b)
    exact = meter.end(a)
    assert exact.steps == len(exact.step_durations_s) == 10_000 and exact.step_sketch is None
    times, t = [], a.t0
    for duration in exact.step_durations_s:
        t += duration
        times.append(t)
    for name, window, first, last in (("b", b, 0, 10_000), ("c", c, 3_000, 8_000), ("d", d, 6_000, 9_000)):
        m = ended[name]
        expected = [times[first] - window.t0] + [times[i] - times[i - 1] for i in range(first + 1, last)]
        assert m.steps == last - first and m.samples == 2 * (last - first)
        assert m.step_durations_s == () and m.step_sketch is not None
        _same_sketch(m.step_sketch, QuantileSketch.from_values(expected))
        want = LatencyStats.from_durations(expected)
        got = m.latency
        assert got is not None and want is not None and got.relative_error == 0.005
        assert (got.count, got.min_s, got.max_s) == (want.count, want.min_s, want.max_s)
        assert got.mean_s == pytest.approx(want.mean_s, rel=1e-9)
        for q in ("p50_s", "p95_s", "p99_s"):
            assert abs(getattr(got, q) - getattr(want, q)) <= 0.005 * getattr(want, q) * (1 + 1e-12)


def test_keep_steps_chooses_which_windows_keep_every_step() -> None:
    meter = Meter([ConstantPowerBackend(10.0)], sync=None)  # the default: windows of up to 1,000 steps
    sizes = {}
    for n in (1_000, 1_001):
        with meter.window(f"{n}") as w:
            for _ in range(n):
                meter.step(1)
        sizes[n] = w.measurement
    assert len(sizes[1_000].step_durations_s) == 1_000 and sizes[1_000].step_sketch is None
    assert sizes[1_001].step_durations_s == () and sizes[1_001].step_sketch.count == 1_001
    keep_all = Meter([ConstantPowerBackend(10.0)], sync=None, keep_steps=True)
    with keep_all.window("all") as w:
        for i in range(9_000):
            keep_all.step(None if i == 7 else 3)
    m = w.measurement
    assert len(m.step_durations_s) == len(m.step_samples) == 9_000 and m.step_sketch is None
    assert m.samples is None and m.step_samples[7] is None and m.latency.relative_error == 0.0
    none = Meter([ConstantPowerBackend(10.0)], sync=None, keep_steps=False)
    with none.window("none") as w:
        none.step(5)
    assert w.measurement.step_durations_s == () and w.measurement.step_sketch.count == 1
    assert w.measurement.samples == 5 and w.measurement.latency.count == 1


def test_keep_steps_is_checked() -> None:
    for bad in (-1, 1.5, "all", None):
        with pytest.raises(ConfigError, match="keep_steps"):
            Meter([ConstantPowerBackend(1.0)], sync=None, keep_steps=bad)  # type: ignore[arg-type]
    meter = Meter([ConstantPowerBackend(1.0)], sync=None)
    with pytest.raises(ConfigError, match="keep_steps must be False or True"):
        meter.begin("a", keep_steps=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="keep_steps"):
        meter.window("a", keep_steps="yes")  # type: ignore[arg-type]
    assert meter.open_windows == ()


def test_epochs_and_samples_of_a_sketched_window() -> None:
    meter = Meter([ConstantPowerBackend(10.0)], sync=None, keep_steps=10)
    with meter.window("fit") as w:
        for _ in range(5_000):
            meter.step(4)
        meter.epoch()
        for i in range(6_000):
            meter.step(None if i == 100 else 2)
        meter.epoch()
        meter.epoch()  # an epoch without steps
    m = w.measurement
    assert m.steps == 11_000 and m.samples is None  # a step without a count: the total is unknown
    assert [(e.steps, e.samples) for e in m.epochs] == [(5_000, 20_000), (6_000, None), (0, None)]
    with meter.window("after") as w2:  # the tallies go on across windows
        for _ in range(20):
            meter.step(3)
        meter.epoch()
    assert w2.measurement.samples == 60 and [(e.steps, e.samples) for e in w2.measurement.epochs] == [(20, 60)]


def test_idle_baseline_separates_idle_from_attributable_energy() -> None:
    meter = Meter([ConstantPowerBackend(20.0)], sync=None, idle_baseline_s=0.05)
    with meter.window("work") as w:
        time.sleep(0.05)
    m = w.measurement
    assert m is not None
    assert m.idle_power_w == pytest.approx(20.0, rel=0.02)
    assert m.idle_energy_j == pytest.approx(m.energy_j, rel=0.02)
    assert m.attributable_energy_j == pytest.approx(m.energy_j - m.idle_energy_j)
    assert abs(m.attributable_energy_j) < 0.02 * m.energy_j


def test_sync_hook_runs_at_both_edges() -> None:
    calls: list[int] = []
    meter = Meter([ScriptedBackend([0.0, 1.0])], sync=lambda: calls.append(1))
    with meter.window("x"):
        assert len(calls) == 1
    assert len(calls) == 2


def test_sampler_polls_and_reports_failures_in_flags() -> None:
    backend = ConstantPowerBackend(1.0, poll_interval_s=0.01, fail_polls=True)
    meter = Meter([backend], sync=None)
    with meter.window("polled") as w:
        time.sleep(0.1)
    meter.close()
    assert backend.polls >= 3
    assert w.measurement is not None
    assert any("polling constant failed: OSError: counter vanished" in f for f in w.measurement.flags)


def test_requested_unavailable_backend_says_why() -> None:
    meter = Meter([UnavailableBackend()], sync=None)
    with pytest.raises(greenmeter.BackendUnavailable, match="plug one in"):
        meter.start()


def test_bad_config_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match="mode"):
        Meter(mode="galaxy")
    with pytest.raises(ConfigError, match="idle_baseline_s"):
        Meter(idle_baseline_s=-1)
    with pytest.raises(ConfigError, match="unknown energy backend 'tpu'"):
        Meter(["tpu"]).start()


def test_close_closes_backends_once_and_refuses_new_windows() -> None:
    backend = ScriptedBackend([0.0])
    meter = Meter([backend], sync=None)
    meter.start()
    meter.close()
    meter.close()
    assert backend.closed == 1
    with pytest.raises(MeasurementError, match="closed"):
        meter.begin("late")


def test_measurement_json_round_trip_and_schema_guard() -> None:
    meter = Meter([ScriptedBackend([1.0, 4.0, 6.0])], sync=None)
    with meter.window("rt", samples=3) as w:
        meter.step(3)
        meter.epoch()
    m = w.measurement
    assert m is not None
    again = Measurement.from_json(m.to_json())
    assert again == m
    data = json.loads(m.to_json())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["energy_j"] == pytest.approx(5.0) and data["power_w"] == pytest.approx(m.power_w)
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ConfigError, match="upgrade greenmeter"):
        Measurement.from_dict(data)


def test_track_decorator_exposes_current_meter_and_last_measurement() -> None:
    meter = Meter([ScriptedBackend([0.0, 2.0, 7.0, 9.0])], sync=None)

    @greenmeter.track(meter=meter, samples=6)
    def train(n: int) -> str:
        m = greenmeter.current_meter()
        assert m is meter
        with greenmeter.measure("inner") as inner:  # uses the tracked meter
            m.step(3)
        assert inner.measurement is not None and inner.measurement.energy_j == pytest.approx(5.0)
        m.step(3)
        return "done" * n

    assert train(1) == "done"
    last = train.last_measurement
    assert last.name.endswith("train") and last.energy_j == pytest.approx(9.0)
    assert last.samples == 6 and last.steps == 2
    with pytest.raises(MeasurementError, match="outside a @greenmeter.track"):
        greenmeter.current_meter()


def test_bare_track_records_failure_and_reraises() -> None:
    @greenmeter.track
    def broken() -> None:
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        broken()
    assert broken.last_measurement.status == "failed"
    assert "RuntimeError: diverged" in broken.last_measurement.error


def test_meter_stores_each_window_in_a_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from greenmeter.store.database import Store

    path = tmp_path / "runs.db"
    meter = Meter([ScriptedBackend([0.0, 2.0, 2.0, 7.0])], sync=None, store=path, name="api-test")
    with meter.window("a", samples=2):
        pass
    with pytest.raises(KeyError):
        with meter.window("b"):
            raise KeyError("x")
    run_id = meter.run_id
    meter.close()
    with Store(path) as store:
        run = store.get_run(run_id)
        windows = store.windows(run_id)
    assert run.name == "api-test" and run.kind == "api" and run.status == "failed" and run.complete
    assert [(w.name, w.status, w.energy_j) for w in windows] == [("a", "ok", 2.0), ("b", "failed", 5.0)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": None}, "name must be a non-empty string, not None"),
    ({"name": ""}, "name must be a non-empty string, not ''"),
    ({"name": 3}, "name must be a non-empty string, not 3"),
    ({"name": "w", "samples": "x"}, "samples must be a whole number >= 0 or None, not 'x'"),
    ({"name": "w", "samples": float("nan")}, "samples must be a whole number >= 0 or None, not nan"),
    ({"name": "w", "samples": True}, "samples must be a whole number >= 0 or None, not True"),
    ({"name": "w", "samples": -1}, "samples must be a whole number >= 0 or None, not -1"),
    ({"name": "w", "samples": 2.0}, "samples must be a whole number >= 0 or None, not 2.0"),
])
def test_window_and_begin_check_name_and_samples_before_any_work(kwargs: dict[str, object], message: str) -> None:
    backend = ScriptedBackend([0.0, 1.0])
    meter = Meter([backend], sync=None)
    with pytest.raises(ConfigError) as info:
        meter.window(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        meter.begin(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert backend.reads == 0 and meter.open_windows == () and meter.measurements == []  # never started


def test_window_samples_of_zero_or_an_integer_type_are_kept_as_int() -> None:
    import numpy as np

    meter = Meter([ScriptedBackend([0.0, 4.0, 4.0, 6.0])], sync=None)
    with meter.window("none", samples=0) as w:
        pass
    first = meter.end(meter.begin("numpy", samples=np.int64(8)))
    assert w.measurement is not None and w.measurement.samples == 0
    assert first.samples == 8 and type(first.samples) is int and first.energy_per_sample_j == pytest.approx(0.25)


def test_a_fallback_is_said_once_per_process_and_stays_in_every_record() -> None:
    code = (
        "import greenmeter\n"
        "for i in range(5):\n"
        "    m = greenmeter.Meter(sysfs_root='/nonexistent', sync=None)\n"
        "    with m.window('w') as w:\n"
        "        pass\n"
        "    assert any('CPU energy is estimated' in f for f in w.measurement.flags), w.measurement.flags\n"
        "    m.close()\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("CPU energy is estimated, not measured") == 1, done.stderr
    assert done.stderr.count("RAM energy is estimated") == 1, done.stderr
