"""Records of a torch.distributed measurement: who each rank is, what it measured, totals per node and overall.

Node-wide sources (RAPL, the CPU and RAM estimates) are read by local rank 0 of each node only, and every
rank reads its own GPU, so a node's energy is the sum over its ranks and the overall energy is the sum
over nodes; nothing here needs to subtract anything. :func:`combine` builds a :class:`DistributedResult`
from every rank's :class:`RankResult`. Combined windows keep every rank's domains, with keys rewritten as
``"<key>@<node id>/rank<r>"`` (see :func:`split_domain_key`), so a stored aggregate still shows each
rank's figures and their provenance.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from greenmeter._checks import choice, whole_number
from greenmeter._errors import ConfigError
from greenmeter.carbon.settings import CarbonEstimate
from greenmeter.records.measurement import DomainEnergy, Measurement

__all__ = [
    "DISTRIBUTED_VERSION",
    "DistributedResult",
    "DistributedWindow",
    "NodeTotal",
    "RankInfo",
    "RankResult",
    "combine",
    "slurm_job",
    "split_domain_key",
]

#: Version of :meth:`DistributedResult.to_dict`.
DISTRIBUTED_VERSION = 1
#: Domain kinds a rank measures for itself; every other kind is node-wide (read by local rank 0).
RANK_KINDS = frozenset({"gpu"})


#: Where a rank came from (:attr:`RankInfo.launcher`).
LAUNCHERS = ("none", "torchrun", "slurm")
#: The SLURM job's facts kept in :attr:`RankInfo.job`: ``(name, variable)``.
SLURM_JOB_FACTS = (("job_id", "SLURM_JOB_ID"), ("nodelist", "SLURM_JOB_NODELIST"), ("step_id", "SLURM_STEP_ID"))


def slurm_job(environ: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """The SLURM job's facts in the environment (:data:`SLURM_JOB_FACTS`: ``job_id``, ``nodelist``, ``step_id``) as
    ``(name, value)`` pairs, those that are set; ``()`` outside SLURM (no ``SLURM_JOB_ID``). Reads nothing else,
    so it never fails: what :attr:`RankInfo.job` holds, and what a plain meter records under SLURM."""
    env = os.environ if environ is None else environ
    if not env.get("SLURM_JOB_ID"):
        return ()
    return tuple((key, env[name]) for key, name in SLURM_JOB_FACTS if env.get(name))


def _host_name(name: str) -> str:
    return name.replace("@", "-").replace("/", "-") or "localhost"


def _below(value: int, name: str, limit: int, limit_name: str) -> None:
    if not 0 <= value < limit:
        raise ConfigError(f"environment variable {name}={value} is not in 0..{limit - 1} ({limit_name} is {limit}); "
                          "check how the job was launched")


def _tasks_on_node(env: Mapping[str, str], node: int) -> int | None:
    """This node's entry of ``SLURM_TASKS_PER_NODE`` (``"2(x3),1"``: 2 tasks on each of nodes 0-2, 1 on node 3)."""
    text = env.get("SLURM_TASKS_PER_NODE")
    if not text:
        return None
    counts: list[int] = []
    for part in text.split(","):
        found = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if found is None:
            raise ConfigError(f"environment variable SLURM_TASKS_PER_NODE={text!r} is not like '2(x3),1'")
        counts.extend([int(found[1])] * int(found[2] or 1))
    if node >= len(counts):
        raise ConfigError(f"environment variable SLURM_NODEID={node} has no entry in SLURM_TASKS_PER_NODE={text!r}")
    return counts[node]


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not a whole number") from None


@dataclass(frozen=True)
class RankInfo:
    """Where one process sits in a torch.distributed job.

    Attributes:
        rank: global rank, ``0 <= rank < world_size``.
        world_size: number of processes in the job.
        local_rank: rank on this node, ``0 <= local_rank < local_world_size``; local rank 0 reads the
            node-wide sources.
        local_world_size: processes on this node.
        node_rank: the node's index in the job (torchrun's ``GROUP_RANK``).
        hostname: the machine's name; with ``node_rank`` it names the node, so two nodes started on one
            host (as in a test) stay apart.
        launcher: where the rank came from: ``"torchrun"``, ``"slurm"`` (``srun``) or ``"none"`` (one process).
        job: the SLURM job's facts as ``(name, value)`` pairs (``job_id``, ``nodelist``, ``step_id``), read
            whenever ``SLURM_JOB_ID`` is set (under torchrun too); empty outside SLURM.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    hostname: str
    launcher: str = "none"
    job: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        choice("launcher", self.launcher, LAUNCHERS)
        if not all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in self.job):
            raise ConfigError(f"job must be a tuple of (name, value) string pairs, not {self.job!r}")
        for name in ("rank", "world_size", "local_rank", "local_world_size", "node_rank"):
            whole_number(name, getattr(self, name), minimum=0)
        if not self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is not below world_size {self.world_size}")
        if not self.local_rank < self.local_world_size:
            raise ConfigError(f"local_rank {self.local_rank} is not below local_world_size {self.local_world_size}")
        if not self.hostname or any(c in self.hostname for c in "@/"):
            raise ConfigError(f"hostname must be non-empty without '@' or '/', not {self.hostname!r}")

    @property
    def node_id(self) -> str:
        """The node's name: ``"<hostname>/node<node_rank>"``."""
        return f"{self.hostname}/node{self.node_rank}"

    @property
    def job_id(self) -> str | None:
        """The SLURM job id (``SLURM_JOB_ID``), or ``None`` outside SLURM."""
        return dict(self.job).get("job_id")

    @property
    def job_facts(self) -> dict[str, str]:
        """What a run of this process records as its cluster job (``Store.set_run_job``): :attr:`job`, with
        ``rank`` (this process's global rank) in a job of several processes; ``{}`` outside SLURM."""
        if not self.job:
            return {}
        return {**dict(self.job), **({"rank": str(self.rank)} if self.world_size > 1 else {})}

    @property
    def reads_node(self) -> bool:
        """True for local rank 0, the one rank per node that reads the node-wide sources."""
        return self.local_rank == 0

    def describe(self) -> str:
        """``"rank 2 of 4 (local rank 0 of 2 on node host/node1)"``."""
        return (f"rank {self.rank} of {self.world_size} (local rank {self.local_rank} of {self.local_world_size} "
                f"on node {self.node_id})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RankInfo:
        """Read the rank from the variables torchrun sets, else from SLURM's (``srun``).

        torchrun's: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK`` (``NODE_RANK``
        where ``GROUP_RANK`` is missing); the node rank, when neither gives it, is
        ``(RANK - LOCAL_RANK) // LOCAL_WORLD_SIZE``. Without ``RANK`` and ``WORLD_SIZE``, SLURM's are read:
        ``SLURM_PROCID`` (rank), ``SLURM_NTASKS`` (world size), ``SLURM_LOCALID`` (local rank),
        ``SLURM_NTASKS_PER_NODE`` or this node's entry of ``SLURM_TASKS_PER_NODE`` (local world size),
        ``SLURM_NODEID`` (node rank) and ``SLURMD_NODENAME`` (host name). torchrun's variables win when both
        are set (``launcher`` says which were used). ``SLURM_JOB_ID``, ``SLURM_JOB_NODELIST`` and
        ``SLURM_STEP_ID`` are kept as :attr:`job` either way. Without either set this is a single process:
        rank 0 of 1.

        Raises:
            ConfigError: a variable is not a whole number, a rank is not below its world size, or a job of
                several processes lacks its local rank or local world size (greenmeter cannot tell which
                rank reads the node's sources); the message names the variable.
        """
        env = os.environ if environ is None else environ
        host = _host_name(socket.gethostname())
        job = slurm_job(env)
        rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
        if rank is None and world is None:
            if _env_int(env, "SLURM_PROCID") is not None or _env_int(env, "SLURM_NTASKS") is not None:
                return cls._from_slurm(env, job)
            return cls(0, 1, 0, 1, 0, host, job=job)
        if rank is None or world is None:
            raise ConfigError("RANK and WORLD_SIZE must be set together (torchrun sets both)")
        local, local_world = _env_int(env, "LOCAL_RANK"), _env_int(env, "LOCAL_WORLD_SIZE")
        if world == 1:
            local, local_world = local or 0, local_world or 1
        if local is None or local_world is None:
            raise ConfigError(
                "LOCAL_RANK and LOCAL_WORLD_SIZE are not set, so greenmeter cannot tell which rank of this node "
                "reads the node-wide sources; launch with torchrun, set them, or pass rank=RankInfo(...)")
        node = _env_int(env, "GROUP_RANK")
        if node is None:
            node = _env_int(env, "NODE_RANK")
        if node is None:
            node = (rank - local) // local_world if rank >= local else 0
        return cls(rank, world, local, local_world, node, host, "torchrun", job)

    @classmethod
    def _from_slurm(cls, env: Mapping[str, str], job: tuple[tuple[str, str], ...]) -> RankInfo:
        """The rank from SLURM's variables (see :meth:`from_env`)."""
        rank, world = _env_int(env, "SLURM_PROCID"), _env_int(env, "SLURM_NTASKS")
        if rank is None or world is None:
            missing = "SLURM_NTASKS" if world is None else "SLURM_PROCID"
            raise ConfigError(f"{missing} is not set while {'SLURM_PROCID' if world is None else 'SLURM_NTASKS'} is: "
                              "launch with srun (which sets both), or set it")
        _below(rank, "SLURM_PROCID", world, "SLURM_NTASKS")
        node = _env_int(env, "SLURM_NODEID") or 0
        local, local_world = _env_int(env, "SLURM_LOCALID"), _env_int(env, "SLURM_NTASKS_PER_NODE")
        if local_world is None:
            local_world = _tasks_on_node(env, node)
        if world == 1:
            local, local_world = local or 0, local_world or 1
        if local is None or local_world is None:
            raise ConfigError(
                "SLURM_LOCALID and SLURM_TASKS_PER_NODE are not both set, so greenmeter cannot tell which rank of "
                "this node reads the node-wide sources; launch with srun, set them, or pass rank=RankInfo(...)")
        _below(local, "SLURM_LOCALID", local_world, "the tasks on this node (SLURM_TASKS_PER_NODE)")
        host = _host_name(env.get("SLURMD_NODENAME") or socket.gethostname())
        return cls(rank, world, local, local_world, node, host, "slurm", job)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "job": dict(self.job)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankInfo:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}  # launcher and job: newer fields
        fields["job"] = tuple((str(k), str(v)) for k, v in dict(fields.get("job") or {}).items())
        return cls(**fields)


@dataclass(frozen=True)
class RankResult:
    """What one rank measured, and where it stored it (before any collective).

    Attributes:
        info: the rank.
        measurements: its windows, in the order they ended.
        run_id: its own run in its store, when it stored one.
        store_path: the file of that store (node-local: each node may have its own).
    """

    info: RankInfo
    measurements: tuple[Measurement, ...]
    run_id: str | None = None
    store_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"info": self.info.to_dict(), "measurements": [m.to_dict() for m in self.measurements],
                "run_id": self.run_id, "store_path": self.store_path}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankResult:
        return cls(RankInfo.from_dict(data["info"]), tuple(Measurement.from_dict(m) for m in data["measurements"]),
                   data.get("run_id"), data.get("store_path"))


@dataclass(frozen=True)
class NodeTotal:
    """One node's energy over one window: the sum over its ranks.

    Attributes:
        node_id: ``"<hostname>/node<node_rank>"``.
        ranks: the global ranks on the node that measured the window.
        energy_j: total energy of the node, in joules (``node_wide_j + rank_j``).
        node_wide_j: energy of the node-wide domains (RAPL, CPU and RAM estimates), in joules.
        rank_j: energy of the domains each rank reads for itself (its GPU), in joules.
        co2e_g: grams CO2e, the sum of its ranks' own figures; ``None`` when a rank has none.
    """

    node_id: str
    ranks: tuple[int, ...]
    energy_j: float
    node_wide_j: float
    rank_j: float
    co2e_g: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ranks": list(self.ranks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeTotal:
        return cls(data["node_id"], tuple(data["ranks"]), float(data["energy_j"]), float(data["node_wide_j"]),
                   float(data["rank_j"]), data.get("co2e_g"))


@dataclass(frozen=True)
class DistributedWindow:
    """One window measured across ranks (the k-th window of a name on each rank).

    Attributes:
        name: the window's name.
        measurement: the combined measurement: every rank's domains (keys ``"<key>@<node>/rank<r>"``),
            energy summed, ``duration_s`` the longest rank's, ``samples`` summed, ``steps`` the most any
            rank marked (a global step runs on every rank), no latency (see each rank's own).
        nodes: per-node totals, by node id.
        ranks: the ranks that measured it; ``rank_energy_j`` their energies in J, in the same order.
    """

    name: str
    measurement: Measurement
    nodes: tuple[NodeTotal, ...]
    ranks: tuple[int, ...]
    rank_energy_j: tuple[float, ...]

    @property
    def energy_j(self) -> float:
        """Overall energy in joules: the sum of the nodes' totals."""
        return self.measurement.energy_j

    @property
    def co2e_g(self) -> float | None:
        """Overall grams CO2e: the sum of the nodes' figures (``None`` when one is missing)."""
        figures = [n.co2e_g for n in self.nodes]
        return None if None in figures else sum(figures)  # type: ignore[arg-type]

    def node(self, node_id: str) -> NodeTotal:
        """The total of one node. Raises ConfigError for an unknown node id."""
        for total in self.nodes:
            if total.node_id == node_id:
                return total
        raise ConfigError(f"no node {node_id!r} in window {self.name!r}; nodes: {[n.node_id for n in self.nodes]}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "measurement": self.measurement.to_dict(),
                "nodes": [n.to_dict() for n in self.nodes], "ranks": list(self.ranks),
                "rank_energy_j": list(self.rank_energy_j)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistributedWindow:
        return cls(data["name"], Measurement.from_dict(data["measurement"]),
                   tuple(NodeTotal.from_dict(n) for n in data["nodes"]), tuple(data["ranks"]),
                   tuple(float(e) for e in data["rank_energy_j"]))


@dataclass(frozen=True)
class DistributedResult:
    """Every rank's results, gathered on rank 0, with totals per node and overall per window.

    Attributes:
        world_size: processes in the job.
        ranks: each rank's own results, ordered by rank.
        windows: the combined windows, in rank 0's order.
        flags: what a reader must know (node-wide sources read twice, nodes sharing a host, windows
            missing on some ranks...).
        run_id: the aggregate's run in rank 0's store, once stored; ``store_path`` that store's file.
    """

    world_size: int
    ranks: tuple[RankResult, ...]
    windows: tuple[DistributedWindow, ...]
    flags: tuple[str, ...] = ()
    run_id: str | None = None
    store_path: str | None = None
    schema_version: int = DISTRIBUTED_VERSION

    @property
    def node_ids(self) -> tuple[str, ...]:
        """Every node, in node-rank order."""
        return tuple(dict.fromkeys(r.info.node_id for r in sorted(self.ranks, key=lambda r: r.info.node_rank)))

    def window(self, name: str, index: int = 0) -> DistributedWindow:
        """The ``index``-th combined window called ``name``. Raises ConfigError when there is none."""
        found = [w for w in self.windows if w.name == name]
        if index >= len(found):
            raise ConfigError(f"no window {name!r} #{index}; windows: {[w.name for w in self.windows]}")
        return found[index]

    def summary(self) -> str:
        """A few lines for people: per window, the overall energy and CO2e, then each node's."""
        lines = [f"{self.world_size} ranks on {len(self.node_ids)} nodes"]
        for w in self.windows:
            co2 = "" if w.co2e_g is None else f", {w.co2e_g:.3g} g CO2e"
            lines.append(f"{w.name}: {w.energy_j:.3f} J over {w.measurement.duration_s:.3f} s{co2}")
            lines.append(f"  {w.measurement.band_note()}")
            for n in w.nodes:
                lines.append(f"  {n.node_id} (ranks {', '.join(map(str, n.ranks))}): {n.energy_j:.3f} J "
                             f"(node-wide {n.node_wide_j:.3f} J, per-rank {n.rank_j:.3f} J)")
        lines.extend(f"  ! {flag}" for flag in self.flags)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The result as a notebook shows it: a table with provenance and bands (``greenmeter.output.notebook``)."""
        from greenmeter.output.notebook import distributed_html  # records never import output at module level

        return distributed_html(self)

    def _repr_markdown_(self) -> str:
        """The result as short Markdown (see ``greenmeter.output.notebook``)."""
        from greenmeter.output.notebook import distributed_markdown

        return distributed_markdown(self)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "world_size": self.world_size,
                "ranks": [r.to_dict() for r in self.ranks], "windows": [w.to_dict() for w in self.windows],
                "flags": list(self.flags), "run_id": self.run_id, "store_path": self.store_path}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistributedResult:
        version = data.get("schema_version")
        if not isinstance(version, int) or not 1 <= version <= DISTRIBUTED_VERSION:
            raise ConfigError(f"distributed result schema_version {version!r} is not readable by this greenmeter "
                              f"(reads 1..{DISTRIBUTED_VERSION}); upgrade greenmeter")
        return cls(int(data["world_size"]), tuple(RankResult.from_dict(r) for r in data["ranks"]),
                   tuple(DistributedWindow.from_dict(w) for w in data["windows"]), tuple(data.get("flags", ())),
                   data.get("run_id"), data.get("store_path"), version)

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (keyword arguments go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)


def split_domain_key(key: str) -> tuple[str, str, int]:
    """Split a combined domain key ``"rapl:package-0@host/node1/rank2"`` into ``(key, node id, rank)``.

    Raises:
        ConfigError: the key is not a combined one.
    """
    base, sep, where = key.rpartition("@")
    host, _, rest = where.partition("/")
    node, _, rank = rest.partition("/")
    if not (sep and base and host and node.startswith("node") and rank.startswith("rank") and rank[4:].isdigit()):
        raise ConfigError(f"{key!r} is not a combined domain key ('<key>@<host>/node<n>/rank<r>')")
    return base, f"{host}/{node}", int(rank[4:])


def _is_node_wide(domain: DomainEnergy) -> bool:
    return domain.kind not in RANK_KINDS


def _combine_carbon(parts: Sequence[Measurement], energy_j: float) -> tuple[CarbonEstimate | None, list[str]]:
    carbons = [m.carbon for m in parts]
    if any(c is None for c in carbons):
        return None, ["a rank's window has no CO2e figure, so the combined window has none"]
    first = carbons[0]
    assert first is not None
    same = all(c is not None and (c.pue, c.intensity) == (first.pue, first.intensity) for c in carbons)
    if not same:
        return None, ["ranks used different grid intensities or PUEs: see each node's co2e_g, no single figure"]
    co2e = sum(c.co2e_g for c in carbons if c is not None)
    return replace(first, energy_j=energy_j, co2e_g=co2e), []


def _grouped(flags: Sequence[tuple[int, str]]) -> list[str]:
    """``[(rank, text)]`` as one line per text: ``"ranks 0, 2: text"``."""
    by_text: dict[str, list[int]] = {}
    for rank, text in flags:
        by_text.setdefault(text, []).append(rank)
    return [f"rank{'s' if len(r) > 1 else ''} {', '.join(map(str, sorted(set(r))))}: {t}" for t, r in by_text.items()]


def _combine_window(
    name: str, parts: Sequence[tuple[RankInfo, Measurement]], world: int, job_flags: Sequence[str],
) -> DistributedWindow:
    domains: list[DomainEnergy] = []
    nodes: dict[str, list[Any]] = {}
    for info, m in parts:
        total = nodes.setdefault(info.node_id, [[], 0.0, 0.0, 0.0])  # ranks, node-wide J, rank J, CO2e g
        total[0].append(info.rank)
        for d in m.domains:
            domains.append(replace(d, key=f"{d.key}@{info.node_id}/rank{info.rank}"))
            if d.in_total:
                total[1 if _is_node_wide(d) else 2] += d.energy_j
        total[3] = None if total[3] is None or m.carbon is None else total[3] + m.carbon.co2e_g
    energy = sum(m.energy_j for _, m in parts)
    carbon, carbon_flags = _combine_carbon([m for _, m in parts], energy)
    flags = [*job_flags, *carbon_flags]
    if len(parts) < world:
        flags.append(f"window {name!r} was measured on ranks {', '.join(str(i.rank) for i, _ in parts)} only, "
                     f"of {world}")
    flags += _grouped([(i.rank, f) for i, m in parts for f in m.flags])
    failed = [(i, m) for i, m in parts if m.status == "failed"]
    samples = [m.samples for _, m in parts]
    starts = [_dt.datetime.fromisoformat(m.started_at) for _, m in parts]
    idle = [m.idle_power_w for _, m in parts]
    combined = Measurement(
        name=name, status="failed" if failed else "ok", started_at=parts[starts.index(min(starts))][1].started_at,
        duration_s=max(m.duration_s for _, m in parts), energy_j=energy, domains=tuple(domains),
        host=parts[0][1].host, backends=tuple(dict.fromkeys(b for _, m in parts for b in m.backends)),
        samples=None if None in samples else sum(samples),  # type: ignore[arg-type]
        steps=max(m.steps for _, m in parts),
        idle_power_w=None if None in idle else sum(idle),  # type: ignore[arg-type]
        flags=tuple(flags), error="; ".join(f"rank {i.rank}: {m.error}" for i, m in failed) or None, carbon=carbon,
    )
    node_totals = tuple(NodeTotal(node_id, tuple(ranks), wide + own, wide, own, co2e)
                        for node_id, (ranks, wide, own, co2e) in nodes.items())
    return DistributedWindow(name, combined, node_totals, tuple(i.rank for i, _ in parts),
                             tuple(m.energy_j for _, m in parts))


def combine(results: Sequence[RankResult]) -> DistributedResult:
    """Combine every rank's results: the k-th window of each name on each rank forms one combined window.

    A node's total is the sum over its ranks and the overall total the sum over nodes. Nothing is
    subtracted: that node-wide sources are read once per node is the meters' doing (local rank 0 only);
    a rank that read node-wide domains anyway is flagged, as are nodes that share a host.

    Raises:
        ConfigError: no results, or two results claim the same rank, or world sizes disagree.
    """
    if not results:
        raise ConfigError("combine needs the results of at least one rank")
    ordered = sorted(results, key=lambda r: r.info.rank)
    world = ordered[0].info.world_size
    ranks = [r.info.rank for r in ordered]
    if len(set(ranks)) != len(ranks) or any(r.info.world_size != world for r in ordered):
        raise ConfigError(f"results of ranks {ranks} do not come from one job of {world} ranks")
    flags: list[str] = []
    if len(ordered) < world:
        flags.append(f"results of {len(ordered)} ranks of {world}: the totals leave the others out")
    for r in ordered:
        wide = sorted({d.key for m in r.measurements for d in m.domains if _is_node_wide(d)})
        if wide and not r.info.reads_node:
            flags.append(f"{r.info.describe()} read node-wide sources too ({', '.join(wide)}): its node's figure "
                         "counts them more than once; measure each rank with greenmeter.metering.distributed.rank_meter")
    hosts: dict[str, list[str]] = {}
    for node_id in dict.fromkeys(r.info.node_id for r in ordered):
        hosts.setdefault(node_id.rpartition("/")[0], []).append(node_id)
    for host, node_ids in hosts.items():
        if len(node_ids) > 1:
            flags.append(f"nodes {', '.join(node_ids)} run on one host ({host}): each one's local rank 0 read the "
                         "whole machine, so the node-wide figures overlap and the total counts this host once per node")
    keyed: dict[tuple[str, int], list[tuple[RankInfo, Measurement]]] = {}
    for r in ordered:
        seen: dict[str, int] = {}
        for m in r.measurements:
            index = seen[m.name] = seen.get(m.name, -1) + 1
            keyed.setdefault((m.name, index), []).append((r.info, m))
    windows = tuple(_combine_window(name, parts, world, flags) for (name, _), parts in keyed.items())
    return DistributedResult(world, tuple(ordered), windows, tuple(flags))
