"""A fake monotonic clock for backends that take ``clock=`` (RAPL, NVML).

A test moves it with a fake counter, so that each counter step spans the time it would take at a real
power::

    clock = FakeClock()
    backend = RaplBackend(tmp_path, clock=clock)
    clock.advance(1.0)
    zone.set_energy_uj(zone.energy_uj + 65_000_000)   # 65 J in 1 s: a 65 W package
"""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that stands still until the test advances it.

    Args:
        start_s: the first reading, in seconds.
    """

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = float(start_s)

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock never goes back, not {seconds!r} s")
        self.now_s += seconds
