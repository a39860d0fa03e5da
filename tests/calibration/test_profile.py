"""The calibration profile record and its table in the store: newest per host wins, other hosts' never match."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from greenmeter import ConfigError
from greenmeter.calibration import CalibrationProfile
from greenmeter.store.database import MIGRATIONS, SCHEMA_VERSION, Store, migrate

PROFILE = CalibrationProfile(
    host="bench-1", cpu_model="AMD EPYC 7B13", logical_cpus=8, idle_w=85.0, w_cpu=11.0, w_gb=3.0,
    r_squared=0.998, n_runs=8, residuals_j=(1.5, -2.0), held_out_error=0.021, meter_log="/logs/power.csv",
    meter_format="csv", offset_s=37.25, offset_range_s=120.0, created_at="2026-12-03T09:50:00+00:00",
    ram_modes=("process",),
)


def test_a_profile_round_trips_through_json_and_says_what_it_was_fitted_on() -> None:
    data = json.loads(PROFILE.to_json())
    assert data["schema_version"] == 1 and data["idle_w"] == 85.0
    assert CalibrationProfile.from_dict(data) == PROFILE
    assert PROFILE.describe() == "calibrated against /logs/power.csv, R^2 = 0.998, 8 runs"
    assert PROFILE.cpu_powers_w(8) == (85.0 / 8, 85.0 / 8 + 11.0)
    assert PROFILE.predict_j(10.0, 5.0, 20.0) == 850.0 + 55.0 + 60.0
    nan = replace(PROFILE, r_squared=math.nan)
    assert CalibrationProfile.from_dict(json.loads(nan.to_json())).describe().endswith("R^2 = n/a, 8 runs")


def test_a_newer_profile_schema_and_a_missing_field_are_refused() -> None:
    with pytest.raises(ConfigError, match="schema version 2, newer than this greenmeter reads"):
        CalibrationProfile.from_dict({**PROFILE.to_dict(), "schema_version": 2})
    data = PROFILE.to_dict()
    del data["w_gb"]
    with pytest.raises(ConfigError, match="no 'w_gb'"):
        CalibrationProfile.from_dict(data)


def test_the_store_keeps_profiles_and_hands_back_the_newest_of_a_host(tmp_path: Path) -> None:
    with Store(tmp_path / "runs.db") as store:
        assert store.latest_calibration("bench-1") is None
        store.save_calibration(PROFILE)
        newer = replace(PROFILE, idle_w=90.0, created_at="2026-12-04T09:50:00+00:00")
        store.save_calibration(newer)
        store.save_calibration(replace(PROFILE, host="bench-2", created_at="2026-12-05T00:00:00+00:00"))
        assert store.latest_calibration("bench-1") == newer
        assert store.latest_calibration("bench-2").host == "bench-2"  # type: ignore[union-attr]
        assert store.latest_calibration("laptop") is None
        with pytest.raises(ConfigError, match="save_calibration takes a greenmeter CalibrationProfile, not dict"):
            store.save_calibration(PROFILE.to_dict())  # type: ignore[arg-type]


def test_a_store_of_schema_4_gains_the_calibrations_table(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    assert migrate(conn, MIGRATIONS[:4]) == 0
    conn.execute("COMMIT")
    conn.close()
    with Store(path) as store:
        store.save_calibration(PROFILE)
        assert store.latest_calibration("bench-1") == PROFILE
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 5  # later migrations (6: run_jobs) come after
    conn.close()
