"""An estimate of memory (DRAM) energy from memory size and a power-per-gigabyte constant.

- ``mode="process"`` (default): the resident set size (RSS) of this process plus the unique memory (USS: the
  pages no other process maps, so a forked worker's pages shared with this process are not counted twice) of
  its live descendants, such as DataLoader workers (:mod:`greenmeter.sources.process_tree`), sampled by
  :meth:`RamEstimateBackend.poll` every
  ``sample_interval_s``. Energy is integrated sample-and-hold: each sample's RSS is taken to hold until
  the next one, ``E = sum(rss_i * W_per_GB * (t_{i+1} - t_i))``, and a read between samples extends the
  last sample to the read's time. So a read is cheap (no system call but the clock) and cumulative energy
  never goes back when the next sample arrives.
- ``mode="machine"``: the machine's memory (``psutil.virtual_memory().total``) at a constant
  ``total_GB * W_per_GB``, so ``E = P * dt``.

GB here means 2**30 bytes, the unit DIMM capacities are stated in (CodeCarbon divides by 1024**3 too).
The default of 0.392 W/GB is Cloud Carbon Footprint's memory coefficient; see ``WATTS_PER_GB_SOURCE``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError, CounterReadError
from greenmeter.sources.band import BandModel
from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading, SourceInfo
from greenmeter.sources.process_tree import snapshot

if TYPE_CHECKING:
    from greenmeter.calibration.profile import CalibrationProfile

__all__ = ["BYTES_PER_GB", "WATTS_PER_GB", "WATTS_PER_GB_RANGE", "WATTS_PER_GB_RANGE_SOURCE",
           "WATTS_PER_GB_SOURCE", "RamEstimateBackend"]

#: Bytes in a GB as used here: 2**30 (DIMM capacities are binary).
BYTES_PER_GB = 1 << 30
#: Cloud Carbon Footprint's memory coefficient, in watts per GB.
WATTS_PER_GB = 0.392
WATTS_PER_GB_SOURCE = (
    "Cloud Carbon Footprint methodology, Memory "
    "(https://www.cloudcarbonfootprint.org/docs/methodology/, Thoughtworks, read 2026): 0.392 W/GB "
    "(0.000392 kWh per GB-hour), the mean of Crucial's '3 W per 8 GB of DDR3 or DDR4' (0.375 W/GB) and "
    "Micron TN-40-07 DDR4 power calculation (~0.4083 W/GB)"
)

#: The range of watts per GB across memory sources, for the band of the default constant: Crucial's 3 W per
#: 8 GB (0.375) and Micron TN-40-07's ~0.4083 W/GB, which :data:`WATTS_PER_GB` averages, and CodeCarbon 3.3's
#: 5 W per x86 DIMM over the DIMM sizes its model assumes, 8 to 64 GB (0.625 to 0.078 W/GB).
WATTS_PER_GB_RANGE = (5 / 64, 5 / 8)
WATTS_PER_GB_RANGE_SOURCE = (
    "Crucial 0.375 and Micron TN-40-07 ~0.4083 W/GB (Cloud Carbon Footprint's sources) and CodeCarbon 3.3's "
    "5 W per x86 DIMM (codecarbon/external/ram.py RAM_SLOT_POWER_X86) for DIMMs of 8 to 64 GB"
)

_KEY = "ram-estimate:ram"
_SOURCE = "RAM power model (ram-estimate)"
_STATM = "/proc/self/statm"


def _page_size() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 4096


class RamEstimateBackend(Backend):
    """Estimated memory energy: a watts-per-GB constant times this process's RSS, or the machine's memory.

    Args:
        mode: ``"process"`` (RSS of this process, sampled) or ``"machine"`` (all memory, constant power).
        watts_per_gb: power per GB (2**30 bytes), in watts; Cloud Carbon Footprint's 0.392 W/GB by default.
        sample_interval_s: how often the background sampler must sample RSS, in seconds (process mode).
        profile: a :class:`~greenmeter.calibration.profile.CalibrationProfile` of this host (``greenmeter
            calibrate``): its ``w_gb`` replaces the watts per GB when it was fitted on this mode's memory (resident
            memory in process mode, installed memory in machine mode; else the generic constant stays, said in the
            probe's notes); the provenance says "calibrated against <meter log>, R^2 = ..., n runs" and the band is
            the fit's held-out error. The Meter passes it as ``Meter(calibration=profile)``.

    Raises:
        ConfigError: an unknown mode, or a negative or non-finite constant; a profile of another host, or with
            watts_per_gb.
    """

    info = SourceInfo(
        name="ram-estimate", kind="estimate", domains=("ram",), options={"mode": "mode", "calibration": "profile"},
        selection="stand-in",
        fallback_note="{hardware} energy is estimated ({name}), not measured: no usable {counters} DRAM counter",
    )

    def __init__(
        self, mode: str = "process", *, watts_per_gb: float | None = None, sample_interval_s: float = 0.5,
        profile: CalibrationProfile | None = None,
    ) -> None:
        if mode not in ("process", "machine"):
            raise ConfigError(f"ram-estimate mode must be 'process' or 'machine', not {mode!r}")
        if not _is_number(sample_interval_s) or not sample_interval_s > 0:
            raise ConfigError(
                f"sample_interval_s must be a finite number of seconds > 0, not {sample_interval_s!r}"
            )
        if watts_per_gb is not None and (not _is_number(watts_per_gb) or watts_per_gb < 0):
            raise ConfigError(f"watts_per_gb must be a finite number of watts >= 0, not {watts_per_gb!r}")
        self.mode = mode
        self.profile: CalibrationProfile | None = None
        if profile is not None:
            from greenmeter.calibration.profile import checked_profile  # the calibration stage, loaded when given one

            self.profile = checked_profile(profile, "ram-estimate")
        self._profile_note = ""
        if self.profile is not None:  # used only for the memory it was fitted on
            if watts_per_gb is not None:
                raise ConfigError("ram-estimate takes a calibration profile or watts_per_gb, not both")
            if mode in self.profile.ram_modes:
                watts_per_gb = self.profile.w_gb
            else:
                self._profile_note = (
                    f"the calibration profile's {self.profile.w_gb:.4g} W/GB was fitted on "
                    f"{' and '.join(self.profile.ram_modes) or 'no'} mode memory, not {mode} mode's, so the generic "
                    f"{WATTS_PER_GB:g} W/GB is used")
                self.profile = None
        self.sample_interval_s = float(sample_interval_s)
        self.watts_per_gb = WATTS_PER_GB if watts_per_gb is None else float(watts_per_gb)
        self._w_per_byte = self.watts_per_gb / BYTES_PER_GB
        self._lock = threading.Lock()
        self._unavailable = ""
        self._page = _page_size()
        self._energy_j = 0.0
        constants: dict[str, Any] = {
            "mode": mode,
            "w_per_gb": self.watts_per_gb,
            "w_per_gb_source": (WATTS_PER_GB_SOURCE if watts_per_gb is None else self.profile.describe()
                                if self.profile is not None else "user override watts_per_gb"),
            "bytes_per_gb": BYTES_PER_GB,
        }
        if mode == "process":
            self.poll_interval_s: float | None = self.sample_interval_s
            own = self._statm_rss if os.path.exists(_STATM) else self._psutil_rss
            self._rss_reader = lambda: own() + snapshot(cpu=False).rss_b
            try:
                rss = self._rss_reader()
            except (OSError, ImportError) as err:
                self._unavailable = f"cannot read this process's resident set size: {err}"
                rss = 0
            self._last = (time.monotonic(), rss)
            constants["sample_interval_s"] = self.sample_interval_s
            method = (
                "resident set size of this process plus the unique memory (USS) of its live descendants, sampled "
                "every "
                f"{self.sample_interval_s:g} s, integrated sample-and-hold, times a power per GB"
            )
            # The energy grows with the clock between samples (last RSS held), so a short window is
            # resolved in time; what the sample interval limits is how fast RSS changes are seen.
            update_period_s = time.get_clock_info("monotonic").resolution
        else:
            self.poll_interval_s = None
            try:
                import psutil

                total = int(psutil.virtual_memory().total)
            except (ImportError, OSError) as err:
                self._unavailable = f"cannot read the machine's memory size with psutil: {err}"
                total = 0
            self.memory_bytes = total
            self.power_w = total * self._w_per_byte
            self._t0 = time.monotonic()
            constants.update(memory_gb=total / BYTES_PER_GB, power_w=self.power_w)
            method = "installed memory (psutil.virtual_memory().total) times a power per GB, constant power"
            # Constant power: any window is resolved down to the clock's resolution.
            update_period_s = time.get_clock_info("monotonic").resolution
        source = _SOURCE
        if self.profile is not None:
            constants.update(self.profile.constants())
            source = f"{_SOURCE}, {self.profile.describe()}"
        provenance = Provenance("estimated", source, method, constants)
        self.domain = Domain(_KEY, "ram", True, provenance, update_period_s, self._band_model(watts_per_gb is None))

    def _band_model(self, default_constant: bool) -> BandModel:
        """The band of this estimate: the range of its watts per GB (none for the user's own constant)."""
        if self.profile is not None:  # the fit's own error: one model shared with the calibrated CPU estimate
            error = self.profile.band_error
            low, high = 1.0 - error, 1.0 + error
            why = (f"its {self.watts_per_gb:.4g} W/GB is the calibration's, within +/-{error:.1%} "
                   f"({self.profile.band_basis()})")
        elif default_constant:
            low, high = (w / self.watts_per_gb for w in WATTS_PER_GB_RANGE)
            why = (f"its {self.watts_per_gb:g} W/GB could be {WATTS_PER_GB_RANGE[0]:.3g}-{WATTS_PER_GB_RANGE[1]:.3g} "
                   f"W/GB ({WATTS_PER_GB_RANGE_SOURCE})")
        else:
            low = high = 1.0
            why = f"the user's {self.watts_per_gb:g} W/GB, taken as exact"
        sampled = (f"; memory changes between {self.sample_interval_s:g} s samples are not in the band"
                   if self.mode == "process" else "")
        model = (f"ram-estimate {self.watts_per_gb:g} W/GB (range {low * self.watts_per_gb:.3g}-"
                 f"{high * self.watts_per_gb:.3g})")
        if self.profile is not None:
            model = self.profile.band_model()
        return BandModel(model, low, high, basis=f"RAM estimate: {why}{sampled}")

    def _statm_rss(self) -> int:
        with open(_STATM, "rb") as handle:
            return int(handle.read().split()[1]) * self._page

    def follow(self, pid: int) -> None:
        """Check that ``pid`` is a live process that process mode will count (it counts every live descendant).

        Raises:
            ConfigError: in machine mode, or for a missing pid.
        """
        if self.mode != "process":
            raise ConfigError("follow() applies to process mode; machine mode counts all installed memory")
        import psutil

        if not psutil.pid_exists(pid):
            raise ConfigError(f"cannot follow process {pid}: it does not exist")

    @staticmethod
    def _psutil_rss() -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    @property
    def last_sample(self) -> tuple[float, int]:
        """The latest RSS sample as ``(time.monotonic() seconds, bytes)`` (process mode)."""
        with self._lock:
            return self._last

    def probe(self) -> ProbeResult:
        """Available when the RSS (process mode) or the memory size (machine mode) can be read."""
        if self._unavailable:
            return ProbeResult(self.name, False, reason=self._unavailable + "; is psutil installed?")
        notes: tuple[str, ...] = ()
        if self.mode == "process":
            notes = (
                "process mode counts this process's resident memory and its live descendants' unique memory; "
                "DRAM draws power for all installed memory, so this is an attribution, not a measurement",
            )
        if self.profile is not None:
            notes += (f"using this machine's calibration ({self.profile.describe()}): {self.watts_per_gb:.4g} W/GB",)
        elif self._profile_note:
            notes += (self._profile_note,)
        return ProbeResult(self.name, True, domains=(self.domain,), notes=notes)

    def poll(self) -> None:
        """Take an RSS sample and fold the previous one into the integral (process mode; no-op otherwise).

        Raises:
            CounterReadError: the RSS could not be read.
        """
        if self.mode != "process" or self._unavailable:
            return
        try:
            rss = self._rss_reader()
        except OSError as err:
            raise CounterReadError(f"cannot read this process's resident set size: {err}") from err
        with self._lock:
            now = time.monotonic()
            last_t, last_rss = self._last
            self._energy_j += last_rss * self._w_per_byte * (now - last_t)
            self._last = (now, rss)

    def read(self) -> Reading:
        """Cumulative estimated joules since the backend was made; makes no system call but the clock.

        Raises:
            CounterReadError: the backend could not start (see :meth:`probe`).
        """
        if self._unavailable:
            raise CounterReadError(self._unavailable)
        if self.mode == "machine":
            now = time.monotonic()
            return Reading(now, {_KEY: self.power_w * (now - self._t0)})
        with self._lock:
            now = time.monotonic()
            last_t, last_rss = self._last
            energy = self._energy_j + last_rss * self._w_per_byte * (now - last_t)
        return Reading(now, {_KEY: energy})

    def close(self) -> None:
        """Nothing to release."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
