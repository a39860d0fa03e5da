"""The clock-offset search and the least-squares fit, on synthetic runs and meter logs of known coefficients."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmeter import ConfigError
from greenmeter.calibration import activity_of, align, fit_linear, read_meter_log
from tests.calibration import synthetic


def _activities(items: list[synthetic.Load]):  # type: ignore[no-untyped-def]
    found = [activity_of(synthetic.window(load)) for load in items]
    assert all(a is not None for a in found)
    return found


@pytest.mark.parametrize("offset_s, interval_s", [(37.4, 1.0), (-81.3, 2.0), (0.0, 0.5)])
def test_the_fit_recovers_the_coefficients_within_5_percent_and_the_offset_within_one_sample(
        tmp_path: Path, offset_s: float, interval_s: float) -> None:
    items = synthetic.loads(12, seed=3)
    log = read_meter_log(synthetic.write_csv(tmp_path / "meter.csv", synthetic.meter_samples(
        items, offset_s=offset_s, interval_s=interval_s, noise=0.02)))
    found = align(log, _activities(items))
    assert abs(found.offset_s - offset_s) <= interval_s
    assert (found.range_s, found.step_s) == (120.0, interval_s / 4)
    idle, w_cpu, w_gb = synthetic.TRUE
    assert found.fit.idle_w == pytest.approx(idle, rel=0.05)
    assert found.fit.w_cpu == pytest.approx(w_cpu, rel=0.05)
    assert found.fit.w_gb == pytest.approx(w_gb, rel=0.05)
    assert found.fit.r_squared > 0.99 and len(found.used) == 12
    assert all(abs(r) / m < 0.02 for r, m in zip(found.fit.residuals_j, found.meter_j))


def test_calibrated_estimates_are_within_5_percent_of_the_meter_on_held_out_runs(tmp_path: Path) -> None:
    items = synthetic.loads(14, seed=5)
    train, held_out = items[:10], items[10:]
    log = read_meter_log(synthetic.write_csv(tmp_path / "meter.csv", synthetic.meter_samples(
        items, offset_s=12.0, noise=0.02)))
    fit = align(log, _activities(train)).fit
    for load, activity in zip(held_out, _activities(held_out)):
        meter_j = log.energy_j(activity.start_s - 12.0, activity.end_s - 12.0)
        calibrated_error = (fit.predict_j(activity) - meter_j) / meter_j
        uncalibrated_error = (activity.estimate_j - meter_j) / meter_j
        print(f"held-out window of {load.duration_s:.0f} s at {load.busy_cpus:.1f} CPUs, {load.gb:.1f} GB: "
              f"calibrated {calibrated_error:+.1%}, uncalibrated {uncalibrated_error:+.1%}")
        assert abs(calibrated_error) < 0.05
        assert activity.estimate_j == pytest.approx(synthetic.window(load).energy_j)  # the error shown: the stored one


def test_leave_one_out_predictions_are_given_from_five_windows_and_are_close() -> None:
    items = synthetic.loads(6, seed=7)
    activities = _activities(items)
    meter = [synthetic.true_energy(load) for load in items]
    fit = fit_linear(activities, meter)
    assert all(h is not None for h in fit.held_out_j)
    assert max(abs(e) for e in fit.held_out_errors(meter)) < 1e-9  # exact data: exact predictions
    assert fit_linear(activities[:4], meter[:4]).held_out_j == (None,) * 4


def test_a_log_that_overlaps_no_run_is_a_clear_error(tmp_path: Path) -> None:
    items = synthetic.loads(6)
    later = [synthetic.Load(load.start_s + 86400, load.duration_s, load.busy_cpus, load.gb) for load in items]
    log = read_meter_log(synthetic.write_csv(tmp_path / "meter.csv", synthetic.meter_samples(later, offset_s=0)))
    with pytest.raises(ConfigError, match=r"overlaps no stored run, even with the meter's clock off by up to 120 s: "
                                          r"the stored windows span 2026-11-30T00:54:20\+00:00 to "
                                          r"2026-11-30T01:00:17\+00:00; log the meter"):
        align(log, _activities(items))


def test_runs_all_at_one_load_are_an_error_that_says_to_run_the_load_ladder(tmp_path: Path) -> None:
    items = [synthetic.Load(synthetic.T0 + 100 * i, 60.0, 1.0, 0.5) for i in range(6)]
    log = read_meter_log(synthetic.write_csv(tmp_path / "meter.csv", synthetic.meter_samples(items, offset_s=0)))
    with pytest.raises(ConfigError, match=r"loads do not vary enough .* run `greenmeter calibrate --load-ladder`"):
        align(log, _activities(items))


def test_too_few_windows_are_an_error_that_says_to_run_the_load_ladder() -> None:
    items = synthetic.loads(3)
    with pytest.raises(ConfigError, match=r"at least 4 stored windows .* and 3 are; run `greenmeter calibrate "
                                          r"--load-ladder`"):
        fit_linear(_activities(items), [synthetic.true_energy(load) for load in items])


def test_a_bad_offset_range_is_refused(tmp_path: Path) -> None:
    items = synthetic.loads(5)
    log = read_meter_log(synthetic.write_csv(tmp_path / "m.csv", synthetic.meter_samples(items, offset_s=0)))
    with pytest.raises(ConfigError, match="offset_range_s must be a number of seconds >= 0"):
        align(log, _activities(items), offset_range_s=-1)
