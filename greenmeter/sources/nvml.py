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
  GPUs): ``nvmlDeviceGetPowerUsage`` in milliwatts, sampled by :meth:`NvmlBackend.poll` every
  ``power_sample_interval_s`` and by every :meth:`NvmlBackend.read`, integrated with the trapezoid rule.
  The fallback is said in the probe's notes.

GPU numbering follows CUDA: when ``CUDA_VISIBLE_DEVICES`` is set (integer indices or ``GPU-`` UUIDs),
``devices=[0]`` and the domain ``nvml:gpu0`` mean the first GPU it lists, as ``torch.device("cuda:0")``
does; the domain's source names the NVML index and UUID. ``pynvml`` is imported by ``probe()``, never at
import time, and on Linux only where an NVIDIA driver is present (``/dev/nvidiactl``, ``/proc/driver/nvidia``
or WSL's ``/dev/dxg``): importing it costs about 20 ms, which the first window of a CPU-only machine
should not pay. A ``pynvml`` already imported (or put in ``sys.modules``, as the tests do) is used as is.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from greenmeter._checks import number
from greenmeter._errors import BackendError, ConfigError, CounterReadError, MeasurementError
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

__all__ = ["ASSUMED_GPU_MAX_POWER_W", "COUNTER_UPDATE_PERIOD_S", "POWER_AVERAGING_S", "NvmlBackend"]

#: How often NVML refreshes the total energy counter, in seconds (about 100 ms; see the module docstring).
COUNTER_UPDATE_PERIOD_S = 0.1

#: Power assumed for a GPU whose power limit NVML does not give, in watts, when judging whether a counter
#: step is plausible: above the power limit of any GPU board today (the largest are about 1 to 1.4 kW), so
#: that the check errs on the side of believing the counter.
ASSUMED_GPU_MAX_POWER_W = 2000.0

#: Seconds added to the interval of a counter step before its plausibility check: two counter update
#: periods, since each of the two readings may lag the GPU's true energy by up to one period.
_STEP_SLACK_S = 2 * COUNTER_UPDATE_PERIOD_S

#: ``nvmlDeviceGetPowerUsage`` is a mean over about the last second on Ampere and newer GPUs.
POWER_AVERAGING_S = 1.0
_COUNTER_BAND = BandModel(
    fixed_j=2e-3, power_period_s=COUNTER_UPDATE_PERIOD_S,
    basis=(f"NVML total-energy counter: its unit (1 mJ) at both edges and its update period "
           f"({COUNTER_UPDATE_PERIOD_S * 1e3:g} ms) x the window's mean power"),
)

_COUNTER_METHOD = "total energy counter (nvmlDeviceGetTotalEnergyConsumption)"
#: A GPU domain's provenance source, ``"NVML GPU <index> <model> (<uuid>)"``, as ``_open`` writes it.
_SOURCE = re.compile(r"^NVML GPU \S+ (?P<model>.+) \([^()]*\)$")
#: Any of these on Linux means an NVIDIA driver may answer NVML (WSL 2 has /dev/dxg instead of /dev/nvidiactl).
_DRIVER_PATHS: tuple[str, ...] = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")
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


class _Unavailable(Exception):
    """Raised inside ``probe`` to stop and report its message as the reason."""


@dataclass
class _Gpu:
    """One GPU being measured.

    Counter GPUs use ``last_mj`` (the last counter value), ``counted_mj`` (the millijoules counted since
    the probe), ``last_t`` (the clock just before ``last_mj`` was read) and ``max_power_w`` with
    ``power_source`` (the power its steps are judged against, and where it came from). Sampled GPUs use
    ``last_t`` (the last sample's time, s), ``last_w`` (W) and ``energy_j`` (J).
    """

    key: str
    handle: Any
    uses_counter: bool
    last_mj: int = 0
    counted_mj: int = 0
    last_t: float = 0.0
    last_w: float = 0.0
    energy_j: float = 0.0
    max_power_w: float = ASSUMED_GPU_MAX_POWER_W
    power_source: str = ""


class NvmlBackend(Backend):
    """Energy of NVIDIA GPUs read through NVML.

    Args:
        devices: GPU indices to measure, numbered as CUDA numbers them (relative to
            ``CUDA_VISIBLE_DEVICES`` when it is set); ``None`` measures every visible GPU.
        power_sample_interval_s: seconds between power samples on GPUs without an energy counter.
        clock: the monotonic clock, in seconds, that stamps readings, times power samples and times
            counter steps for their plausibility check (tests pass a fake clock).

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
        self.poll_interval_s = None

    def probe(self) -> ProbeResult:
        """Initialise NVML, pick a method per GPU and take the starting values.

        A successful probe opens the backend (readings count from here) and is cached; after
        :meth:`close` the next probe opens it again. Never raises for missing software or hardware.

        Returns:
            The result; when unavailable, ``reason`` says why and how to fix it.

        Raises:
            ConfigError: ``devices`` or ``CUDA_VISIBLE_DEVICES`` names a GPU that does not exist.
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
                return _unavailable(f"the pynvml module cannot be imported ({err}); pip install nvidia-ml-py")
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as err:
                return _unavailable(_init_failure(pynvml, err))
            try:
                gpus, domains, notes = self._open(pynvml)
            except _Unavailable as why:
                try:
                    pynvml.nvmlShutdown()
                except pynvml.NVMLError as err:  # said in the reason, not hidden
                    return _unavailable(f"{why} (nvmlShutdown then failed too: {err})")
                return _unavailable(str(why))
            except BaseException:
                pynvml.nvmlShutdown()
                raise
            self._nvml, self._gpus = pynvml, gpus
            sampled = any(not gpu.uses_counter for gpu in gpus)
            self.poll_interval_s = self._interval_s if sampled else None
            self._result = ProbeResult(self.name, True, domains=domains, notes=notes)
            return self._result

    def read(self) -> Reading:
        """Joules per GPU since :meth:`probe`; sampled GPUs take a fresh sample for an exact edge.

        A counter step the GPU could not have made (see the module docstring) counts 0 J and is recorded
        in :meth:`anomalies_since`.

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
            self._gpus, self._result, self.poll_interval_s = (), None, None
            if nvml is None:
                return
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as err:
                raise BackendError(f"nvmlShutdown failed: {err}") from err

    def anomalies_since(self, t0: float) -> tuple[str, ...]:
        """Counter steps not counted since ``t0`` (a ``time.perf_counter()`` value), one line each."""
        return self._anomalies.since(t0)

    @classmethod
    def device_name(cls, provenance: Provenance) -> str | None:
        """The GPU's model named in an NVML domain's provenance (``"NVIDIA H200"``), ``None`` if absent."""
        match = _SOURCE.match(provenance.source)
        return match["model"] if match else None

    def _open(self, nvml: ModuleType) -> tuple[tuple[_Gpu, ...], tuple[Domain, ...], tuple[str, ...]]:
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as err:
            raise _Unavailable(f"NVML initialised but could not count the GPUs: {err}") from err
        if count == 0:
            raise _Unavailable(f"NVML works but sees no NVIDIA GPU (`nvidia-smi -L` lists none); {_CONTAINER_FIX}")
        visible, notes = _visible_indices(nvml, count)
        chosen = self._devices if self._devices is not None else tuple(range(len(visible)))
        for index in chosen:
            if index >= len(visible):
                env = os.environ.get("CUDA_VISIBLE_DEVICES")
                where = "NVML sees" if env is None else f"CUDA_VISIBLE_DEVICES={env!r} leaves"
                raise ConfigError(
                    f"devices={list(chosen)}: there is no GPU {index}; {where} {len(visible)} GPU(s), "
                    f"indices 0 to {len(visible) - 1}"
                )
        gpus: list[_Gpu] = []
        domains: list[Domain] = []
        for index in chosen:
            key = f"nvml:gpu{index}"
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(visible[index])
                source = f"NVML GPU {visible[index]} {_text(nvml.nvmlDeviceGetName(handle))} "
                source += f"({_text(nvml.nvmlDeviceGetUUID(handle))})"
            except nvml.NVMLError as err:
                notes.append(f"{key} (NVML GPU {visible[index]}) left out: it cannot be opened ({err})")
                continue
            opened = self._open_gpu(nvml, key, handle, source, notes)
            if opened is not None:
                gpus.append(opened[0])
                domains.append(opened[1])
        if not gpus:
            raise _Unavailable("no selected GPU can be measured: " + "; ".join(notes))
        return tuple(gpus), tuple(domains), tuple(notes)

    def _open_gpu(
        self, nvml: ModuleType, key: str, handle: Any, source: str, notes: list[str]
    ) -> tuple[_Gpu, Domain] | None:
        try:
            read_t = self._clock()
            start_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except nvml.NVMLError as err:
            counter_err = err
        else:
            provenance = Provenance("measured", source, _COUNTER_METHOD)
            domain = Domain(key, "gpu", True, provenance, COUNTER_UPDATE_PERIOD_S, _COUNTER_BAND)
            max_power_w, power_source = _max_power(nvml, handle)
            gpu = _Gpu(key, handle, uses_counter=True, last_mj=start_mj, last_t=read_t, max_power_w=max_power_w,
                       power_source=power_source)
            return gpu, domain
        try:
            now = self._clock()
            power_w = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        except nvml.NVMLError as err:
            notes.append(
                f"{key} ({source}) left out: no energy counter ({counter_err}) and no power reading ({err})"
            )
            return None
        if isinstance(counter_err, getattr(nvml, "NVMLError_NotSupported", ())):
            why = "has no total energy counter (it needs a Volta or newer GPU)"
        else:
            why = f"cannot read its total energy counter ({counter_err})"
        every = f"every {self._interval_s:g} s"
        notes.append(f"{key} ({source}) {why}; integrating power samples {every} instead")
        method = f"integrated power samples (nvmlDeviceGetPowerUsage {every}, trapezoid rule)"
        band = BandModel(
            power_period_s=self._interval_s + POWER_AVERAGING_S,
            basis=(f"NVML power samples every {self._interval_s:g} s, each possibly a mean over the last "
                   f"{POWER_AVERAGING_S:g} s (Ampere and newer): (interval + averaging) x the window's mean power"),
        )
        domain = Domain(key, "gpu", True, Provenance("measured", source, method), self._interval_s, band)
        return _Gpu(key, handle, uses_counter=False, last_t=now, last_w=power_w), domain

    def _require_open(self, call: str) -> ModuleType:
        if self._nvml is None:
            raise MeasurementError(f"NvmlBackend.{call}() needs a successful probe() first (and no close())")
        return self._nvml

    def _counter_j(self, nvml: ModuleType, gpu: _Gpu, read_t: float) -> float:
        """Joules counted on a counter GPU, after adding the step to a fresh value taken after ``read_t``."""
        try:
            now_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
        except nvml.NVMLError as err:
            raise CounterReadError(f"{gpu.key}: nvmlDeviceGetTotalEnergyConsumption failed: {err}") from err
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
        try:
            power_w = nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
        except nvml.NVMLError as err:
            raise CounterReadError(f"{gpu.key}: nvmlDeviceGetPowerUsage failed: {err}") from err
        gpu.energy_j += 0.5 * (gpu.last_w + power_w) * (now - gpu.last_t)
        gpu.last_t, gpu.last_w = now, power_w
        return gpu.energy_j


def _check_devices(devices: Sequence[int] | None) -> tuple[int, ...] | None:
    if devices is None:
        return None
    checked = () if isinstance(devices, (str, bytes)) else tuple(devices)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in checked) or not checked:
        raise ConfigError(f"devices must be a non-empty sequence of GPU indices (integers >= 0), not {devices!r}")
    if len(set(checked)) < len(checked):
        raise ConfigError(f"devices lists a GPU twice: {list(checked)}")
    return checked


def _visible_indices(nvml: ModuleType, count: int) -> tuple[list[int], list[str]]:
    """NVML indices in CUDA's numbering, and a note on the mapping when ``CUDA_VISIBLE_DEVICES`` is set.

    Like CUDA, an empty entry or a negative index ends the list (``"-1"`` hides every GPU).
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return list(range(count)), []
    indices: list[int] = []
    uuids: list[str] | None = None
    for token in (part.strip() for part in env.split(",")):
        if token.upper().startswith("MIG-"):
            raise _Unavailable(
                f"CUDA_VISIBLE_DEVICES={env!r} names a MIG instance; NVML measures whole GPUs, not MIG "
                "slices. Measure the whole GPU: unset CUDA_VISIBLE_DEVICES for this process"
            )
        if token.upper().startswith("GPU-"):
            if uuids is None:
                try:
                    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
                    uuids = [_text(nvml.nvmlDeviceGetUUID(handle)) for handle in handles]
                except nvml.NVMLError as err:
                    raise _Unavailable(f"cannot read GPU UUIDs to match CUDA_VISIBLE_DEVICES: {err}") from err
            matches = [i for i, uuid in enumerate(uuids) if uuid.upper().startswith(token.upper())]
            if len(matches) != 1:
                found = "matches no GPU" if not matches else "matches several GPUs"
                raise ConfigError(f"CUDA_VISIBLE_DEVICES={env!r}: {token!r} {found}; NVML sees {uuids}")
            index = matches[0]
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
                raise ConfigError(
                    f"CUDA_VISIBLE_DEVICES={env!r} names GPU {index}, but NVML sees {count} GPU(s), "
                    f"indices 0 to {count - 1}"
                )
        if index in indices:
            raise ConfigError(f"CUDA_VISIBLE_DEVICES={env!r} lists GPU {index} twice")
        indices.append(index)
    if not indices:
        raise _Unavailable(
            f"CUDA_VISIBLE_DEVICES={env!r} hides every GPU, so there is none to measure; "
            "unset it or list the GPUs to use"
        )
    mapping = ", ".join(f"gpu{i} is NVML GPU {nvml_index}" for i, nvml_index in enumerate(indices))
    return indices, [f"GPUs numbered as in CUDA_VISIBLE_DEVICES={env!r}: {mapping}"]


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


def _max_power(nvml: ModuleType, handle: Any) -> tuple[float, str]:
    """The power a GPU's counter steps are judged against, in watts, and where it came from.

    The largest power limit the GPU accepts (an administrator may raise the enforced limit up to it),
    else the enforced limit, else :data:`ASSUMED_GPU_MAX_POWER_W`.
    """
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


def _unavailable(reason: str) -> ProbeResult:
    return ProbeResult(NvmlBackend.name, False, reason=reason)


def _text(value: str | bytes) -> str:
    """NVML strings: ``str`` in current pynvml, ``bytes`` in old releases."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
