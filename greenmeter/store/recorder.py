"""Recording runs: which store a ``store=`` argument names, and the life of one stored run.

Every run greenmeter stores goes through :class:`RunRecorder`: a :class:`~greenmeter.Meter` given ``store=``
(kind ``api``), ``greenmeter run`` (kind ``run``) and the combined run of a torch.distributed job. The run
is inserted as ``running`` when it starts, each window is committed as it is added, and :meth:`RunRecorder.finish`
marks it ``ok``, ``failed`` or ``interrupted`` by one rule, so a killed process leaves a readable,
incomplete run with every window it stored.

The ``store=`` argument of ``Meter``, ``measure``, ``track``, ``compare``, ``compare_found``, the training
callbacks and ``run_command`` means the same everywhere (:func:`open_store`):

============================  ==================================================================
``None`` or ``False``         nothing is stored
``True``                      the default store: ``$GREENMETER_STORE``, else :func:`default_store_path`
a path (``str``/``PathLike``)  the store at that path (created, with its folders, when missing)
a :class:`Store`              that store, used as it is; the caller keeps it open and closes it
============================  ==================================================================

A store opened here from ``True`` or a path belongs to whoever asked for it, who closes it when done
(:func:`opened_store` does that for a block).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Union

from greenmeter._errors import ConfigError, StoreError
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.records.measurement import HostInfo, Measurement
from greenmeter.store.database import Store

__all__ = ["RunRecorder", "StoreArg", "check_store", "open_store", "opened_store"]

log = logging.getLogger("greenmeter")

#: What a ``store=`` argument may be (see :func:`open_store`).
StoreArg = Union[Store, str, "os.PathLike[str]", bool, None]


def check_store(store: Any) -> None:
    """Refuse, opening nothing, a ``store=`` argument that :func:`open_store` would refuse (for entry points).

    Raises:
        ConfigError: ``store`` is not ``None``, a bool, a path or a :class:`Store`.
    """
    if store is None or isinstance(store, (bool, str, os.PathLike, Store)):
        return
    raise ConfigError(f"store must be a greenmeter.Store, a path, True (the default store) or None, "
                      f"not {type(store).__name__}")


def open_store(store: Any) -> Store | None:
    """The store a ``store=`` argument names: the one rule, documented in this module's table.

    Args:
        store: ``None``/``False`` (no store), ``True`` (the default store), a path, or a :class:`Store`.

    Returns:
        ``None`` when nothing is to be stored; else a :class:`Store`, which is ``store`` itself when a
        Store was given (then the caller does not own it), or one opened here, which the caller closes.

    Raises:
        ConfigError: ``store`` is none of these.
        StoreError: the store at the path cannot be created, opened or written.
        CorruptStoreError: the file at the path is not a greenmeter store.
    """
    check_store(store)
    if store is None or store is False:
        return None
    if isinstance(store, Store):
        return store
    return Store(None if store is True else store)


@contextmanager
def opened_store(store: Any) -> Iterator[Store | None]:
    """:func:`open_store` for a ``with`` block: the store opened here is closed at the end; a given one is not."""
    target = open_store(store)
    try:
        yield target
    finally:
        if target is not None and target is not store:
            target.close()


class RunRecorder:
    """One run in a store, from start to finish; the run starts (status ``running``) when this is made.

    Args:
        store: the store to record in (see :func:`open_store` for a ``store=`` argument).
        name: the run's name.
        kind: ``"api"`` (measured in Python) or ``"run"`` (a command under ``greenmeter run``).
        command: the command line, for kind ``run``.
        host: facts about the machine.
        carbon_settings: the grid intensity and PUE settings the run was measured with (``None``: defaults).
        owns_store: close ``store`` in :meth:`close` (set when the store was opened for this run).
        job: the cluster job the run belongs to (the SLURM job's facts, see :meth:`Store.set_run_job`), recorded
            when the run starts so ``greenmeter runs --job`` finds it; ``None`` or empty outside a job. A store
            that takes the run but not its job is warned about in one line; the run goes on untagged.

    Attributes:
        store: the store.
        run_id: the run's id (32 hex digits).
        failed_windows: how many of the windows added so far failed.
        lost_windows: how many windows the store could not take (locked, read-only, full).
        finished: whether :meth:`finish` has marked the run.

    Raises:
        StoreError: the run cannot be stored.
    """

    def __init__(
        self, store: Store, *, name: str, kind: str, command: Iterable[str] | None = None,
        host: HostInfo | None = None, carbon_settings: CarbonSettings | Mapping[str, Any] | None = None,
        owns_store: bool = False, job: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(store, Store):
            raise ConfigError(f"RunRecorder records in a greenmeter.Store, not {type(store).__name__}")
        self.store = store
        self.owns_store = owns_store
        self.run_id = store.start_run(name=name, kind=kind, command=command, host=host,
                                      carbon_settings=carbon_settings)
        if job:
            try:
                store.set_run_job(self.run_id, job)
            except StoreError as err:  # the measurement goes on; only the job tag is lost
                log.warning("greenmeter: could not record cluster job %s for run %s: %s", job.get("job_id"),
                            self.run_id, err)
        self.failed_windows = 0
        self.lost_windows = 0
        self._lost_because: str | None = None
        self.finished = False

    def add_window(self, measurement: Measurement) -> int:
        """Store one window (committed at once, with its steps and its own carbon); returns its id.

        Raises:
            StoreError: the store cannot take it; the run is then finished ``failed``, saying so, if the
                store can still be written when it ends.
        """
        try:
            window_id = self.store.add_window(self.run_id, measurement, carbon=measurement.carbon)
        except StoreError as err:
            self.lost_windows += 1
            self._lost_because = self._lost_because or " ".join(str(err).split())
            raise
        if measurement.status == "failed":
            self.failed_windows += 1
        return window_id

    def add_power_samples(self, rows: Iterable[tuple[float, str, float]]) -> None:
        """Store the power timeline: ``(seconds since the run started, domain key, watts)``."""
        self.store.add_power_samples(self.run_id, rows)

    def finish(
        self, *, exit_code: int | None = None, interrupted_by: str | None = None,
        measurement: Measurement | None = None, note: str | None = None, error: BaseException | None = None,
    ) -> str:
        """Mark the run finished and return its status, by the one rule for every run:

        ``interrupted`` when ``interrupted_by`` names a signal or ``error`` is a ``KeyboardInterrupt``
        (Ctrl-C: SIGINT); else ``failed`` when a window added here failed or could not be stored,
        ``exit_code`` is not 0 or ``error`` is any other exception (a ``SystemExit`` with code 0 or
        ``None`` is no error); else ``ok``. Windows the store could not take are said in the note.

        Args:
            exit_code: the command's exit status (kind ``run``), ``None`` for a run measured in Python.
            interrupted_by: the signal's name (``"SIGINT"``) when the run was cut short by one.
            measurement: the whole run's measurement, when there is one (its carbon is the run's).
            note: a sentence stored with the run (e.g. what an interruption kept); by default, what
                ``error`` was.
            error: the exception that ended the run's code, if any (it is only recorded, never raised).

        Raises:
            StoreError: the run is already finished, or the store cannot be written.
        """
        if isinstance(error, SystemExit) and error.code in (None, 0):
            error = None  # sys.exit(0): a clean end
        if isinstance(error, KeyboardInterrupt) and not interrupted_by:
            interrupted_by = "SIGINT"
        if error is not None and note is None:
            said = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            note = (f"interrupted ({said}); kept the windows stored before it" if interrupted_by
                    else f"ended by {said}")
        because = self._lost_because or ""
        if self.lost_windows and because not in (note or ""):  # unless the caller said it already
            lost = f"{self.lost_windows} window(s) could not be stored ({because}); the stored windows are incomplete"
            note = f"{note}; {lost}" if note else lost
        if interrupted_by:
            status = "interrupted"
        elif self.failed_windows or self.lost_windows or error is not None or exit_code not in (None, 0):
            status = "failed"
        else:
            status = "ok"
        self.store.finish_run(self.run_id, status=status, exit_code=exit_code, measurement=measurement, note=note)
        self.finished = True
        return status

    def close(self) -> None:
        """Close the store when it was opened for this run (``owns_store``); a given store stays open. Idempotent."""
        if self.owns_store:
            self.store.close()

    @classmethod
    def open(
        cls, store: Any, *, name: str, kind: str, command: Iterable[str] | None = None,
        host: HostInfo | None = None, carbon_settings: CarbonSettings | Mapping[str, Any] | None = None,
        job: Mapping[str, str] | None = None,
    ) -> RunRecorder | None:
        """Start a run in the store a ``store=`` argument names (:func:`open_store`); ``None`` when it names none.

        A store opened here is owned by the recorder and closed by :meth:`close`; a given Store is not. The
        keywords are the constructor's.
        """
        target = open_store(store)
        if target is None:
            return None
        try:
            return cls(target, name=name, kind=kind, command=command, host=host, carbon_settings=carbon_settings,
                       owns_store=target is not store, job=job)
        except BaseException:
            if target is not store:
                target.close()
            raise
