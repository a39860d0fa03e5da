"""A fake ``pynvml`` module, installed at the import boundary with
``monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(...))``.

It mirrors the parts of pynvml (nvidia-ml-py) greenmeter uses: ``nvmlInit``/``nvmlShutdown``, the device
queries, and the ``NVMLError`` tree (``NVMLError_NotSupported`` and friends, with pynvml's messages).
Like the real library it refuses device calls before ``nvmlInit`` or after the last ``nvmlShutdown``.

Readings are scripted per GPU: each call to ``nvmlDeviceGetTotalEnergyConsumption`` (mJ) or
``nvmlDeviceGetPowerUsage`` (mW) takes the next value of its script (the last one repeats once the
script runs out); an ``NVMLError`` instance in a script is raised when its turn comes. A GPU with
``energy_mj=None`` has no energy counter (pre-Volta): the call raises ``NVMLError_NotSupported``.
Scripted values know no time: a test that needs a counter to move at a given power hands the backend a
fake clock (``NvmlBackend(clock=...)``, tests/fakes/clock.py) and moves it between reads. The power
limits (an H200's by default) are what the backend judges counter steps against.
"""

from __future__ import annotations

import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field

Script = Sequence["int | NVMLError"]


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
        open_error: raised by ``nvmlDeviceGetHandleByIndex`` for this GPU, if set.
        latency_s: seconds each energy/power call sleeps, releasing the GIL as the real ctypes calls do
            (lets thread-safety tests interleave).
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
    calls: list[str] = field(default_factory=list)

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


class FakePynvml(types.ModuleType):
    """The fake module. Build one with :func:`make_fake_pynvml`.

    Attributes:
        gpus: the fake GPUs, NVML index order.
        init_error: raised by ``nvmlInit`` when set (e.g. ``NVMLError_LibraryNotFound()``).
        init_calls, shutdown_calls: how often each was called.
    """

    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
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

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise NVMLError_InvalidArgument()
        if self.gpus[index].open_error is not None:
            raise self.gpus[index].open_error
        return _Handle(index)

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        gpu = self._gpu(handle)
        if gpu.energy_mj is None:
            gpu.calls.append("energy")
            raise NVMLError_NotSupported()
        return gpu.next_value("energy", gpu.energy_mj)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu = self._gpu(handle)
        return gpu.next_value("power", gpu.power_mw)

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

    def _gpu(self, handle: _Handle) -> FakeGpu:
        self._check_init()
        return self.gpus[handle.index]

    def _check_init(self) -> None:
        if self._refcount <= 0:
            raise NVMLError_Uninitialized()


def make_fake_pynvml(*gpus: FakeGpu, init_error: NVMLError | None = None) -> FakePynvml:
    """A fake ``pynvml`` with these GPUs (none: a machine where NVML works but sees no GPU)."""
    return FakePynvml(gpus, init_error=init_error)
