"""Reading a wall meter's log: each format from a realistic sample, integration, and the errors for bad logs.

Samples: tests/fixtures/meter_logs/ipmitool_dcmi_loop.txt and ipmitool_dcmi_utc.txt are the output of
``ipmitool dcmi power reading`` run in a loop (the block layout ipmitool 1.8.x prints, in its older ctime and
newer ``MM/DD/YYYY hh:mm:ss UTC`` timestamp forms); shelly_em_data.csv is a Shelly EM (Gen1)
``/emeter/0/em_data.csv`` export (10-minute rows of watt-hours).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from greenmeter import ConfigError
from greenmeter.calibration import read_meter_log
from greenmeter.calibration.meter_log import parse_log_time

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "meter_logs"
T = dt.datetime(2026, 12, 3, 9, 40, tzinfo=dt.timezone.utc).timestamp()


def _write(tmp_path: Path, text: str, name: str = "meter.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_generic_csv_with_a_header_and_iso_times_is_read_in_utc(tmp_path: Path) -> None:
    log = read_meter_log(_write(tmp_path, "time,watts\n2026-12-03T09:40:00Z,100\n2026-12-03T10:40:01+01:00,110.5\n"
                                          "2026-12-03 09:40:02,120\n"))
    assert log.format == "csv" and log.integration == "trapezoid"
    assert log.times_s == (T, T + 1, T + 2) and log.watts == (100.0, 110.5, 120.0)
    assert log.sample_interval_s == 1.0
    assert log.notes == ("read the columns 'time' (time) and 'watts' (watts)",)


def test_a_headerless_csv_of_epoch_seconds_and_a_semicolon_csv_with_odd_headers(tmp_path: Path) -> None:
    log = read_meter_log(_write(tmp_path, f"{T:.3f},50\n{T + 2:.3f},70\n"))
    assert log.times_s == (T, T + 2) and log.watts == (50.0, 70.0)
    odd = _write(tmp_path, "Zeit;Spannung V;Leistung W;Strom A\n2026-12-03 09:40:00;230;60,5;0.3\n", "odd.csv")
    with pytest.raises(ConfigError, match=r"has no column whose name marks it as the time column; its columns "
                                          r"are 'Zeit', 'Spannung V', 'Leistung W', 'Strom A': choose one with "
                                          r"--time-column"):
        read_meter_log(odd)  # no column it knows among four: never a guess
    with pytest.raises(ConfigError, match=r"as the watts column; .* choose one with --watts-column"):
        read_meter_log(odd, time_column="Zeit")
    odd.write_text("Zeit;Spannung V;Leistung W;Strom A\n2026-12-03 09:40:00;230;60.5;0.3\n"
                   "2026-12-03 09:40:01;230;61;0.3\n")
    log = read_meter_log(odd, "csv", time_column="Zeit", watts_column=2)
    assert log.watts == (60.5, 61.0) and log.times_s == (T, T + 1)


def test_a_tasmota_style_log_is_read_as_csv_by_its_power_column(tmp_path: Path) -> None:
    log = read_meter_log(_write(tmp_path, "Time, Total, Today, Power, Voltage, Current\n"
                                          "2026-12-03T09:40:00, 0.037, 0.037, 40, 227, 0.282\n"
                                          "2026-12-03T09:40:05, 0.037, 0.037, 39, 227, 0.282\n"))
    assert log.watts == (40.0, 39.0) and log.times_s == (T, T + 5)


def test_the_ipmitool_loop_in_both_timestamp_forms() -> None:
    log = read_meter_log(LOGS / "ipmitool_dcmi_loop.txt")
    assert log.format == "ipmitool"
    assert log.times_s == tuple(T + i for i in range(6))
    assert log.watts == (212.0, 214.0, 298.0, 301.0, 299.0, 215.0)
    utc = read_meter_log(LOGS / "ipmitool_dcmi_utc.txt", "ipmitool")
    assert utc.times_s == (T, T + 2, T + 4) and utc.watts == (240.0, 242.0, 250.0)


def test_ipmitool_readings_within_one_second_are_merged_and_a_deactivated_reading_is_refused(tmp_path: Path) -> None:
    block = ("    Instantaneous power reading:                   {w} Watts\n"
             "    IPMI timestamp:                           Thu Dec  3 09:40:0{s} 2026\n"
             "    Power reading state is:                   {state}\n\n")
    text = "".join(block.format(w=w, s=s, state="activated") for w, s in ((100, 0), (110, 0), (120, 1)))
    log = read_meter_log(_write(tmp_path, text, "ipmi.txt"))
    assert log.watts == (105.0, 120.0) and log.times_s == (T, T + 1)
    assert "1 readings stamped in the same second" in log.notes[0]
    dead = _write(tmp_path, block.format(w=100, s=0, state="deactivated"), "dead.txt")
    with pytest.raises(ConfigError, match=r"line 3: 'Power reading state is: deactivated'.*"
                                          r"ipmitool dcmi power activate"):
        read_meter_log(dead)
    zone = _write(tmp_path, block.format(w=1, s=0, state="activated").replace("2026", "PM EDT"), "zone.txt")
    with pytest.raises(ConfigError, match=r"line 2: the time zone 'EDT' is not UTC"):
        read_meter_log(zone, "ipmitool")


def test_a_shelly_em_export_is_mean_power_held_over_each_interval() -> None:
    log = read_meter_log(LOGS / "shelly_em_data.csv")
    assert log.format == "plug" and log.integration == "hold"
    assert log.sample_interval_s == 600.0
    assert log.watts == pytest.approx((90.0, 111.0, 180.0, 96.0))  # Wh x 3600 / 600 s
    start = log.times_s[0]
    assert log.energy_j(start, start + 2400) == pytest.approx((15 + 18.5 + 30 + 16) * 3600)
    assert log.energy_j(start + 300, start + 900) == pytest.approx(90 * 300 + 111 * 300)
    assert log.end_s == start + 2400


def test_trapezoid_integration_over_a_span_between_samples(tmp_path: Path) -> None:
    log = read_meter_log(_write(tmp_path, f"t,w\n{T},100\n{T + 10},200\n{T + 20},200\n"))
    assert log.energy_j(T, T + 20) == pytest.approx(1500 + 2000)
    assert log.energy_j(T + 5, T + 15) == pytest.approx((150 + 200) / 2 * 5 + 200 * 5)
    assert log.covers(T, T + 20) and not log.covers(T - 1, T + 5)
    with pytest.raises(ConfigError, match="covers"):
        log.energy_j(T + 15, T + 25)


def test_a_log_out_of_time_order_names_the_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, f"time,watts\n{T},1\n{T + 2},1\n{T + 1},1\n")
    with pytest.raises(ConfigError, match=r"not in time order: line 4 \(2026-12-03T09:40:01\+00:00\) is not after "
                                          r"line 3 .* sort the log by time"):
        read_meter_log(path)
    repeated = _write(tmp_path, f"time,watts\n{T},1\n{T},2\n", "repeated.csv")
    with pytest.raises(ConfigError, match="line 3 .* is not after line 2"):
        read_meter_log(repeated)


def test_an_empty_log_a_missing_log_and_an_unreadable_row_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"holds no samples; check that it is the csv log"):
        read_meter_log(_write(tmp_path, "time,watts\n"))
    with pytest.raises(ConfigError, match=r"there is no meter log at .*nope.csv"):
        read_meter_log(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match=r"line 3: cannot read the time 'soon' \(column 'time'\); times must be ISO"):
        read_meter_log(_write(tmp_path, f"time,watts\n{T},1\nsoon,2\n"))
    with pytest.raises(ConfigError, match=r"line 2: cannot read watts from '-5'"):
        read_meter_log(_write(tmp_path, f"time,watts\n{T},-5\n"))
    with pytest.raises(ConfigError, match=r"format must be one of 'auto', 'csv', 'ipmitool', 'plug'"):
        read_meter_log(_write(tmp_path, "x"), "xml")


def test_log_times_are_epoch_seconds_or_iso_8601() -> None:
    assert parse_log_time("1796000000.5") == 1796000000.5
    assert parse_log_time("2026-12-03T09:40:00.250Z") == T + 0.25
    with pytest.raises(ValueError):
        parse_log_time("nan")
