"""The short front door: ``measure`` (a context manager), ``track`` (a decorator), ``current_meter``.

Both use the meter of the tracked function they run in, if any, and otherwise one process-wide meter
created on first use, so hardware is probed once per process.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

from greenmeter._errors import ConfigError, MeasurementError
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.metering.meter import Meter
from greenmeter.metering.meter import WindowBlock

__all__ = ["current_meter", "default_meter", "measure", "track"]

F = TypeVar("F", bound=Callable[..., Any])

_current: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("greenmeter_meter", default=None)
_default: Meter | None = None
_default_lock = threading.Lock()


def default_meter() -> Meter:
    """The process-wide meter, created (not yet started) on first call and closed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Meter()
            atexit.register(_default.close)
        return _default


def current_meter() -> Meter:
    """The meter of the tracked function or ``measure`` block this code runs in.

    Use it to mark steps and epochs from inside a training loop::

        @greenmeter.track
        def train():
            for batch in loader:
                ...
                greenmeter.current_meter().step(len(batch))

    Raises:
        MeasurementError: when called outside ``@track`` and ``measure``.
    """
    meter = _current.get()
    if meter is None:
        raise MeasurementError(
            "current_meter() was called outside a @greenmeter.track function or greenmeter.measure block; "
            "wrap the code in one of them, or pass a Meter explicitly"
        )
    return meter


class _Measure(WindowBlock):
    """A window block that also makes its meter the current one inside the block (and closes it when owned)."""

    __slots__ = ("_token", "_owned")

    def __init__(self, meter: Meter, name: str, samples: int | None, carbon: CarbonSettings | None,
                 owned: bool = False) -> None:
        super().__init__(meter, name, samples, carbon)
        self._owned = owned

    def __enter__(self):  # type: ignore[no-untyped-def]
        self._token = _current.set(self._meter)
        try:
            return super().__enter__()
        except BaseException:
            _current.reset(self._token)
            raise

    def __exit__(self, *exc):  # type: ignore[no-untyped-def]
        try:
            super().__exit__(*exc)
        finally:
            _current.reset(self._token)
            if self._owned:  # a meter made for this block's own stored run: finish it (failed, interrupted or ok)
                self._meter.close(error=exc[1])


def _meter_for(meter: Meter | None, store: Any, name: str, carbon: CarbonSettings | None) -> tuple[Meter, bool]:
    """The meter a block uses, and whether the block owns it (a new one for ``store``, closed at the end)."""
    if store is None:
        return meter or _current.get() or default_meter(), False
    if meter is not None:
        raise ConfigError("give store= or meter=, not both (a Meter keeps its own store: Meter(store=...))")
    return Meter(store=store, name=name, carbon=carbon), True


def _carbon(
    country: str | None, cloud: str | None, intensity: float | None, pue: float | str | None,
) -> CarbonSettings | None:
    """Carbon settings from keyword arguments; ``None`` (the meter's own) when none is given."""
    if country is None and cloud is None and intensity is None and pue is None:
        return None
    return CarbonSettings(country=country, cloud=cloud, intensity_g_per_kwh=intensity,
                          pue=1.0 if pue is None else pue)


def measure(
    name: str = "measure", *, samples: int | None = None, meter: Meter | None = None, store: Any = None,
    country: str | None = None, cloud: str | None = None, intensity: float | None = None,
    pue: float | str | None = None,
) -> WindowBlock:
    """Measure a block: ``with greenmeter.measure("inference", samples=n) as m: ...``.

    After the block, ``m.measurement`` is the :class:`~greenmeter.Measurement` (energy in J, latency in s).
    An exception in the block is recorded as a failed measurement and re-raised unchanged (a fault of the
    meter while ending the window is logged, never raised in its place). With ``store``, the block's run
    ends ``interrupted`` for a ``KeyboardInterrupt``, ``failed`` for any other exception, else ``ok``.

    Args:
        name: the window's name.
        samples: samples processed in the block (for joules per sample); can be set later as ``m.samples``.
        meter: the meter to use (default: the current one, else the process-wide meter).
        store: keep the block as a run of its own in a run store (a path, a ``Store`` or ``True`` for the
            default store): a new meter is made for the block and the run is finished when it ends.
        country: ISO 3166 country code (``"FRA"`` or ``"FR"``) for the grid intensity.
        cloud: cloud provider and region (``"aws:eu-west-3"``) for the grid intensity.
        intensity: grid intensity in gCO2e/kWh, given by you.
        pue: power usage effectiveness (a number >= 1 or a preset name; default 1.0).

    Without carbon settings the meter's are used (by default the world average, marked as assumed).

    Raises:
        ConfigError: an unknown country or region, or an out-of-range intensity or PUE.
    """
    carbon = _carbon(country, cloud, intensity, pue)
    use, owned = _meter_for(meter, store, name, carbon)
    return _Measure(use, name, samples, carbon, owned)


@overload
def track(func: F, /) -> F: ...
@overload
def track(
    *, name: str | None = None, samples: int | None = None, meter: Meter | None = None, store: Any = None,
    country: str | None = None, cloud: str | None = None, intensity: float | None = None,
    pue: float | str | None = None,
) -> Callable[[F], F]: ...


def track(
    func: Callable[..., Any] | None = None, /, *, name: str | None = None, samples: int | None = None,
    meter: Meter | None = None, store: Any = None, country: str | None = None, cloud: str | None = None,
    intensity: float | None = None, pue: float | str | None = None,
) -> Any:
    """Decorate a function (a training loop) so every call is measured as one window.

    Use bare (``@greenmeter.track``) or with options (``@greenmeter.track(name="train", samples=60000)``).
    Inside the call, :func:`current_meter` returns the meter, to mark steps and epochs. The last call's
    result is kept as ``wrapper.last_measurement``; all are in ``meter.measurements``. With ``store``
    (a path, a ``Store`` or ``True``), each call is a stored run of its own, finished when the call
    returns (``ok``) or raises (``interrupted`` for a ``KeyboardInterrupt``, else ``failed``); the
    exception is re-raised unchanged. The carbon keywords are those of :func:`measure`.
    """
    carbon = _carbon(country, cloud, intensity, pue)
    if store is not None and meter is not None:
        raise ConfigError("give store= or meter=, not both (a Meter keeps its own store: Meter(store=...))")

    def decorate(f: F) -> F:
        window_name = name or f.__qualname__

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            use, owned = _meter_for(meter, store, window_name, carbon)
            block = _Measure(use, window_name, samples, carbon, owned)
            try:
                with block:
                    return f(*args, **kwargs)
            finally:
                if block.window is not None:
                    wrapper.last_measurement = block.window.measurement  # type: ignore[attr-defined]

        wrapper.last_measurement = None  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate
