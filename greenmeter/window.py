"""Window handles: what ``Meter.begin`` returns and what a ``with meter.window(...)`` block yields."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenmeter.carbon import CarbonSettings
    from greenmeter.meter import Meter
    from greenmeter.records import Measurement

__all__ = ["Window", "WindowBlock"]


class Window:
    """An open (or ended) measurement window.

    Attributes:
        name: the window's name.
        samples: samples processed in the window, if known (set it any time before the end).
        measurement: the result, ``None`` until the window ends.
    """

    __slots__ = ("meter", "name", "samples", "started_at", "t0", "energy", "step_index", "epoch_index",
                 "carbon", "measurement")

    def __init__(
        self, meter: Meter, name: str, samples: int | None, started_at: str, t0: float,
        energy: dict[str, float], step_index: int, epoch_index: int, carbon: Any = None,
    ) -> None:
        self.meter = meter
        self.name = name
        self.samples = samples
        self.started_at = started_at
        self.t0 = t0
        self.energy = energy
        self.step_index = step_index
        self.epoch_index = epoch_index
        self.carbon = carbon  # resolved carbon settings for this window only, or None for the meter's
        self.measurement: Measurement | None = None

    def end(self) -> Measurement:
        """End this window; same as ``meter.end(window)``."""
        return self.meter.end(self)

    def __repr__(self) -> str:
        state = "ended" if self.measurement is not None else "open"
        return f"<Window {self.name!r} {state}>"


class WindowBlock:
    """Context manager that opens a window on entry and always closes it on exit.

    An exception in the block is recorded (the measurement is marked failed) and then propagates.
    """

    __slots__ = ("_meter", "_name", "_samples", "_carbon", "window")

    def __init__(self, meter: Meter, name: str, samples: int | None, carbon: CarbonSettings | None = None) -> None:
        self._meter = meter
        self._name = name
        self._samples = samples
        self._carbon = carbon
        self.window: Window | None = None

    def __enter__(self) -> Window:
        self.window = self._meter.begin(self._name, samples=self._samples, carbon=self._carbon)
        return self.window

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        assert self.window is not None
        self._meter.end(self.window, error=exc)
