"""RAPL energy counters read through the Linux powercap sysfs interface.

Zones live under ``<sysfs root>/class/powercap/``: ``intel-rapl:N`` (``package-N`` or ``psys``), their
subzones ``intel-rapl:N:M`` (``core``, ``uncore``, ``dram``) and, on some laptops, ``intel-rapl-mmio:N``
copies of a package read through MMIO instead of MSRs. Each zone's ``energy_uj`` is a cumulative
counter in microjoules that wraps at ``max_energy_range_uj``; this backend unfolds the wraps and
hands out joules since it was opened. The same driver (``intel_rapl_msr``) serves AMD CPUs.

A step is counted only when the zone could have made it: a decrease is a wrap only when the wrapped
energy (``max_energy_range_uj`` - previous + new) is plausible for the zone's maximum power over the
interval, and an increase only when it is (:func:`~greenmeter.sources.base.plausible_step_j`, with
``constraint_0_max_power_uw`` or :data:`ASSUMED_MAX_POWER_W`). Anything else (a counter reset, a bad read,
a jump) counts 0 J, is recorded in the backend's anomalies (which reach the flags of the windows it falls
in), and later steps count from the new value. A value above ``max_energy_range_uj`` is no counter state:
it counts 0 J and later steps count from the last good value. A counter that stalls counts 0 J: the
counter alone cannot tell a stuck counter from an idle domain (DRAM zones of some client CPUs always
read 0), so a stall is not flagged.

The sysfs root is the ``sysfs_root`` argument, else the ``GREENMETER_SYSFS_ROOT`` environment
variable, else ``/sys``, so tests point it at a fake tree.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from greenmeter._errors import BackendError, BackendUnavailable, CounterReadError
from greenmeter.sources.band import BandModel
from greenmeter.sources.base import (
    PLAUSIBLE_POWER_FACTOR,
    AnomalyLog,
    Backend,
    Domain,
    ProbeResult,
    Provenance,
    Reading,
    SourceInfo,
    plausible_step_j,
)

__all__ = ["ASSUMED_MAX_POWER_W", "RAPL_UPDATE_PERIOD_S", "SYSFS_ROOT_ENV", "RaplBackend"]

#: Environment variable naming the sysfs root (default ``/sys``).
SYSFS_ROOT_ENV = "GREENMETER_SYSFS_ROOT"

#: How often RAPL refreshes its energy counters, in seconds: about every millisecond (Intel SDM
#: Vol. 3B, "RAPL Interfaces"; measured at ~1 ms by Haehnel et al., "Measuring Energy Consumption
#: for Short Code Paths Using RAPL", 2012). A window shorter than this is unresolved.
RAPL_UPDATE_PERIOD_S = 0.001

#: Power assumed for a domain whose zone gives no ``constraint_0_max_power_uw`` (absent or 0), in
#: watts. Deliberately high (no single CPU socket or its DRAM draws 1 kW today) so the wrap time
#: it yields, and with it the poll interval, errs on the short side, and so that the plausibility check
#: of counter steps errs on the side of believing the counter.
ASSUMED_MAX_POWER_W = 1000.0

#: Seconds added to the interval of a counter step before its plausibility check: ten RAPL update periods,
#: so that a reading taken just after an update is never judged against too short an interval.
_STEP_SLACK_S = 10 * RAPL_UPDATE_PERIOD_S

#: The coarsest RAPL energy unit in use (2**-14 J, ~61 uJ; Intel's is usually 2**-16 J): a counter value is
#: quantised to it at each of a window's two edges.
_RAPL_UNIT_J = 2.0 ** -14
_BAND = BandModel(
    fixed_j=2 * _RAPL_UNIT_J, power_period_s=RAPL_UPDATE_PERIOD_S,
    basis=(f"RAPL counter: its unit ({_RAPL_UNIT_J * 1e6:.0f} uJ) at both edges and its update period "
           f"({RAPL_UPDATE_PERIOD_S * 1e3:g} ms) x the window's mean power; RAPL's own accuracy against the wall "
           "is not in the band (check it with `greenmeter calibrate`)"),
)

_MAX_POLL_INTERVAL_S = 1.0
_MIN_POLL_INTERVAL_S = 0.005
_WRAP_SAFETY_FACTOR = 4.0  # poll 4x per shortest wrap time: a counter never wraps twice unseen
_ZONE_RE = re.compile(r"^(intel-rapl|intel-rapl-mmio):(\d+)(?::(\d+))?$")
_SUBZONE_KINDS = ("core", "uncore", "dram")
_METHOD = "cumulative energy counter energy_uj; wraps unfolded with max_energy_range_uj"


@dataclass(frozen=True)
class _Zone:
    """One usable RAPL zone: where its counter is and how far it counts (in microjoules)."""

    key: str
    kind: str
    label: str
    path: Path
    max_range_uj: int
    max_power_w: float
    power_assumed: bool  # no constraint_0_max_power_uw: max_power_w is ASSUMED_MAX_POWER_W

    @property
    def energy_path(self) -> Path:
        return self.path / "energy_uj"


class _Counter:
    """State of one counter: the joules counted (integer microjoules, exact) and the last good raw value.

    ``last_t`` is the clock taken just before ``last_uj`` was read, so that the clock after the next read
    minus ``last_t`` is the longest time the step between them can span.
    """

    __slots__ = ("counted_uj", "last_t", "last_uj")

    def __init__(self, raw_uj: int, t: float) -> None:
        self.counted_uj = 0
        self.last_uj = raw_uj
        self.last_t = t


def _read_int(path: Path) -> int:
    """Read one integer sysfs attribute (a few microseconds). Raises ``OSError`` or ``ValueError``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


def _kind_of(name: str) -> str | None:
    if re.fullmatch(r"package-\d+(-die-\d+)?", name):
        return "package"
    if name == "psys" or name in _SUBZONE_KINDS:
        return name
    return None


class RaplBackend(Backend):
    """Measured CPU package, core, uncore, DRAM and platform (psys) energy from RAPL powercap zones.

    The backend opens on its first successful :meth:`probe` (or first :meth:`read`): the zones are
    fixed then, and every reading is the energy since that moment. Thread-safe.

    Args:
        sysfs_root: the sysfs mount point; ``None`` means ``$GREENMETER_SYSFS_ROOT``, else ``/sys``.
        use_psys: count the platform (``psys``) domain as the total instead of package + DRAM. psys
            covers the whole SoC platform on recent laptops and desktops; probing fails without it.
        clock: the monotonic clock, in seconds, that stamps readings and times counter steps for their
            plausibility check (tests pass a fake clock that they move along with a fake counter).

    Attributes:
        sysfs_root: the sysfs root in use.
        poll_interval_s: seconds between background polls, set by a successful probe so that no
            counter can wrap twice between polls (``None`` before that).
    """

    info = SourceInfo(
        name="rapl", label="RAPL", kind="counter", domains=("package", "core", "uncore", "dram", "psys"),
        options={"sysfs_root": "sysfs_root", "use_psys": "use_psys"}, selection="usable",
    )

    def __init__(
        self, sysfs_root: str | os.PathLike[str] | None = None, *, use_psys: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from_env = sysfs_root is None and bool(os.environ.get(SYSFS_ROOT_ENV))
        if sysfs_root is None:
            sysfs_root = os.environ.get(SYSFS_ROOT_ENV) or "/sys"
        self.sysfs_root = Path(sysfs_root)
        self.use_psys = use_psys
        self.poll_interval_s: float | None = None
        self._root_origin = f" (from ${SYSFS_ROOT_ENV})" if from_env else ""
        self._lock = threading.RLock()
        self._zones: tuple[_Zone, ...] = ()
        self._counters: dict[str, _Counter] = {}
        self._result: ProbeResult | None = None
        self._closed = False
        self._clock = clock
        self._anomalies = AnomalyLog()

    # Probing -------------------------------------------------------------------------------
    def probe(self) -> ProbeResult:
        """Find the RAPL zones and check their counters can be read; opens the backend on success.

        Cheap (a directory listing and a few small file reads), never spawns a process and never
        raises for unusable hardware: the result says why and what to do. Once open, returns the
        same result.
        """
        with self._lock:
            if self._result is None:
                result = self._discover()
                if not result.available:
                    return result
                self._result = result
            return self._result

    def _discover(self) -> ProbeResult:
        powercap = self.sysfs_root / "class" / "powercap"
        try:
            entries = [m for m in map(_ZONE_RE.match, os.listdir(powercap)) if m]
        except OSError:
            entries = []
        if not entries:
            return self._unavailable(
                f"no RAPL interface at {powercap}{self._root_origin}: expected in a VM or container without "
                "RAPL passthrough and on non-x86 machines; on bare metal load the driver with "
                "`sudo modprobe intel_rapl_msr`. AMD CPUs need Linux 5.11 or later for RAPL via powercap."
            )
        # MSR zones before their MMIO copies, then by number (intel-rapl:10 after intel-rapl:2).
        entries.sort(key=lambda m: (m.group(1) != "intel-rapl", int(m.group(2)), int(m.group(3) or -1)))
        zones: list[_Zone] = []
        counters: dict[str, _Counter] = {}
        seen: dict[str, str] = {}
        notes: list[str] = []
        denied: list[Path] = []
        for match in entries:
            zone_id, path = match.group(0), powercap / match.group(0)
            try:
                name = (path / "name").read_text().strip()
                label = name
                if match.group(3) is not None:
                    parent = powercap / f"{match.group(1)}:{match.group(2)}"
                    label = f"{(parent / 'name').read_text().strip()}/{name}"
                kind = _kind_of(name)
                if kind is None:
                    notes.append(f"skipped RAPL zone {zone_id}: unknown domain name {name!r}")
                    continue
                key = f"rapl:{label}"
                if key in seen:
                    notes.append(f"skipped {zone_id} ({label}): duplicate of {seen[key]}, counted once from it")
                    continue
                max_range_uj = _read_int(path / "max_energy_range_uj")
                if max_range_uj <= 0:
                    raise ValueError(f"max_energy_range_uj is {max_range_uj}")
                try:
                    max_power_uw = _read_int(path / "constraint_0_max_power_uw")
                except (OSError, ValueError):
                    max_power_uw = 0
                read_t = self._clock()
                raw_uj = _read_int(path / "energy_uj")
            except PermissionError as err:
                denied.append(Path(err.filename) if err.filename else path / "energy_uj")
                continue
            except (OSError, ValueError) as err:
                notes.append(f"skipped RAPL zone {zone_id}: unreadable ({type(err).__name__}: {err})")
                continue
            # Wrap time = range / power. constraint_0_max_power_uw is the zone's largest long-term
            # power limit (powercap ABI); short bursts can exceed it, which the 4x safety factor
            # and the 1 s cap cover. Without it, ASSUMED_MAX_POWER_W (see above) is used.
            max_power_w = max_power_uw / 1e6 if max_power_uw > 0 else ASSUMED_MAX_POWER_W
            seen[key] = zone_id
            zones.append(_Zone(key, kind, label, path, max_range_uj, max_power_w, max_power_uw <= 0))
            counters[key] = _Counter(raw_uj, read_t)
        if denied:
            return self._unavailable(self._permission_reason(denied), notes)
        if not zones:
            return self._unavailable(f"RAPL zones exist at {powercap} but none can be read: {'; '.join(notes)}", notes)
        if self.use_psys and not any(z.kind == "psys" for z in zones):
            return self._unavailable(
                f"use_psys=True but there is no psys (platform) RAPL zone at {powercap}; psys exists on recent "
                "Intel client CPUs only. Use the default (package + DRAM) total instead.",
                notes,
            )
        self._zones, self._counters = tuple(zones), counters
        wrap_s = min(z.max_range_uj / 1e6 / z.max_power_w for z in zones)
        self.poll_interval_s = max(_MIN_POLL_INTERVAL_S, min(_MAX_POLL_INTERVAL_S, wrap_s / _WRAP_SAFETY_FACTOR))
        domains = tuple(self._domain(z) for z in zones)
        return ProbeResult(self.name, True, domains=domains, notes=tuple(notes))

    def _domain(self, zone: _Zone) -> Domain:
        if self.use_psys:
            in_total = zone.kind == "psys"
        else:  # core and uncore lie inside package; psys covers package and more
            in_total = zone.kind in ("package", "dram")
        provenance = Provenance("measured", f"RAPL powercap {zone.path} ({zone.label})", _METHOD)
        return Domain(zone.key, zone.kind, in_total, provenance, RAPL_UPDATE_PERIOD_S, _BAND)

    def _unavailable(self, reason: str, notes: list[str] | None = None) -> ProbeResult:
        return ProbeResult(self.name, False, reason=reason, notes=tuple(notes or ()))

    @staticmethod
    def _permission_reason(paths: list[Path]) -> str:
        listed = " ".join(str(p) for p in paths)
        return (
            f"permission denied reading RAPL energy counters ({listed}): since Linux 5.10 (and kernels "
            "patched for CVE-2020-8694, the PLATYPUS power side channel) energy_uj is readable only by root. "
            f"Fix: run as root; or `sudo chmod o+r {listed}` (lost at reboot); or make read access permanent "
            "with a udev rule or a systemd-tmpfiles rule, ideally for a trusted group only (see the FAQ, "
            "'RAPL permissions'). Granting read access re-opens that side channel to whoever gets it."
        )

    # Reading -------------------------------------------------------------------------------
    def read(self) -> Reading:
        """Return the joules each domain used since the backend opened, wraps unfolded.

        Opens the backend first if :meth:`probe` was not called. Sees at most one wrap per counter
        since the previous read, so the meter polls at ``poll_interval_s``. A step the zone could not
        have made (see the module docstring) counts 0 J and is recorded in :meth:`anomalies_since`.

        Raises:
            BackendUnavailable: the backend cannot be opened here (the message says why).
            CounterReadError: a counter file could not be read after a successful probe.
            BackendError: the backend is closed.
        """
        with self._lock:
            if self._closed:
                raise BackendError("the RAPL backend is closed; create a new one")
            if self._result is None:
                result = self.probe()
                if not result.available:
                    raise BackendUnavailable(f"energy source 'rapl' is unusable here: {result.reason}")
            read_t = self._clock()
            raws: list[int] = []
            for zone in self._zones:
                try:
                    raws.append(_read_int(zone.energy_path))
                except (OSError, ValueError) as err:
                    raise CounterReadError(f"cannot read RAPL counter {zone.energy_path}: {err}") from err
            timestamp_s = self._clock()
            energy_j: dict[str, float] = {}
            for zone, raw_uj in zip(self._zones, raws):
                counter = self._counters[zone.key]
                self._count(zone, counter, raw_uj, read_t, timestamp_s)
                energy_j[zone.key] = counter.counted_uj / 1_000_000
            return Reading(timestamp_s=timestamp_s, energy_j=energy_j)

    def _count(self, zone: _Zone, counter: _Counter, raw_uj: int, read_t: float, now: float) -> None:
        """Add the step from the counter's last good value to ``raw_uj`` when it is plausible; else say so."""
        last_uj, interval_s = counter.last_uj, now - counter.last_t
        if not 0 <= raw_uj <= zone.max_range_uj:
            self._anomalies.add(
                f"RAPL {zone.label} counter read {raw_uj:,} uJ, outside its range 0 to {zone.max_range_uj:,} uJ "
                f"(max_energy_range_uj): no counter value; counted as 0 J, and the next reading is compared "
                f"with the last good one ({last_uj:,} uJ)"
            )
            return
        bound_j = plausible_step_j(zone.max_power_w, interval_s, _STEP_SLACK_S)
        step_uj = raw_uj - last_uj
        if step_uj < 0:
            # A wrap. The true modulus is one counter unit (~61 uJ) above max_energy_range_uj; that
            # error per wrap is negligible.
            step_uj += zone.max_range_uj
            if step_uj / 1e6 > bound_j:
                self._anomalies.add(
                    f"RAPL {zone.label} counter went from {last_uj:,} to {raw_uj:,} uJ in {interval_s:.3g} s: "
                    f"not a plausible wrap (it would mean {step_uj / 1e6:,.1f} J, "
                    f"{self._bound_text(zone, interval_s, bound_j)}); counted as 0 J (counter reset or bad read), "
                    "later readings count from the new value"
                )
                step_uj = 0
        elif step_uj / 1e6 > bound_j:
            self._anomalies.add(
                f"RAPL {zone.label} counter jumped from {last_uj:,} to {raw_uj:,} uJ in {interval_s:.3g} s: "
                f"{step_uj / 1e6:,.1f} J is not plausible ({self._bound_text(zone, interval_s, bound_j)}); "
                "counted as 0 J (bad read or counter fault), later readings count from the new value"
            )
            step_uj = 0
        counter.counted_uj += step_uj
        counter.last_uj, counter.last_t = raw_uj, read_t

    @staticmethod
    def _bound_text(zone: _Zone, interval_s: float, bound_j: float) -> str:
        assumed = ", assumed: the zone gives no constraint_0_max_power_uw" if zone.power_assumed else ""
        return (f"more than {PLAUSIBLE_POWER_FACTOR:g} x {zone.max_power_w:g} W{assumed} x "
                f"{max(interval_s, 0.0) + _STEP_SLACK_S:.3g} s = {bound_j:,.1f} J")

    def anomalies_since(self, t0: float) -> tuple[str, ...]:
        """Counter steps not counted since ``t0`` (a ``time.perf_counter()`` value), one line each."""
        return self._anomalies.since(t0)

    def close(self) -> None:
        """Stop the backend; later reads raise ``BackendError``. Safe to call more than once."""
        with self._lock:
            self._closed = True
