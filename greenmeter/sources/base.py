"""The contract every energy source follows, and the small records it returns.

A backend is measurement only. It answers three calls:

- ``probe()``: can it be used here? If not, a reason a user can act on (the fix, not just the symptom).
- ``read()``: a :class:`Reading`, the cumulative joules per domain since the backend was opened
  (counter wraps already unfolded), with a ``time.monotonic()`` timestamp. Thread-safe.
- ``close()``: release handles. Idempotent.

Backends that must be polled between window edges (to see every counter wrap, or to integrate sampled
power) set ``poll_interval_s``; the meter's background sampler then calls ``poll()`` at least that often.
Units are SI and converted at this boundary: a backend never hands out microjoules or milliwatts.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

__all__ = ["Backend", "Domain", "ProbeResult", "Provenance", "Reading"]

ProvenanceKind = Literal["measured", "estimated"]


@dataclass(frozen=True)
class Provenance:
    """Where an energy figure comes from.

    Attributes:
        kind: ``"measured"`` (read from a hardware counter) or ``"estimated"`` (computed by a model).
        source: the counter or model, precisely enough to find it again, e.g.
            ``"RAPL powercap /sys/class/powercap/intel-rapl:0 (package-0)"``.
        method: how the joules were obtained, e.g. ``"cumulative energy counter"``,
            ``"integrated power samples"``, ``"linear CPU-utilisation power model"``.
        constants: every constant a model used, with units in the key and a ``*_source`` entry naming
            where each came from. Empty for measured figures.
    """

    kind: ProvenanceKind
    source: str
    method: str
    constants: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("measured", "estimated"):
            raise ValueError(f"provenance kind must be 'measured' or 'estimated', not {self.kind!r}")

    def describe(self) -> str:
        """One line for people: ``measured: RAPL ... (cumulative energy counter)``."""
        return f"{self.kind}: {self.source} ({self.method})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "method": self.method,
            "constants": dict(self.constants),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        return cls(
            kind=data["kind"],
            source=data["source"],
            method=data["method"],
            constants=dict(data.get("constants", {})),
        )


@dataclass(frozen=True)
class Domain:
    """One energy domain a backend reports (a RAPL package, a GPU, the modelled CPU...).

    Attributes:
        key: unique within a meter, ``"<backend>:<domain>"``, e.g. ``"rapl:package-0"``, ``"nvml:gpu0"``.
        kind: what it covers: ``"package"``, ``"core"``, ``"uncore"``, ``"dram"``, ``"psys"``, ``"gpu"``,
            ``"cpu"``, ``"ram"``.
        in_total: whether its joules count towards the total. ``False`` for domains that lie inside
            another one (RAPL core and uncore lie inside package), so nothing is counted twice.
        provenance: measured or estimated, and how.
        update_period_s: the shortest interval the source resolves, in seconds (a window shorter than
            this is flagged as unresolved, never reported as a silent 0 J).
    """

    key: str
    kind: str
    in_total: bool
    provenance: Provenance
    update_period_s: float


@dataclass(frozen=True)
class ProbeResult:
    """Whether a backend can be used here.

    Attributes:
        backend: the backend's name (``"rapl"``, ``"nvml"``, ``"cpu-estimate"``, ``"ram-estimate"``).
        available: ``True`` when it can be used.
        reason: when not available, why, and what to do about it. Empty when available.
        domains: the domains it will report when available.
        notes: extra facts worth showing (e.g. a domain skipped as a duplicate), one line each.
    """

    backend: str
    available: bool
    reason: str = ""
    domains: tuple[Domain, ...] = ()
    notes: tuple[str, ...] = ()


class Reading(NamedTuple):
    """A snapshot of cumulative energy (an immutable named tuple: it is built twice per window, so cheap).

    Attributes:
        timestamp_s: ``time.monotonic()`` at the read, in seconds.
        energy_j: cumulative joules per domain key since the backend was opened, wraps unfolded.
    """

    timestamp_s: float
    energy_j: Mapping[str, float]


class Backend(abc.ABC):
    """Base class of energy sources. Subclasses implement ``probe``, ``read`` and ``close``."""

    #: Short name used in domain keys, ``greenmeter info`` and ``Meter(backends=[...])``.
    name: ClassVar[str] = ""

    #: How often the background sampler must call :meth:`poll`, in seconds; ``None`` if never.
    poll_interval_s: float | None = None

    @abc.abstractmethod
    def probe(self) -> ProbeResult:
        """Check whether this source works here. Never raises for an unusable source: says why instead."""

    @abc.abstractmethod
    def read(self) -> Reading:
        """Return cumulative joules per domain. Raises ``CounterReadError`` if a counter fails."""

    def poll(self) -> None:
        """Called by the background sampler every ``poll_interval_s``; by default a plain read."""
        self.read()

    def close(self) -> None:  # noqa: B027 - optional hook with a sensible default
        """Release handles. Safe to call more than once."""
