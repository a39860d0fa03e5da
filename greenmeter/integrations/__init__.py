"""Training-framework callbacks: PyTorch Lightning and Hugging Face ``transformers``.

Each framework has its own module, which imports the framework when it is itself imported::

    from greenmeter.integrations.lightning import GreenmeterCallback           # greenmeter[lightning]
    from greenmeter.integrations.huggingface import GreenmeterTrainerCallback  # greenmeter[huggingface]

Importing this package imports no framework (nor torch). Importing a framework's module without that
framework installed raises :class:`~greenmeter.ConfigError` naming the extra to install.

Both callbacks drive a :class:`TrainingRecorder`, which serves a hand-written loop as well: it opens one
window over the training, marks steps and epochs on the meter, and turns two reads of the meter's
cumulative counters into live figures for a logger (see :data:`METRICS`). The window's measurement, with
its per-epoch records and provenance, goes to the meter's store when the training ends.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING

from greenmeter._errors import ConfigError, MeasurementError
from greenmeter.carbon.settings import CarbonSettings, estimate_carbon
from greenmeter.metering.meter import Meter
from greenmeter.store.recorder import check_store

if TYPE_CHECKING:
    from greenmeter.metering.meter import Window
    from greenmeter.records.measurement import Measurement
    from greenmeter.store.database import Store

__all__ = ["METRICS", "TrainingRecorder", "import_framework"]

#: The figures the callbacks log, by name after the prefix (``"greenmeter/"`` by default). Units are in
#: the names. A "log point" is each time the callback writes to the framework's logger.
METRICS: Mapping[str, str] = MappingProxyType({
    "power_w": "mean power since the previous log point, in W",
    "step_energy_j": "mean energy per optimizer step since the previous log point, in J",
    "step_co2e_g": "mean CO2e per optimizer step since the previous log point, in g",
    "energy_j": "energy since the training started, in J",
    "co2e_g": "CO2e since the training started, in g",
    "epoch_energy_j": "energy of the epoch that just ended, in J",
    "epoch_power_w": "mean power over the epoch that just ended, in W",
    "epoch_co2e_g": "CO2e of the epoch that just ended, in g",
})


def import_framework(modules: Sequence[str], extra: str) -> ModuleType:
    """Import the first of ``modules`` whose top-level package is installed.

    Args:
        modules: module names in order of preference, e.g. ``("lightning.pytorch", "pytorch_lightning")``.
        extra: the greenmeter extra that installs one of them, named in the error.

    Raises:
        ConfigError: none is installed (the message says ``pip install greenmeter[<extra>]``), or one is
            installed but fails to import (the import error is attached).
    """
    for name in modules:
        if importlib.util.find_spec(name.partition(".")[0]) is None:
            continue
        try:
            return importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"{name} is installed but cannot be imported ({err}); reinstall it with "
                              f"pip install greenmeter[{extra}]") from err
    raise ConfigError(f"this greenmeter integration needs {' or '.join(modules)}, which is not installed: "
                      f"pip install greenmeter[{extra}]")


class TrainingRecorder:
    """One measured training: a window over it, steps and epochs on the meter, and live figures.

    Live figures are differences of two :meth:`Meter.read` snapshots (cumulative joules per domain; a
    read costs microseconds), summed over the domains that count in the total. They are only as fine as
    the counters: the CPU estimate moves in steps of the kernel's CPU-time tick (10 ms), RAPL every
    ~1 ms, NVML's power samples every ~100 ms. :meth:`interval` therefore declines to report an interval
    shorter than the slowest counter's update period; that time is carried into the next interval.

    Args:
        meter: the meter to use. ``None`` (default): one is made when the training starts, from
            ``store``, ``carbon`` and ``name``, and closed when it ends (which finishes its run in the store).
        store: for the meter made here, as :class:`~greenmeter.Meter`'s ``store`` (a Store, a path, or
            ``True`` for the default store). With a given meter, give the store to that meter instead.
        carbon: grid intensity and PUE. For the meter made here they are the meter's; with a given meter
            they apply to this training's window only (default: the meter's own).
        name: the run's name in the store, for the meter made here (default: the script's file name).
        window: the window's name, e.g. ``"fit"``.
        prefix: prefix of every metric name (see :data:`METRICS`).

    Raises:
        ConfigError: a meter that is not a :class:`~greenmeter.Meter`, ``store`` or ``name`` given with a
            meter, a ``store`` that is not a Store, a path, ``True`` or ``None``, or ``carbon`` that is not a
            :class:`~greenmeter.CarbonSettings`.
    """

    def __init__(
        self, meter: Meter | None = None, *, store: Store | str | os.PathLike[str] | bool | None = None,
        carbon: CarbonSettings | None = None, name: str | None = None, window: str = "train",
        prefix: str = "greenmeter/",
    ) -> None:
        if meter is not None and not isinstance(meter, Meter):
            raise ConfigError(f"meter must be a greenmeter.Meter, not {type(meter).__name__}")
        if meter is not None and (store is not None or name is not None):
            raise ConfigError("store= and name= configure the meter made by the callback; with your own meter, "
                              "pass them to it: Meter(store=..., name=...)")
        if carbon is not None and not isinstance(carbon, CarbonSettings):
            raise ConfigError(f"carbon must be a greenmeter.CarbonSettings, not {type(carbon).__name__}")
        if store is not None:
            check_store(store)  # refused now, not when the training starts
        self._given = meter
        self._store = store
        self._carbon = carbon
        self._name = name
        self.window_name = window
        self.prefix = prefix
        self.meter: Meter | None = meter
        self.measurement: Measurement | None = None
        self._window: Window | None = None
        self._keys: tuple[str, ...] = ()
        self._resolution_s = 0.0
        self._co2e_g_per_j = 0.0
        self._start_e = 0.0
        self._steps = 0
        self._last_log = (0.0, 0.0, 0)  # (perf_counter s, total J, steps) at the previous log point
        self._last_epoch = (0.0, 0.0)  # (perf_counter s, total J) at the previous epoch mark

    @property
    def active(self) -> bool:
        """True between :meth:`start` and :meth:`finish`."""
        return self._window is not None

    @property
    def steps(self) -> int:
        """Steps marked since :meth:`start`."""
        return self._steps

    def start(self) -> None:
        """Open the window (making the meter first, when none was given).

        Raises:
            MeasurementError: the recorder is already recording.
        """
        if self._window is not None:
            raise MeasurementError(f"the training window {self.window_name!r} is already open; finish() it first")
        meter = self._given or Meter(store=self._store, carbon=self._carbon, name=self._name)
        try:
            window = meter.begin(self.window_name, carbon=self._carbon if self._given is not None else None)
            # Meter has no public accessor for its carbon settings; None means the world average.
            settings = self._carbon if self._carbon is not None else meter.carbon_settings
            self._co2e_g_per_j = estimate_carbon(1.0, settings).co2e_g  # CO2e is linear in energy
        except BaseException:
            if self._given is None:
                meter.close()
            raise
        self.meter, self._window, self.measurement = meter, window, None
        self._keys = tuple(d.key for d in meter.domains if d.in_total)
        self._resolution_s = max((d.update_period_s for d in meter.domains), default=0.0)
        self._start_e = self._total(window.energy)
        self._steps = 0
        self._last_log = (window.t0, self._start_e, 0)
        self._last_epoch = (window.t0, self._start_e)

    def step(self, samples: int | None = None) -> None:
        """Mark one optimizer step, with its number of samples when known (costs ~1 us)."""
        if self.meter is not None and self._window is not None:
            self.meter.step(samples)
            self._steps += 1

    def epoch(self) -> dict[str, float]:
        """Mark the end of an epoch and return its figures (``epoch_energy_j``, ``epoch_power_w``, ``epoch_co2e_g``).

        The figures come from a read taken just after the meter's own epoch mark, so they match the
        stored :class:`~greenmeter.EpochRecord` to within that read's microseconds. Empty when not recording.
        """
        if self.meter is None or self._window is None:
            return {}
        self.meter.epoch()
        t, energy = self.meter.read()
        total = self._total(energy)
        t0, e0 = self._last_epoch
        self._last_epoch = (t, total)
        joules = total - e0
        figures = {"epoch_energy_j": joules, "epoch_co2e_g": joules * self._co2e_g_per_j}
        if t > t0:
            figures["epoch_power_w"] = joules / (t - t0)
        return self._named(figures)

    def interval(self) -> dict[str, float] | None:
        """Figures since the previous log point (or the start), and so far; this read becomes the next log point.

        Returns:
            ``power_w``, ``energy_j``, ``co2e_g`` and, when steps were marked since the previous log point,
            ``step_energy_j`` and ``step_co2e_g`` (names with the prefix); ``None`` when not recording or
            when less time has passed than the slowest counter's update period (the next call covers it).
        """
        if self.meter is None or self._window is None:
            return None
        t, energy = self.meter.read()
        t0, e0, steps0 = self._last_log
        if t - t0 <= 0 or t - t0 < self._resolution_s:
            return None
        total = self._total(energy)
        self._last_log = (t, total, self._steps)
        joules, steps = total - e0, self._steps - steps0
        figures = {"power_w": joules / (t - t0), "energy_j": total - self._start_e,
                   "co2e_g": (total - self._start_e) * self._co2e_g_per_j}
        if steps:
            figures["step_energy_j"] = joules / steps
            figures["step_co2e_g"] = joules / steps * self._co2e_g_per_j
        return self._named(figures)

    def finish(self, error: BaseException | None = None) -> Measurement | None:
        """End the window (stored by the meter's store, if any) and close the meter made here.

        Args:
            error: the exception that stopped the training, if any: the measurement is then marked failed,
                and the run of the meter made here is finished by it: ``interrupted`` for a
                ``KeyboardInterrupt`` (Ctrl-C, or :class:`~greenmeter.metering.interrupts.Terminated` for
                SIGTERM), ``failed`` for any other exception (see :meth:`Meter.close`).

        Returns:
            The training's measurement (also kept as ``measurement``); the previous one, or ``None``, when
            not recording (so a second call is harmless).
        """
        meter, window = self.meter, self._window
        if meter is None or window is None:
            return self.measurement
        self._window = None
        try:
            self.measurement = meter.end(window, error=error)
        finally:
            if self._given is None:
                meter.close(error=error)  # the run ends as the training did: ok, failed or interrupted
        return self.measurement

    def _total(self, energy: Mapping[str, float]) -> float:
        return sum(energy[key] for key in self._keys)

    def _named(self, figures: Mapping[str, float]) -> dict[str, float]:
        return {self.prefix + key: float(value) for key, value in figures.items()}
