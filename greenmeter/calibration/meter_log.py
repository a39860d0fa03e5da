"""An external power meter's log: its samples in UTC epoch seconds and watts, and the energy over a span.

Three formats are read (:data:`LOG_FORMATS`; ``"auto"`` tells them apart from the file's first lines):

- ``"csv"``: a generic CSV of time and watts. A header row is detected (a first row whose second field is
  not a number); the time column is the one named ``time``, ``timestamp``, ``datetime``, ``date/time``,
  ``date``, ``epoch``, ``t`` or ``t_s`` (else the first), the watts column the one named ``watts``, ``w``,
  ``power_w``, ``power``, ``apower`` or containing ``watt`` or ``power`` (else the second). Odd headers are
  chosen with ``time_column`` / ``watts_column`` (a name or a 0-based index). Times are ISO 8601
  (``2026-12-03T09:40:00Z``, ``2026-12-03 09:40:00.5+01:00``) or epoch seconds; an ISO time without a zone
  is read as UTC. Rows are instantaneous power samples, integrated with the trapezoid rule (power linear
  between samples).
- ``"ipmitool"``: the text of ``ipmitool dcmi power reading`` run in a loop (``while true; do ipmitool dcmi
  power reading; sleep 1; done >> power.log``). Each block holds ``Instantaneous power reading: N Watts``
  and ``IPMI timestamp: <date>``; the date is ipmitool's older ctime form (``Tue May  9 14:24:36 2023``,
  read as UTC: BMC clocks keep UTC) or its newer ``03/06/2025 07:40:35 UTC`` form (a 12-hour ``PM`` is
  read too). Format as printed by ipmitool 1.8.x (lib/ipmi_dcmi.c, ``ipmi_dcmi_pwr_rd``); examples in the
  openbmc-test-automation and op-test-framework suites. A block whose ``Power reading state is:
  deactivated`` is refused: the BMC is not measuring. Blocks stamped within the same second (a loop
  without ``sleep 1``) are merged into their mean, said in :attr:`MeterLog.notes`. Samples, trapezoid rule.
- ``"plug"``: the energy log a Shelly EM (Gen1) exports at ``http://<ip>/emeter/<n>/em_data.csv``
  (header ``Date/time UTC,Active energy Wh (1),Returned energy Wh (1),Min V,Max V``; one row per interval,
  its start in UTC and the watt-hours consumed in it; Shelly API docs, "Shelly EM: /emeter/{index}/em_data.csv"),
  and any CSV like it whose header names a time and an ``energy Wh`` column. Each row becomes the mean
  power of its interval (Wh x 3600 / interval s), held over the interval (sample-and-hold).
  The Shelly EM's rows are 10 minutes apart, so only runs many minutes long can be calibrated from it.

A log whose times are not strictly increasing, that is empty, or that has a row which cannot be read is a
:class:`~greenmeter.ConfigError` naming the line and what to do.
"""

from __future__ import annotations

import bisect
import csv
import datetime as _dt
import io
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenmeter._checks import choice
from greenmeter._errors import ConfigError

__all__ = ["LOG_FORMATS", "MeterLog", "parse_log_time", "read_meter_log", "utc_iso"]

#: The log formats :func:`read_meter_log` reads (``"auto"`` chooses among them).
LOG_FORMATS = ("csv", "ipmitool", "plug")

_TIME_NAMES = ("time", "timestamp", "datetime", "date/time", "date/time utc", "date", "epoch", "t", "t_s", "time_s")
_WATT_NAMES = ("watts", "w", "power_w", "power", "apower", "power (w)", "watt")
_INTEGRATION = {"trapezoid": "trapezoid rule (power linear between samples)",
                "hold": "sample-and-hold (each row's mean power held over its interval)"}
_IPMI_POWER = re.compile(r"Instantaneous power reading:\s*([-+]?\d+(?:\.\d+)?)\s*Watts", re.IGNORECASE)
_IPMI_TIME = re.compile(r"IPMI timestamp:\s*(.+?)\s*$", re.IGNORECASE)
_IPMI_STATE = re.compile(r"Power reading state is:\s*(\w+)", re.IGNORECASE)
_ZONES = {"UTC": 0, "GMT": 0, "Z": 0}


@dataclass(frozen=True)
class MeterLog:
    """The samples of an external power meter, read from its log.

    Attributes:
        path: the log file.
        format: ``"csv"``, ``"ipmitool"`` or ``"plug"``.
        times_s: each sample's time as UTC epoch seconds, strictly increasing.
        watts: each sample's power, in watts.
        integration: ``"trapezoid"`` (instantaneous samples, power linear between them) or ``"hold"`` (each
            row the mean power of the interval from it to the next row; the last row holds one interval).
        notes: what a reader should know about how the log was read, one line each.
    """

    path: str
    format: str
    times_s: tuple[float, ...]
    watts: tuple[float, ...]
    integration: str = "trapezoid"
    notes: tuple[str, ...] = ()

    @property
    def sample_interval_s(self) -> float:
        """The median time between samples, in seconds (1.0 for a log of one sample)."""
        if len(self.times_s) < 2:
            return 1.0
        return float(statistics.median(b - a for a, b in zip(self.times_s, self.times_s[1:])))

    @property
    def start_s(self) -> float:
        """The first instant the log covers, UTC epoch seconds."""
        return self.times_s[0]

    @property
    def end_s(self) -> float:
        """The last instant the log covers, UTC epoch seconds (the last row's interval end for ``hold``)."""
        return self.times_s[-1] + (self.sample_interval_s if self.integration == "hold" else 0.0)

    def describe_integration(self) -> str:
        """How the log's power is integrated over a span, in words."""
        return _INTEGRATION[self.integration]

    def cumulative_j(self, t: float) -> float:
        """Energy from the log's start to time ``t`` (UTC epoch seconds, clamped to the covered span), in J."""
        cum = self._cumulative()
        times, watts = self.times_s, self.watts
        t = min(max(t, self.start_s), self.end_s)
        i = bisect.bisect_right(times, t) - 1
        i = min(max(i, 0), len(times) - 1)
        dt = t - times[i]
        if self.integration == "hold" or i == len(times) - 1:
            return cum[i] + watts[i] * dt
        p = watts[i] + (watts[i + 1] - watts[i]) * dt / (times[i + 1] - times[i])
        return cum[i] + dt * (watts[i] + p) / 2.0

    def energy_j(self, t0: float, t1: float) -> float:
        """Energy between two times (UTC epoch seconds), integrated as :attr:`integration` says, in joules.

        Raises:
            ConfigError: the span is not inside the log's (``covers(t0, t1)`` is False).
        """
        if not self.covers(t0, t1):
            raise ConfigError(f"the meter log {self.path} covers {utc_iso(self.start_s)} to {utc_iso(self.end_s)}, not "
                              f"{utc_iso(t0)} to {utc_iso(t1)}")
        return self.cumulative_j(t1) - self.cumulative_j(t0)

    def covers(self, t0: float, t1: float) -> bool:
        """Whether the span from ``t0`` to ``t1`` (UTC epoch seconds) lies inside the log."""
        return self.start_s <= t0 <= t1 <= self.end_s

    def _cumulative(self) -> tuple[float, ...]:
        cached = self.__dict__.get("_cum")
        if cached is None:
            out = [0.0]
            for i in range(1, len(self.times_s)):
                dt = self.times_s[i] - self.times_s[i - 1]
                step = self.watts[i - 1] * dt if self.integration == "hold" else (
                    (self.watts[i - 1] + self.watts[i]) * dt / 2.0)
                out.append(out[-1] + step)
            cached = tuple(out)
            object.__setattr__(self, "_cum", cached)
        return cached


def utc_iso(t: float) -> str:
    """UTC epoch seconds as ISO 8601 to the second (``2026-12-03T09:40:00+00:00``)."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def parse_log_time(text: str) -> float:
    """A log's time as UTC epoch seconds: epoch seconds, or ISO 8601 (no zone: UTC).

    Raises:
        ValueError: the text is neither.
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a time")
        return value
    stamp = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.timezone.utc)
    return stamp.timestamp()


def _ipmi_time(text: str) -> float:
    """An ``IPMI timestamp:`` value as UTC epoch seconds (see the module docstring for the forms read)."""
    parts = text.split()
    offset = 0
    if parts and not parts[-1][0].isdigit() and parts[-1].upper() not in ("AM", "PM"):
        zone = parts.pop().upper()
        if zone not in _ZONES:
            raise ValueError(f"the time zone {zone!r} is not UTC; set the BMC clock to UTC, or convert the log's "
                             "times and read it as CSV")
        offset = _ZONES[zone]
    body = " ".join(parts)
    for form in ("%a %b %d %H:%M:%S %Y", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %I:%M:%S %p"):
        try:
            stamp = _dt.datetime.strptime(body, form)
        except ValueError:
            continue
        return stamp.replace(tzinfo=_dt.timezone.utc).timestamp() - offset
    raise ValueError(f"{text!r} is not an IPMI timestamp ('Tue May  9 14:24:36 2023' or '03/06/2025 07:40:35 UTC')")


def _guess_format(head: str) -> str:
    if _IPMI_POWER.search(head):
        return "ipmitool"
    first = head.lstrip("\ufeff").splitlines()[0].lower() if head.strip() else ""
    if "energy" in first and "wh" in first:
        return "plug"
    return "csv"


def read_meter_log(path: str | os.PathLike[str], format: str = "auto", *, time_column: str | int | None = None,
                   watts_column: str | int | None = None) -> MeterLog:
    """Read an external power meter's log.

    Args:
        path: the log file.
        format: ``"csv"``, ``"ipmitool"``, ``"plug"`` (see the module docstring) or ``"auto"`` (from the
            file's first lines: ipmitool's text, else a header naming an energy in Wh, else CSV).
        time_column: the CSV column of the times, by header name or 0-based index (default: found by name).
        watts_column: the CSV column of the watts (``"plug"``: of the Wh), by name or index.

    Returns:
        The :class:`MeterLog`, its times UTC epoch seconds, strictly increasing.

    Raises:
        ConfigError: no such file; an unknown format; a log that is empty, holds a row that cannot be read,
            or whose times are not strictly increasing (the message names the line and what to do).
    """
    format = choice("format", format, ("auto", *LOG_FORMATS))
    file = Path(path)
    try:
        content = file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"there is no meter log at {file}; give the path of the meter's power log") from None
    except IsADirectoryError:
        raise ConfigError(f"{file} is a folder; give the path of the meter's power log file") from None
    if format == "auto":
        format = _guess_format(content[:4096])
    if format == "ipmitool":
        rows, notes = _ipmitool_rows(content, file)
        integration = "trapezoid"
    else:
        rows, notes = _csv_rows(content, file, format, time_column, watts_column)
        integration = "hold" if format == "plug" else "trapezoid"
    if not rows:
        raise ConfigError(f"the meter log {file} holds no samples; check that it is the {format} log of the meter "
                          f"(--format {format}) and that the meter was logging")
    for (line_a, t_a, _), (line_b, t_b, _) in zip(rows, rows[1:]):
        if t_b <= t_a:
            raise ConfigError(
                f"the meter log {file} is not in time order: line {line_b} ({utc_iso(t_b)}) is not after line {line_a} "
                f"({utc_iso(t_a)}); sort the log by time and remove repeated rows, or cut it where the meter's clock "
                "was reset")
    times = tuple(t for _, t, _ in rows)
    watts = tuple(w for _, _, w in rows)
    if format == "plug":
        watts = _plug_watts(times, watts)
    return MeterLog(str(file), format, times, watts, integration, tuple(notes))


def _plug_watts(times: tuple[float, ...], wh: tuple[float, ...]) -> tuple[float, ...]:
    """Each interval's mean power from its watt-hours (the last row's interval is the median one)."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    median = statistics.median(gaps) if gaps else 600.0
    return tuple(e * 3600.0 / d for e, d in zip(wh, [*gaps, median]))


def _ipmitool_rows(content: str, file: Path) -> tuple[list[tuple[int, float, float]], list[str]]:
    """``(line, time, watts)`` of each ipmitool block, blocks stamped in the same second merged."""
    rows: list[tuple[int, float, float]] = []
    power: tuple[int, float] | None = None
    merged = 0
    same = 1  # readings merged into the last row
    for number, line in enumerate(content.splitlines(), start=1):
        found = _IPMI_POWER.search(line)
        if found:
            if power is not None:
                raise ConfigError(f"the ipmitool log {file}: the power reading at line {power[0]} has no "
                                  f"'IPMI timestamp:' line before the next reading at line {number}; log the whole "
                                  "output of 'ipmitool dcmi power reading' in the loop")
            power = (number, float(found.group(1)))
            continue
        if "instantaneous power reading" in line.lower():
            raise ConfigError(f"the ipmitool log {file}, line {number}: cannot read the watts in {line.strip()!r}; "
                              "the line should read 'Instantaneous power reading: N Watts'")
        stamp = _IPMI_TIME.search(line)
        if stamp:
            if power is None:
                continue  # a timestamp of a block whose reading was cut off at the log's start
            try:
                t = _ipmi_time(stamp.group(1))
            except ValueError as err:
                raise ConfigError(f"the ipmitool log {file}, line {number}: {err}") from None
            if rows and t == rows[-1][1]:
                first_line, _, w = rows[-1]
                rows[-1] = (first_line, t, (w * same + power[1]) / (same + 1))
                same += 1
                merged += 1
            else:
                same = 1
                rows.append((power[0], t, power[1]))
            power = None
            continue
        state = _IPMI_STATE.search(line)
        if state and state.group(1).lower() == "deactivated":
            raise ConfigError(f"the ipmitool log {file}, line {number}: 'Power reading state is: deactivated': the "
                              "BMC is not measuring power, so its readings are not measurements; enable DCMI power "
                              "reading on the BMC ('ipmitool dcmi power activate') and log again")
    notes = []
    if merged:
        notes.append(f"{merged} readings stamped in the same second as the one before were merged into their mean "
                     "(IPMI timestamps are whole seconds: sample with 'sleep 1' in the loop)")
    return rows, notes


def _column(header: list[str], wanted: str | int | None, names: tuple[str, ...], contains: tuple[str, ...],
            default: int, what: str, file: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        if not 0 <= wanted < len(header):
            raise ConfigError(f"the meter log {file} has {len(header)} columns, so there is no {what} column "
                              f"{wanted} (columns count from 0)")
        return wanted
    if wanted is not None:
        if str(wanted).strip().lower() not in lowered:
            raise ConfigError(f"the meter log {file} has no column {wanted!r}; its columns are "
                              f"{', '.join(repr(h) for h in header)}")
        return lowered.index(str(wanted).strip().lower())
    for name in names:
        if name in lowered:
            return lowered.index(name)
    for part in contains:
        for index, name in enumerate(lowered):
            if part in name:
                return index
    if len(header) > 2 or default >= len(header):
        raise ConfigError(f"the meter log {file} has no column whose name marks it as the {what} column; its columns "
                          f"are {', '.join(repr(h) for h in header)}: choose one with --{what}-column (a name or a "
                          "0-based index)")
    return default


def _csv_rows(content: str, file: Path, format: str, time_column: str | int | None,
              watts_column: str | int | None) -> tuple[list[tuple[int, float, float]], list[str]]:
    """``(line, time, value)`` of each CSV row (watts; Wh for ``plug``)."""
    sample = content.lstrip("\ufeff")
    lines = sample.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    delimiter = ";" if first.count(";") > first.count(",") else ("\t" if "\t" in first and "," not in first else ",")
    table = list(csv.reader(io.StringIO(sample), delimiter=delimiter))
    numbered = [(i, row) for i, row in enumerate(table, start=1) if any(cell.strip() for cell in row)]
    if not numbered:
        return [], []
    header = numbered[0][1]
    has_header = len(header) < 2 or not _is_number(header[1])
    if not has_header:
        header = [f"column {i}" for i in range(len(header))]
    energy = format == "plug"
    value_names = ("active energy wh (1)", "active energy wh", "energy_wh", "wh") if energy else _WATT_NAMES
    value_contains = ("energy",) if energy else ("watt", "power")
    t_col = _column(header, time_column, _TIME_NAMES, ("time", "date"), 0, "time", file)
    w_col = _column(header, watts_column, value_names, value_contains, 1 - t_col if t_col < 2 else 1, "watts", file)
    if t_col == w_col:
        raise ConfigError(f"the meter log {file}: the time and watts columns are both {header[t_col]!r}; choose "
                          "them with --time-column and --watts-column")
    rows: list[tuple[int, float, float]] = []
    body = numbered[1:] if has_header else numbered
    unit = "watt-hours" if energy else "watts"
    for line, row in body:
        if len(row) <= max(t_col, w_col):
            raise ConfigError(f"the meter log {file}, line {line}: {delimiter.join(row)!r} has {len(row)} fields, "
                              f"fewer than the header's; remove the line or fix it")
        try:
            t = parse_log_time(row[t_col])
        except ValueError:
            raise ConfigError(f"the meter log {file}, line {line}: cannot read the time {row[t_col]!r} (column "
                              f"{header[t_col]!r}); times must be ISO 8601 or epoch seconds (or choose the time "
                              "column with --time-column)") from None
        try:
            value = float(row[w_col])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"the meter log {file}, line {line}: cannot read {unit} from {row[w_col]!r} (column "
                              f"{header[w_col]!r}); give a number >= 0 (or choose the column with --watts-column)")
        rows.append((line, t, value))
    notes = [f"read the columns {header[t_col]!r} (time) and {header[w_col]!r} ({unit})"]
    return rows, notes


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True
