"""``calibrate`` on a store of synthetic runs: the meter's energy added to each window, the profile stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmeter import ConfigError
from greenmeter.calibration import WALL_KEY, calibrate, read_meter_log
from greenmeter.metering.host import describe_host
from greenmeter.store.database import Store
from tests.calibration import synthetic


@pytest.fixture()
def metered(tmp_path: Path) -> tuple[Path, Path, list[synthetic.Load], list[str]]:
    """A store of ten synthetic runs and a CSV meter log of them, the meter's clock 25 s behind."""
    items = synthetic.loads(10, seed=11)
    with Store(tmp_path / "runs.db") as store:
        ids = synthetic.store_runs(store, items)
    log = synthetic.write_csv(tmp_path / "power.csv", synthetic.meter_samples(items, offset_s=25.0, noise=0.01))
    return tmp_path / "runs.db", log, items, ids


def test_calibrate_adds_the_meter_energy_to_each_window_and_stores_the_profile(metered) -> None:  # type: ignore[no-untyped-def]
    path, log, items, ids = metered
    with Store(path) as store:
        result = calibrate(log, store)
        profile = result.profile
        assert abs(profile.offset_s - 25.0) <= 1.0 and profile.n_runs == 10 and result.stored
        assert profile.idle_w == pytest.approx(85.0, rel=0.05) and profile.w_cpu == pytest.approx(11.0, rel=0.05)
        assert profile.host == describe_host().hostname and profile.meter_log == str(log)
        assert profile.held_out_error is not None and profile.held_out_error < 0.05
        assert store.latest_calibration(profile.host) == profile
        for run_id, load, row in zip(ids, items, result.windows):
            (m,) = store.windows(run_id)
            wall = next(d for d in m.domains if d.key == WALL_KEY)
            assert wall.kind == "wall" and not wall.in_total and wall.resolved
            assert wall.energy_j == pytest.approx(synthetic.true_energy(load), rel=0.03)
            assert wall.provenance.kind == "measured" and wall.provenance.source == f"external meter {log}"
            assert wall.provenance.method.startswith("csv power log integrated over the window (offset +")
            assert m.energy_j == pytest.approx(sum(d.energy_j for d in m.domains if d.in_total))  # total unchanged
            assert row.run_id == run_id and row.meter_j == wall.energy_j
            assert row.estimate_error == pytest.approx((m.energy_j - wall.energy_j) / wall.energy_j)
        text = "\n".join(result.lines())
        assert "clock offset: +" in text and "R^2 = " in text and "uncal. err" in text
        again = calibrate(log, store)  # a second calibration replaces the meter's domain, adds none
        (m,) = store.windows(ids[0])
        assert [d.key for d in m.domains].count(WALL_KEY) == 1 and again.profile.n_runs == 10


def test_a_dry_run_stores_nothing(metered) -> None:  # type: ignore[no-untyped-def]
    path, log, _, ids = metered
    result = calibrate(log, path, dry_run=True)
    assert not result.stored and result.lines()[-1] == "dry run: nothing was stored"
    with Store(path) as store:
        assert store.latest_calibration(result.profile.host) is None
        assert all(d.key != WALL_KEY for d in store.windows(ids[0])[0].domains)


def test_a_log_of_another_time_or_runs_of_another_host_are_clear_errors(metered, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _, items, _ = metered
    later = [synthetic.Load(load.start_s + 7200, load.duration_s, load.busy_cpus, load.gb) for load in items]
    log = synthetic.write_csv(tmp_path / "later.csv", synthetic.meter_samples(later, offset_s=0))
    with pytest.raises(ConfigError, match=r"later.csv \(.*\) overlaps no stored run, even with the meter's clock off"):
        calibrate(log, path)
    with pytest.raises(ConfigError, match=r"overlaps runs of .*, not of another-host; calibrate on the machine"):
        calibrate(read_meter_log(tmp_path / "power.csv"), path, host="another-host")
    with pytest.raises(ConfigError, match="calibrate needs the run store"):
        calibrate(log, None)


def test_a_run_report_shows_the_wall_meter_energy_and_its_source(metered) -> None:  # type: ignore[no-untyped-def]
    from greenmeter.output.report import run_report

    path, log, _, ids = metered
    with Store(path) as store:
        calibrate(log, store)
        run, windows = store.get_run(ids[0]), store.windows(ids[0])
    wall = next(d for d in windows[0].domains if d.key == WALL_KEY)
    text = run_report(run, windows, fmt="md")
    assert "wall meter J" in text and f"{wall.energy_j:.4g}" in text
    assert "meter:wall: measured: external meter" in text and "power.csv" in text
