"""A Hugging Face ``transformers`` Trainer callback: energy, power and CO2e per step and per epoch.

::

    from greenmeter.integrations.huggingface import GreenmeterTrainerCallback

    trainer = Trainer(model=model, args=args, train_dataset=train)
    energy = GreenmeterTrainerCallback(store=True).attach(trainer)
    trainer.train()
    print(energy.measurement.summary())

Importing this module without ``transformers`` raises :class:`~greenmeter.ConfigError`:
``pip install greenmeter[huggingface]``.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

from greenmeter._errors import MeasurementError
from greenmeter.integrations import TrainingRecorder, import_framework

if TYPE_CHECKING:
    from greenmeter.carbon.settings import CarbonSettings
    from greenmeter.metering.meter import Meter
    from greenmeter.records.measurement import Measurement
    from greenmeter.store.database import Store

_transformers = import_framework(("transformers",), "huggingface")

__all__ = ["GreenmeterTrainerCallback"]

log = logging.getLogger("greenmeter")


def _value(option: Any) -> Any:
    """The plain value of a transformers option that may be an enum (``IntervalStrategy.NO`` -> ``"no"``)."""
    return getattr(option, "value", option)


class GreenmeterTrainerCallback(_transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Measures ``Trainer.train`` as one greenmeter window and adds energy figures to the Trainer's logs.

    The window opens at ``on_train_begin`` and closes at ``on_train_end``. A step is marked at each
    ``on_step_end`` (one optimizer step, after any gradient accumulation), an epoch at each ``on_epoch_end``.
    The Trainer hands callbacks no batches, so steps carry no sample count. When training ends the window's
    measurement is stored in the meter's store and kept as :attr:`measurement`. The Trainer has no hook
    for an exception, so :meth:`attach` also wraps the trainer's ``train``: when it raises, the window ends
    as failed with the exception and the run of the meter made here ends ``interrupted`` (Ctrl-C) or
    ``failed``; the exception goes on unchanged. Added without :meth:`attach`, the callback cannot see a
    crash: the window stays open and the run ``running`` (listed as incomplete), and the next ``train()``
    with this callback first ends that window as failed.

    At each of the Trainer's log points (``logging_steps``, evaluations, the final summary) the callback adds
    ``greenmeter/power_w``, ``greenmeter/step_energy_j``, ``greenmeter/step_co2e_g``, ``greenmeter/energy_j``
    and ``greenmeter/co2e_g`` to the logs (see :data:`greenmeter.integrations.METRICS`): they go into
    ``trainer.state.log_history`` and to the callbacks after this one. At an epoch's end it asks the Trainer
    to log (unless ``logging_strategy="no"``) and adds ``greenmeter/epoch_energy_j``, ``epoch_power_w``
    and ``epoch_co2e_g`` to that log. The Trainer calls its reporting callbacks (``report_to``:
    TensorBoard, W&B...) before the ones it is given, so use :meth:`attach` to put this callback first and
    have them receive the figures too.

    Args:
        meter: the :class:`~greenmeter.Meter` to use. ``None`` (default): one is made for each training
            from ``store``, ``carbon`` and ``name``, and closed when it ends.
        store: where the meter made here stores the run: a Store, a path, or ``True`` for the default store.
        carbon: grid intensity and PUE (with your own meter: for this window only).
        name: the run's name in the store (default: the script's file name).
        prefix: prefix of the metric names.

    Raises:
        ConfigError: ``store`` or ``name`` given together with a meter.
    """

    def __init__(
        self, meter: Meter | None = None, *, store: Store | str | os.PathLike[str] | bool | None = None,
        carbon: CarbonSettings | None = None, name: str | None = None, prefix: str = "greenmeter/",
    ) -> None:
        self.recorder = TrainingRecorder(meter, store=store, carbon=carbon, name=name, window="train", prefix=prefix)
        self._attached = False
        self._epoch_figures: dict[str, float] | None = None

    @property
    def meter(self) -> Meter | None:
        """The meter in use (the one made for the latest training, when none was given)."""
        return self.recorder.meter

    @property
    def measurement(self) -> Measurement | None:
        """The latest training's measurement (energy in J, per-epoch records, provenance)."""
        return self.recorder.measurement

    def attach(self, trainer: Any) -> GreenmeterTrainerCallback:
        """Put this callback first among the trainer's callbacks, and have the trainer's ``train`` end the
        window with the exception that stops it (both in place), so every logger sees its figures and a
        crash or Ctrl-C is recorded.

        Returns:
            This callback, for ``energy = GreenmeterTrainerCallback().attach(trainer)``.
        """
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        self._attached = True
        train = trainer.train
        if getattr(train, "__greenmeter_callback__", None) is not self:
            recorder = self.recorder

            @functools.wraps(train)
            def recorded_train(*args: Any, **kwargs: Any) -> Any:
                try:
                    return train(*args, **kwargs)
                except BaseException as err:  # recorded, then raised unchanged
                    if recorder.active:
                        recorder.finish(error=err)
                    raise

            recorded_train.__greenmeter_callback__ = self  # type: ignore[attr-defined]
            trainer.train = recorded_train
        return self

    # Trainer hooks -----------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Open the window; warn when reporting callbacks run before this one."""
        reporters = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
        reporters = [r for r in reporters if r not in (None, "none")]
        if reporters and not self._attached:
            log.warning("greenmeter: the Trainer calls its reporting callbacks (%s) before GreenmeterTrainerCallback, "
                        "so they will not receive its energy figures; add it with callback.attach(trainer) instead",
                        ", ".join(map(str, reporters)))
        if self.recorder.active:  # the previous train() raised: the Trainer has no hook to say so
            self.recorder.finish(error=MeasurementError("the training stopped without reaching on_train_end: it "
                                                        "raised or was interrupted"))
        self._epoch_figures = None
        self.recorder.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Mark one optimizer step."""
        self.recorder.step()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Mark the epoch; ask the Trainer to log so that its figures go out with that log."""
        if not self.recorder.active:
            return None
        self._epoch_figures = self.recorder.epoch()
        if _value(args.logging_strategy) != "no":
            control.should_log = True
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Add the figures since the previous log point (and a pending epoch's) to the logs, in place."""
        if not self.recorder.active or logs is None:
            return
        figures = self.recorder.interval() or {}
        if self._epoch_figures:
            figures.update(self._epoch_figures)
            self._epoch_figures = None
        if not figures:
            return
        logs.update(figures)
        # The Trainer appends a copy of the logs to log_history just before calling on_log.
        history = state.log_history
        if history and isinstance(history[-1], dict) and history[-1].get("step") == state.global_step:
            history[-1].update(figures)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """End the window (stored) and close the meter made here."""
        self.recorder.finish()
