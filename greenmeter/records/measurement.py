"""The records a measurement produces: frozen dataclasses with ``to_dict``/``from_dict`` and JSON.

A :class:`Measurement` is what one window yields. It is plain data: pandas views and reports are built
from it, never the other way round. ``SCHEMA_VERSION`` is written into every dict; ``from_dict`` reads
this version and refuses a newer one with a clear error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from greenmeter._errors import ConfigError
from greenmeter.sources.band import Band, sum_bands
from greenmeter.sources.base import Provenance
from greenmeter.carbon.settings import CarbonEstimate
from greenmeter.stats import QuantileSketch

__all__ = [
    "SCHEMA_VERSION",
    "DomainEnergy",
    "EpochRecord",
    "HostInfo",
    "LatencyStats",
    "Measurement",
]

#: 2 added ``Measurement.carbon``; version 1 records read with ``carbon = None``. 3 added
#: ``Measurement.step_sketch`` and ``LatencyStats.relative_error``; older records read with ``None`` and 0.0
#: (their percentiles were exact: every step's duration was kept). 4 added ``DomainEnergy.band``; older records
#: read with ``None`` (they were recorded before greenmeter stated bands, and say so).
SCHEMA_VERSION = 4


Status = Literal["ok", "failed"]


@dataclass(frozen=True)
class DomainEnergy:
    """Energy of one domain over a window.

    Attributes:
        key: the domain key, e.g. ``"rapl:package-0"``.
        kind: ``package``, ``dram``, ``gpu``, ``cpu``, ``ram``...
        energy_j: joules over the window, in joules.
        in_total: whether it counts towards ``Measurement.energy_j``.
        provenance: measured (which counter) or estimated (which model and constants).
        resolved: ``False`` when the window was shorter than the source's update period, so the
            figure cannot be trusted (it is flagged in ``Measurement.flags`` too).
        idle_power_w: the idle power of this domain from the baseline, in watts, when one was taken.
        band: how far off ``energy_j`` may be under its source's stated constants and resolution
            (:class:`~greenmeter.sources.band.Band`); ``None`` when its source states none, or for a record
            written before greenmeter stated bands.
    """

    key: str
    kind: str
    energy_j: float
    in_total: bool
    provenance: Provenance
    resolved: bool = True
    idle_power_w: float | None = None
    band: Band | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "energy_j": self.energy_j,
            "in_total": self.in_total,
            "provenance": self.provenance.to_dict(),
            "resolved": self.resolved,
            "idle_power_w": self.idle_power_w,
            "band": None if self.band is None else self.band.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainEnergy:
        return cls(
            key=data["key"],
            kind=data["kind"],
            energy_j=float(data["energy_j"]),
            in_total=bool(data["in_total"]),
            provenance=Provenance.from_dict(data["provenance"]),
            resolved=bool(data.get("resolved", True)),
            idle_power_w=data.get("idle_power_w"),
            band=Band.from_dict(data["band"]) if data.get("band") else None,
        )


@dataclass(frozen=True)
class LatencyStats:
    """Per-step latency over a window, in seconds (nearest-rank percentiles).

    Attributes:
        count: the number of steps.
        mean_s, min_s, max_s: exact, whichever way the percentiles were found.
        p50_s, p95_s, p99_s: nearest-rank percentiles (the ``ceil(q * count)``-th smallest duration).
        relative_error: the bound on how far each percentile may be from the exact one, as a fraction of it:
            0.0 when they were computed from every step's duration; the sketch's relative accuracy
            (0.005: within 0.5%) when from a :class:`~greenmeter.stats.QuantileSketch`, as for a window of
            more steps than its meter keeps whole.
    """

    count: int
    mean_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    min_s: float
    max_s: float
    relative_error: float = 0.0

    @classmethod
    def from_sketch(cls, sketch: QuantileSketch) -> LatencyStats | None:
        """Summarise a sketch of step durations in seconds (``relative_error`` is its accuracy); ``None`` if empty."""
        if not sketch.count:
            return None
        return cls(
            count=sketch.count,
            mean_s=sketch.sum / sketch.count,
            p50_s=sketch.quantile(0.50),
            p95_s=sketch.quantile(0.95),
            p99_s=sketch.quantile(0.99),
            min_s=sketch.min,  # type: ignore[arg-type]
            max_s=sketch.max,  # type: ignore[arg-type]
            relative_error=sketch.relative_accuracy,
        )

    @classmethod
    def from_durations(cls, durations: Sequence[float]) -> LatencyStats | None:
        """Summarise step durations in seconds, exactly; ``None`` when there are none."""
        if not durations:
            return None
        ordered = sorted(durations)
        n = len(ordered)

        def rank(q: float) -> float:
            return ordered[max(0, math.ceil(q * n) - 1)]

        return cls(
            count=n,
            mean_s=sum(ordered) / n,
            p50_s=rank(0.50),
            p95_s=rank(0.95),
            p99_s=rank(0.99),
            min_s=ordered[0],
            max_s=ordered[-1],
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyStats:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k != "relative_error"},
                   relative_error=float(data.get("relative_error", 0.0)))


@dataclass(frozen=True)
class EpochRecord:
    """One epoch inside a window: index from 0, duration in s, energy in J, steps and samples, and the band of its
    energy (``None`` when a source states none, or in a record written before bands)."""

    index: int
    duration_s: float
    energy_j: float
    steps: int
    samples: int | None
    band: Band | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "band": None if self.band is None else self.band.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k != "band"},
                   band=Band.from_dict(data["band"]) if data.get("band") else None)


@dataclass(frozen=True)
class HostInfo:
    """Facts about the machine a measurement ran on."""

    hostname: str
    os: str
    python: str
    cpu_model: str
    logical_cpus: int
    memory_total_b: int | None
    virtual_machine: bool | None
    torch: str | None
    cuda: str | None
    greenmeter: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostInfo:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Measurement:
    """What one measured window yields.

    Energy figures are in joules, durations in seconds, power in watts. ``energy_j`` is the sum over
    domains with ``in_total`` (so nested domains such as RAPL core are not counted twice).

    Attributes:
        name: the window's name.
        status: ``"ok"``, or ``"failed"`` when the measured block raised (``error`` says what).
        started_at: wall-clock start, ISO 8601 with time zone.
        duration_s: monotonic duration of the window.
        energy_j: total energy over the window.
        power_w: mean power, ``energy_j / duration_s``.
        domains: per-domain energy with provenance.
        samples: samples processed in the window, when given.
        steps: number of steps marked inside the window.
        latency: per-step latency statistics, when steps were marked (``latency.relative_error`` says how
            close its percentiles are to the exact ones).
        step_energy_method: how ``energy_per_step_j`` was obtained: ``"split-by-step-time"`` (the window's
            energy shared out in proportion to step durations, because no counter is read per step).
        epochs: per-epoch figures, when epochs were marked.
        idle_power_w: total idle power from the baseline, when one was taken.
        flags: warnings a reader must see (an unresolved window, a fallback to an estimate...).
        backends: names of the backends that produced the figures.
        carbon: ``energy_j`` as CO2e with its grid intensity, PUE and their sources.
        step_durations_s: each step's duration in seconds, in order, when the window kept them: windows of
            up to the meter's ``keep_steps`` steps (1,000 by default), or every window with
            ``keep_steps=True``; empty otherwise (then ``step_sketch`` holds their distribution).
        step_samples: each step's sample count as marked (``None`` where a step gave none), in order, kept
            and left empty as ``step_durations_s`` is.
        step_sketch: the step durations' :class:`~greenmeter.stats.QuantileSketch` (s), for a window whose
            per-step values were not kept: bounded in size however many steps, what ``latency`` was computed
            from, and mergeable with other windows' (:meth:`step_duration_sketch`). ``None`` otherwise.
    """

    name: str
    status: Status
    started_at: str
    duration_s: float
    energy_j: float
    domains: tuple[DomainEnergy, ...]
    host: HostInfo
    backends: tuple[str, ...]
    samples: int | None = None
    steps: int = 0
    latency: LatencyStats | None = None
    step_energy_method: str | None = None
    epochs: tuple[EpochRecord, ...] = ()
    idle_power_w: float | None = None
    flags: tuple[str, ...] = ()
    error: str | None = None
    carbon: CarbonEstimate | None = None
    step_durations_s: tuple[float, ...] = field(default=(), repr=False)
    step_samples: tuple[int | None, ...] = field(default=(), repr=False)
    step_sketch: QuantileSketch | None = field(default=None, repr=False)
    schema_version: int = SCHEMA_VERSION

    # Derived figures -------------------------------------------------------------------------
    @property
    def power_w(self) -> float:
        """Mean power over the window in watts (0.0 for a zero-length window)."""
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def energy_per_sample_j(self) -> float | None:
        """Joules per sample, when a sample count was given."""
        return self.energy_j / self.samples if self.samples else None

    @property
    def energy_per_step_j(self) -> float | None:
        """Mean joules per step, when steps were marked."""
        return self.energy_j / self.steps if self.steps else None

    @property
    def throughput_samples_per_s(self) -> float | None:
        return self.samples / self.duration_s if self.samples and self.duration_s > 0 else None

    @property
    def throughput_steps_per_s(self) -> float | None:
        return self.steps / self.duration_s if self.steps and self.duration_s > 0 else None

    @property
    def idle_energy_j(self) -> float | None:
        """Energy the machine would have drawn idle over the window, when a baseline was taken."""
        return None if self.idle_power_w is None else self.idle_power_w * self.duration_s

    @property
    def attributable_energy_j(self) -> float | None:
        """Total minus idle energy: what the work itself cost, when a baseline was taken."""
        idle = self.idle_energy_j
        return None if idle is None else self.energy_j - idle

    @property
    def energy_band(self) -> Band | None:
        """The band of ``energy_j``: the in-total domains' bands added; ``None`` when one of them has none
        (:meth:`band_note` says why)."""
        return sum_bands(d.band for d in self.domains if d.in_total)

    @property
    def energy_per_sample_band(self) -> Band | None:
        """The band of :attr:`energy_per_sample_j`, when both are known."""
        band = self.energy_band
        return None if band is None or not self.samples else band.scaled(1.0 / self.samples)

    def band_note(self) -> str:
        """One line on the band for people: the band and what it comes from, or why there is none."""
        band = self.energy_band
        if band is not None:
            return f"{band.describe()}: how far off the sources could be (systematic, not the run-to-run spread)"
        if self.schema_version < 4:
            return "band: not stated (recorded before greenmeter stated bands)"
        missing = ", ".join(d.key for d in self.domains if d.in_total and d.band is None)
        return f"band: not stated ({missing} states no band)"

    @property
    def measured(self) -> bool:
        """True when every domain in the total was read from a hardware counter."""
        return all(d.provenance.kind == "measured" for d in self.domains if d.in_total)

    def step_energies_j(self) -> tuple[float, ...]:
        """Per-step joules, the window's energy split in proportion to step durations.

        The counters are read at the window's edges only, so this is a share, labelled as such by
        ``step_energy_method``; it is not a per-step reading. Empty when the per-step durations were not kept
        (``step_durations_s`` is empty: a window of more steps than the meter's ``keep_steps``).
        """
        total_time = sum(self.step_durations_s)
        if not total_time:
            return ()
        return tuple(self.energy_j * d / total_time for d in self.step_durations_s)

    def step_energies_per_sample_j(self) -> tuple[float | None, ...]:
        """Per-step joules per sample (:meth:`step_energies_j` over each step's sample count).

        ``None`` for a step marked without a sample count (or with 0); empty when no step was marked, when
        the per-step values were not kept, or for records written before per-step counts were kept
        (greenmeter 0.1.0's first stores).
        """
        if len(self.step_samples) != len(self.step_durations_s):
            return ()
        return tuple(j / n if n else None for j, n in zip(self.step_energies_j(), self.step_samples))

    def step_duration_sketch(self) -> QuantileSketch | None:
        """The step durations' distribution as a :class:`~greenmeter.stats.QuantileSketch` (s), to merge windows.

        The stored ``step_sketch`` when the per-step values were not kept; otherwise a new sketch of
        ``step_durations_s``. ``None`` when no step was marked, or when neither is in the record.
        """
        if self.step_sketch is not None:
            return self.step_sketch.copy()
        if self.step_durations_s:
            return QuantileSketch.from_values(self.step_durations_s)
        return None

    # Serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "energy_j": self.energy_j,
            "power_w": self.power_w,
            "domains": [d.to_dict() for d in self.domains],
            "host": self.host.to_dict(),
            "backends": list(self.backends),
            "samples": self.samples,
            "steps": self.steps,
            "latency": self.latency.to_dict() if self.latency else None,
            "step_energy_method": self.step_energy_method,
            "step_durations_s": list(self.step_durations_s),
            "step_samples": list(self.step_samples),
            "step_sketch": self.step_sketch.to_dict() if self.step_sketch is not None else None,
            "epochs": [e.to_dict() for e in self.epochs],
            "idle_power_w": self.idle_power_w,
            "flags": list(self.flags),
            "carbon": self.carbon.to_dict() if self.carbon is not None else None,
            "energy_band": _band_dict(self.energy_band),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise ConfigError(
                f"measurement schema_version {version!r} is not readable by greenmeter "
                f"(reads 1..{SCHEMA_VERSION}); upgrade greenmeter to read newer records"
            )
        latency = data.get("latency")
        return cls(
            name=data["name"],
            status=data["status"],
            error=data.get("error"),
            started_at=data["started_at"],
            duration_s=float(data["duration_s"]),
            energy_j=float(data["energy_j"]),
            domains=tuple(DomainEnergy.from_dict(d) for d in data["domains"]),
            host=HostInfo.from_dict(data["host"]),
            backends=tuple(data["backends"]),
            samples=data.get("samples"),
            steps=int(data.get("steps", 0)),
            latency=LatencyStats.from_dict(latency) if latency else None,
            step_energy_method=data.get("step_energy_method"),
            step_durations_s=tuple(data.get("step_durations_s", ())),
            step_samples=tuple(data.get("step_samples", ())),
            step_sketch=QuantileSketch.from_dict(data["step_sketch"]) if data.get("step_sketch") else None,
            epochs=tuple(EpochRecord.from_dict(e) for e in data.get("epochs", ())),
            idle_power_w=data.get("idle_power_w"),
            flags=tuple(data.get("flags", ())),
            carbon=CarbonEstimate.from_dict(data["carbon"]) if data.get("carbon") else None,
            schema_version=version,
        )

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (keyword arguments go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Measurement:
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """A few lines for people: energy, power, duration, per-sample figures, provenance, flags."""
        lines = [
            f"{self.name}: {self.energy_j:.3f} J over {self.duration_s:.3f} s "
            f"(mean {self.power_w:.2f} W){'' if self.status == 'ok' else ' [FAILED: ' + str(self.error) + ']'}"
        ]
        if self.samples:
            lines.append(f"  {self.energy_per_sample_j:.6g} J/sample over {self.samples} samples")
        if self.latency:
            lat = self.latency
            within = f" (each within {lat.relative_error:.1%})" if lat.relative_error else ""
            lines.append(
                f"  {lat.count} steps: p50 {lat.p50_s * 1e3:.3f} ms, p95 {lat.p95_s * 1e3:.3f} ms, "
                f"p99 {lat.p99_s * 1e3:.3f} ms{within}"
            )
        lines.append(f"  {self.band_note()}")
        if self.idle_power_w is not None:
            lines.append(
                f"  idle {self.idle_energy_j:.3f} J ({self.idle_power_w:.2f} W), "
                f"attributable {self.attributable_energy_j:.3f} J"
            )
        if self.carbon is not None:
            lines.append(f"  {self.carbon.describe()}")
        for d in self.domains:
            mark = "" if d.in_total else " (inside another domain, not in total)"
            band = f" ({d.band.describe(digits=3)})" if d.band is not None else ""
            lines.append(f"  {d.key}: {d.energy_j:.3f} J{band}{mark} - {d.provenance.describe()}")
        band = self.energy_band
        lines.extend(f"  band basis: {basis}" for basis in (band.basis if band is not None else ()))
        lines.extend(f"  ! {flag}" for flag in self.flags)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The measurement as a notebook shows it: a table with provenance and bands (``output.notebook``)."""
        from greenmeter.output.notebook import measurement_html  # records never import output at module level

        return measurement_html(self)

    def _repr_markdown_(self) -> str:
        """The measurement as short Markdown (see ``greenmeter.output.notebook``)."""
        from greenmeter.output.notebook import measurement_markdown

        return measurement_markdown(self)


def _band_dict(band: Band | None) -> dict[str, Any] | None:
    """A band's figures for JSON (derived data: ``from_dict`` rebuilds it from the domains)."""
    return None if band is None else {"low_j": band.low_j, "high_j": band.high_j, "basis": list(band.basis)}
