"""The activity behind a stored window's estimates: busy CPU-seconds and GB-seconds, by inverting their models.

A window measured with the CPU and RAM estimates (:mod:`greenmeter.sources.cpu_estimate`,
:mod:`greenmeter.sources.ram_estimate`) stores each domain's energy with every constant of its model in the
domain's :class:`~greenmeter.sources.base.Provenance`, so the activity is recovered exactly:

- CPU, ``mode="process"``: ``E = t_cpu * P_max_vcpu``, so ``busy_cpu_s = E / P_max_vcpu``;
- CPU, ``mode="machine"``: ``E = n * P_idle_vcpu * dt + t_busy * (P_max_vcpu - P_idle_vcpu)``, so
  ``busy_cpu_s = (E - n * P_idle_vcpu * dt) / (P_max_vcpu - P_idle_vcpu)``;
- RAM, either mode: ``E = GB-seconds * W_per_GB``, so ``gb_s = E / W_per_GB`` (resident memory in process
  mode, installed memory in machine mode).

These are the regressors of the wall-meter fit (:mod:`greenmeter.calibration.fit`).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter.records.measurement import DomainEnergy, Measurement

__all__ = ["Activity", "activity_of", "window_start_s"]

_CPU = "cpu-estimate:"
_RAM = "ram-estimate:"


@dataclass(frozen=True)
class Activity:
    """What a window did, as the estimates saw it.

    Attributes:
        start_s: the window's start, UTC epoch seconds.
        duration_s: its length, in seconds.
        busy_cpu_s: busy CPU-seconds (one vCPU busy for one second is 1.0).
        gb_s: memory held times seconds, in GB-seconds (GB = 2**30 bytes); 0.0 when no RAM estimate was used.
        estimate_j: the window's uncalibrated CPU + RAM estimate, in joules.
        cpu_mode: ``"process"`` or ``"machine"``: the scope of the CPU estimate.
        ram_mode: the scope of the RAM estimate, or ``None`` when there was none.
    """

    start_s: float
    duration_s: float
    busy_cpu_s: float
    gb_s: float
    estimate_j: float
    cpu_mode: str
    ram_mode: str | None

    @property
    def end_s(self) -> float:
        """The window's end, UTC epoch seconds."""
        return self.start_s + self.duration_s


def window_start_s(measurement: Measurement) -> float:
    """A window's start as UTC epoch seconds, from its ISO 8601 ``started_at``.

    Raises:
        ConfigError: ``started_at`` is not an ISO 8601 time.
    """
    try:
        stamp = _dt.datetime.fromisoformat(measurement.started_at)
    except ValueError:
        raise ConfigError(f"window {measurement.name!r} has the start time {measurement.started_at!r}, which is "
                          "not ISO 8601") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.timezone.utc)
    return stamp.timestamp()


def _constant(domain: DomainEnergy, name: str) -> float:
    value: Any = domain.provenance.constants.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"the {domain.key} domain's provenance has no number {name!r} (found {value!r}), so its "
                          "activity cannot be recovered; was it written by an older greenmeter or another source?")
    return float(value)


def _busy_cpu_s(domain: DomainEnergy, duration_s: float) -> tuple[float, str]:
    mode = domain.provenance.constants.get("mode", "process")
    p_max = _constant(domain, "p_max_w_per_vcpu")
    if mode == "machine":
        p_idle = _constant(domain, "p_idle_w_per_vcpu")
        vcpus = _constant(domain, "vcpus")
        if p_max <= p_idle:
            raise ConfigError(f"the {domain.key} domain's model has no busy power (p_max_w_per_vcpu {p_max:g} <= "
                              f"p_idle_w_per_vcpu {p_idle:g}), so its busy CPU time cannot be recovered")
        return max(0.0, (domain.energy_j - vcpus * p_idle * duration_s) / (p_max - p_idle)), "machine"
    if p_max <= 0:
        raise ConfigError(f"the {domain.key} domain's model has p_max_w_per_vcpu {p_max:g}, so its CPU time cannot "
                          "be recovered")
    return domain.energy_j / p_max, str(mode)


def activity_of(measurement: Measurement) -> Activity | None:
    """The activity behind a stored window's CPU and RAM estimates, by inverting their stored models.

    Args:
        measurement: a window, as stored (its domains carry their provenance and constants).

    Returns:
        Its :class:`Activity`, or ``None`` when the window has no CPU-estimate domain (its CPU was measured
        by a counter, so there is no estimate to calibrate).

    Raises:
        ConfigError: a domain's provenance lacks a constant its model needs, or its start time is unreadable.
    """
    cpu = next((d for d in measurement.domains if d.key.startswith(_CPU)), None)
    if cpu is None:
        return None
    ram = next((d for d in measurement.domains if d.key.startswith(_RAM)), None)
    duration = float(measurement.duration_s)
    busy, cpu_mode = _busy_cpu_s(cpu, duration)
    gb_s, ram_mode, estimate = 0.0, None, cpu.energy_j
    if ram is not None:
        w_per_gb = _constant(ram, "w_per_gb")
        gb_s = ram.energy_j / w_per_gb if w_per_gb > 0 else 0.0
        ram_mode = str(ram.provenance.constants.get("mode", "process"))
        estimate += ram.energy_j
    return Activity(window_start_s(measurement), duration, busy, gb_s, estimate, cpu_mode, ram_mode)
