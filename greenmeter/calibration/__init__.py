"""Calibration against a wall meter: fit this machine's power coefficients to an external meter's log.

    greenmeter calibrate --load-ladder        # a few minutes of known loads, stored as runs, while the meter logs
    greenmeter calibrate power.log            # align the log, fit, store the profile; later estimates use it

The pieces, one per module: :mod:`~greenmeter.calibration.meter_log` (reading a meter's log),
:mod:`~greenmeter.calibration.activity` (the busy CPU-seconds and GB-seconds behind a stored window's
estimates), :mod:`~greenmeter.calibration.fit` (the clock-offset search and the least-squares fit),
:mod:`~greenmeter.calibration.profile` (the stored :class:`CalibrationProfile`),
:mod:`~greenmeter.calibration.calibrate` (the verb) and :mod:`~greenmeter.calibration.ladder` (the load ladder).
See docs/calibration.md.
"""

from __future__ import annotations

from greenmeter.calibration.activity import Activity, activity_of
from greenmeter.calibration.calibrate import WALL_KEY, CalibratedWindow, CalibrationResult, calibrate, wall_domain
from greenmeter.calibration.fit import DEFAULT_OFFSET_RANGE_S, Alignment, LinearFit, align, fit_linear
from greenmeter.calibration.ladder import LADDER_STEPS, run_load_ladder
from greenmeter.calibration.meter_log import LOG_FORMATS, MeterLog, read_meter_log
from greenmeter.calibration.profile import CalibrationProfile, latest_profile

__all__ = [
    "DEFAULT_OFFSET_RANGE_S",
    "LADDER_STEPS",
    "LOG_FORMATS",
    "WALL_KEY",
    "Activity",
    "Alignment",
    "CalibratedWindow",
    "CalibrationProfile",
    "CalibrationResult",
    "LinearFit",
    "MeterLog",
    "activity_of",
    "align",
    "calibrate",
    "fit_linear",
    "latest_profile",
    "read_meter_log",
    "run_load_ladder",
    "wall_domain",
]
