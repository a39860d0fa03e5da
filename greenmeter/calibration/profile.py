"""A calibration profile: one machine's power coefficients, fitted to a wall meter, with how well they fit.

The store keeps every profile (``Store.save_calibration``) and hands back the newest for a host
(``Store.latest_calibration``); the CPU and RAM estimates take one as ``profile=`` and then use its
coefficients instead of their generic ones, saying so in their provenance. A profile is only ever used on
the host it was fitted on.

How the coefficients map onto the estimates' linear models (:mod:`greenmeter.sources.cpu_estimate`):
per-vCPU idle power ``idle_W / n`` and busy power ``idle_W / n + w_cpu`` for the ``n`` logical CPUs the
profile was fitted on, so machine mode gives ``idle_W * dt + w_cpu * busy_s`` (the fit itself) and process
mode charges each CPU-second ``idle_W / n + w_cpu``; the RAM estimate uses ``w_gb`` watts per GB.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter.records.encoding import check_record_version, finite_json

__all__ = ["PROFILE_SCHEMA_VERSION", "CalibrationProfile", "checked_profile", "latest_profile"]

#: The schema version every profile's ``to_dict`` writes; ``from_dict`` reads it and older ones.
PROFILE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CalibrationProfile:
    """One machine's power coefficients, fitted to a wall meter's log.

    Attributes:
        host: the host name the runs were measured on.
        cpu_model: its CPU model name.
        logical_cpus: its logical CPU count.
        idle_w: the whole machine's power at rest, as the wall meter sees it, in watts.
        w_cpu: joules per busy CPU-second (watts per busy vCPU).
        w_gb: joules per GB-second (watts per GB of memory held; GB = 2**30 bytes).
        r_squared: the fit's R^2 (of the windows' mean power).
        n_runs: how many windows were fitted.
        residuals_j: each window's fitted minus metered energy, in joules.
        held_out_error: the largest relative error of a window predicted by a fit of the others (leave-one-out),
            as a fraction (0.03: 3%); ``None`` when too few windows were fitted to hold any out.
        meter_log: the meter log's path.
        meter_format: its format (``csv``, ``ipmitool``, ``plug``).
        offset_s: the meter clock's offset found (seconds added to the meter's times).
        offset_range_s: the offset search ran from ``-offset_range_s`` to ``+offset_range_s``.
        created_at: when the profile was made, ISO 8601 with time zone.
        ram_modes: the RAM estimate's modes in the fitted windows (``process``: resident memory; ``machine``:
            installed memory); the RAM estimate uses ``w_gb`` only in these modes.
        fit_error: the largest relative residual of a fitted window (``|fitted - meter| / meter``).
    """

    host: str
    cpu_model: str
    logical_cpus: int
    idle_w: float
    w_cpu: float
    w_gb: float
    r_squared: float
    n_runs: int
    residuals_j: tuple[float, ...]
    held_out_error: float | None
    meter_log: str
    meter_format: str
    offset_s: float
    offset_range_s: float
    created_at: str
    ram_modes: tuple[str, ...] = ("process",)
    fit_error: float | None = None
    schema_version: int = field(default=PROFILE_SCHEMA_VERSION)

    @property
    def band_error(self) -> float:
        """The relative error calibrated estimates are banded by: :attr:`held_out_error`, else :attr:`fit_error`
        (too few windows to hold any out), else 0.1 (a stated assumption for a profile that states neither)."""
        for error in (self.held_out_error, self.fit_error):
            if error is not None and math.isfinite(error):
                return min(abs(error), 0.99)
        return 0.1

    def band_basis(self) -> str:
        """Where :attr:`band_error` comes from, in words."""
        if self.held_out_error is not None:
            return "the fit's largest held-out (leave-one-out) error"
        if self.fit_error is not None:
            return "the fit's largest residual (too few windows to hold any out)"
        return "an assumed 10% (the profile states no error)"

    def band_model(self) -> str:
        """The band model text of estimates calibrated by this profile: one text, so the calibrated CPU and RAM
        figures share it (their sum is banded as one fit's, and a ratio of two calibrated figures cancels it)."""
        return f"calibration of {self.host} ({self.describe()}; {self.band_basis()})"

    def check_host(self, hostname: str, what: str) -> None:
        """Refuse this profile on another host: a calibration is of one machine.

        Raises:
            ConfigError: ``hostname`` is not :attr:`host` (``what`` names the estimate in the message).
        """
        if hostname != self.host:
            raise ConfigError(f"{what}: the calibration profile is of host {self.host!r}, not of this host "
                              f"{hostname!r}; calibrate this machine with `greenmeter calibrate`")

    def describe(self) -> str:
        """``calibrated against <meter log>, R^2 = 0.998, 8 runs``: what a calibrated estimate's provenance says."""
        r2 = "n/a" if not math.isfinite(self.r_squared) else f"{self.r_squared:.3f}"
        return f"calibrated against {self.meter_log}, R^2 = {r2}, {self.n_runs} runs"

    def predict_j(self, duration_s: float, busy_cpu_s: float, gb_s: float) -> float:
        """The calibrated energy of a span of ``duration_s`` seconds with this activity, in joules."""
        return self.idle_w * duration_s + self.w_cpu * busy_cpu_s + self.w_gb * gb_s

    def cpu_powers_w(self, vcpus: int) -> tuple[float, float]:
        """``(idle, busy)`` power of one logical CPU, in watts, for a machine of ``vcpus`` logical CPUs."""
        idle = self.idle_w / max(1, vcpus)
        return idle, idle + self.w_cpu

    def constants(self) -> dict[str, Any]:
        """The profile's facts for a calibrated estimate's provenance constants."""
        return {
            "calibration": self.describe(),
            "calibration_idle_w": self.idle_w,
            "calibration_w_cpu": self.w_cpu,
            "calibration_w_gb": self.w_gb,
            "calibration_r_squared": self.r_squared,
            "calibration_n_runs": self.n_runs,
            "calibration_held_out_error": self.held_out_error,
            "calibration_band_error": self.band_error,
            "calibration_meter_log": self.meter_log,
            "calibration_created_at": self.created_at,
        }

    def to_dict(self) -> dict[str, Any]:
        return finite_json({
            "schema_version": self.schema_version,
            "host": self.host,
            "cpu_model": self.cpu_model,
            "logical_cpus": self.logical_cpus,
            "idle_w": self.idle_w,
            "w_cpu": self.w_cpu,
            "w_gb": self.w_gb,
            "r_squared": self.r_squared,
            "n_runs": self.n_runs,
            "residuals_j": list(self.residuals_j),
            "held_out_error": self.held_out_error,
            "meter_log": self.meter_log,
            "meter_format": self.meter_format,
            "offset_s": self.offset_s,
            "offset_range_s": self.offset_range_s,
            "created_at": self.created_at,
            "ram_modes": list(self.ram_modes),
            "fit_error": self.fit_error,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationProfile:
        """Read a profile written by :meth:`to_dict` (this schema version or an older one).

        Raises:
            ConfigError: a newer schema version, or a field missing.
        """
        version = check_record_version(data, PROFILE_SCHEMA_VERSION, "calibration profile")
        try:
            r2 = data["r_squared"]
            return cls(
                host=str(data["host"]), cpu_model=str(data["cpu_model"]), logical_cpus=int(data["logical_cpus"]),
                idle_w=float(data["idle_w"]), w_cpu=float(data["w_cpu"]), w_gb=float(data["w_gb"]),
                r_squared=math.nan if r2 is None else float(r2), n_runs=int(data["n_runs"]),
                residuals_j=tuple(float(r) for r in data["residuals_j"]),
                held_out_error=None if data.get("held_out_error") is None else float(data["held_out_error"]),
                meter_log=str(data["meter_log"]), meter_format=str(data["meter_format"]),
                offset_s=float(data["offset_s"]), offset_range_s=float(data["offset_range_s"]),
                created_at=str(data["created_at"]), ram_modes=tuple(data.get("ram_modes", ("process",))),
                fit_error=None if data.get("fit_error") is None else float(data["fit_error"]), schema_version=version,
            )
        except KeyError as err:
            raise ConfigError(f"not a greenmeter calibration profile: it has no {err.args[0]!r}") from None

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict())


def latest_profile(store: Any = True, host: str | None = None) -> CalibrationProfile | None:
    """The newest calibration profile the store holds for this host (or ``host``), for ``Meter(calibration=...)``.

    Args:
        store: the run store (the ``store=`` rule of :func:`~greenmeter.store.recorder.open_store`; default the
            default store). A missing store holds none.
        host: the host name (default this machine's).

    Returns:
        The profile, or ``None`` when the host has none (the estimates then keep their generic constants).
    """
    from greenmeter.metering.host import describe_host
    from greenmeter.store.database import store_path
    from greenmeter.store.recorder import open_store

    host = host or describe_host().hostname
    if store is True and not store_path().exists():
        return None
    opened = open_store(store)
    if opened is None:
        return None
    try:
        return opened.latest_calibration(host)
    finally:
        if opened is not store:
            opened.close()


def checked_profile(profile: Any, what: str) -> CalibrationProfile:
    """``profile`` when it is a calibration profile of this host (the CPU and RAM estimates check theirs so).

    Raises:
        ConfigError: not a :class:`CalibrationProfile`, or one of another host (``what`` names the estimate).
    """
    import socket

    if not isinstance(profile, CalibrationProfile):
        raise ConfigError(f"{what}: profile must be a greenmeter CalibrationProfile (greenmeter.calibration."
                          f"latest_profile()), not {type(profile).__name__}")
    profile.check_host(socket.gethostname(), what)
    return profile
