"""Measuring torch.distributed jobs: one meter per rank, node-wide sources read once per node, results on rank 0.

Every rank measures its own GPU (NVML, the device numbered ``LOCAL_RANK``). The node-wide sources (RAPL,
or the CPU and RAM estimates in machine mode where RAPL is missing) are read by local rank 0 only, so a
node running several ranks is counted once. :func:`aggregate` first closes the rank's meter, which
finishes its own stored run, and only then gathers every rank's results to rank 0 over a gloo group with
a short timeout; rank 0 combines them (totals per node and overall, per-rank detail kept) and stores them
as one run. A rank that fails leaves the others' stored runs readable: they get an
:class:`~greenmeter.AggregationError` after the timeout instead of hanging.

One line in a training script::

    @greenmeter.metering.distributed.track            # instead of @greenmeter.track
    def train():
        ...

or, with a meter of your own::

    meter = greenmeter.metering.distributed.rank_meter()
    with meter.window("train"):
        ...
    result = meter.aggregate()               # DistributedResult on rank 0, None on the others

torch is imported only when results are gathered across ranks, never by ``import greenmeter.metering.distributed``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from greenmeter.metering.api import track as _track
from greenmeter._checks import number
from greenmeter._errors import AggregationError, ConfigError, MeasurementError
from greenmeter.sources.base import Backend, ProbeResult
from greenmeter.sources.registry import source_info, source_names
from greenmeter.sources.select import create_configured, select_backends, unmeasured_notes
from greenmeter.records.distributed import (
    DistributedResult,
    DistributedWindow,
    NodeTotal,
    RankInfo,
    RankResult,
    combine,
    split_domain_key,
)
from greenmeter.metering.meter import Meter

if TYPE_CHECKING:
    from greenmeter.carbon.settings import CarbonSettings
    from greenmeter.store.database import Store

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "AggregationError",
    "DistributedResult",
    "DistributedWindow",
    "NodeTotal",
    "RankInfo",
    "RankMeter",
    "RankResult",
    "aggregate",
    "combine",
    "rank_meter",
    "select_rank_backends",
    "split_domain_key",
    "store_result",
    "track",
]

log = logging.getLogger("greenmeter")
F = TypeVar("F", bound=Callable[..., Any])

#: Seconds :func:`aggregate` waits for every rank by default: short, so a failed rank cannot stall the rest.
DEFAULT_TIMEOUT_S = 60.0


def _per_device_sources() -> list[str]:
    """The sources of the automatic choice that measure one device per rank (NVML), from their metadata."""
    infos = [source_info(name) for name in source_names()]
    return [info.name for info in infos if info.per_device and info.selection == "usable"]


def _rank_gpus(info: RankInfo, gpus: Sequence[int] | None) -> tuple[list[int], list[str]]:
    """The GPUs this rank measures: ``gpus`` when given, else the one numbered ``LOCAL_RANK`` if it exists.

    A probe that fails where the hardware is present (an NVIDIA driver, but NVML unusable) is not "no GPU":
    its "GPU energy NOT included" note is returned, for every rank to say.
    """
    if gpus is not None:
        return list(gpus), []
    visible = 0
    unmeasured: list[str] = []
    for name in _per_device_sources():
        counter = create_configured(name)
        probe = counter.probe()
        counter.close()
        visible = max(visible, len(probe.domains) if probe.available else 0)
        unmeasured.extend(unmeasured_notes([probe]))
    if unmeasured:
        return [], unmeasured
    if info.local_rank < visible:
        return [info.local_rank], []
    if visible:
        return [], [(f"{visible} GPU(s) visible and this is local rank {info.local_rank}: no GPU is measured for "
                     "this rank (pass gpus=[...] to name its GPU)")]
    return [], []


def select_rank_backends(
    info: RankInfo, *, gpus: Sequence[int] | None = None, sysfs_root: str | None = None, use_psys: bool = False,
) -> tuple[list[Backend], list[ProbeResult], tuple[str, ...]]:
    """Choose one rank's backends; returns ``(usable backends, every probe, notes in words)``.

    Local rank 0 gets the node-wide sources as :class:`~greenmeter.Meter` picks them (RAPL where usable,
    else the CPU estimate; the RAM estimate where RAPL has no DRAM counter), with the estimates in
    machine mode so they cover every rank on the node; every rank gets NVML for its own GPU (``gpus``, or
    by default the GPU numbered ``LOCAL_RANK`` when that many are visible). A rank left with no source
    says so in its notes, which go into every measurement's flags.
    """
    gpu_list, notes = _rank_gpus(info, gpus)
    if info.reads_node:
        backends, probes, auto = select_backends(None, mode="machine", sysfs_root=sysfs_root, use_psys=use_psys,
                                                 gpus=gpu_list or None)
        per_device = set(_per_device_sources())
        if not gpu_list:  # the per-device sources (NVML) measured every GPU: those belong to other ranks
            for backend in [b for b in backends if b.name in per_device]:
                backend.close()
                backends.remove(backend)
        wide = ", ".join(b.name for b in backends if b.name not in per_device) or "none usable"
        for note in auto:
            log.warning("greenmeter: %s", note)
        node_note = (f"node-wide sources ({wide}) are read by this rank, local rank 0 of {info.local_world_size} on "
                     f"node {info.node_id}, for the whole node: every process on the host, not only this job")
        notes = list(dict.fromkeys([*auto, node_note, *notes]))  # a GPU not measured: said once, by both
    else:
        backends, probes = [], []
        for name in _per_device_sources() if gpu_list else ():
            counter = create_configured(name, gpus=gpu_list)
            probes.append(counter.probe())
            if probes[-1].available:
                backends.append(counter)
        if gpu_list and not backends:
            notes.extend(f"GPU energy NOT included: this rank's GPU {gpu_list} cannot be measured: {probe.reason}"
                         for probe in probes)
        if not backends:
            notes.append(
                f"no energy source of its own: {info.describe()} measures no GPU, and the node-wide sources (RAPL, "
                "the CPU and RAM estimates) are read by local rank 0 of its node, whose figures include this "
                "rank's CPU and memory; this rank's 0 J is by construction, not a reading")
    return backends, probes, tuple(notes)


class RankMeter(Meter):
    """A :class:`~greenmeter.Meter` for one rank of a torch.distributed job (see :func:`rank_meter`).

    Attributes:
        rank: where this process sits in the job.
        base_name: the job's name; this rank's run is called ``"<base_name> [rank r of n]"``.
    """

    def __init__(
        self,
        *,
        rank: RankInfo | None = None,
        gpus: Sequence[int] | None = None,
        sysfs_root: str | None = None,
        use_psys: bool = False,
        idle_baseline_s: float = 0.0,
        sync: str | Callable[[], None] | None = "auto",
        carbon: CarbonSettings | None = None,
        store: Store | str | os.PathLike[str] | bool | None = True,
        name: str | None = None,
    ) -> None:
        info = RankInfo.from_env() if rank is None else rank
        if not isinstance(info, RankInfo):
            raise ConfigError(f"rank must be a greenmeter.metering.distributed.RankInfo, not {type(info).__name__}")
        self.rank = info
        self.base_name = name or (os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python")
        self._rank_options = {"gpus": gpus, "sysfs_root": sysfs_root, "use_psys": use_psys}
        super().__init__(None, mode="machine", sysfs_root=sysfs_root, use_psys=use_psys, gpus=gpus,
                         idle_baseline_s=idle_baseline_s, sync=sync, carbon=carbon, store=store,
                         name=f"{self.base_name} [rank {info.rank} of {info.world_size}]")

    def cluster_job(self) -> dict[str, str]:
        """This rank's job facts (:attr:`RankInfo.job_facts`: the SLURM job and this rank), recorded with its run."""
        return self.rank.job_facts

    def _select_sources(self) -> tuple[list[Backend], list[ProbeResult], Sequence[str]]:
        return select_rank_backends(self.rank, **self._rank_options)  # type: ignore[arg-type]

    def aggregate(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedResult | None:
        """Close this meter and gather every rank's results on rank 0; see :func:`aggregate`."""
        return aggregate(self, timeout_s=timeout_s)


def rank_meter(**options: Any) -> RankMeter:
    """A meter for this rank of a torch.distributed job, to create on every rank.

    Args:
        **options: ``rank`` (default :meth:`RankInfo.from_env`, the variables torchrun sets), ``gpus``
            (default: the GPU numbered ``LOCAL_RANK``), ``sysfs_root``, ``use_psys``, ``idle_baseline_s``,
            ``sync``, ``carbon``, ``store`` (default ``True``: the default store, so each rank's results are
            kept before any collective; ``None`` stores nothing) and ``name`` (the job's name), as for
            :class:`~greenmeter.Meter`.

    Raises:
        ConfigError: a bad option, or rank variables that cannot be read (the message says which).
    """
    return RankMeter(**options)


def _gather(mine: RankResult, timeout_s: float) -> list[Any] | None:
    """Gather every rank's ``to_dict()`` on rank 0 over a gloo group with ``timeout_s``; ``None`` elsewhere."""
    info = mine.info
    if info.world_size == 1:
        return [mine.to_dict()]
    try:
        import torch.distributed as dist
    except ImportError as err:
        raise AggregationError(f"cannot gather {info.world_size} ranks' results: torch.distributed does not "
                               f"import ({err})") from err
    if not dist.is_available():
        raise AggregationError("this build of torch has no torch.distributed, so results cannot be gathered")
    timeout = _dt.timedelta(seconds=timeout_s)
    own = not dist.is_initialized()
    if not own and (dist.get_rank(), dist.get_world_size()) != (info.rank, info.world_size):
        raise ConfigError(f"torch.distributed says rank {dist.get_rank()} of {dist.get_world_size()}, the "
                          f"meter says {info.describe()}; pass rank=RankInfo(...) to match")
    group = None
    out: list[Any] | None = [None] * info.world_size if info.rank == 0 else None
    try:
        if own:  # the variables torchrun sets (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) say where to meet
            dist.init_process_group("gloo", timeout=timeout, rank=info.rank, world_size=info.world_size)
        else:  # a group of our own: gloo whatever the training uses, with our timeout
            group = dist.new_group(backend="gloo", timeout=timeout)
        dist.gather_object(mine.to_dict(), out, dst=0, group=group)
    except (RuntimeError, ValueError, OSError, TimeoutError) as err:
        where = (f"its own results are stored as run {mine.run_id} in {mine.store_path}" if mine.run_id
                 else "it stored no results of its own (its meter has no store)")
        raise AggregationError(
            f"{info.describe()} could not gather the results of all {info.world_size} ranks within {timeout_s:g} s "
            f"(a rank may have failed or not reached aggregate()): {type(err).__name__}: {err}; {where}") from err
    finally:
        _release(dist, group, own)
    return out


def _release(dist: Any, group: Any, own: bool) -> None:
    for target in ([group] if group is not None else []) + ([None] if own and dist.is_initialized() else []):
        try:
            dist.destroy_process_group(target)
        except (RuntimeError, ValueError) as err:  # after a failed collective; the first error is the one raised
            log.warning("greenmeter: could not destroy the aggregation process group: %s", err)


def store_result(
    result: DistributedResult, store: Store, *, name: str, carbon_settings: CarbonSettings | None = None,
) -> DistributedResult:
    """Store a combined result as one run and return it with ``run_id`` and ``store_path`` set.

    The run (kind ``api``, called ``"<name> [n ranks]"``) holds one window per combined window, whose
    domains are every rank's (keys ``"<key>@<node>/rank<r>"``, see :func:`split_domain_key`); when there
    is one window it is the run's whole-run measurement too. The note says how ranks sit on nodes and
    names each rank's own run; ``carbon_settings`` (rank 0's) are the run's. It is an ordinary run; under
    SLURM it records the job (:meth:`Store.set_run_job`), so ``Store.list_runs(job=...)`` finds it.
    """
    from greenmeter.store.recorder import RunRecorder

    hosts = [m.host for r in result.ranks for m in r.measurements[:1]]
    # the SLURM job's facts, as rank 0 read them (every rank of one job reads the same); no rank: the whole job
    jobs = [dict(r.info.job) for r in result.ranks if r.info.job_id is not None]
    run = RunRecorder(store, name=f"{name} [{result.world_size} ranks]", kind="api",
                      host=hosts[0] if hosts else None, carbon_settings=carbon_settings, job=jobs[0] if jobs else None)
    for window in result.windows:
        run.add_window(window.measurement)
    nodes = {node: [r.info.rank for r in result.ranks if r.info.node_id == node] for node in result.node_ids}
    layout = "; ".join(f"{node}: ranks {', '.join(map(str, ranks))}" for node, ranks in nodes.items())
    runs = ", ".join(f"{r.info.rank}={r.run_id or 'not stored'}" for r in result.ranks)
    note = (f"torch.distributed aggregate of {result.world_size} ranks on {len(nodes)} nodes ({layout}); domain keys "
            f"are '<key>@<node>/rank<r>'; each rank's own run: {runs}")
    if jobs:
        note += f"; SLURM job {jobs[0]['job_id']}"
    launchers = sorted({r.info.launcher for r in result.ranks} - {"none"})
    if launchers:
        note += f"; ranks read from {' and '.join(launchers)} variables"
    whole = result.windows[0].measurement if len(result.windows) == 1 else None
    run.finish(measurement=whole, note=note)  # failed when a combined window failed, else ok
    return replace(result, run_id=run.run_id, store_path=str(store.path))


def aggregate(meter: Meter, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedResult | None:
    """Close ``meter`` and gather every rank's results on rank 0; call it on every rank after the last window.

    Closing the meter finishes this rank's own stored run, so its results are kept before any collective.
    Then ``torch.distributed.gather_object`` over a gloo group created with ``timeout_s`` brings every
    rank's results to rank 0, which combines them (:func:`combine`) and stores them as one run in its store
    (:func:`store_result`). If torch.distributed is not initialised, it is initialised here from the
    variables torchrun sets, and destroyed again after. A job of one process needs no collective.

    Args:
        meter: this rank's meter, normally from :func:`rank_meter` (a plain Meter measures node-wide
            sources on every rank; the result flags that its nodes are counted more than once).
        timeout_s: seconds to wait for every rank, > 0.

    Returns:
        On rank 0 the :class:`DistributedResult` (with ``run_id`` when stored); ``None`` on other ranks.

    Raises:
        AggregationError: not every rank answered within ``timeout_s`` (a rank failed, or never called
            this); the message names this rank's stored run.
        MeasurementError: a window of ``meter`` is still open.
    """
    timeout_s = number("timeout_s", timeout_s, low=0, low_open=True, unit="seconds")
    if meter.open_windows:
        raise MeasurementError(f"window(s) {list(meter.open_windows)} are still open; end them before aggregate()")
    info = meter.rank if isinstance(meter, RankMeter) else RankInfo.from_env()
    store_path = str(meter.store.path) if meter.store is not None else None
    meter.close()
    mine = RankResult(info, tuple(meter.measurements), meter.run_id, store_path)
    gathered = _gather(mine, timeout_s)
    if gathered is None:
        return None
    result = combine([RankResult.from_dict(data) for data in gathered])
    if store_path is None:
        return result
    from greenmeter.store.database import Store

    with Store(store_path) as store:
        name = meter.base_name if isinstance(meter, RankMeter) else meter.name
        return store_result(result, store, name=name, carbon_settings=meter.carbon_settings)


def track(
    func: Callable[..., Any] | None = None, /, *, name: str | None = None, samples: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S, **options: Any,
) -> Any:
    """Decorate a training function run on every rank: each call is measured and then aggregated.

    Use bare (``@greenmeter.metering.distributed.track``) or with options. Each call makes a :func:`rank_meter`
    (``options`` go to it), measures the call as one window (``name``, default the function's name;
    :func:`greenmeter.current_meter` works inside), then calls :func:`aggregate`. The rank's own measurement
    is kept as ``wrapper.last_measurement`` and, on rank 0, the :class:`DistributedResult` as
    ``wrapper.last_result``. If the function raises, the rank's run is stored as failed and the error
    propagates without a collective (the other ranks get an AggregationError after ``timeout_s``).
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wrapper.last_result = None  # type: ignore[attr-defined]
            meter = RankMeter(**options)
            measured = _track(meter=meter, name=name or f.__qualname__, samples=samples)(f)
            try:
                value = measured(*args, **kwargs)
            finally:
                wrapper.last_measurement = measured.last_measurement  # type: ignore[attr-defined]
                meter.close()  # ends this rank's run before any collective; aggregate() finds it closed
            wrapper.last_result = aggregate(meter, timeout_s=timeout_s)  # type: ignore[attr-defined]
            return value

        wrapper.last_measurement = None  # type: ignore[attr-defined]
        wrapper.last_result = None  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate
