"""A fake ``torch`` module with a small ``torch.cuda``, installed at the import boundary with
``monkeypatch.setitem(sys.modules, "torch", make_fake_torch(FakeCuda(...)))``.

greenmeter never imports torch for measuring: it looks for it in ``sys.modules`` (``_cuda_sync`` at window
edges, the NVML backend's device mapping). The fake answers what those ask: ``cuda.is_initialized``,
``cuda.device_count``, ``cuda.current_device``, ``cuda.synchronize(device)`` (recorded; like CUDA, it creates a
context on a device that had none), ``cuda.get_device_properties(i).uuid`` (whose ``str`` is the bare UUID,
without NVML's ``GPU-`` prefix, as torch's is) and ``torch._C._cuda_hasPrimaryContext(i)``.

Given a fake clock, a device can also have work queued (:meth:`FakeCuda.queue`): ``synchronize`` on it waits
for that work, moving the clock on by what is left of it, as a real synchronisation blocks the caller.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.fakes.clock import FakeClock


class _Uuid:
    def __init__(self, text: str) -> None:
        self._text = text

    def __str__(self) -> str:
        return self._text


class FakeCuda:
    """The fake ``torch.cuda``.

    Args:
        uuids: each CUDA device's UUID in CUDA's order, with or without the ``GPU-`` prefix (stored bare).
        contexts: the devices that have a CUDA context.
        initialised: what ``is_initialized()`` answers.
        current: the current device.
        clock: a fake clock (``tests.fakes.clock.FakeClock``) that queued work moves on; needed by :meth:`queue`.

    Attributes:
        synced: the device index of each ``synchronize`` call, in order.
        created: devices whose context a ``synchronize`` call created.
        busy_until: per device, the clock time its queued work ends (see :meth:`queue`).
    """

    def __init__(self, uuids: Sequence[str], contexts: Iterable[int] = (), *, initialised: bool = True,
                 current: int = 0, clock: FakeClock | None = None) -> None:
        self.uuids = [u.removeprefix("GPU-") for u in uuids]
        self.contexts = set(contexts)
        self.initialised = initialised
        self.current = current
        self.clock = clock
        self.synced: list[int] = []
        self.created: list[int] = []
        self.busy_until: dict[int, float] = {}

    def queue(self, seconds: float, device: int | None = None) -> None:
        """Queue ``seconds`` of work on a device (default: the current one), after what is queued there already;
        returns at once, as a kernel launch does."""
        if self.clock is None:
            raise ValueError("queue needs a FakeCuda made with clock=...")
        index = self.current if device is None else int(device)
        self.busy_until[index] = max(self.busy_until.get(index, 0.0), self.clock()) + seconds

    def is_initialized(self) -> bool:
        return self.initialised

    def is_available(self) -> bool:
        return bool(self.uuids)

    def device_count(self) -> int:
        return len(self.uuids)

    def current_device(self) -> int:
        return self.current

    def synchronize(self, device: int | None = None) -> None:
        index = self.current if device is None else int(device)
        if not 0 <= index < len(self.uuids):
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        if index not in self.contexts:
            self.contexts.add(index)
            self.created.append(index)
        self.synced.append(index)
        if self.clock is not None and self.busy_until.get(index, 0.0) > self.clock():
            self.clock.advance(self.busy_until[index] - self.clock())

    def get_device_properties(self, index: int) -> types.SimpleNamespace:
        if not 0 <= index < len(self.uuids):
            raise AssertionError("Invalid device id")
        return types.SimpleNamespace(name=f"fake CUDA device {index}", uuid=_Uuid(self.uuids[index]))

    def has_primary_context(self, index: int) -> bool:
        return index in self.contexts


def make_fake_torch(cuda: FakeCuda, *, context_query: bool = True) -> types.ModuleType:
    """A fake ``torch`` module around ``cuda``; ``context_query=False``: a torch without ``_cuda_hasPrimaryContext``."""
    torch = types.ModuleType("torch", "fake torch for tests")
    torch.__version__ = "2.13.0+fake"  # type: ignore[attr-defined]
    torch.version = types.SimpleNamespace(cuda="12.4")  # type: ignore[attr-defined]
    torch.cuda = cuda  # type: ignore[attr-defined]
    torch._C = types.SimpleNamespace()  # type: ignore[attr-defined]
    if context_query:
        torch._C._cuda_hasPrimaryContext = cuda.has_primary_context  # type: ignore[attr-defined]
    return torch
