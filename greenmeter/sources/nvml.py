"""NVIDIA GPU energy through NVML (the ``pynvml`` module of the ``nvidia-ml-py`` package).

Each GPU gets one of two methods, chosen at :meth:`NvmlBackend.probe` and named in its provenance:

- **Total energy counter** (Volta and newer): ``nvmlDeviceGetTotalEnergyConsumption`` returns millijoules
  since the driver was loaded; a reading is the difference from the value at probe, in joules. NVML
  refreshes the counter about every 100 ms (ML.ENERGY, "Thermally Stable Profiling for Accurate GPU Energy
  Measurement"; Yang et al., "Part-time Power Measurements: nvidia-smi's Lack of Attention", SC'24), so
  its domain says ``update_period_s = 0.1``. The counter never decreases, and it cannot gain more than the
  GPU's power allows: a decrease (the driver was reloaded, restarting the counter) or a step above
  :func:`~greenmeter.sources.base.plausible_step_j` for the GPU's largest power limit (or
  :data:`ASSUMED_GPU_MAX_POWER_W` where NVML gives none) counts 0 J, is recorded in the backend's
  anomalies (which reach the flags of the windows it falls in), and later steps count from the new value.
  A counter that stalls counts 0 J, as it says.
- **Integrated power samples** (GPUs where that call answers *Not Supported*: pre-Volta, some virtual
  GPUs): the instantaneous power field (``NVML_FI_DEV_POWER_INSTANT`` through ``nvmlDeviceGetFieldValues``)
  where the GPU answers it, else ``nvmlDeviceGetPowerUsage`` (a mean over about the last second on Ampere
  and newer), in milliwatts, sampled by :meth:`NvmlBackend.poll` every ``power_sample_interval_s`` and by
  every :meth:`NvmlBackend.read`, integrated with the trapezoid rule. The fallback, the reading integrated
  and its effective resolution (the interval, plus the averaging for ``nvmlDeviceGetPowerUsage``) are said
  in the probe's notes, the provenance and the band; the resolution is the domain's ``update_period_s``.

**Short windows.** A reading at a window's edge may be one update (or one effective resolution) old, so a
window's figure may be off by up to that period x the GPU's power at each edge. A window shorter than
:data:`SHORT_WINDOW_PERIODS` update periods between its two reads is flagged with that bound as a fraction
(update period / duration), and every window's band has a half-width of the period x the highest mean power
its own figure allows (``E / (T - period)``), so the band holds the true energy wherever the counter's lag
is the only error.

**Numbering.** GPU numbering follows CUDA: ``devices=[0]`` and the domain ``nvml:gpu0`` mean ``cuda:0``.
Where torch is imported and has initialised CUDA, each CUDA device is matched to its NVML device by UUID
(``torch.cuda.get_device_properties(i).uuid`` to ``nvmlDeviceGetHandleByUUID``), so CUDA's default
fastest-first order and ``CUDA_VISIBLE_DEVICES`` are followed exactly. Otherwise ``CUDA_VISIBLE_DEVICES``
is read as CUDA reads it (integer indices, ``GPU-``/``MIG-`` UUIDs or unique prefixes; the list ends at an
empty entry, a negative index, an index past the last GPU or a UUID that matches no single GPU, the last two
said in every window's flags),
and with it unset NVML's (PCI bus) order is used, as CUDA does with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. Only
the handles needed are opened; a GPU that cannot be opened is left out and every window says "GPU energy
NOT included" for it. The domain's source names the NVML index and UUID.

**Attribution.** NVML has no per-process energy: a GPU's figure includes every process on it. The compute
processes NVML lists on each measured GPU are checked at every read, and a window whose edges saw another
process is flagged; inside a container NVML cannot see other PID namespaces, so an empty list there is
flagged as "unknown". A MIG instance has no energy counter of its own: its parent GPU is measured and
every window says that the figure is shared with the GPU's other instances.

**Grace Hopper modules.** On a GH200 (and GB200) module the GPU is wired to a Grace CPU over NVLink-C2C, and
NVML's power fields take a ``scopeId``: ``NVML_POWER_SCOPE_GPU`` (0) for the GPU alone, ``NVML_POWER_SCOPE_MODULE``
(1) for the whole module, GPU + Grace CPU + its LPDDR5X memory (nvml.h: "CPU here refers to NVIDIA CPU (e.g.
Grace). x86 or non-NVIDIA ARM is not supported"). The total energy counter has no scope argument, and on GH200 it
counts the whole module (Zeus, ml-energy/zeus#172). A GPU is taken to sit on such a module when both signals NVML
gives hold: ``nvmlDeviceGetC2cModeInfoV`` says C2C is enabled, and the module scope of ``NVML_FI_DEV_ENERGY`` or
``NVML_FI_DEV_POWER_INSTANT`` answers. Neither is enough alone: the GB10 (DGX Spark) has C2C but no module scope
(Zeus a5613e5), and drivers older than the ``scopeId`` field ignored it, answering the GPU's value for any scope.
On a module, the domain reads, in this order of preference:

1. the GPU-only energy (``NVML_FI_DEV_ENERGY`` with the GPU scope), where it answers and counts less than the
   module's: a GPU domain like any other, labelled "GPU only"; the CPU and RAM sources count the rest;
2. else the module's energy (``NVML_FI_DEV_ENERGY`` with the module scope), else the total energy counter: a
   whole-module domain, labelled so in its provenance, whose :attr:`~greenmeter.sources.base.Domain.includes` is
   ``("cpu", "ram")``, so the CPU and RAM estimates are kept in the record but out of the total
   (:func:`~greenmeter.sources.select.nest_in_modules`); its steps are judged against the module's power limit.

All of this was built against the fake ``pynvml``'s GH200 mode only (docs/methodology.md).

**GPU present but not measured.** Where an NVIDIA driver is present but NVML cannot be used (it fails to
initialise, ``pynvml`` is missing, no selected GPU opens), the unusable probe carries the note
``"GPU energy NOT included: <reason>"``, which the automatic choice and every rank of a distributed job
put in every measurement's flags.

``pynvml`` is imported by ``probe()``, never at import time, and on Linux only where an NVIDIA driver is
present (``/dev/nvidiactl``, ``/proc/driver/nvidia`` or WSL's ``/dev/dxg``): importing it costs about 20 ms,
which the first window of a CPU-only machine should not pay. A ``pynvml`` already imported (or put in
``sys.modules``, as the tests do) is used as is.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from greenmeter._checks import number
from greenmeter._errors import BackendError, ConfigError, CounterReadError, MeasurementError
from greenmeter.sources.band import SHORT_WINDOW_PERIODS, BandModel
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

__all__ = [
    "ASSUMED_GPU_MAX_POWER_W",
    "COUNTER_UPDATE_PERIOD_S",
    "NOT_INCLUDED",
    "POWER_AVERAGING_S",
    "SHORT_WINDOW_PERIODS",
    "NvmlBackend",
]

#: How often NVML refreshes the total energy counter, in seconds (about 100 ms; see the module docstring).
COUNTER_UPDATE_PERIOD_S = 0.1


#: How every note and flag about a GPU that is present but not measured begins.
NOT_INCLUDED = "GPU energy NOT included: "

#: Power assumed for a GPU whose power limit NVML does not give, in watts, when judging whether a counter
#: step is plausible: above the power limit of any GPU board today (the largest are about 1 to 1.4 kW), so
#: that the check errs on the side of believing the counter.
ASSUMED_GPU_MAX_POWER_W = 2000.0

#: Seconds added to the interval of a counter step before its plausibility check: two counter update
#: periods, since each of the two readings may lag the GPU's true energy by up to one period.
_STEP_SLACK_S = 2 * COUNTER_UPDATE_PERIOD_S

#: ``nvmlDeviceGetPowerUsage`` is a mean over about the last second on Ampere and newer GPUs.
POWER_AVERAGING_S = 1.0

#: NVML's field ids (nvml.h), for old pynvml releases: instantaneous power, largest power limit, total energy (mJ).
_FI_POWER_INSTANT = 186
_FI_POWER_MAX_LIMIT = 188
_FI_ENERGY = 191
#: The ``scopeId`` of NVML's power fields (``nvmlPowerScopeType_t``): the GPU alone, the whole module.
_SCOPE_GPU = 0
_SCOPE_MODULE = 1
#: The hardware a Grace module's counter includes beside its GPU: the Grace CPU and its LPDDR5X memory.
_MODULE_INCLUDES = ("cpu", "ram")
#: ``c_nvmlValue_t`` members by NVML value type (``NVML_VALUE_TYPE_DOUBLE`` = 0 ... ``UNSIGNED_SHORT`` = 6).
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
#: How many reads the backend remembers, to find a window's first read (see :meth:`NvmlBackend.anomalies_since`).
_READ_MEMORY = 4096

_COUNTER_METHOD = "total energy counter (nvmlDeviceGetTotalEnergyConsumption)"
#: A GPU domain's provenance source, ``"NVML GPU <index> <model> (<uuid>)"``, as ``_open`` writes it.
_SOURCE = re.compile(r"^NVML GPU \S+ (?P<model>.+) \([^()]*\)$")
#: Any of these on Linux means an NVIDIA driver may answer NVML (WSL 2 has /dev/dxg instead of /dev/nvidiactl).
_DRIVER_PATHS: tuple[str, ...] = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")
#: Any of these means this process runs in a container (Docker, Podman), where NVML lists no other PID namespace.
_CONTAINER_MARKERS: tuple[str, ...] = ("/.dockerenv", "/run/.containerenv")
_CONTAINER_FIX = "in a container, run it with the NVIDIA Container Toolkit (`docker run --gpus all ...`)"
_INIT_FIXES = {  # pynvml error class name -> what is wrong and what to do
    "NVMLError_LibraryNotFound": "libnvidia-ml.so.1 (NVML) is not on this machine. Install the NVIDIA driver; "
    + _CONTAINER_FIX,
    "NVMLError_DriverNotLoaded": "the NVIDIA kernel driver is not loaded. Install or load the NVIDIA driver "
    f"(`sudo modprobe nvidia`, or reboot after installing it); {_CONTAINER_FIX}",
    "NVMLError_NoPermission": "this user may not open /dev/nvidia*. Grant access to the device files",
    "NVMLError_LibRmVersionMismatch": "the NVML library and the loaded kernel driver differ in version "
    "(usually after a driver upgrade). Reboot, or reload the nvidia kernel modules",
}


_COUNTER_BAND = BandModel(
    fixed_j=2e-3, power_period_s=COUNTER_UPDATE_PERIOD_S,
    basis=(f"NVML total-energy counter: its unit (1 mJ) at both edges and its update period "
           f"({COUNTER_UPDATE_PERIOD_S * 1e3:g} ms) x the highest mean power the window's figure allows"),
)


class _Unavailable(Exception):
    """Raised inside ``probe`` to stop and report its message as the reason.

    Attributes:
        present: a GPU is there but cannot be measured (the probe then says "GPU energy NOT included").
    """

    def __init__(self, message: str, *, present: bool) -> None:
        super().__init__(message)
        self.present = present


@dataclass
class _Gpu:
    """One GPU being measured.

    Counter GPUs use ``last_mj`` (the last counter value), ``counted_mj`` (the millijoules counted since
    the probe), ``last_t`` (the clock just before ``last_mj`` was read) and ``max_power_w`` with
    ``power_source`` (the power its steps are judged against, and where it came from); ``energy_field`` is the
    ``(field id, scope)`` read instead of ``nvmlDeviceGetTotalEnergyConsumption`` (a Grace module's scoped energy),
    and ``energy_call`` names what is read, for errors and anomalies. Sampled GPUs use
    ``last_t`` (the last sample's time, s), ``last_w`` (W), ``energy_j`` (J) and ``instant`` (whether the
    instantaneous power field is read, else ``nvmlDeviceGetPowerUsage``). ``resolution_s`` is the effective
    resolution of its reading, in seconds.
    """

    key: str
    handle: Any
    uses_counter: bool
    resolution_s: float
    last_mj: int = 0
    counted_mj: int = 0
    last_t: float = 0.0
    last_w: float = 0.0
    energy_j: float = 0.0
    max_power_w: float = ASSUMED_GPU_MAX_POWER_W
    power_source: str = ""
    instant: bool = False
    energy_field: tuple[int, int] | None = None
    energy_call: str = "nvmlDeviceGetTotalEnergyConsumption"


class NvmlBackend(Backend):
    """Energy of NVIDIA GPUs read through NVML.

    Args:
        devices: GPU indices to measure, numbered as CUDA numbers them (see the module docstring);
            ``None`` measures every visible GPU.
        power_sample_interval_s: seconds between power samples on GPUs without an energy counter.
        clock: the monotonic clock, in seconds, that stamps readings, times power samples, times counter
            steps for their plausibility check and times windows for the short-window flag (tests pass a
            fake clock).

    Raises:
        ConfigError: ``devices`` is empty, holds a non-integer, a negative index or a duplicate, or
            ``power_sample_interval_s`` is not a positive number. Indices past the last GPU are reported
            by :meth:`probe`, which knows how many there are.
    """

    info = SourceInfo(
        name="nvml", label="NVML", kind="counter", domains=("gpu",), options={"gpus": "devices"},
        per_device=True, selection="usable",
    )

    def __init__(
        self, devices: Sequence[int] | None = None, *, power_sample_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._devices = _check_devices(devices)
        self._interval_s = number("power_sample_interval_s", power_sample_interval_s, low=0, low_open=True,
                                  unit="seconds")
        self._lock = threading.Lock()
        self._nvml: ModuleType | None = None
        self._gpus: tuple[_Gpu, ...] = ()
        self._result: ProbeResult | None = None
        self._clock = clock
        self._anomalies = AnomalyLog()
        self._standing: tuple[str, ...] = ()  # said in every window's flags while open
        self._in_container = False
        # Each read's time.perf_counter() and clock, and each read that saw other processes, oldest first.
        self._reads: deque[tuple[float, float]] = deque(maxlen=_READ_MEMORY)
        self._sightings: deque[tuple[float, _Seen]] = deque(maxlen=_READ_MEMORY)
        self.poll_interval_s = None

    def probe(self) -> ProbeResult:
        """Initialise NVML, map CUDA's devices to NVML's, pick a method per GPU and take the starting values.

        A successful probe opens the backend (readings count from here) and is cached; after
        :meth:`close` the next probe opens it again. Never raises for missing software or hardware.

        Returns:
            The result; when unavailable, ``reason`` says why and how to fix it, and where an NVIDIA driver
            is present (a GPU that is not measured) its ``notes`` hold ``"GPU energy NOT included: <reason>"``.

        Raises:
            ConfigError: ``devices`` names a GPU that does not exist, or ``CUDA_VISIBLE_DEVICES`` cannot be read.
        """
        with self._lock:
            if self._result is not None:
                return self._result
            no_driver = _no_driver_reason()
            if no_driver is not None:
                return _unavailable(no_driver)
            try:
                import pynvml
            except ImportError as err:
                reason = f"the pynvml module cannot be imported ({err}); pip install nvidia-ml-py"
                return _unavailable(reason, present=_driver_present())
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as err:
                return _unavailable(_init_failure(pynvml, err), present=_driver_present(pynvml, err))
            try:
                gpus, domains, notes, standing = self._open(pynvml)
            except _Unavailable as why:
                try:
                    pynvml.nvmlShutdown()
                except pynvml.NVMLError as err:  # said in the reason, not hidden
                    return _unavailable(f"{why} (nvmlShutdown then failed too: {err})", present=why.present)
                return _unavailable(str(why), present=why.present)
            except BaseException:
                pynvml.nvmlShutdown()
                raise
            self._nvml, self._gpus, self._standing = pynvml, gpus, standing
            self._in_container = any(os.path.exists(path) for path in _CONTAINER_MARKERS)
            self._reads.clear()
            self._sightings.clear()
            sampled = any(not gpu.uses_counter for gpu in gpus)
            self.poll_interval_s = self._interval_s if sampled else None
            self._result = ProbeResult(self.name, True, domains=domains, notes=notes)
            return self._result

    def read(self) -> Reading:
        """Joules per GPU since :meth:`probe`; sampled GPUs take a fresh sample for an exact edge.

        A counter step the GPU could not have made (see the module docstring) counts 0 J and is recorded
        in :meth:`anomalies_since`. Each read also asks NVML which compute processes run on each GPU, for
        the windows' attribution flags.

        Returns:
            A reading keyed ``nvml:gpu<i>``, stamped with the clock (``time.monotonic()``, seconds).

        Raises:
            CounterReadError: an NVML call failed (the ``NVMLError`` is attached).
            MeasurementError: the backend is not open (no successful probe, or closed).
        """
        with self._lock:
            nvml = self._require_open("read")
            now = self._clock()
            energy_j = {
                gpu.key: self._counter_j(nvml, gpu, now) if gpu.uses_counter else self._sample(nvml, gpu, now)
                for gpu in self._gpus
            }
            stamp, seen = time.perf_counter(), self._others(nvml)
            self._reads.append((stamp, now))
            if seen:
                self._sightings.append((stamp, seen))
            return Reading(timestamp_s=now, energy_j=energy_j)

    def poll(self) -> None:
        """Take one power sample on each GPU without an energy counter. Raises as :meth:`read` does."""
        with self._lock:
            nvml = self._require_open("poll")
            now = self._clock()
            for gpu in self._gpus:
                if not gpu.uses_counter:
                    self._sample(nvml, gpu, now)

    def close(self) -> None:
        """Shut NVML down once; safe to call again. Raises ``BackendError`` if ``nvmlShutdown`` fails."""
        with self._lock:
            nvml, self._nvml = self._nvml, None
            self._gpus, self._result, self.poll_interval_s, self._standing = (), None, None, ()
            if nvml is None:
                return
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as err:
                raise BackendError(f"nvmlShutdown failed: {err}") from err

    def anomalies_since(self, t0: float) -> tuple[str, ...]:
        """What the windows begun at ``t0`` (a ``time.perf_counter()`` value) must say about the GPUs.

        In order: counter steps not counted since ``t0``; the standing facts of this probe (GPUs left out:
        "GPU energy NOT included"; a MIG instance measured through its shared parent GPU; a
        ``CUDA_VISIBLE_DEVICES`` list cut short); a window under :data:`SHORT_WINDOW_PERIODS` update
        periods between its first read (the last one at or before ``t0``) and the latest read, with its
        error bound; other processes seen on a GPU at those reads or between them (or that it is unknown).
        """
        first: tuple[float, float] | None = None
        sightings: list[_Seen] = []
        with self._lock:
            gpus, last = self._gpus, (self._reads[-1] if self._reads else None)
            for entry in reversed(self._reads):  # newest first: a window's reads are the latest ones
                if entry[0] <= t0:
                    first = entry
                    break
            since = t0 if first is None else first[0]  # a window's first read forgotten: it was long ago
            for stamp, seen in reversed(self._sightings):
                if stamp < since:
                    break
                sightings.append(seen)
        found = [*self._anomalies.since(t0), *self._standing]
        if first is not None and last is not None:
            found.extend(_short_window_flags(gpus, last[1] - first[1]))
        found.extend(_process_flags(reversed(sightings)))
        return tuple(dict.fromkeys(found))

    @classmethod
    def device_name(cls, provenance: Provenance) -> str | None:
        """The GPU's model named in an NVML domain's provenance (``"NVIDIA H200"``), ``None`` if absent."""
        match = _SOURCE.match(provenance.source)
        return match["model"] if match else None

    def _open(
        self, nvml: ModuleType,
    ) -> tuple[tuple[_Gpu, ...], tuple[Domain, ...], tuple[str, ...], tuple[str, ...]]:
        """The GPUs to measure, their domains, the probe's notes and the standing flags."""
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as err:
            raise _Unavailable(f"NVML initialised but could not count the GPUs: {err}", present=True) from err
        if count == 0:
            raise _Unavailable(f"NVML works but sees no NVIDIA GPU (`nvidia-smi -L` lists none); {_CONTAINER_FIX}",
                               present=False)
        refs, notes, standing = _cuda_devices(nvml, count)
        chosen = self._devices if self._devices is not None else tuple(range(len(refs)))
        for index in chosen:
            if index >= len(refs):
                env = os.environ.get("CUDA_VISIBLE_DEVICES")
                where = "NVML sees" if env is None else f"CUDA_VISIBLE_DEVICES={env!r} leaves"
                if _torch_cuda() is not None:
                    where = "CUDA (torch) sees"
                raise ConfigError(
                    f"devices={list(chosen)}: there is no GPU {index}; {where} {len(refs)} GPU(s), "
                    f"indices 0 to {len(refs) - 1}"
                )
        gpus: list[_Gpu] = []
        domains: list[Domain] = []
        left_out: list[str] = []
        measured: dict[str, str] = {}  # the UUID of each GPU measured -> its key
        for index in chosen:
            key = f"nvml:gpu{index}"
            try:
                handle, mig_uuid = _open_ref(nvml, refs[index])
                nvml_index = _nvml_index(nvml, handle, refs[index])
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                source = f"NVML GPU {nvml_index} {_text(nvml.nvmlDeviceGetName(handle))} ({uuid})"
            except nvml.NVMLError as err:
                left_out.append(f"{key} ({_describe_ref(refs[index])}) cannot be opened ({err})")
                continue
            if mig_uuid is not None and uuid in measured:  # another MIG instance of a GPU measured: count it once
                notes.append(f"{key} is MIG instance {mig_uuid} of the GPU {measured[uuid]} measures ({uuid}): its "
                             f"energy is counted once, under {measured[uuid]}")
                continue
            opened = self._open_gpu(nvml, key, handle, source, notes, left_out, mig_uuid)
            if opened is not None:
                measured[uuid] = key
                gpus.append(opened[0])
                domains.append(opened[1])
                if mig_uuid is not None:
                    standing.append(
                        f"{key} is MIG instance {mig_uuid}: NVML has no energy reading per MIG instance, so {key} is "
                        f"its whole parent GPU ({uuid}), shared with that GPU's other instances, whose work is "
                        "included")
        if not gpus:
            raise _Unavailable("no selected GPU can be measured: " + "; ".join(left_out), present=True)
        lines = [NOT_INCLUDED + why for why in left_out]
        return tuple(gpus), tuple(domains), (*notes, *lines), (*standing, *lines)

    def _open_gpu(
        self, nvml: ModuleType, key: str, handle: Any, source: str, notes: list[str], left_out: list[str],
        mig_uuid: str | None,
    ) -> tuple[_Gpu, Domain] | None:
        shared = "" if mig_uuid is None else f"; the whole GPU of MIG instance {mig_uuid}, shared"
        match = _SOURCE.match(source)
        counter = _counter_of(nvml, handle, match["model"] if match else "NVIDIA GPU")
        try:
            read_t = self._clock()
            start_mj = _energy_mj(nvml, handle, counter.field)
        except nvml.NVMLError as err:
            counter_err = err
        else:
            provenance = Provenance("measured", source, counter.method + shared)
            domain = Domain(key, "gpu", True, provenance, COUNTER_UPDATE_PERIOD_S, _COUNTER_BAND,
                            includes=counter.includes)
            max_power_w, power_source = _max_power(nvml, handle, module=bool(counter.includes))
            if counter.note:
                notes.append(f"{key} ({source}) {counter.note}")
            gpu = _Gpu(key, handle, uses_counter=True, resolution_s=COUNTER_UPDATE_PERIOD_S, last_mj=start_mj,
                       last_t=read_t, max_power_w=max_power_w, power_source=power_source,
                       energy_field=counter.field, energy_call=counter.call)
            return gpu, domain
        now = self._clock()
        instant_mw = _instant_power_mw(nvml, handle)
        if instant_mw is not None:
            power_w = instant_mw / 1000.0
            every = f"every {self._interval_s:g} s"
            resolution_s = self._interval_s
            reading = f"the instantaneous power field (NVML_FI_DEV_POWER_INSTANT, nvmlDeviceGetFieldValues) {every}"
        else:
            try:
                power_w = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except nvml.NVMLError as err:
                left_out.append(f"{key} ({source}) has no energy counter ({counter_err}) and no power reading ({err})")
                return None
            every = f"every {self._interval_s:g} s"
            resolution_s = self._interval_s + POWER_AVERAGING_S
            reading = (f"nvmlDeviceGetPowerUsage {every}, each possibly a mean over the last {POWER_AVERAGING_S:g} s "
                       "(Ampere and newer)")
        if isinstance(counter_err, getattr(nvml, "NVMLError_NotSupported", ())):
            why = "has no total energy counter (it needs a Volta or newer GPU)"
        else:
            why = f"cannot read its total energy counter ({counter_err})"
        notes.append(f"{key} ({source}) {why}; integrating {reading} instead, effective resolution "
                     f"{resolution_s:g} s")
        method = f"integrated power samples ({reading}; trapezoid rule; effective resolution {resolution_s:g} s){shared}"
        band = BandModel(
            power_period_s=resolution_s,
            basis=(f"NVML power samples: {reading}; its effective resolution ({resolution_s:g} s) x the highest mean "
                   "power the window's figure allows"),
        )
        domain = Domain(key, "gpu", True, Provenance("measured", source, method), resolution_s, band)
        gpu = _Gpu(key, handle, uses_counter=False, resolution_s=resolution_s, last_t=now, last_w=power_w,
                   instant=instant_mw is not None)
        return gpu, domain

    def _require_open(self, call: str) -> ModuleType:
        if self._nvml is None:
            raise MeasurementError(f"NvmlBackend.{call}() needs a successful probe() first (and no close())")
        return self._nvml

    def _counter_j(self, nvml: ModuleType, gpu: _Gpu, read_t: float) -> float:
        """Joules counted on a counter GPU, after adding the step to a fresh value taken after ``read_t``."""
        try:
            now_mj = _energy_mj(nvml, gpu.handle, gpu.energy_field)
        except nvml.NVMLError as err:
            raise CounterReadError(f"{gpu.key}: {gpu.energy_call} failed: {err}") from err
        last_mj, interval_s = gpu.last_mj, self._clock() - gpu.last_t
        step_mj = now_mj - last_mj
        bound_j = plausible_step_j(gpu.max_power_w, interval_s, _STEP_SLACK_S)
        moved = f"{gpu.key} NVML energy counter went from {last_mj:,} to {now_mj:,} mJ in {interval_s:.3g} s"
        if step_mj < 0:
            self._anomalies.add(
                f"{moved}: it never decreases (the NVIDIA driver was probably reloaded, restarting it); counted "
                "as 0 J, later readings count from the new value"
            )
        elif step_mj / 1000 > bound_j:
            bound = (f"more than {PLAUSIBLE_POWER_FACTOR:g} x {gpu.max_power_w:g} W ({gpu.power_source}) x "
                     f"{max(interval_s, 0.0) + _STEP_SLACK_S:.3g} s = {bound_j:,.1f} J")
            self._anomalies.add(
                f"{moved}: {step_mj / 1000:,.1f} J is not plausible ({bound}); counted as 0 J (bad read or "
                "counter fault), later readings count from the new value"
            )
        else:
            gpu.counted_mj += step_mj
        gpu.last_mj, gpu.last_t = now_mj, read_t
        return gpu.counted_mj / 1000.0

    @staticmethod
    def _sample(nvml: ModuleType, gpu: _Gpu, now: float) -> float:
        if gpu.instant:
            call = "nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)"
            try:
                power_mw = _instant_power_mw(nvml, gpu.handle, strict=True)
            except nvml.NVMLError as err:
                raise CounterReadError(f"{gpu.key}: {call} failed: {err}") from err
        else:
            try:
                power_mw = nvml.nvmlDeviceGetPowerUsage(gpu.handle)
            except nvml.NVMLError as err:
                raise CounterReadError(f"{gpu.key}: nvmlDeviceGetPowerUsage failed: {err}") from err
        power_w = float(power_mw) / 1000.0  # type: ignore[arg-type]
        gpu.energy_j += 0.5 * (gpu.last_w + power_w) * (now - gpu.last_t)
        gpu.last_t, gpu.last_w = now, power_w
        return gpu.energy_j

    def _others(self, nvml: ModuleType) -> _Seen:
        """What NVML lists of other compute processes on each measured GPU now: for each GPU with any (or where
        it is unknown), its key and their PIDs (or why they are unknown)."""
        seen: list[tuple[str, frozenset[int] | str]] = []
        own = os.getpid()
        listing = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses", None)
        for gpu in self._gpus:
            if listing is None:
                seen.append((gpu.key, " (this pynvml cannot list them)"))
                continue
            try:
                pids = {int(p.pid) for p in listing(gpu.handle)}
            except nvml.NVMLError as err:
                seen.append((gpu.key, f" (nvmlDeviceGetComputeRunningProcesses: {err})"))
                continue
            if not pids and self._in_container:
                seen.append((gpu.key, ": NVML lists none, and in a container it cannot see other PID namespaces"))
                continue
            others = pids - {own}
            if others:
                others -= _descendants()
            if others:
                seen.append((gpu.key, frozenset(others)))
        return tuple(seen)


#: What one read saw of other processes: ``(GPU key, their PIDs or why they are unknown)`` per GPU with any.
_Seen = tuple[tuple[str, "frozenset[int] | str"], ...]


def _process_flags(reads: Iterable[_Seen]) -> list[str]:
    """One flag per GPU from what a window's reads saw of other processes: every PID seen, or why unknown."""
    pids: dict[str, set[int]] = {}
    unknown: dict[str, str] = {}
    for seen in reads:
        for key, what in seen:
            if isinstance(what, str):
                unknown.setdefault(key, what)
            else:
                pids.setdefault(key, set()).update(what)
    lines = [f"{key}: other compute processes ran on this GPU (PIDs {', '.join(map(str, sorted(found)))}): NVML has "
             "no per-process energy, so their work is in its figure" for key, found in pids.items()]
    lines += [f"{key}: other processes on this GPU are unknown{why}; its figure includes any other process's work"
              for key, why in unknown.items()]
    return lines


def _short_window_flags(gpus: Sequence[_Gpu], duration_s: float) -> list[str]:
    """The flags of a window ``duration_s`` long between its reads, for GPUs whose resolution it does not span
    :data:`SHORT_WINDOW_PERIODS` times: one line per resolution."""
    by_resolution: dict[float, list[str]] = {}
    for gpu in gpus:
        if duration_s < SHORT_WINDOW_PERIODS * gpu.resolution_s:
            by_resolution.setdefault(gpu.resolution_s, []).append(gpu.key)
    lines = []
    for resolution_s, keys in by_resolution.items():
        bound = (f"{resolution_s / duration_s:.0%}" if duration_s >= resolution_s
                 else "100% or more (it is shorter than one update period: not resolved)")
        lines.append(
            f"{', '.join(keys)}: the window lasted {duration_s * 1e3:.4g} ms between NVML reads, under "
            f"{SHORT_WINDOW_PERIODS} update periods ({resolution_s * 1e3:g} ms each): its GPU energy may be off by "
            f"up to the update period x the power / the duration = {bound} (its band includes this)")
    return lines


def _descendants() -> set[int]:
    """PIDs of this process's descendants (a DataLoader's workers are this job, not another process)."""
    import psutil

    try:
        return {child.pid for child in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def _check_devices(devices: Sequence[int] | None) -> tuple[int, ...] | None:
    if devices is None:
        return None
    checked = () if isinstance(devices, (str, bytes)) else tuple(devices)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in checked) or not checked:
        raise ConfigError(f"devices must be a non-empty sequence of GPU indices (integers >= 0), not {devices!r}")
    if len(set(checked)) < len(checked):
        raise ConfigError(f"devices lists a GPU twice: {list(checked)}")
    return checked


#: A CUDA device as NVML can open it: ``("index", <NVML index>)`` or ``("uuid", <UUID, with or without prefix>)``.
_Ref = tuple[str, Any]


def _torch_cuda() -> Any:
    """``torch.cuda`` when torch is imported and has initialised CUDA, else ``None`` (never imports torch)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except (AttributeError, RuntimeError):
        return None


def _cuda_devices(nvml: ModuleType, count: int) -> tuple[list[_Ref], list[str], list[str]]:
    """CUDA's devices in CUDA's order as NVML can open them, the notes on the mapping and the standing flags."""
    cuda = _torch_cuda()
    if cuda is not None:
        try:
            uuids = [str(cuda.get_device_properties(i).uuid) for i in range(int(cuda.device_count()))]
        except (AttributeError, RuntimeError, AssertionError) as err:
            note = f"torch's CUDA device UUIDs could not be read ({type(err).__name__}: {err}); "
        else:
            if uuids:
                return [("uuid", u) for u in uuids], [
                    "GPUs numbered as CUDA numbers them, each matched to NVML by its UUID (torch's device properties)"
                ], []
            note = "torch sees no CUDA device; "
    else:
        note = ""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        notes = []
        if count > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            notes.append(f"{note}GPUs numbered in NVML's (PCI bus) order; CUDA's default order is fastest first, so on a "
                         "machine with different GPU models nvml:gpuN may not be cuda:N: set CUDA_DEVICE_ORDER=PCI_BUS_ID, "
                         "or let torch initialise CUDA before the meter starts (GPUs are then matched by UUID)")
        return [("index", i) for i in range(count)], notes, []
    refs, standing = _parse_visible(nvml, count, env)
    mapping = ", ".join(f"gpu{i} is {_describe_ref(ref)}" for i, ref in enumerate(refs))
    return refs, [f"{note}GPUs numbered as in CUDA_VISIBLE_DEVICES={env!r}: {mapping}"], standing


def _parse_visible(nvml: ModuleType, count: int, env: str) -> tuple[list[_Ref], list[str]]:
    """``CUDA_VISIBLE_DEVICES`` read as CUDA reads it: the devices, and a standing flag if the list was cut short.

    Like CUDA, an empty entry, a negative index, an index past the last GPU or a UUID that matches no GPU (or
    several) ends the list (``"-1"`` hides every GPU).
    """
    refs: list[_Ref] = []
    standing: list[str] = []
    cut = ""
    for token in (part.strip() for part in env.split(",")):
        if token.upper().startswith(("GPU-", "MIG-")):
            uuid, why = _full_uuid(nvml, count, token)
            if uuid is None:
                cut = f"CUDA_VISIBLE_DEVICES={env!r}: {token!r} {why}: like CUDA, the list ends there"
                break
            ref: _Ref = ("uuid", uuid)
        else:
            try:
                index = int(token)
            except ValueError:
                if not token:
                    break
                raise ConfigError(
                    f"CUDA_VISIBLE_DEVICES={env!r}: {token!r} is neither a GPU index nor a GPU UUID"
                ) from None
            if index < 0:
                break
            if index >= count:
                cut = (f"CUDA_VISIBLE_DEVICES={env!r} names GPU {index}, but NVML sees {count} GPU(s), indices 0 to "
                       f"{count - 1}: like CUDA, the list ends there")
                break
            ref = ("index", index)
        if ref in refs:
            raise ConfigError(f"CUDA_VISIBLE_DEVICES={env!r} lists GPU {_describe_ref(ref).removeprefix('NVML GPU ')} "
                              "twice")
        refs.append(ref)
    if not refs:
        why = f"{cut}, before any GPU" if cut else f"CUDA_VISIBLE_DEVICES={env!r} hides every GPU"
        raise _Unavailable(f"{why}, so there is none to measure; unset it or list the GPUs to use", present=False)
    if cut:
        standing.append(f"{cut} (GPUs listed after it are not visible to CUDA either, so they are not measured)")
    return refs, standing


def _full_uuid(nvml: ModuleType, count: int, token: str) -> tuple[str | None, str]:
    """The full UUID of a ``GPU-``/``MIG-`` entry (CUDA accepts a unique prefix, which needs every GPU's UUID), or
    ``None`` and why there is none."""
    try:
        nvml.nvmlDeviceGetHandleByUUID(token)
    except (nvml.NVMLError, AttributeError):
        pass
    else:
        return token, ""
    if token.upper().startswith("MIG-"):
        raise _Unavailable(f"CUDA_VISIBLE_DEVICES names MIG instance {token!r}, which NVML cannot open (a MIG UUID "
                           "prefix, or a driver older than R470): give its full UUID as `nvidia-smi -L` lists it",
                           present=True)
    try:
        uuids = [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
    except nvml.NVMLError as err:
        raise _Unavailable(f"cannot read GPU UUIDs to match CUDA_VISIBLE_DEVICES: {err}", present=True) from err
    matches = [uuid for uuid in uuids if uuid.upper().startswith(token.upper())]
    if len(matches) != 1:
        return None, f"{'matches no GPU' if not matches else 'matches several GPUs'} (NVML sees {', '.join(uuids)})"
    return matches[0], ""


def _open_ref(nvml: ModuleType, ref: _Ref) -> tuple[Any, str | None]:
    """The NVML handle of a CUDA device (a MIG instance's parent GPU), and the MIG instance's UUID if it is one."""
    kind, value = ref
    if kind == "index":
        return nvml.nvmlDeviceGetHandleByIndex(value), None
    candidates = [value] if value.upper().startswith(("GPU-", "MIG-")) else [f"GPU-{value}", f"MIG-{value}"]
    error: Exception | None = None
    for uuid in candidates:
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        except nvml.NVMLError as err:
            error = err
            continue
        if _is_mig(nvml, handle, uuid):
            return nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle), _text(nvml.nvmlDeviceGetUUID(handle))
        return handle, None
    assert error is not None
    raise error


def _is_mig(nvml: ModuleType, handle: Any, uuid: str) -> bool:
    check = getattr(nvml, "nvmlDeviceIsMigDeviceHandle", None)
    if check is None:
        return uuid.upper().startswith("MIG-")
    try:
        return bool(int(check(handle)))
    except nvml.NVMLError:  # a driver without MIG support: no handle is a MIG device
        return False


def _nvml_index(nvml: ModuleType, handle: Any, ref: _Ref) -> str:
    if ref[0] == "index":
        return str(ref[1])
    try:
        return str(int(nvml.nvmlDeviceGetIndex(handle)))
    except (nvml.NVMLError, AttributeError):
        return "?"


def _describe_ref(ref: _Ref) -> str:
    return f"NVML GPU {ref[1]}" if ref[0] == "index" else str(ref[1])


def _instant_power_mw(nvml: ModuleType, handle: Any, *, strict: bool = False) -> float | None:
    """The instantaneous power field in milliwatts; ``None`` where this NVML or GPU does not answer it.

    With ``strict``, a failed call raises its ``NVMLError`` (a GPU that answered at probe must answer again).
    """
    return _field(nvml, handle, getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", _FI_POWER_INSTANT), strict=strict)


def _field(nvml: ModuleType, handle: Any, field_id: int, scope: int | None = None, *,
           strict: bool = False) -> float | None:
    """One field through ``nvmlDeviceGetFieldValues``, with a ``scopeId`` when ``scope`` is given; ``None`` where
    this NVML, pynvml (a release that cannot pass a scope) or GPU does not answer it.

    With ``strict``, a failed call raises its ``NVMLError`` (a GPU that answered at probe must answer again).
    """
    get = getattr(nvml, "nvmlDeviceGetFieldValues", None)
    if get is None:
        return None
    try:
        (value,) = get(handle, [field_id if scope is None else (field_id, scope)])
    except nvml.NVMLError:
        if strict:
            raise
        return None
    except TypeError:  # a pynvml release older than scopeId: it cannot ask for a scope
        return None
    if int(value.nvmlReturn) != getattr(nvml, "NVML_SUCCESS", 0):
        if strict:
            raise nvml.NVMLError(int(value.nvmlReturn))
        return None
    member = _VALUE_MEMBERS[int(value.valueType)] if 0 <= int(value.valueType) < len(_VALUE_MEMBERS) else "uiVal"
    return float(getattr(value.value, member))


def _init_failure(nvml: ModuleType, err: Exception) -> str:
    """Why ``nvmlInit`` failed, with the fix."""
    fix = next(
        (text for name, text in _INIT_FIXES.items() if isinstance(err, getattr(nvml, name, ()))),
        f"check that `nvidia-smi` works here; install or load the NVIDIA driver; {_CONTAINER_FIX}",
    )
    return f"NVML failed to initialise ({type(err).__name__}: {err}): {fix}"


def _no_driver_reason() -> str | None:
    """Why NVML cannot work here, known without importing ``pynvml``; ``None`` when it may work."""
    if "pynvml" in sys.modules or not sys.platform.startswith("linux"):
        return None
    if any(os.path.exists(path) for path in _DRIVER_PATHS):
        return None
    return (f"no NVIDIA driver on this machine (none of {', '.join(_DRIVER_PATHS)} exists): on a machine with an "
            f"NVIDIA GPU install or load the driver (`nvidia-smi` should work); {_CONTAINER_FIX}")


def _driver_present(nvml: ModuleType | None = None, err: Exception | None = None) -> bool:
    """Whether an NVIDIA GPU is here even though NVML failed: on Linux, a driver path exists; elsewhere, NVML's
    library was found and the driver loaded (its failure was something else)."""
    if sys.platform.startswith("linux"):
        return any(os.path.exists(path) for path in _DRIVER_PATHS)
    if nvml is None or err is None:
        return False
    absent = tuple(getattr(nvml, name, ()) for name in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"))
    return not isinstance(err, tuple(cls for cls in absent if isinstance(cls, type)))


@dataclass(frozen=True)
class _Counter:
    """Which energy counter a GPU's domain reads: ``field`` (``(field id, scope)``, or ``None`` for
    ``nvmlDeviceGetTotalEnergyConsumption``), ``call`` (its name), the provenance ``method``, the hardware it
    ``includes`` beside the GPU, and a ``note`` for the probe (empty for a GPU that is on no Grace module)."""

    field: tuple[int, int] | None = None
    call: str = "nvmlDeviceGetTotalEnergyConsumption"
    method: str = _COUNTER_METHOD
    includes: tuple[str, ...] = ()
    note: str = ""


def _counter_of(nvml: ModuleType, handle: Any, model: str) -> _Counter:
    """The energy counter to read on this GPU: see "Grace Hopper modules" in the module docstring."""
    if not _on_grace_module(nvml, handle):
        return _Counter()
    module = (_FI_ENERGY, _SCOPE_MODULE)
    gpu_only = (_FI_ENERGY, _SCOPE_GPU)
    module_mj, gpu_mj = _field(nvml, handle, *module), _field(nvml, handle, *gpu_only)
    module_name = f"{model.removeprefix('NVIDIA ')} module"
    label = f"{module_name}: GPU + Grace CPU + LPDDR5X"
    if gpu_mj is not None and (module_mj is None or gpu_mj < module_mj):
        return _Counter(
            gpu_only, "nvmlDeviceGetFieldValues(NVML_FI_DEV_ENERGY, NVML_POWER_SCOPE_GPU)",
            f"GPU-only energy counter (NVML_FI_DEV_ENERGY, scope NVML_POWER_SCOPE_GPU) of a {module_name}: the GPU "
            "alone, without its Grace CPU and LPDDR5X", (),
            "is on a Grace module (NVLink-C2C; NVML answers the module power scope): its GPU-only energy is read, "
            "and the Grace CPU and its memory are left to the CPU and RAM sources")
    if module_mj is not None:
        field: tuple[int, int] | None = module
        call = "nvmlDeviceGetFieldValues(NVML_FI_DEV_ENERGY, NVML_POWER_SCOPE_MODULE)"
        reading = "NVML_FI_DEV_ENERGY, scope NVML_POWER_SCOPE_MODULE"
    else:
        field, call = None, "nvmlDeviceGetTotalEnergyConsumption"
        reading = "nvmlDeviceGetTotalEnergyConsumption, which counts the whole module on Grace Hopper"
    return _Counter(
        field, call, f"whole-module energy counter ({reading}): {label}", _MODULE_INCLUDES,
        "is on a Grace module (NVLink-C2C; NVML answers the module power scope) and NVML gives no GPU-only energy "
        f"there: its figure is the whole {label}, so the CPU and RAM sources' figures are not added to the total")


def _on_grace_module(nvml: ModuleType, handle: Any) -> bool:
    """Whether the GPU sits on a Grace module: C2C enabled, and the module scope of the energy or power field
    answers (why both: the module docstring)."""
    get = getattr(nvml, "nvmlDeviceGetC2cModeInfoV", None)
    if get is None:
        return False
    try:
        c2c = bool(int(get(handle).isC2cEnabled))
    except (nvml.NVMLError, AttributeError, TypeError, ValueError):
        return False
    return c2c and any(_field(nvml, handle, f, _SCOPE_MODULE) is not None for f in (_FI_ENERGY, _FI_POWER_INSTANT))


def _energy_mj(nvml: ModuleType, handle: Any, field: tuple[int, int] | None) -> int:
    """A GPU's energy counter in millijoules: ``nvmlDeviceGetTotalEnergyConsumption``, or the scoped field."""
    if field is None:
        return int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    return int(_field(nvml, handle, *field, strict=True))  # type: ignore[arg-type]


def _max_power(nvml: ModuleType, handle: Any, *, module: bool = False) -> tuple[float, str]:
    """The power a GPU's counter steps are judged against, in watts, and where it came from.

    The largest power limit the GPU accepts (an administrator may raise the enforced limit up to it),
    else the enforced limit, else :data:`ASSUMED_GPU_MAX_POWER_W`. For a whole-module counter (``module``), the
    module's largest power limit (``NVML_FI_DEV_POWER_MAX_LIMIT`` with the module scope), else that assumption.
    """
    if module:
        max_mw = _field(nvml, handle, _FI_POWER_MAX_LIMIT, _SCOPE_MODULE)
        if max_mw is not None and max_mw > 0:
            return max_mw / 1000.0, "its module's largest power limit"
        return ASSUMED_GPU_MAX_POWER_W, "assumed: NVML gives no module power limit"
    try:
        max_mw = int(nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)[1])
    except nvml.NVMLError:
        max_mw = 0
    if max_mw > 0:
        return max_mw / 1000.0, "its largest power limit"
    try:
        enforced_mw = int(nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    except nvml.NVMLError:
        enforced_mw = 0
    if enforced_mw > 0:
        return enforced_mw / 1000.0, "its enforced power limit"
    return ASSUMED_GPU_MAX_POWER_W, "assumed: NVML gives no power limit"


def _unavailable(reason: str, *, present: bool = False) -> ProbeResult:
    """An unusable probe; where a GPU is ``present`` but not measured, its note says so in the words of the flag."""
    notes = (NOT_INCLUDED + reason,) if present else ()
    return ProbeResult(NvmlBackend.name, False, reason=reason, notes=notes)


def _text(value: str | bytes) -> str:
    """NVML strings: ``str`` in current pynvml, ``bytes`` in old releases."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
