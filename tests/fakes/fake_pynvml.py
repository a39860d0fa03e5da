"""A fake ``pynvml`` module, installed at the import boundary with
``monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(...))``.

It mirrors the parts of pynvml (nvidia-ml-py) greenmeter uses: ``nvmlInit``/``nvmlShutdown``, the device
queries, and the ``NVMLError`` tree (``NVMLError_NotSupported`` and friends, with pynvml's messages).
Like the real library it refuses device calls before ``nvmlInit`` or after the last ``nvmlShutdown``.

A GPU's readings come one of two ways:

- **From a clock** (``FakeGpu(clock=..., power_w=...)``), as the real ones do: the GPU draws ``power_w``
  (changed with :meth:`FakeGpu.set_power`) and NVML refreshes what it reports every ``update_period_s``
  (at the instants ``update_phase_s + k * update_period_s``). Between refreshes every reading stands still:
  the total energy counter (mJ, floored) holds the energy drawn up to the last refresh, the power reading
  (``nvmlDeviceGetPowerUsage``, mW) the mean power over the ``power_averaging_s`` before it (1 s, as on
  Ampere and newer), and the instantaneous field (``NVML_FI_DEV_POWER_INSTANT``, where ``instant_power``)
  the power drawn at it. Hand the backend the same clock (``NvmlBackend(clock=clock)``) and advance it.
- **From scripts** (no ``clock``): each call to ``nvmlDeviceGetTotalEnergyConsumption`` (mJ) or
  ``nvmlDeviceGetPowerUsage`` (mW) takes the next value of its script (the last one repeats once the
  script runs out); an ``NVMLError`` instance in a script is raised when its turn comes. Scripted values
  know no time.

**GH200 mode** (``FakeGpu.gh200(clock, ...)``, clock mode only): the GPU sits on a Grace Hopper module whose
Grace CPU and LPDDR5X draw ``module_power_w`` beside it (changed with :meth:`FakeGpu.set_module_power`), on the
same clock and refresh instants. ``nvmlDeviceGetC2cModeInfoV`` says C2C is enabled; the field queries take a
``(field id, scopeId)`` pair as pynvml's do: with ``NVML_POWER_SCOPE_MODULE`` ``NVML_FI_DEV_ENERGY`` is the
module's counter (mJ), ``NVML_FI_DEV_POWER_INSTANT`` its power (mW) and ``NVML_FI_DEV_POWER_MAX_LIMIT`` its
largest limit; with ``NVML_POWER_SCOPE_GPU`` they answer only where ``gpu_scope`` (then the GPU's alone).
``nvmlDeviceGetTotalEnergyConsumption`` counts the whole module, as Zeus found on GH200. Not verified on a
GH200: this is what the NVML header and Zeus say, made testable. ``c2c=True`` without ``module_power_w`` is a GB10
(DGX Spark): C2C but no module scope. ``scope_ignored`` is a driver older than ``scopeId``: every scope answers
the GPU's value. A discrete GPU reports C2C disabled and answers no module scope.

A GPU with ``energy_mj=None`` has no energy counter (pre-Volta): the call raises ``NVMLError_NotSupported``.
The power limits (an H200's by default) are what the backend judges counter steps against. Handles open by
index or by UUID (a GPU's, or one of its MIG instances': a MIG device handle, which answers no energy or
power call, as in NVML); the module records the NVML index of each opening in ``opened``. ``processes``
are the PIDs ``nvmlDeviceGetComputeRunningProcesses`` lists (or an ``NVMLError`` it raises; by default the
calling process alone).
"""

from __future__ import annotations

import math
import os
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Script = Sequence["int | NVMLError"]

#: Field ids, value types and the success code, as in pynvml (nvidia-ml-py).
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_FI_DEV_POWER_MAX_LIMIT = 188
NVML_FI_DEV_ENERGY = 191
NVML_POWER_SCOPE_GPU = 0
NVML_POWER_SCOPE_MODULE = 1
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_SUCCESS = 0


class NVMLError(Exception):
    """Base of the fake NVML errors; ``value`` is the NVML return code, as in pynvml."""

    value = 999
    text = "Unknown Error"

    def __str__(self) -> str:
        return self.text


def _error(name: str, value: int, text: str) -> type[NVMLError]:
    return type(name, (NVMLError,), {"value": value, "text": text, "__module__": __name__})


NVMLError_Uninitialized = _error("NVMLError_Uninitialized", 1, "Uninitialized")
NVMLError_InvalidArgument = _error("NVMLError_InvalidArgument", 2, "Invalid Argument")
NVMLError_NotSupported = _error("NVMLError_NotSupported", 3, "Not Supported")
NVMLError_NoPermission = _error("NVMLError_NoPermission", 4, "Insufficient Permissions")
NVMLError_NotFound = _error("NVMLError_NotFound", 6, "Not Found")
NVMLError_DriverNotLoaded = _error("NVMLError_DriverNotLoaded", 9, "Driver Not Loaded")
NVMLError_LibraryNotFound = _error("NVMLError_LibraryNotFound", 12, "NVML Shared Library Not Found")
NVMLError_GpuIsLost = _error("NVMLError_GpuIsLost", 15, "GPU is lost")
NVMLError_LibRmVersionMismatch = _error(
    "NVMLError_LibRmVersionMismatch", 18, "RM has detected an NVML/RM version mismatch."
)
NVMLError_Unknown = _error("NVMLError_Unknown", 999, "Unknown Error")


@dataclass
class FakeGpu:
    """One fake GPU.

    Attributes:
        name: what ``nvmlDeviceGetName`` returns.
        uuid: what ``nvmlDeviceGetUUID`` returns.
        energy_mj: script of total-energy-counter values in millijoules, or ``None`` for no counter.
        power_mw: script of power readings in milliwatts.
        power_limits_mw: ``nvmlDeviceGetPowerManagementLimitConstraints`` (min, max) in milliwatts, or
            ``None``: the call raises ``NVMLError_NotSupported``.
        enforced_limit_mw: ``nvmlDeviceGetEnforcedPowerLimit`` in milliwatts, or ``None`` (not supported).
        open_error: raised when this GPU's handle is opened (by index or UUID), if set.
        latency_s: seconds each energy/power call sleeps, releasing the GIL as the real ctypes calls do
            (lets thread-safety tests interleave).
        clock: when set, readings follow it (see the module docstring) and the scripts are not used.
        power_w: the power the GPU draws from its creation on, in watts (clock mode; see :meth:`set_power`).
        update_period_s: how often NVML refreshes the counter and the power readings, in seconds (clock mode).
        update_phase_s: where the refresh instants fall, in seconds (clock mode).
        power_averaging_s: the window ``nvmlDeviceGetPowerUsage`` averages over, in seconds (clock mode).
        counter_start_mj: the energy counter at the GPU's creation, in millijoules (clock mode).
        instant_power: whether ``NVML_FI_DEV_POWER_INSTANT`` answers (in script mode it takes the
            ``power_mw`` script's next value).
        processes: PIDs of the compute processes NVML lists on it, or an ``NVMLError`` the call raises;
            ``None`` (the default): the calling process alone, as when it has a CUDA context there.
        mig_uuids: UUIDs of its MIG instances.
        c2c: what ``nvmlDeviceGetC2cModeInfoV`` says of NVLink-C2C (GH200 mode sets it).
        module_power_w: GH200 mode: what the module's Grace CPU and LPDDR5X draw beside the GPU from its
            creation on, in watts (see :meth:`set_module_power`); ``None``: no module scope (a discrete GPU).
        module_counter_start_mj: GH200 mode: the module's energy counter at the GPU's creation, in millijoules.
        module_limit_mw: GH200 mode: the module's largest power limit, in milliwatts.
        gpu_scope: GH200 mode: whether the fields answer ``NVML_POWER_SCOPE_GPU`` (the GPU alone).
        scope_ignored: a driver older than ``scopeId``: any scope answers as the GPU scope does.
        calls: names of the energy/power calls made on this GPU, in order (filled in by the fake).
    """

    name: str = "NVIDIA H200"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    energy_mj: Script | None = (0,)
    power_mw: Script = (100_000,)
    power_limits_mw: tuple[int, int] | None = (200_000, 700_000)
    enforced_limit_mw: int | None = 700_000
    open_error: NVMLError | None = None
    latency_s: float = 0.0
    clock: Callable[[], float] | None = None
    power_w: float = 0.0
    update_period_s: float = 0.1
    update_phase_s: float = 0.0
    power_averaging_s: float = 1.0
    counter_start_mj: int = 10_000_000
    instant_power: bool = False
    processes: Sequence[int] | NVMLError | None = None
    mig_uuids: tuple[str, ...] = ()
    c2c: bool = False
    module_power_w: float | None = None
    module_counter_start_mj: int = 25_000_000
    module_limit_mw: int = 1_000_000
    gpu_scope: bool = False
    scope_ignored: bool = False
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        origin = self.clock() if self.clock is not None else 0.0
        self._trace: list[tuple[float, float]] = [(origin, float(self.power_w))]  # (from s, watts)
        self._cpu_trace: list[tuple[float, float]] = [(origin, float(self.module_power_w or 0.0))]
        if self.module_power_w is not None and self.clock is None:
            raise ValueError("GH200 mode (module_power_w) needs a GPU made with clock=...")

    @classmethod
    def gh200(cls, clock: Callable[[], float], power_w: float, module_power_w: float, *, gpu_scope: bool = False,
              **options: object) -> FakeGpu:
        """A GH200 module's GPU on ``clock``: the GPU draws ``power_w``, its Grace CPU and LPDDR5X ``module_power_w``."""
        options.setdefault("name", "NVIDIA GH200 480GB")
        options.setdefault("power_limits_mw", (100_000, 900_000))
        options.setdefault("enforced_limit_mw", 900_000)
        return cls(clock=clock, power_w=power_w, module_power_w=module_power_w, c2c=True, gpu_scope=gpu_scope,
                   **options)  # type: ignore[arg-type]

    def set_power(self, watts: float) -> None:
        """From the clock's present time on, the GPU draws ``watts`` (clock mode)."""
        if self.clock is None:
            raise ValueError("set_power needs a GPU made with clock=...")
        self._trace.append((self.clock(), float(watts)))

    def set_module_power(self, watts: float) -> None:
        """From the clock's present time on, the module's Grace CPU and LPDDR5X draw ``watts`` (GH200 mode)."""
        if self.clock is None or self.module_power_w is None:
            raise ValueError("set_module_power needs a GPU made with FakeGpu.gh200(...)")
        self._cpu_trace.append((self.clock(), float(watts)))

    def energy_j(self, t: float, *, part: str = "gpu") -> float:
        """The energy really drawn from the GPU's creation to time ``t``, in joules (negative before it):
        ``part`` ``"gpu"`` (the GPU), ``"cpu"`` (GH200 mode: the Grace CPU and LPDDR5X) or ``"module"`` (both)."""
        if part == "module":
            return self.energy_j(t) + self.energy_j(t, part="cpu")
        trace = self._cpu_trace if part == "cpu" else self._trace
        origin, first_w = trace[0]
        if t <= origin:
            return first_w * (t - origin)
        total = 0.0
        for (start, watts), (end, _) in zip(trace, [*trace[1:], (math.inf, 0.0)]):
            if t <= start:
                break
            total += watts * (min(t, end) - start)
        return total

    def power_at(self, t: float, *, part: str = "gpu") -> float:
        """The power drawn at time ``t``, in watts (``part`` as for :meth:`energy_j`)."""
        if part == "module":
            return self.power_at(t) + self.power_at(t, part="cpu")
        trace = self._cpu_trace if part == "cpu" else self._trace
        return next((w for start, w in reversed(trace) if start <= t), trace[0][1])

    def last_update(self) -> float:
        """The latest refresh instant at or before the clock's present time, in seconds."""
        assert self.clock is not None
        k = math.floor((self.clock() - self.update_phase_s) / self.update_period_s + 1e-9)
        return self.update_phase_s + k * self.update_period_s

    def clocked(self, call: str) -> int:
        """What the clock-driven GPU reports now: ``"energy"`` (in GH200 mode the module's), ``"gpu-energy"``
        or ``"module-energy"`` in mJ; ``"power"``, ``"instant"`` or ``"module-instant"`` in mW."""
        if self.latency_s:
            time.sleep(self.latency_s)
        self.calls.append(call)
        u = self.last_update()
        if call == "energy" and self.module_power_w is not None or call == "module-energy":
            return self.module_counter_start_mj + math.floor(self.energy_j(u, part="module") * 1000 + 1e-6)
        if call == "module-instant":
            return round(self.power_at(u, part="module") * 1000)
        if call in ("energy", "gpu-energy"):
            return self.counter_start_mj + math.floor(self.energy_j(u) * 1000 + 1e-6)
        if call == "power":
            mean_w = (self.energy_j(u) - self.energy_j(u - self.power_averaging_s)) / self.power_averaging_s
            return round(mean_w * 1000)
        return round(self.power_at(u) * 1000)

    def next_value(self, call: str, script: Script) -> int:
        if self.latency_s:
            time.sleep(self.latency_s)
        turn = sum(1 for c in self.calls if c == call)
        self.calls.append(call)
        value = script[min(turn, len(script) - 1)]
        if isinstance(value, NVMLError):
            raise value
        return value


@dataclass(frozen=True)
class _Handle:
    index: int
    mig: int = 0  # 0: the GPU itself; k: its k-th MIG instance


@dataclass(frozen=True)
class _Process:
    pid: int
    usedGpuMemory: int = 0  # noqa: N815 - pynvml's name


@dataclass
class _FieldValue:
    fieldId: int  # noqa: N815 - pynvml's names
    nvmlReturn: int  # noqa: N815
    valueType: int = NVML_VALUE_TYPE_UNSIGNED_INT  # noqa: N815
    value: types.SimpleNamespace = field(default_factory=types.SimpleNamespace)
    scopeId: int = 0  # noqa: N815


class FakePynvml(types.ModuleType):
    """The fake module. Build one with :func:`make_fake_pynvml`.

    Attributes:
        gpus: the fake GPUs, NVML index order.
        init_error: raised by ``nvmlInit`` when set (e.g. ``NVMLError_LibraryNotFound()``).
        init_calls, shutdown_calls: how often each was called.
        opened: the NVML index of each handle opened (by index or UUID), in order.
        driver_version: what ``nvmlSystemGetDriverVersion`` returns.
    """

    NVML_FI_DEV_POWER_AVERAGE = NVML_FI_DEV_POWER_AVERAGE
    NVML_FI_DEV_POWER_INSTANT = NVML_FI_DEV_POWER_INSTANT
    NVML_FI_DEV_POWER_MAX_LIMIT = NVML_FI_DEV_POWER_MAX_LIMIT
    NVML_FI_DEV_ENERGY = NVML_FI_DEV_ENERGY
    NVML_POWER_SCOPE_GPU = NVML_POWER_SCOPE_GPU
    NVML_POWER_SCOPE_MODULE = NVML_POWER_SCOPE_MODULE
    NVML_VALUE_TYPE_UNSIGNED_INT = NVML_VALUE_TYPE_UNSIGNED_INT
    NVML_SUCCESS = NVML_SUCCESS
    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_LibRmVersionMismatch = NVMLError_LibRmVersionMismatch
    NVMLError_Unknown = NVMLError_Unknown

    def __init__(self, gpus: Sequence[FakeGpu], init_error: NVMLError | None = None) -> None:
        super().__init__("pynvml", "fake pynvml for tests")
        self.gpus = list(gpus)
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0
        self.opened: list[int] = []
        self.driver_version = "550.54.15"
        self._refcount = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error
        self._refcount += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self._check_init()
        self._refcount -= 1

    @property
    def initialised(self) -> bool:
        return self._refcount > 0

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        return self._opened(_Handle(index))

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        self._check_init()
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == text:
                return self._opened(_Handle(index))
            if text in gpu.mig_uuids:
                return self._opened(_Handle(index, gpu.mig_uuids.index(text) + 1))
        raise NVMLError_NotFound()

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        self._gpu(handle)
        return handle.index

    def nvmlDeviceIsMigDeviceHandle(self, handle: _Handle) -> int:
        self._gpu(handle)
        return int(handle.mig > 0)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: _Handle) -> _Handle:
        self._gpu(handle)
        if not handle.mig:
            raise NVMLError_InvalidArgument()
        return _Handle(handle.index)

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        gpu = self._gpu(handle)
        return gpu.mig_uuids[handle.mig - 1] if handle.mig else gpu.uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        gpu = self._gpu(handle, whole=True)
        if gpu.energy_mj is None:
            gpu.calls.append("energy")
            raise NVMLError_NotSupported()
        return gpu.clocked("energy") if gpu.clock is not None else gpu.next_value("energy", gpu.energy_mj)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu = self._gpu(handle, whole=True)
        return gpu.clocked("power") if gpu.clock is not None else gpu.next_value("power", gpu.power_mw)

    def nvmlDeviceGetFieldValues(
            self, handle: _Handle, field_ids: Sequence[int | tuple[int, int]]) -> list[_FieldValue]:
        gpu = self._gpu(handle, whole=True)
        values = []
        for item in field_ids:
            field_id, scope = item if isinstance(item, tuple) else (item, NVML_POWER_SCOPE_GPU)
            answer = self._field(gpu, field_id, NVML_POWER_SCOPE_GPU if gpu.scope_ignored else scope)
            if answer is None:
                values.append(_FieldValue(field_id, NVMLError_NotSupported.value, scopeId=scope))
                continue
            kind, number = answer
            member = "ullVal" if kind == NVML_VALUE_TYPE_UNSIGNED_LONG_LONG else "uiVal"
            values.append(_FieldValue(field_id, NVML_SUCCESS, valueType=kind,
                                      value=types.SimpleNamespace(**{member: number}), scopeId=scope))
        return values

    @staticmethod
    def _field(gpu: FakeGpu, field_id: int, scope: int) -> tuple[int, int] | None:
        """A field's ``(value type, value)``, or ``None`` where it does not answer (NVML_ERROR_NOT_SUPPORTED)."""
        unsigned, long_long = NVML_VALUE_TYPE_UNSIGNED_INT, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        if gpu.module_power_w is not None and scope == NVML_POWER_SCOPE_MODULE:
            if field_id == NVML_FI_DEV_ENERGY:
                return long_long, gpu.clocked("module-energy")
            if field_id == NVML_FI_DEV_POWER_INSTANT:
                return unsigned, gpu.clocked("module-instant")
            return (unsigned, gpu.module_limit_mw) if field_id == NVML_FI_DEV_POWER_MAX_LIMIT else None
        if scope != NVML_POWER_SCOPE_GPU or (gpu.module_power_w is not None and not gpu.gpu_scope):
            return None
        if field_id == NVML_FI_DEV_ENERGY and gpu.module_power_w is not None:
            return long_long, gpu.clocked("gpu-energy")
        if field_id == NVML_FI_DEV_ENERGY and gpu.scope_ignored and gpu.energy_mj is not None and gpu.clock is not None:
            return long_long, gpu.clocked("gpu-energy")
        if field_id != NVML_FI_DEV_POWER_INSTANT or not (gpu.instant_power or gpu.module_power_w is not None):
            return None
        return unsigned, gpu.clocked("instant") if gpu.clock is not None else gpu.next_value("instant", gpu.power_mw)

    def nvmlDeviceGetC2cModeInfoV(self, handle: _Handle) -> types.SimpleNamespace:
        return types.SimpleNamespace(isC2cEnabled=int(self._gpu(handle).c2c))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[_Process]:
        gpu = self._gpu(handle)
        if isinstance(gpu.processes, NVMLError):
            raise gpu.processes
        pids = (os.getpid(),) if gpu.processes is None else gpu.processes
        return [_Process(pid) for pid in pids]

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: _Handle) -> list[int]:
        limits = self._gpu(handle).power_limits_mw
        if limits is None:
            raise NVMLError_NotSupported()
        return list(limits)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        limit = self._gpu(handle).enforced_limit_mw
        if limit is None:
            raise NVMLError_NotSupported()
        return limit

    def _opened(self, handle: _Handle) -> _Handle:
        if self.gpus[handle.index].open_error is not None:
            raise self.gpus[handle.index].open_error
        self.opened.append(handle.index)
        return handle

    def _gpu(self, handle: _Handle, whole: bool = False) -> FakeGpu:
        """The GPU of a handle; ``whole``: a call that, as in NVML, a MIG device handle does not answer."""
        self._check_init()
        if whole and handle.mig:
            raise NVMLError_NotSupported()
        return self.gpus[handle.index]

    def _check_init(self) -> None:
        if self._refcount <= 0:
            raise NVMLError_Uninitialized()


def make_fake_pynvml(*gpus: FakeGpu, init_error: NVMLError | None = None) -> FakePynvml:
    """A fake ``pynvml`` with these GPUs (none: a machine where NVML works but sees no GPU)."""
    return FakePynvml(gpus, init_error=init_error)
