"""The contract every energy source follows, and the small records it returns.

A backend is measurement only. It answers three calls:

- ``probe()``: can it be used here? If not, a reason a user can act on (the fix, not just the symptom).
- ``read()``: a :class:`Reading`, the cumulative joules per domain since the backend was opened
  (counter wraps already unfolded), with a ``time.monotonic()`` timestamp. Thread-safe.
- ``close()``: release handles. Idempotent.

Backends that must be polled between window edges (to see every counter wrap, or to integrate sampled
power) set ``poll_interval_s``; the meter's background sampler then calls ``poll()`` at least that often.
Units are SI and converted at this boundary: a backend never hands out microjoules or milliwatts.

A counter step that the device could not have made (a decrease that is no plausible wrap, a jump above
what its maximum power allows over the interval: :func:`plausible_step_j`) is never counted: the backend
counts 0 J for it, keeps an :class:`AnomalyLog` entry saying what it saw and did, and the meter puts the
entries of each window's span in that window's flags (:meth:`Backend.anomalies_since`).

Every source class carries its own metadata as a :class:`SourceInfo` in its ``info`` class attribute: its
name, what it reports, the meter options it takes, whether it is per device and how it takes part in the
automatic choice. The registry (:mod:`greenmeter.sources.registry`) and the automatic choice
(:mod:`greenmeter.sources.select`) read nothing else, so a new source touches no other module.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, NamedTuple

from greenmeter._checks import registry_name
from greenmeter._errors import ConfigError
from greenmeter.sources.band import BandModel

__all__ = [
    "HARDWARE_OF_DOMAIN",
    "METER_OPTIONS",
    "PLAUSIBLE_POWER_FACTOR",
    "AnomalyLog",
    "Backend",
    "Domain",
    "ProbeResult",
    "Provenance",
    "Reading",
    "SourceInfo",
    "hardware_of",
    "plausible_step_j",
]

log = logging.getLogger("greenmeter")

ProvenanceKind = Literal["measured", "estimated"]
SourceKind = Literal["counter", "estimate"]
Selection = Literal["usable", "stand-in", "named"]

#: The :class:`~greenmeter.Meter` keywords a source may take (see :attr:`SourceInfo.options`). ``calibration``: a
#: wall-meter calibration profile of this host (``greenmeter calibrate``), taken by the CPU and RAM estimates.
METER_OPTIONS = ("mode", "sysfs_root", "use_psys", "gpus", "calibration")

#: The piece of hardware each built-in domain kind belongs to. A kind not listed is its own hardware.
HARDWARE_OF_DOMAIN: Mapping[str, str] = MappingProxyType({
    "package": "cpu", "core": "cpu", "uncore": "cpu", "psys": "cpu", "cpu": "cpu",
    "dram": "ram", "ram": "ram",
    "gpu": "gpu",
})

#: How far above a device's maximum power a counter step may go and still be believed. RAPL's
#: ``constraint_0_max_power_uw`` and NVML's power limit are long-term limits: turbo bursts run above them
#: (an Intel laptop CPU's short-term limit PL2 is up to about 4 x its long-term PL1, e.g. 55 W against
#: 15 W), and a counter read late by its own update period adds a little more. A step beyond this is no
#: measurement: a counter reset, a bad read or a counter fault, each off by far more than 4 x.
PLAUSIBLE_POWER_FACTOR = 4.0

#: How many anomalies an :class:`AnomalyLog` keeps (the oldest go first).
_ANOMALY_LIMIT = 256

_KINDS = ("counter", "estimate")
_SELECTIONS = ("usable", "stand-in", "named")


def hardware_of(domain_kind: str) -> str:
    """The hardware a domain kind belongs to: ``"cpu"``, ``"ram"``, ``"gpu"``, or the kind itself."""
    return HARDWARE_OF_DOMAIN.get(domain_kind, domain_kind)


def plausible_step_j(max_power_w: float, interval_s: float, slack_s: float) -> float:
    """The most energy a counter may gain between two reads and still be believed, in joules.

    It is :data:`PLAUSIBLE_POWER_FACTOR` x ``max_power_w`` x (``interval_s`` + ``slack_s``). Backends
    count a larger step (or a decrease that would be a larger wrap) as 0 J and record it in their
    :class:`AnomalyLog`.

    Args:
        max_power_w: the device's maximum power, in watts (its stated limit, or a stated assumption).
        interval_s: the longest time the step can span, in seconds: from the clock taken before the
            previous read to the clock taken after this one (negative values count as 0).
        slack_s: seconds added for the counter's own update period (a reading lags the hardware by up
            to one period).

    Returns:
        The bound, in joules.
    """
    return PLAUSIBLE_POWER_FACTOR * max_power_w * (max(interval_s, 0.0) + slack_s)


class AnomalyLog:
    """A backend's record of the counter steps it did not count, for the flags of the windows they fall in.

    Each entry is one line naming the counter, the values seen and what the backend did, stamped with
    ``time.perf_counter()`` (the clock of window edges) when it is added. Thread-safe; keeps the newest
    256 entries. Adding an entry also logs it once as a warning on the ``greenmeter`` logger.
    """

    def __init__(self) -> None:
        self._entries: deque[tuple[float, str]] = deque(maxlen=_ANOMALY_LIMIT)
        self._lock = threading.Lock()

    def add(self, message: str) -> None:
        """Record one anomaly, now, and log it as a warning."""
        log.warning("greenmeter: %s", message)
        with self._lock:
            self._entries.append((time.perf_counter(), message))

    def since(self, t0: float) -> tuple[str, ...]:
        """The distinct messages recorded at or after ``time.perf_counter()`` value ``t0``, oldest first."""
        if not self._entries:  # the common case, at every window's end: no lock taken
            return ()
        with self._lock:
            entries = list(self._entries)
        return tuple(dict.fromkeys(message for t, message in entries if t >= t0))


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
        band: how far off its figures may be (:class:`~greenmeter.sources.band.BandModel`); ``None`` when the
            source states no band (a third-party source), which every figure it is part of then says.
        includes: other hardware (:func:`hardware_of` names) that a measured figure of this domain includes
            beside its own kind's, e.g. ``("cpu", "ram")`` for the whole-module counter of a Grace Hopper module
            (GPU + Grace CPU + LPDDR5X). The domains of that hardware from other sources are then kept out of the
            total (:func:`~greenmeter.sources.select.nest_in_modules`), so nothing is counted twice.
    """

    key: str
    kind: str
    in_total: bool
    provenance: Provenance
    update_period_s: float
    band: BandModel | None = None
    includes: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class SourceInfo:
    """What a source class says about itself: the registry, the automatic choice and the outputs read it.

    Attributes:
        name: the registry name, also the prefix of its domain keys (``"rapl"`` -> ``"rapl:package-0"``):
            lower case letters, digits, ``-``, ``_`` and ``.``.
        kind: ``"counter"`` (reads a hardware counter: measured) or ``"estimate"`` (a model: estimated).
        domains: the domain kinds it reports, its main one first (``("package", "core", "uncore", "dram",
            "psys")`` for RAPL); each belongs to a piece of hardware (:func:`hardware_of`), and the first
            one's hardware is the one it stands for in summaries and as a stand-in.
        label: how people name it in summaries (``"RAPL"``); defaults to ``name``.
        options: the meter options it takes (keys from :data:`METER_OPTIONS`) mapped to its constructor's
            keyword for each, e.g. ``{"gpus": "devices"}``. A source gets only the options it declares.
        per_device: one device per rank in a distributed job (NVML): each rank measures its own device,
            passed through the ``gpus`` option, which a per-device source must therefore take.
        selection: how it takes part in the automatic choice (``Meter()`` without ``backends``):
            ``"usable"``: probed, and used wherever usable (the hardware counters);
            ``"stand-in"``: used for the hardware of its main domain kind only where no source chosen
            before it reports a domain of that hardware in its total, with :attr:`fallback_note` said
            (the estimates); ``"named"``: only when named in ``Meter(backends=[...])`` (the default, so
            that a new source never joins a total, and counts something twice, unasked).
        fallback_note: a stand-in's note, a :meth:`str.format` template with ``{hardware}`` (``"CPU"``),
            ``{name}`` (this source), ``{counters}`` (the labels of the automatic counters that could
            have measured that hardware, joined by "or") and ``{reasons}`` (why each did not, e.g.
            ``"RAPL is unusable (...)"``, joined by "; ").

    Raises:
        ConfigError: a field outside its allowed values (the message names the field and the values).
    """

    name: str
    kind: SourceKind
    domains: tuple[str, ...]
    label: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    per_device: bool = False
    selection: Selection = "named"
    fallback_note: str = "{hardware} energy is estimated ({name}), not measured: {reasons}"

    def __post_init__(self) -> None:
        registry_name("SourceInfo.name", self.name)
        if self.kind not in _KINDS:
            raise ConfigError(f"SourceInfo.kind of {self.name!r} must be one of {', '.join(_KINDS)}, "
                              f"not {self.kind!r}")
        if self.selection not in _SELECTIONS:
            raise ConfigError(f"SourceInfo.selection of {self.name!r} must be one of {', '.join(_SELECTIONS)}, "
                              f"not {self.selection!r}")
        domains = (self.domains,) if isinstance(self.domains, str) else tuple(self.domains)
        if not domains or not all(isinstance(k, str) and k for k in domains):
            raise ConfigError(f"SourceInfo.domains of {self.name!r} must name at least one domain kind, "
                              f"e.g. ('gpu',), not {self.domains!r}")
        options = dict(self.options)
        unknown = sorted(set(options) - set(METER_OPTIONS))
        if unknown:
            raise ConfigError(f"SourceInfo.options of {self.name!r} names unknown meter option(s) "
                              f"{', '.join(unknown)}; choose from {', '.join(METER_OPTIONS)}")
        bad = [kw for kw in options.values() if not isinstance(kw, str) or not kw.isidentifier()]
        if bad:
            raise ConfigError(f"SourceInfo.options of {self.name!r} must map to constructor keywords, not {bad!r}")
        if self.per_device and "gpus" not in options:
            raise ConfigError(f"SourceInfo of {self.name!r} is per_device, so its options must take 'gpus' "
                              "(the rank's device list), e.g. options={'gpus': 'devices'}")
        object.__setattr__(self, "domains", domains)
        object.__setattr__(self, "options", MappingProxyType(options))
        object.__setattr__(self, "label", self.label or self.name)

    @property
    def hardware(self) -> str:
        """The hardware of its main domain kind (``"cpu"`` for RAPL, ``"gpu"`` for NVML)."""
        return hardware_of(self.domains[0])

    def covers(self, hardware: str) -> bool:
        """Whether one of its domain kinds belongs to ``hardware`` (RAPL covers ``"cpu"`` and ``"ram"``)."""
        return any(hardware_of(kind) == hardware for kind in self.domains)


class Backend(abc.ABC):
    """Base class of energy sources. Subclasses implement ``probe``, ``read`` and ``close``.

    A source that the registry creates by name also sets the class attribute ``info`` (a
    :class:`SourceInfo`); its ``name`` then comes from there. Ready-made objects handed to
    ``Meter(backends=[...])`` need only ``name``.
    """

    #: Short name used in domain keys, ``greenmeter info`` and ``Meter(backends=[...])``.
    name: ClassVar[str] = ""

    #: The source's metadata (set by every registered source class).
    info: ClassVar[SourceInfo]

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

    def anomalies_since(self, t0: float) -> tuple[str, ...]:
        """Counter steps this backend did not count since ``t0``, one line each (see :class:`AnomalyLog`).

        The meter adds them to the flags of every window that began at or before them.

        Args:
            t0: a ``time.perf_counter()`` value, in seconds (a window's start).

        Returns:
            The messages, oldest first; by default none.
        """
        return ()

    def close(self) -> None:  # noqa: B027 - optional hook with a sensible default
        """Release handles. Safe to call more than once."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        info = cls.__dict__.get("info")
        if info is None:
            return
        if not isinstance(info, SourceInfo):
            raise TypeError(f"{cls.__qualname__}.info must be a greenmeter.sources.base.SourceInfo, "
                            f"not {type(info).__name__}")
        if "name" in cls.__dict__ and cls.__dict__["name"] != info.name:
            raise TypeError(f"{cls.__qualname__}.name {cls.__dict__['name']!r} differs from its info.name "
                            f"{info.name!r}; set the name in info only")
        cls.name = info.name

    @classmethod
    def device_name(cls, provenance: Provenance) -> str | None:
        """The model of the device one of this source's domains measured, from that domain's provenance.

        Exports (CodeCarbon's ``gpu_model``, the model card's ``hardware_used``) call it on stored
        domains, so it reads only the provenance the source itself wrote, e.g. ``"NVIDIA H200"``.

        Returns:
            The device's model, or ``None`` when this source does not name one (the default).
        """
        return None
