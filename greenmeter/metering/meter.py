"""The Meter: measurement windows over a set of energy backends.

A window is the difference of two snapshots of every backend's cumulative joules, taken with a
synchronisation hook at both edges. Windows nest and overlap freely. Steps and epochs marked while a
window is open give per-step latency and per-epoch energy. The edges are cheap: a backend that needs
slow reads or must see every counter wrap is polled by a background sampler instead.

Typical use::

    meter = Meter()
    with meter.window("train", samples=len(dataset)) as w:
        for batch in meter.iterate(loader):
            train_step(batch)
    print(w.measurement.summary())
"""

from __future__ import annotations

import datetime as _dt
import logging
import operator
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from greenmeter._checks import choice, text, whole_number
from greenmeter._errors import BackendError, ConfigError, MeasurementError
from greenmeter.sources.band import sum_bands
from greenmeter.sources.base import Backend, Domain, ProbeResult
from greenmeter.sources.select import probe_sources, select_backends
from greenmeter.sources.sampler import Sampler
from greenmeter.carbon.settings import CarbonEstimate, CarbonSettings
from greenmeter.metering.host import describe_host
from greenmeter.records.distributed import RankInfo, slurm_job
from greenmeter.records.encoding import assemble
from greenmeter.records.measurement import (
    SCHEMA_VERSION,
    DomainEnergy,
    EpochRecord,
    HostInfo,
    LatencyStats,
    Measurement,
)
from greenmeter.stats import QuantileSketch

if TYPE_CHECKING:
    from greenmeter.calibration.profile import CalibrationProfile
    from greenmeter.store.database import Store
    from greenmeter.store.recorder import RunRecorder

__all__ = ["Meter", "ResolvedCarbon", "Window", "WindowBlock", "batch_size", "probe_sources"]

log = logging.getLogger("greenmeter")
# The fallback notes already said in this process: each is said once, however many meters are made (every
# measurement still carries it in its flags).
_said: set[str] = set()
_said_lock = threading.Lock()
T = TypeVar("T")
SyncHook = Callable[[], None]
_MODES = ("process", "machine")
#: Step marks are folded into the open windows' sketches every this many steps (or ``keep_steps``, if more).
_FOLD_CHUNK = 4096


#: A GPU domain's key names its CUDA device index last (``nvml:gpu1`` is ``cuda:1``).
_GPU_KEY = re.compile(r":gpu(\d+)$")


def _cuda_sync(domains: Iterable[Domain] = ()) -> None:
    """Synchronise every measured CUDA device that has a context, when torch is imported and CUDA is in use.

    The measured devices are those of the GPU domains (``nvml:gpu<i>`` is ``cuda:<i>``); with none, every
    device. A device without a CUDA context is never synchronised (that would create one). Where torch cannot
    tell which devices have a context, the current device alone is synchronised. Never imports torch itself.

    Args:
        domains: the meter's domains.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    cuda = torch.cuda
    has_context = getattr(getattr(torch, "_C", None), "_cuda_hasPrimaryContext", None)
    if has_context is None:
        cuda.synchronize()
        return
    count = cuda.device_count()
    measured = {int(m[1]) for d in domains if d.kind == "gpu" and (m := _GPU_KEY.search(d.key))}
    for index in sorted(measured) if measured else range(count):
        if index < count and has_context(index):
            cuda.synchronize(index)


def batch_size(item: Any) -> int | None:
    """Best guess of the number of samples in a batch: the leading size of its first tensor."""
    first = item
    if isinstance(item, (tuple, list)) and item:
        first = item[0]
    elif isinstance(item, dict) and item:
        first = next(iter(item.values()))
    shape = getattr(first, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    return None



#: An epoch mark: (perf_counter s, joules per domain, steps marked so far, their sample counts summed, steps
#: marked without a sample count so far). The counts run on since the meter's first step.
EpochMark = tuple[float, dict[str, float], int, int, int]


class _WindowSteps(NamedTuple):
    """The steps of a window as it ends: every one's values when kept, else the sketch of their durations."""

    count: int
    durations: list[float] | None
    samples: list[int | None] | None
    sketch: QuantileSketch | None
    samples_total: int | None  # their sample counts summed, when every step gave one


class ResolvedCarbon:
    """Carbon settings with their table look-ups done once."""

    __slots__ = ("intensity", "pue", "pue_source")

    def __init__(self, settings: CarbonSettings | None) -> None:
        if settings is None:
            settings = CarbonSettings()
        elif not isinstance(settings, CarbonSettings):
            raise ConfigError(f"carbon must be a greenmeter.CarbonSettings, not {type(settings).__name__}")
        self.intensity = settings.resolve_intensity()
        self.pue, self.pue_source = settings.resolve_pue()

    def estimate(self, energy_j: float) -> CarbonEstimate:
        """CO2e of ``energy_j`` joules: kWh x PUE x g/kWh."""
        g_per_kwh = self.intensity.intensity_g_per_kwh
        return assemble(CarbonEstimate, {
            "energy_j": energy_j, "pue": self.pue, "pue_source": self.pue_source,
            "intensity_g_per_kwh": g_per_kwh, "co2e_g": energy_j / 3.6e6 * self.pue * g_per_kwh,
            "intensity": self.intensity,
        })


def _add_durations(sketch: QuantileSketch, durations: list[float]) -> None:
    """Add step durations (s) to a sketch; one below 0 (two threads' marks out of order) counts as 0."""
    try:
        sketch.add_many(durations)
    except ConfigError:
        sketch.add_many([max(d, 0.0) for d in durations])


def _epochs(w: Window, marks: list[EpochMark], domains: Mapping[str, Domain]) -> tuple[EpochRecord, ...]:
    """The epochs of window ``w``: from its start to the first mark, then from mark to mark."""
    records = []
    previous_t, previous_e, previous_step = w.t0, w.energy, w.step_index
    previous_samples, previous_unsized = w._samples_at, w._unsized_at
    for index, (t, energy, step_count, samples_total, unsized) in enumerate(marks):
        steps = step_count - previous_step
        duration = t - previous_t
        in_total = [(d, energy[k] - previous_e[k]) for k, d in domains.items() if d.in_total]
        records.append(EpochRecord(
            index=index,
            duration_s=duration,
            energy_j=sum(joules for _, joules in in_total),
            steps=steps,
            samples=samples_total - previous_samples if steps and unsized == previous_unsized else None,
            band=sum_bands(None if d.band is None else d.band.band(joules, duration) for d, joules in in_total),
        ))
        previous_t, previous_e, previous_step = t, energy, step_count
        previous_samples, previous_unsized = samples_total, unsized
    return tuple(records)


class Window:
    """An open (or ended) measurement window.

    Attributes:
        name: the window's name.
        samples: samples processed in the window, if known (set it any time before the end).
        measurement: the result, ``None`` until the window ends.
    """

    __slots__ = ("meter", "name", "samples", "started_at", "t0", "energy", "step_index", "epoch_index",
                 "carbon", "measurement", "_keep_steps", "_samples_at", "_unsized_at", "_sketch", "_folded",
                 "_last_t")

    def __init__(
        self, meter: Meter, name: str, samples: int | None, started_at: str, t0: float,
        energy: dict[str, float], step_index: int, epoch_index: int, carbon: Any = None,
        keep_steps: bool = False, samples_at: int = 0, unsized_at: int = 0,
    ) -> None:
        self.meter = meter
        self.name = name
        self.samples = samples
        self.started_at = started_at
        self.t0 = t0
        self.energy = energy
        self.step_index = step_index  # the meter's step count when the window began
        self.epoch_index = epoch_index
        self.carbon = carbon  # resolved carbon settings for this window only, or None for the meter's
        self.measurement: Measurement | None = None
        self._keep_steps = keep_steps  # keep every step's values, however many
        self._samples_at, self._unsized_at = samples_at, unsized_at  # the meter's sample tallies at the start
        self._sketch: QuantileSketch | None = None  # durations of the steps step_index .. _folded - 1
        self._folded = step_index
        self._last_t = t0  # perf_counter time of the last step in the sketch, or t0

    def end(self) -> Measurement:
        """End this window; same as ``meter.end(window)``."""
        return self.meter.end(self)

    def __repr__(self) -> str:
        state = "ended" if self.measurement is not None else "open"
        return f"<Window {self.name!r} {state}>"


class WindowBlock:
    """Context manager that opens a window on entry and always closes it on exit.

    An exception in the block is recorded (the measurement is marked failed) and then propagates unchanged:
    when the meter itself fails while ending such a window (a counter, the sync hook, the store), that
    fault is logged as a warning and recorded where it can be, and never replaces the block's exception.
    """

    __slots__ = ("_meter", "_name", "_samples", "_carbon", "_keep_steps", "window")

    def __init__(self, meter: Meter, name: str, samples: int | None, carbon: CarbonSettings | None = None,
                 keep_steps: bool = False) -> None:
        self._meter = meter
        self._name = text("name", name)
        self._samples = whole_number("samples", samples, minimum=0, optional=True)
        self._carbon = carbon
        self._keep_steps = choice("keep_steps", keep_steps, (False, True))
        self.window: Window | None = None

    def __enter__(self) -> Window:
        self.window = self._meter.begin(self._name, samples=self._samples, carbon=self._carbon,
                                        keep_steps=self._keep_steps)
        return self.window

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        assert self.window is not None
        if exc is None:
            self._meter.end(self.window)
            return
        try:
            self._meter.end(self.window, error=exc)
        except Exception as fault:  # noqa: BLE001 - said, not hidden; the block's own exception goes on unchanged
            log.warning("greenmeter: window %r: the meter failed while the block was raising %s (%s: %s); "
                        "the block's exception goes on", self.window.name, type(exc).__name__,
                        type(fault).__name__, fault)


class Meter:
    """Measures energy, power and latency over named windows.

    Args:
        backends: names of registered sources (``"rapl"``, ``"nvml"``, ``"cpu-estimate"``, ``"ram-estimate"``,
            and any from plug-ins: :func:`~greenmeter.sources.registry.source_names`) or
            ready :class:`~greenmeter.sources.base.Backend` objects. ``None`` picks automatically: RAPL and
            NVML where usable, the CPU estimate where RAPL is not (said in every measurement's flags),
            and the RAM estimate where RAPL has no DRAM domain.
        mode: ``"process"`` (estimates cover this process and its children; default) or ``"machine"``.
            Hardware counters always cover their whole device.
        sysfs_root: root of sysfs for RAPL (default ``$GREENMETER_SYSFS_ROOT`` or ``/sys``).
        use_psys: count RAPL's psys (whole SoC) domain alone as the CPU total.
        gpus: device indices for the per-device sources, NVML's GPUs (default: all visible).
        idle_baseline_s: when > 0, measure idle power for this many seconds when the meter starts;
            measurements then report idle and attributable energy apart.
        sync: ``"auto"`` (``torch.cuda.synchronize`` when CUDA is in use), ``None``, or a callable run at
            both edges of every window.
        carbon: grid intensity and PUE for the CO2e of every measurement (default: the world average
            intensity, marked as assumed, and PUE 1.0).
        store: keep every window in a run store: a :class:`~greenmeter.store.database.Store`, a path, or ``True``
            for the default store (``$GREENMETER_STORE``, else ``$XDG_DATA_HOME/greenmeter/runs.db``).
            The meter opens one run (kind ``api``) when it starts, stores each window as it ends, and
            finishes the run when it closes (``with Meter(store=...) as meter:`` finishes it ``failed`` or
            ``interrupted`` when the block raises; see :meth:`close`); a crashed process leaves the run
            marked incomplete with every window stored before the crash. ``None`` (default) stores nothing.
        name: the run's name in the store (default: the script's file name).
        keep_steps: how many steps a window keeps whole: each one's duration and sample count, in
            ``Measurement.step_durations_s`` and ``step_samples``, with exact percentiles. A window of more
            steps keeps a bounded summary instead: a :class:`~greenmeter.stats.QuantileSketch` of its step
            durations (``Measurement.step_sketch``; each percentile within 0.5% of the exact one, said in
            ``latency.relative_error``), so the meter's memory, a window's end and its stored record stay
            the same size however many steps. ``True`` keeps every step of every window (memory and the
            store then grow with the steps, ~50 bytes each); ``False`` or 0 keeps none. Default 1,000.
        calibration: a wall-meter calibration profile of this host (``greenmeter calibrate``), for the CPU and RAM
            estimates to use instead of their generic constants (their provenance then says "calibrated against
            <meter log>, R^2 = ..., n runs"). ``"auto"`` (default): the newest profile of this host in the store
            the meter records to, else in the default store (``$GREENMETER_STORE``), when that file exists; a
            store that cannot be read is said in the flags, never silently skipped. ``None``: the generic
            constants. A profile of another host is refused.

    The meter starts (probes hardware, starts the sampler) on its first window. It is thread-safe.
    """

    def __init__(
        self,
        backends: Sequence[str | Backend] | None = None,
        *,
        mode: str = "process",
        sysfs_root: str | None = None,
        use_psys: bool = False,
        gpus: Sequence[int] | None = None,
        idle_baseline_s: float = 0.0,
        sync: str | SyncHook | None = "auto",
        carbon: CarbonSettings | None = None,
        store: Store | str | os.PathLike[str] | bool | None = None,
        name: str | None = None,
        keep_steps: bool | int = 1000,
        calibration: CalibrationProfile | str | None = "auto",
    ) -> None:
        if isinstance(keep_steps, bool):
            self._keep: int | None = None if keep_steps else 0  # None: every step
        else:
            self._keep = whole_number("keep_steps", keep_steps, minimum=0,
                                      note="or True to keep every step, False for none")
        if mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}, not {mode!r}")
        if idle_baseline_s < 0:
            raise ConfigError(f"idle_baseline_s must be >= 0 seconds, not {idle_baseline_s!r}")
        if sync == "auto":
            self._sync: SyncHook | None = lambda: _cuda_sync(self._domains.values())
        elif sync is None or callable(sync):
            self._sync = sync
        else:
            raise ConfigError(f"sync must be 'auto', None or a callable, not {sync!r}")
        if carbon is not None and not isinstance(carbon, CarbonSettings):
            raise ConfigError(f"carbon must be a greenmeter.CarbonSettings, not {type(carbon).__name__}")
        self._carbon_settings = carbon
        self._carbon: ResolvedCarbon | None = None  # resolved when the meter starts
        self._store_spec = None if store is False else store
        if self._store_spec is not None:  # asked to record: the store stage is loaded, the store opened at start
            from greenmeter.store.recorder import check_store

            check_store(self._store_spec)
        self.store: Store | None = None
        self.run_id: str | None = None
        self._recorder: RunRecorder | None = None
        self.name = name or (os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python")
        self._requested = list(backends) if backends is not None else None
        if calibration is not None and not (isinstance(calibration, str) and calibration == "auto"):
            from greenmeter.calibration.profile import checked_profile  # refused before any work if of another host

            checked_profile(calibration, "Meter calibration")
        self._options = {"mode": mode, "sysfs_root": sysfs_root, "use_psys": use_psys, "gpus": gpus,
                         "calibration": calibration}
        self.mode = mode
        self.idle_baseline_s = float(idle_baseline_s)
        self._lock = threading.RLock()
        self._started = False
        self._closed = False
        self._backends: list[Backend] = []
        self._domains: dict[str, Domain] = {}
        self._probes: list[ProbeResult] = []
        self._notes: tuple[str, ...] = ()
        self._idle_power_w: dict[str, float] | None = None
        self._sampler: Sampler | None = None
        self._open: list[Window] = []
        # Step marks: the times and sample counts of the latest steps, from the meter's step number _step_base
        # on. Every _FOLD_CHUNK steps they are folded into the open windows' sketches, and all but the last
        # keep_steps dropped (but those of an open window that keeps every step), so memory stays bounded.
        self._step_times: list[float] = []
        self._step_samples: list[int | None] = []
        self._step_base = 0
        self._samples_total = 0  # every step's sample count, summed
        self._steps_unsized = 0  # steps marked without a sample count
        self._fold_chunk = max(self._keep or 0, _FOLD_CHUNK)
        self._fold_at = sys.maxsize if self._keep is None else self._fold_chunk  # len(_step_times) that folds
        self._epoch_marks: list[EpochMark] = []
        self._backend_names: tuple[str, ...] = ()
        self._host_info: HostInfo | None = None
        self._host_torch = False
        self.measurements: list[Measurement] = []
        self.listeners: list[Callable[[Measurement], None]] = []

    # Start-up ------------------------------------------------------------------------------
    def start(self) -> Meter:
        """Probe and open the backends, start the sampler and take the idle baseline. Idempotent."""
        with self._lock:
            if self._closed:
                raise MeasurementError("this meter is closed; create a new Meter")
            if self._started:
                return self
            self._carbon = ResolvedCarbon(self._carbon_settings)
            self._open_backends()
            polled = [b for b in self._backends if b.poll_interval_s]
            if polled:
                interval = min(b.poll_interval_s for b in polled if b.poll_interval_s)
                self._sampler = Sampler(polled, interval)
                self._sampler.start()
            self._started = True
            if self._store_spec is not None:
                self._open_store()
            if self.idle_baseline_s > 0:
                self._idle_power_w = self._measure_idle(self.idle_baseline_s)
        return self

    def _select_sources(self) -> tuple[list[Backend], list[ProbeResult], Sequence[str]]:
        """The backends to open, every probe result and the fallback notes. Subclasses choose differently."""
        options, notes = dict(self._options), []
        if isinstance(options["calibration"], str):  # "auto": this host's newest profile, if a store holds one
            options["calibration"], problem = self._stored_calibration()
            notes += [problem] if problem else []
        backends, probes, said = select_backends(self._requested, **options)
        return backends, probes, [*said, *notes]

    def _stored_calibration(self) -> tuple[Any, str]:
        """This host's newest calibration profile in the meter's store, else the default one, and a problem in
        words when the store could not be read (then none is used). A store file that does not exist holds none."""
        from greenmeter.store.database import Store, store_path

        spec = self._store_spec
        path = spec.path if isinstance(spec, Store) else store_path(None if spec in (None, True) else spec)
        try:
            if not path.exists():
                return None, ""
        except OSError as err:
            return None, (f"cannot look for a calibration profile in {path} ({err.strerror or err}): the CPU and RAM "
                          "estimates use their generic constants")
        from greenmeter._errors import GreenmeterError
        from greenmeter.calibration.profile import latest_profile

        try:
            with Store(path, readonly=True) as store:
                return latest_profile(store), ""
        except GreenmeterError as err:
            return None, (f"the calibration profiles in {path} could not be read ({err}): the CPU and RAM estimates "
                          "use their generic constants")

    def _open_backends(self) -> None:
        backends, probes, notes = self._select_sources()
        self._probes = probes
        self._use(backends)
        self._notes = tuple(notes)
        with _said_lock:
            fresh = [note for note in notes if note not in _said]
            _said.update(fresh)
        for note in fresh:
            log.warning("greenmeter: %s", note)

    def _open_store(self) -> None:
        from greenmeter.store.recorder import RunRecorder

        recorder = RunRecorder.open(self._store_spec, name=self.name, kind="api", host=self._host(),
                                    carbon_settings=self._carbon_settings, job=self.cluster_job())
        if recorder is None:
            return
        self._recorder, self.store, self.run_id = recorder, recorder.store, recorder.run_id
        self.listeners.append(recorder.add_window)

    def cluster_job(self) -> dict[str, str]:
        """The cluster job this meter's run belongs to, recorded with the run so ``greenmeter runs --job`` finds it.

        Returns:
            The SLURM job's facts (``job_id``, ``nodelist``, ``step_id``, as :attr:`RankInfo.job`), with ``rank``
            when ``srun`` started several tasks (:attr:`RankInfo.job_facts`); ``{}`` outside SLURM. Rank
            variables that do not add up cost only the rank: the job's own facts are kept.
        """
        try:
            return RankInfo.from_env().job_facts
        except ConfigError:
            return dict(slurm_job())

    def _use(self, backends: list[Backend]) -> None:
        probes = {p.backend: p for p in self._probes}
        for backend in backends:
            for domain in probes[backend.name].domains:
                if domain.key in self._domains:
                    raise ConfigError(f"two backends report the domain {domain.key!r}; use only one")
                self._domains[domain.key] = domain
        self._backends = backends
        self._backend_names = tuple(b.name for b in backends)

    def _measure_idle(self, seconds: float) -> dict[str, float]:
        start = self._snapshot()
        time.sleep(seconds)
        end = self._snapshot()
        elapsed = end[0] - start[0]
        return {key: (end[1][key] - start[1][key]) / elapsed for key in self._domains}

    # Introspection -------------------------------------------------------------------------
    @property
    def backends(self) -> tuple[Backend, ...]:
        """The backends in use (empty before the meter starts)."""
        return tuple(self._backends)

    @property
    def carbon_settings(self) -> CarbonSettings | None:
        """The carbon settings windows use by default (``None``: the world average, marked assumed)."""
        return self._carbon_settings

    @property
    def domains(self) -> tuple[Domain, ...]:
        """Every domain measured, with provenance."""
        return tuple(self._domains.values())

    @property
    def probes(self) -> tuple[ProbeResult, ...]:
        """Every probe made when the meter started, usable or not."""
        return tuple(self._probes)

    @property
    def open_windows(self) -> tuple[str, ...]:
        """Names of the windows begun and not yet ended, oldest first."""
        with self._lock:
            return tuple(w.name for w in self._open)

    @property
    def notes(self) -> tuple[str, ...]:
        """Fallbacks the meter made, in words (also in every measurement's flags)."""
        return self._notes

    @property
    def host(self) -> HostInfo:
        """Facts about this machine (cached)."""
        return self._host()

    @property
    def idle_power_w(self) -> dict[str, float] | None:
        """Idle power per domain in watts, when a baseline was taken."""
        return None if self._idle_power_w is None else dict(self._idle_power_w)

    # Reading -------------------------------------------------------------------------------
    def read(self) -> tuple[float, dict[str, float]]:
        """Cumulative joules per domain now, with the ``time.perf_counter()`` of the read (starts the meter).

        Two reads give any interval's energy; ``greenmeter run`` uses this for its power timeline.
        """
        if not self._started:
            self.start()
        return self._snapshot()

    def _snapshot(self) -> tuple[float, dict[str, float]]:
        energy: dict[str, float] = {}
        for backend in self._backends:
            energy.update(backend.read().energy_j)
        return time.perf_counter(), energy

    # Windows -------------------------------------------------------------------------------
    def begin(self, name: str, *, samples: int | None = None, carbon: CarbonSettings | None = None,
              keep_steps: bool = False) -> Window:
        """Open a window and return its handle; close it with :meth:`end` or ``window.end()``.

        Args:
            name: the window's name (a non-empty string).
            samples: samples processed in the window, a whole number >= 0, if known (or set
                ``window.samples`` later).
            carbon: carbon settings for this window only (default: the meter's).
            keep_steps: keep every step of this window whole, however many (see the meter's ``keep_steps``):
                for a caller that needs each step's values; memory grows with the window's steps.

        Raises:
            ConfigError: a bad ``name``, ``samples`` or ``keep_steps`` (checked before the meter starts).
        """
        text("name", name)
        samples = whole_number("samples", samples, minimum=0, optional=True)
        keep_steps = choice("keep_steps", keep_steps, (False, True))
        if not self._started or self._closed:
            self.start()
        if self._sync is not None:
            self._sync()
        started_at = _dt.datetime.now(_dt.timezone.utc).isoformat()
        t0, energy = self._snapshot()
        resolved = None if carbon is None else ResolvedCarbon(carbon)
        with self._lock:
            if not self._open:  # marks made while no window was open belong to none
                self._forget_marks()
            window = Window(self, name, samples, started_at, t0, energy, self._step_base + len(self._step_times),
                            len(self._epoch_marks), resolved, keep_steps, self._samples_total, self._steps_unsized)
            self._open.append(window)
        return window

    def end(self, window: Window | str, *, error: BaseException | None = None,
            flags: Sequence[str] = (), reading: tuple[float, dict[str, float]] | None = None) -> Measurement:
        """Close a window (a handle, or the latest open window of that name) and return its measurement.

        A backend that cannot be read at the window's end (``CounterReadError``, ``OSError``) does not lose
        the window: it is recorded as failed, with a ``measurement failed`` flag naming the backend, and its
        domains left out of the energy (nothing is invented for them). Then, when ``error`` is given, one
        warning is logged and the measurement returned (the caller's exception is the one that goes on);
        otherwise the backend's exception is raised.

        Args:
            window: the handle from :meth:`begin`, or a window name.
            error: the exception that ended the block, if any: the measurement is then marked failed.
            flags: warnings of the caller's own to record with this window, after the meter's.
            reading: the window's end, ``(time.perf_counter() s, joules per domain)`` as :meth:`read` returned
                it, instead of syncing and reading the sources now: for a caller that can no longer read them
                (``greenmeter run`` ends its window at the last good reading when a source fails).

        Raises:
            MeasurementError: the window is not open (never begun, or already ended).
            CounterReadError, OSError: a backend could not be read at the end and ``error`` is ``None``
                (the window is recorded as failed first).
        """
        if reading is not None:
            (t1, energy), unread = reading, []
        else:
            if self._sync is not None:
                self._sync()
            t1, energy, unread = self._end_snapshot()
        with self._lock:
            handle = self._find_open(window)
            self._open.remove(handle)
            steps = self._window_steps(handle)
            epochs = self._epoch_marks[handle.epoch_index:]
            if not self._open:
                self._forget_marks()
        read_error = unread[0][1] if unread else None
        faults = [f"measurement failed: the {name} backend could not be read at the end of window "
                  f"{handle.name!r} ({type(err).__name__}: {err}); its domains are left out of this "
                  f"window's energy" for name, err in unread]
        if faults:
            flags = [*faults, *flags]
        measurement = self._build(handle, t1, energy, steps, epochs, error or read_error, flags)
        handle.measurement = measurement
        self.measurements.append(measurement)
        for listener in self.listeners:
            listener(measurement)
        if read_error is not None:
            if error is None:
                raise read_error
            log.warning("greenmeter: %s", "; ".join(faults))  # one warning; the caller's exception goes on
        return measurement

    def _end_snapshot(self) -> tuple[float, dict[str, float], list[tuple[str, BaseException]]]:
        """Like :meth:`_snapshot`, but a backend that cannot be read is listed (name, error), not raised."""
        energy: dict[str, float] = {}
        unread: list[tuple[str, BaseException]] = []
        for backend in self._backends:
            try:
                energy.update(backend.read().energy_j)
            except (BackendError, OSError) as err:
                unread.append((backend.name, err))
        return time.perf_counter(), energy, unread

    def _find_open(self, window: Window | str) -> Window:
        if isinstance(window, Window):
            if window in self._open:
                return window
            raise MeasurementError(f"window {window.name!r} is not open (already ended, or from another meter)")
        for handle in reversed(self._open):
            if handle.name == window:
                return handle
        raise MeasurementError(f"no open window named {window!r}; open windows: {[w.name for w in self._open]}")

    def window(self, name: str, *, samples: int | None = None, carbon: CarbonSettings | None = None,
               keep_steps: bool = False) -> WindowBlock:
        """A window for a ``with`` block: ``with meter.window("eval", samples=n) as w: ...``.

        The block's exception, if any, still closes the window and records a failed measurement before
        it propagates. After the block, ``w.measurement`` holds the result. The arguments are those of
        :meth:`begin`.

        Raises:
            ConfigError: ``name`` is not a non-empty string, ``samples`` is not ``None`` or a whole
                number >= 0, or ``keep_steps`` is not a bool (checked here, before the block runs).
        """
        return WindowBlock(self, name, samples, carbon, keep_steps)

    # Steps and epochs -----------------------------------------------------------------------
    def step(self, samples: int | None = None) -> None:
        """Mark the end of one step (a batch), optionally with its number of samples. Costs ~1 us.

        A step's duration runs from the previous mark (or its window's start) to this one. The meter's memory
        stays bounded however many steps are marked (see ``keep_steps``).
        """
        times = self._step_times
        times.append(time.perf_counter())
        self._step_samples.append(samples)
        if samples is None:
            self._steps_unsized += 1
        else:
            self._samples_total += samples
        if len(times) >= self._fold_at:
            self._fold()

    def epoch(self) -> None:
        """Mark the end of an epoch: reads the backends, so per-epoch energy is exact to the counters."""
        t, energy = self._snapshot()
        with self._lock:
            self._epoch_marks.append((t, energy, self._step_base + len(self._step_times), self._samples_total,
                                      self._steps_unsized))

    def _forget_marks(self) -> None:
        """Drop every step and epoch mark (under the lock, when no window is open: they belong to none)."""
        self._step_base += len(self._step_times)
        self._step_times.clear()
        self._step_samples.clear()
        self._epoch_marks.clear()
        if self._keep is not None:
            self._fold_at = self._fold_chunk

    def _fold(self) -> None:
        """Fold the step marks into the open windows' sketches and drop all but the ones still needed whole.

        Kept: the last ``keep_steps`` marks (every window of that many steps or fewer has all of its own
        there) and those of an open window that keeps every step.
        """
        with self._lock:
            times = self._step_times
            count = len(times)
            self._fold_into([w for w in self._open if not w._keep_steps], self._step_base + count)
            drop = count - (self._keep or 0)
            for w in self._open:
                if w._keep_steps:
                    drop = min(drop, w.step_index - self._step_base)
            if drop > 0:
                del times[:drop]
                del self._step_samples[:drop]
                self._step_base += drop
            self._fold_at = len(times) + self._fold_chunk

    def _fold_into(self, windows: Sequence[Window], end: int) -> None:
        """Add to each window's sketch the durations of its steps before step number ``end`` not yet in it.

        Under the lock. A step's duration from the step before it is the same in every window that holds
        both, so the sketch of those is built once for each place a window's unfolded steps start (from the
        latest back, one stretch at a time) and merged in; only each window's first step is its own (from its
        start, or from the last step already in its sketch).
        """
        times, base = self._step_times, self._step_base
        starts = sorted({w._folded for w in windows if w._folded < end}, reverse=True)
        if not starts:
            return
        shared: dict[int, QuantileSketch] = {}
        sketch: QuantileSketch | None = None
        upto = end
        for start in starts:  # durations of the steps start + 1 .. end - 1
            later, earlier = times[start + 1 - base: upto - base], times[start - base: upto - 1 - base]
            stretch = list(map(operator.sub, later, earlier))
            sketch = QuantileSketch() if sketch is None else sketch.copy()
            _add_durations(sketch, stretch)
            shared[start] = sketch
            upto = start + 1
        last = times[end - 1 - base]
        for w in windows:
            if w._folded >= end:
                continue
            if w._sketch is None:
                w._sketch = QuantileSketch()
            w._sketch.merge(shared[w._folded])
            _add_durations(w._sketch, [times[w._folded - base] - w._last_t])
            w._folded, w._last_t = end, last

    def _window_steps(self, w: Window) -> _WindowSteps:
        """The steps of window ``w`` as it ends (under the lock): every one's values when kept, else the sketch."""
        base, times = self._step_base, self._step_times
        end = base + len(times)
        count = end - w.step_index
        total = self._samples_total - w._samples_at if count and self._steps_unsized == w._unsized_at else None
        if not count:
            return _WindowSteps(0, None, None, None, None)
        if w._keep_steps or self._keep is None or count <= self._keep:
            start = w.step_index - base  # >= 0: a fold keeps the last keep_steps marks
            stamps = times[start:start + count]
            durations = list(map(operator.sub, stamps, [w.t0, *stamps[:-1]]))
            return _WindowSteps(count, durations, self._step_samples[start:start + count], None, total)
        self._fold_into([w], end)
        return _WindowSteps(count, None, None, w._sketch, total)

    def iterate(self, iterable: Iterable[T], *, samples_of: Callable[[T], int | None] = batch_size) -> Iterator[T]:
        """Yield from ``iterable``, marking a step each time the consumer asks for the next item.

        ``samples_of(item)`` gives each batch's sample count (default: the leading size of its first tensor).
        """
        pending: int | None = None
        started = False
        for item in iterable:
            if started:
                self.step(pending)
            pending, started = samples_of(item), True
            yield item
        if started:
            self.step(pending)

    # Building the record ---------------------------------------------------------------------
    def _build(
        self, w: Window, t1: float, energy: dict[str, float], steps: _WindowSteps, epochs: list[EpochMark],
        error: BaseException | None, extra_flags: Sequence[str] = (),
    ) -> Measurement:
        """The measurement of window ``w`` closed at ``t1`` (perf_counter s) with readings ``energy`` (J).

        ``steps`` are the step marks inside the window, ``epochs`` the epoch marks.
        This is the hot path of every window's end: records are assembled without the per-field
        ``object.__setattr__`` of frozen dataclasses (:func:`~greenmeter.records.encoding.assemble`).
        """
        flags = list(self._notes)
        if self._sampler is not None and self._sampler.has_errors:
            flags.extend(self._sampler.errors_since(w.t0))
        for backend in self._backends:  # counter steps a backend did not count (a reset, a bad read, a jump)
            flags.extend(backend.anomalies_since(w.t0))
        flags.extend(extra_flags)
        domains, idle, host, backends = self._domains, self._idle_power_w, self._host(), self._backend_names
        carbon: ResolvedCarbon = w.carbon or self._carbon  # type: ignore[assignment]
        duration = t1 - w.t0
        start_energy = w.energy
        records = []
        total = 0.0
        for key, domain in domains.items():
            if key not in energy:  # its backend could not be read at the end: flagged by end(), not invented
                continue
            resolved = duration >= domain.update_period_s
            if not resolved:
                flags.append(
                    f"window {w.name!r} lasted {duration * 1e3:.3f} ms, shorter than the update period of "
                    f"{key} ({domain.update_period_s * 1e3:.3f} ms): its energy is not resolved"
                )
            joules = energy[key] - start_energy[key]
            if domain.in_total:
                total += joules
            records.append(assemble(DomainEnergy, {
                "key": key, "kind": domain.kind, "energy_j": joules, "in_total": domain.in_total,
                "provenance": domain.provenance, "resolved": resolved,
                "idle_power_w": None if idle is None else idle[key],
                "band": None if domain.band is None else domain.band.band(joules, duration, resolved=resolved),
            }))
        samples = w.samples if w.samples is not None else steps.samples_total
        if steps.durations is not None:
            latency = LatencyStats.from_durations(steps.durations)
        else:
            latency = None if steps.sketch is None else LatencyStats.from_sketch(steps.sketch)
        return assemble(Measurement, {
            "name": w.name,
            "status": "failed" if error is not None else "ok",
            "started_at": w.started_at,
            "duration_s": duration,
            "energy_j": total,
            "domains": tuple(records),
            "host": host,
            "backends": backends,
            "samples": samples,
            "steps": steps.count,
            "latency": latency,
            "step_energy_method": "split-by-step-time" if steps.count else None,
            "epochs": _epochs(w, epochs, domains) if epochs else (),
            "idle_power_w": None if idle is None else sum(idle[k] for k, d in domains.items() if d.in_total),
            "flags": tuple(flags),
            "error": None if error is None else f"{type(error).__name__}: {error}" if str(error)
            else type(error).__name__,
            "carbon": carbon.estimate(total),
            "step_durations_s": () if steps.durations is None else tuple(steps.durations),
            "step_samples": () if steps.samples is None else tuple(steps.samples),
            "step_sketch": steps.sketch,
            "schema_version": SCHEMA_VERSION,
        })

    def _host(self) -> HostInfo:
        """Host facts, cached; refreshed when torch gets imported (its version is one of them)."""
        torch_loaded = "torch" in sys.modules
        if self._host_info is None or self._host_torch != torch_loaded:
            self._host_info, self._host_torch = describe_host(), torch_loaded
        return self._host_info

    # Shutdown ------------------------------------------------------------------------------
    def close(self, *, error: BaseException | None = None) -> None:
        """Stop the sampler, close the backends and finish the stored run. Open windows are left unrecorded.

        Idempotent. Used as a context manager (``with Meter(store=...) as m:``), the meter closes itself
        with the block's exception as ``error``.

        Args:
            error: the exception that ended the measured code, if any. The stored run is then finished
                ``interrupted`` (a ``KeyboardInterrupt``) or ``failed`` (any other exception, or a
                ``SystemExit`` with a non-zero code), by :meth:`RunRecorder.finish`; it is not raised here,
                and a store fault while finishing is then logged instead of raised.

        Raises:
            StoreError: the run cannot be finished in the store (only when ``error`` is ``None``).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._sampler is not None:
                self._sampler.stop()
            for backend in self._backends:
                backend.close()
            if self._recorder is not None:
                try:
                    self._recorder.finish(error=error)  # interrupted, failed (an error, a failed window), or ok
                except Exception as fault:
                    if error is None:
                        raise
                    log.warning("greenmeter: the run %s could not be finished in the store (%s: %s); the "
                                "%s that ended it goes on", self.run_id, type(fault).__name__, fault,
                                type(error).__name__)
                finally:
                    self._recorder.close()  # a store opened here from a path or True: closed here

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.close(error=exc)
