"""A PyTorch Lightning callback that measures a ``fit``: energy, power and CO2e per step and per epoch.

::

    from greenmeter.integrations.lightning import GreenmeterCallback

    energy = GreenmeterCallback(store=True)
    trainer = Trainer(max_epochs=3, callbacks=[energy])
    trainer.fit(model, train_loader)
    print(energy.measurement.summary())

Works with ``lightning.pytorch`` (preferred when installed) or ``pytorch_lightning``. Importing this module
without either raises :class:`~greenmeter.ConfigError`: ``pip install greenmeter[lightning]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from greenmeter._checks import whole_number
from greenmeter.integrations import TrainingRecorder, import_framework
from greenmeter.metering.interrupts import Terminated
from greenmeter.metering.meter import batch_size

if TYPE_CHECKING:
    from greenmeter.carbon.settings import CarbonSettings
    from greenmeter.metering.meter import Meter
    from greenmeter.records.measurement import Measurement
    from greenmeter.store.database import Store

_pl = import_framework(("lightning.pytorch", "pytorch_lightning"), "lightning")
#: what Lightning's loops raise when the process got SIGTERM (a ``SystemExit``), where this version has it
_SIGTERM_EXCEPTIONS: tuple[type[BaseException], ...] = tuple(
    cls for cls in (getattr(getattr(_pl.utilities, "exceptions", None), "SIGTERMException", None),) if cls)

__all__ = ["GreenmeterCallback"]


class GreenmeterCallback(_pl.Callback):  # type: ignore[misc,name-defined]
    """Measures the training of ``Trainer.fit`` as one greenmeter window, and logs live figures.

    The window opens when training starts (``on_train_start``, after the sanity check) and closes when it
    ends, so it covers every training batch and the validation run inside the fit. A step is marked each
    time the optimizer steps (with gradient accumulation, once per accumulated group of batches), with the
    batches' sample count; an epoch at each ``on_train_epoch_end`` (which Lightning calls after the
    epoch's validation). When the fit ends, the window's measurement is stored in the meter's store and
    kept as :attr:`measurement`; an exception ends it as failed, and the run of the meter made here ends
    ``interrupted`` (Ctrl-C, or SIGTERM, on which Lightning stops the fit) or ``failed``.

    Every ``log_every_n_steps`` optimizer steps, and at the end, the callback writes ``greenmeter/power_w``,
    ``greenmeter/step_energy_j``, ``greenmeter/step_co2e_g``, ``greenmeter/energy_j`` and
    ``greenmeter/co2e_g`` (see :data:`greenmeter.integrations.METRICS`) to every logger of the trainer at
    ``step=trainer.global_step``; at each epoch end, ``greenmeter/epoch_energy_j``, ``epoch_power_w`` and
    ``epoch_co2e_g``. Step figures are differences of two reads of the meter's counters, so they are as
    fine as the counters (the CPU estimate moves in 10 ms ticks); a log point closer than that to the
    previous one is put off to the next step.

    Args:
        meter: the :class:`~greenmeter.Meter` to use. ``None`` (default): one is made for each fit from
            ``store``, ``carbon`` and ``name``, and closed at the fit's end.
        store: where the meter made here stores the run: a Store, a path, or ``True`` for the default store.
        carbon: grid intensity and PUE (with your own meter: for this window only).
        name: the run's name in the store (default: the script's file name).
        log_every_n_steps: optimizer steps between log points (default: the trainer's ``log_every_n_steps``).
        prefix: prefix of the metric names.
        batch_size_of: the number of samples in a batch (default: the leading size of its first tensor;
            ``None`` when it has none, and then the window has no sample count).

    Raises:
        ConfigError: a bad ``log_every_n_steps``, or ``store``/``name`` given together with a meter.
    """

    def __init__(
        self, meter: Meter | None = None, *, store: Store | str | os.PathLike[str] | bool | None = None,
        carbon: CarbonSettings | None = None, name: str | None = None, log_every_n_steps: int | None = None,
        prefix: str = "greenmeter/", batch_size_of: Callable[[Any], int | None] = batch_size,
    ) -> None:
        super().__init__()
        whole_number("log_every_n_steps", log_every_n_steps, minimum=1, optional=True)
        self.recorder = TrainingRecorder(meter, store=store, carbon=carbon, name=name, window="fit", prefix=prefix)
        self.log_every_n_steps = log_every_n_steps
        self._batch_size_of = batch_size_of
        self._every = 1
        self._global_step = 0
        self._since_log = 0
        self._pending: int | None = 0

    @property
    def meter(self) -> Meter | None:
        """The meter in use (the one made for the latest fit, when none was given)."""
        return self.recorder.meter

    @property
    def measurement(self) -> Measurement | None:
        """The latest fit's measurement (energy in J, per-epoch records, provenance); ``None`` before one ends."""
        return self.recorder.measurement

    # Lightning hooks ---------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Open the window."""
        self.recorder.start()
        self._every = self.log_every_n_steps or max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50))
        self._global_step = trainer.global_step
        self._since_log = 0
        self._pending = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Count the batch's samples; mark a step when the optimizer stepped, and log every n steps."""
        if not self.recorder.active:
            return
        size = self._batch_size_of(batch)
        self._pending = None if size is None or self._pending is None else self._pending + size
        if trainer.global_step == self._global_step:
            return  # accumulating gradients: the optimizer has not stepped yet
        self._global_step = trainer.global_step
        self.recorder.step(self._pending)
        self._pending = 0
        self._since_log += 1
        if self._since_log >= self._every:
            figures = self.recorder.interval()
            if figures is not None:  # None: too soon for the counters; try again next step
                self._since_log = 0
                self._log(trainer, figures)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Mark the epoch and log its figures."""
        if self.recorder.active:
            self._log(trainer, {**self.recorder.epoch(), "epoch": trainer.current_epoch})

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Log the last interval, then end the window (stored) and close the meter made here."""
        if not self.recorder.active:
            return
        figures = self.recorder.interval()
        if figures is not None:
            self._log(trainer, figures)
        self.recorder.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """End the window as failed (stored with the error) and close the meter made here, whose run ends
        ``interrupted`` for Ctrl-C or Lightning's SIGTERM, else ``failed``."""
        if isinstance(exception, _SIGTERM_EXCEPTIONS):  # Lightning's own exit on SIGTERM: an interruption
            exception = Terminated()
        self.recorder.finish(error=exception)

    @staticmethod
    def _log(trainer: Any, figures: Mapping[str, float]) -> None:
        for logger in trainer.loggers:  # Lightning's loggers write on global rank zero only
            logger.log_metrics(dict(figures), step=trainer.global_step)
