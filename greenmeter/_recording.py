"""Turning a closed window's raw readings into a :class:`~greenmeter.records.Measurement`.

This is the hot path of every window's end, so records are assembled without the per-field
``object.__setattr__`` of frozen dataclasses (see :func:`greenmeter.records.assemble`) and carbon
settings are resolved once per meter, not per window.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from greenmeter._errors import ConfigError
from greenmeter.backends import Domain
from greenmeter.carbon import CarbonEstimate, CarbonSettings
from greenmeter.records import (
    SCHEMA_VERSION,
    DomainEnergy,
    EpochRecord,
    HostInfo,
    LatencyStats,
    Measurement,
    assemble,
)

if TYPE_CHECKING:
    from greenmeter.window import Window

__all__ = ["ResolvedCarbon", "build_measurement"]

EpochMark = tuple[float, dict[str, float], int]


class ResolvedCarbon:
    """Carbon settings with their table look-ups done once."""

    __slots__ = ("intensity", "pue", "pue_source")

    def __init__(self, settings: CarbonSettings | None) -> None:
        if settings is None:
            settings = CarbonSettings()
        elif not isinstance(settings, CarbonSettings):
            raise ConfigError(f"carbon must be a greenmeter.CarbonSettings, not {type(settings).__name__}")
        self.intensity = settings.resolve_intensity()
        self.pue, self.pue_source = settings.resolve_pue()

    def estimate(self, energy_j: float) -> CarbonEstimate:
        """CO2e of ``energy_j`` joules: kWh x PUE x g/kWh."""
        g_per_kwh = self.intensity.intensity_g_per_kwh
        return assemble(CarbonEstimate, {
            "energy_j": energy_j, "pue": self.pue, "pue_source": self.pue_source,
            "intensity_g_per_kwh": g_per_kwh, "co2e_g": energy_j / 3.6e6 * self.pue * g_per_kwh,
            "intensity": self.intensity,
        })


def build_measurement(
    w: Window, t1: float, energy: dict[str, float], steps: list[float], step_samples: list[int | None],
    epochs: list[EpochMark], error: BaseException | None, *, domains: Mapping[str, Domain],
    idle: Mapping[str, float] | None, flags: list[str], host: HostInfo, backends: tuple[str, ...],
    carbon: ResolvedCarbon,
) -> Measurement:
    """Build the measurement of window ``w`` closed at ``t1`` (perf_counter s) with readings ``energy`` (J).

    ``steps`` are the perf_counter times of step marks inside the window, ``epochs`` the epoch marks;
    ``flags`` (extended here with unresolved-domain warnings) go into the record.
    """
    duration = t1 - w.t0
    start_energy = w.energy
    records = []
    total = 0.0
    for key, domain in domains.items():
        resolved = duration >= domain.update_period_s
        if not resolved:
            flags.append(
                f"window {w.name!r} lasted {duration * 1e3:.3f} ms, shorter than the update period of "
                f"{key} ({domain.update_period_s * 1e3:.3f} ms): its energy is not resolved"
            )
        joules = energy[key] - start_energy[key]
        if domain.in_total:
            total += joules
        records.append(assemble(DomainEnergy, {
            "key": key, "kind": domain.kind, "energy_j": joules, "in_total": domain.in_total,
            "provenance": domain.provenance, "resolved": resolved,
            "idle_power_w": None if idle is None else idle[key],
        }))
    durations: list[float] = []
    samples = w.samples
    if steps:
        previous = w.t0
        for t in steps:
            durations.append(t - previous)
            previous = t
        if samples is None and None not in step_samples:
            samples = sum(step_samples)  # type: ignore[arg-type]
    return assemble(Measurement, {
        "name": w.name,
        "status": "failed" if error is not None else "ok",
        "started_at": w.started_at,
        "duration_s": duration,
        "energy_j": total,
        "domains": tuple(records),
        "host": host,
        "backends": backends,
        "samples": samples,
        "steps": len(steps),
        "latency": LatencyStats.from_durations(durations),
        "step_energy_method": "split-by-step-time" if steps else None,
        "epochs": _epochs(w, epochs, step_samples, domains) if epochs else (),
        "idle_power_w": None if idle is None else sum(idle[k] for k, d in domains.items() if d.in_total),
        "flags": tuple(flags),
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "carbon": carbon.estimate(total),
        "step_durations_s": tuple(durations),
        "step_samples": tuple(step_samples) if steps else (),
        "schema_version": SCHEMA_VERSION,
    })


def _epochs(
    w: Window, marks: list[EpochMark], step_samples: list[int | None], domains: Mapping[str, Domain],
) -> tuple[EpochRecord, ...]:
    records = []
    previous_t, previous_e, previous_step = w.t0, w.energy, w.step_index
    for index, (t, energy, step_count) in enumerate(marks):
        in_epoch = step_samples[previous_step - w.step_index: step_count - w.step_index]
        samples = sum(s for s in in_epoch if s is not None) if in_epoch and None not in in_epoch else None
        records.append(EpochRecord(
            index=index,
            duration_s=t - previous_t,
            energy_j=sum(energy[k] - previous_e[k] for k, d in domains.items() if d.in_total),
            steps=step_count - previous_step,
            samples=samples,
        ))
        previous_t, previous_e, previous_step = t, energy, step_count
    return tuple(records)
