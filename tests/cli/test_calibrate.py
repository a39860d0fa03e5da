"""``greenmeter calibrate`` end to end on a temporary store: a meter log of synthetic runs, and a tiny load ladder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from greenmeter.calibration import WALL_KEY
from greenmeter.cli.main import main
from greenmeter.metering.host import describe_host
from greenmeter.store.database import Store
from tests.calibration import synthetic


def _metered(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    items = synthetic.loads(8, seed=21)
    db = tmp_path / "runs.db"
    with Store(db) as store:
        ids = synthetic.store_runs(store, items)
    samples = synthetic.meter_samples(items, offset_s=-42.0, noise=0.01)
    return db, synthetic.write_csv(tmp_path / "power.csv", samples, iso=False), ids


def test_calibrate_prints_the_offset_coefficients_and_each_run_and_stores_the_profile(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, log, ids = _metered(tmp_path)
    assert main(["calibrate", str(log), "--store", str(db), "--offset-range", "60"]) == 0
    out = capsys.readouterr().out
    offset = float(re.search(r"clock offset: ([-+][\d.]+) s \(searched -60 s to \+60 s in steps of 0.25 s", out)[1])
    assert abs(offset + 42.0) <= 1.0
    idle, w_cpu, w_gb = (float(v) for v in re.search(
        r"idle_W = ([\d.]+) W   w_cpu = ([\d.]+) W per busy CPU   w_gb = ([\d.]+) W per GB", out).groups())
    assert idle == pytest.approx(85.0, rel=0.05) and w_cpu == pytest.approx(11.0, rel=0.05)
    assert w_gb == pytest.approx(3.0, rel=0.1)
    assert re.search(r"R\^2 = 0\.99\d\d   largest held-out error: \d\.\d%", out)
    for run_id in ids:
        row = next(line for line in out.splitlines() if line.startswith(run_id[:8]))
        assert re.search(r"[-+]\d\.\d%\s+[\d.]+\s+[-+]\d+\.\d%$", row)  # held-out error (< 10%), uncalibrated one
    with Store(db) as store:
        profile = store.latest_calibration(describe_host().hostname)
        assert profile is not None and profile.n_runs == 8 and profile.meter_log == str(log)
        assert any(d.key == WALL_KEY for d in store.windows(ids[0])[0].domains)


def test_a_dry_run_prints_the_fit_and_stores_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, log, _ = _metered(tmp_path)
    assert main(["calibrate", str(log), "--store", str(db), "--dry-run", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == "dry run: nothing was stored"
    with Store(db) as store:
        assert store.latest_calibration(describe_host().hostname) is None


def test_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.db"
    assert main(["calibrate", "--store", str(db)]) == 1
    assert "give the meter's log (greenmeter calibrate LOG), or run the load ladder" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "none.csv"), "--store", str(db)]) == 1
    assert "there is no meter log at" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("time,watts\n1796000000,5\n1795999999,5\n")
    assert main(["calibrate", str(bad), "--store", str(db)]) == 1
    assert "is not in time order: line 3" in capsys.readouterr().err
    assert main(["calibrate", str(bad), "--step-seconds", "1", "--store", str(db)]) == 1
    assert "--step-seconds applies to --load-ladder only" in capsys.readouterr().err


def test_the_load_ladder_from_the_command_line_stores_its_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.db"
    assert main(["calibrate", "--load-ladder", "--step-seconds", "0.3", "--repeats", "1", "--memory-gb", "0.05",
                 "--store", str(db)]) == 0
    captured = capsys.readouterr()
    assert "[ladder] [4/4] memory for 0.3 s" in captured.err
    assert captured.out.splitlines() == [f"stored 4 ladder runs in {db}",
                                         "next: stop the meter's log and run `greenmeter calibrate LOG`"]
    with Store(db) as store:
        assert sorted(r.name for r in store.list_runs()) == sorted(
            f"calibrate ladder: {step} (1)" for step in ("idle", "one core", "all cores", "memory"))
