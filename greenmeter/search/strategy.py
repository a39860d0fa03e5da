"""Hardware-aware architecture search: pick an architecture that is cheap *on this machine* to begin with.

Compression shrinks a model that exists; a search picks, from a space declared in code, architectures
whose measured inference energy and accuracy after short training are on the best trade-off::

    from greenmeter.search import SearchBudget, digits_cnn_space, digits_task, search_architectures

    result = search_architectures(digits_cnn_space(), digits_task(), budget=SearchBudget(max_candidates=24, epochs=3),
                    cache="search-cache.json", seed=0)
    print(result.table(front_only=True))
    print(result.correlation.describe())          # MACs (the proxy) against measured energy

Two strategies, both seeded and deterministic given the same measurements (which the cache replays):

* :class:`Evolution`: regularized ("aging") evolution (Real et al., 2019). A random population; then each
  cycle draws ``sample`` members, mutates one dimension of the best of them, evaluates the child, adds it
  and retires the oldest member.
* :class:`SuccessiveHalving`: ``max_candidates`` random configurations trained for ``epochs[0]`` epochs;
  the best ``1/eta`` of them are trained again from scratch for ``epochs[1]`` epochs, and so on: cheap
  training for many, more training for the survivors.

Candidates are ranked by the :class:`Objective`: MnasNet's weighted reward
``accuracy * (energy / target) ** w`` (Tan et al., 2019), or by Pareto rank over (accuracy, energy per
sample) with the reward breaking ties. Every figure is cached per configuration, task and machine
(:mod:`~greenmeter.search.cache`), so a repeated or resumed search measures nothing twice.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from greenmeter._checks import number, whole_number
from greenmeter._errors import ConfigError
from greenmeter.comparison.progress import progress_printer
from greenmeter.comparison.steps import provenance_lines
from greenmeter.metering.meter import Meter
from greenmeter.search.cache import SearchCache
from greenmeter.search.evaluate import SEARCH_PREFIX, Evaluator, SearchTask
from greenmeter.search.records import Candidate, RungResult, SearchResult, correlate
from greenmeter.search.space import SearchSpace, config_key
from greenmeter.stats import pareto_front

__all__ = ["Evolution", "Objective", "SearchBudget", "SuccessiveHalving", "search_architectures"]


@dataclass(frozen=True)
class SearchBudget:
    """How much the search may spend.

    Attributes:
        max_candidates: distinct configurations to evaluate (evolution: the population included;
            successive halving: the configurations of the first rung).
        epochs: training epochs per rung, increasing (an int is one rung). Evolution uses one rung.
        max_time_s: wall-clock seconds after which no new evaluation starts (cached ones are free); the
            result then says ``stopped_by="max_time_s"``. ``None``: no limit.
    """

    max_candidates: int = 20
    epochs: int | tuple[int, ...] = 3
    max_time_s: float | None = None

    def __post_init__(self) -> None:
        whole_number("max_candidates", self.max_candidates, minimum=1)
        epochs = (self.epochs,) if isinstance(self.epochs, int) and not isinstance(self.epochs, bool) else self.epochs
        if not isinstance(epochs, tuple) or not epochs:
            raise ConfigError(f"epochs must be a whole number or a tuple of them, not {self.epochs!r}")
        for e in epochs:
            whole_number("each rung's epochs", e, minimum=1)
        if any(b <= a for a, b in itertools.pairwise(epochs)):
            raise ConfigError(f"the rungs' epochs must increase, not {epochs!r}")
        object.__setattr__(self, "epochs", epochs)
        number("max_time_s", self.max_time_s, low=0, low_open=True, unit="seconds", optional=True)

    def to_dict(self) -> dict[str, Any]:
        return {"max_candidates": self.max_candidates, "epochs": list(self.epochs), "max_time_s": self.max_time_s}


@dataclass(frozen=True)
class Evolution:
    """Regularized (aging) evolution: tournament of ``sample`` out of a ``population``, one-dimension mutation."""

    name: ClassVar[str] = "evolution"
    population: int = 8
    sample: int = 3

    def __post_init__(self) -> None:
        whole_number("population", self.population, minimum=2)
        whole_number("sample", self.sample, minimum=1)
        if self.sample > self.population:
            raise ConfigError(f"sample ({self.sample}) cannot exceed population ({self.population})")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "population": self.population, "sample": self.sample}


@dataclass(frozen=True)
class SuccessiveHalving:
    """Successive halving: keep the best ``ceil(n / eta)`` of each rung and train them longer."""

    name: ClassVar[str] = "successive-halving"
    eta: int = 3

    def __post_init__(self) -> None:
        whole_number("eta", self.eta, minimum=2)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "eta": self.eta}


@dataclass(frozen=True)
class Objective:
    """How candidates are ranked.

    Attributes:
        kind: ``"reward"`` (MnasNet's weighted product) or ``"pareto"`` (non-dominated rank over accuracy
            and energy per sample, the reward breaking ties).
        alpha: the reward's exponent where energy <= target (MnasNet: -0.07).
        beta: the exponent where energy > target (MnasNet's soft constraint: -0.07; a hard one: -1).
        target_energy_j: target energy per sample in joules. With ``alpha == beta`` it scales every reward
            by the same factor and does not change the ranking; ``None`` then uses the median energy of the
            candidates (for the reported values only). Required when ``alpha != beta``.
    """

    kind: str = "reward"
    alpha: float = -0.07
    beta: float = -0.07
    target_energy_j: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("reward", "pareto"):
            raise ConfigError(f"objective kind must be 'reward' or 'pareto', not {self.kind!r}")
        if self.alpha != self.beta and self.target_energy_j is None:
            raise ConfigError("with alpha != beta the target energy decides the ranking: give target_energy_j")
        number("target_energy_j", self.target_energy_j, low=0, low_open=True, unit="joules", optional=True)

    def reward(self, accuracy: float, energy_j: float, target_j: float) -> float:
        """``accuracy * (energy_j / target_j) ** (alpha if energy_j <= target_j else beta)``."""
        return accuracy * (energy_j / target_j) ** (self.alpha if energy_j <= target_j else self.beta)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Run:
    """The candidates of one search while it runs: configs by id, their origin and the rungs evaluated."""

    def __init__(self, evaluator: Evaluator, objective: Objective, budget: SearchBudget,
                 on_candidate: Callable[[Candidate], None] | None) -> None:
        self.ev, self.objective, self.budget, self.on_candidate = evaluator, objective, budget, on_candidate
        self.ids: dict[str, int] = {}
        self.info: list[dict[str, Any]] = []  # per id: config, origin, parent, entry, rungs {epochs: cached}
        self.started = time.perf_counter()

    def out_of_time(self, config: Mapping[str, Any], epochs: int) -> bool:
        limit = self.budget.max_time_s
        return (limit is not None and time.perf_counter() - self.started > limit
                and self.ev.lookup(config, epochs) is None)

    def evaluate(self, config: Mapping[str, Any], epochs: int, origin: str = "random",
                 parent: int | None = None) -> int:
        key = config_key(config)
        if key not in self.ids:
            self.ids[key] = len(self.info)
            self.info.append({"config": dict(config), "origin": origin, "parent": parent, "rungs": {}})
        cid = self.ids[key]
        info = self.info[cid]
        if epochs not in info["rungs"]:
            entry, cached = self.ev.evaluate(config, epochs)
            info["entry"], info["rungs"][epochs] = entry, cached
            cand = self.candidate(cid, self.target())
            self.ev.show(f"#{cid} {cand.label()} [{epochs} ep]: acc {cand.accuracy * 100:.2f}%, "
                         f"{cand.energy_per_sample_j * 1e3:.4g} mJ/sample, {cand.macs_per_sample or 0:,.0f} MACs"
                         f"{' (cached)' if cached else ''} <- {origin}")
            if self.on_candidate is not None:
                self.on_candidate(cand)
        return cid

    def target(self) -> float:
        if self.objective.target_energy_j is not None:
            return self.objective.target_energy_j
        energies = [i["entry"]["energy"]["per_sample_j"] for i in self.info if "entry" in i]
        return statistics.median(energies) if energies else 1.0

    def accuracy(self, cid: int, epochs: int | None = None) -> float:
        rungs = self.info[cid]["entry"]["rungs"]
        return float(rungs[str(epochs if epochs is not None else max(self.info[cid]["rungs"]))]["accuracy"])

    def energy(self, cid: int) -> float:
        return float(self.info[cid]["entry"]["energy"]["per_sample_j"])

    def rank(self, ids: list[int], epochs: int | None = None) -> list[int]:
        """``ids`` best first by the objective (accuracy at ``epochs``, or each one's last rung)."""
        target = self.target()
        reward = {i: self.objective.reward(self.accuracy(i, epochs), self.energy(i), target) for i in ids}
        level = {i: 0 for i in ids}
        if self.objective.kind == "pareto":
            level = _pareto_levels({i: (self.accuracy(i, epochs), self.energy(i)) for i in ids})
        return sorted(ids, key=lambda i: (level[i], -reward[i], self.energy(i), i))

    def candidate(self, cid: int, target: float, on_front: bool = False) -> Candidate:
        info = self.info[cid]
        entry, energy = info["entry"], info["entry"]["energy"]
        rungs = tuple(RungResult(e, float(entry["rungs"][str(e)]["accuracy"]),
                                 float(entry["rungs"][str(e)]["train_energy_j"]),
                                 float(entry["rungs"][str(e)]["train_duration_s"]), cached)
                      for e, cached in sorted(info["rungs"].items()))
        flags = list(energy.get("flags", ()))
        for e in sorted(info["rungs"]):
            flags += [f"training {e} epochs: {f}" for f in entry["rungs"][str(e)].get("flags", ())]
        return Candidate(
            id=cid, config=dict(info["config"]), origin=info["origin"], parent=info["parent"],
            macs_per_sample=entry.get("macs_per_sample"), params=int(entry["params"]),
            energy_per_sample_j=float(energy["per_sample_j"]), energy_values_j=tuple(energy["values_j"]),
            latency_per_sample_s=float(energy["latency_per_sample_s"]), rungs=rungs,
            reward=self.objective.reward(rungs[-1].accuracy, float(energy["per_sample_j"]), target),
            on_pareto_front=on_front, flags=tuple(dict.fromkeys(flags)))


def _pareto_levels(points: Mapping[int, tuple[float, float]]) -> dict[int, int]:
    """Non-dominated sorting: level 0 is the Pareto front, level 1 the front of the rest, and so on."""

    level, left, depth = {}, list(points), 0
    while left:
        on = pareto_front([points[i] for i in left])
        level.update({i: depth for i, f in zip(left, on) if f})
        left = [i for i, f in zip(left, on) if not f]
        depth += 1
        if left and not any(on):  # NaNs only: nothing more to peel
            level.update({i: depth for i in left})
            break
    return level


def _distinct_samples(space: SearchSpace, rng: random.Random, n: int) -> list[dict[str, Any]]:
    """``n`` distinct configurations drawn uniformly (all of them, shuffled, when the space is that small)."""
    if n >= space.size:
        every = [dict(zip(space.dimensions, combo)) for combo in itertools.product(*space.dimensions.values())]
        rng.shuffle(every)
        return every
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < n:
        config = space.sample(rng)
        seen.setdefault(config_key(config), config)
    return list(seen.values())


def _evolve(run: _Run, space: SearchSpace, strategy: Evolution, rng: random.Random) -> str:
    budget, epochs = run.budget, run.budget.epochs[0]
    population: list[int] = []
    for config in _distinct_samples(space, rng, min(strategy.population, budget.max_candidates)):
        if run.out_of_time(config, epochs):
            return "max_time_s"
        population.append(run.evaluate(config, epochs))
    cycles = 0
    while len(run.info) < budget.max_candidates:
        if len(run.info) >= space.size:
            return "space exhausted"
        cycles += 1
        if cycles > 20 * budget.max_candidates:  # a tiny space where mutations keep landing on known configs
            return "space exhausted"
        sample = rng.sample(population, min(strategy.sample, len(population)))
        parent = run.rank(sample)[0]
        for _ in range(20):  # prefer a child not yet evaluated; re-entering a known one costs nothing
            child, mutation = space.mutate(run.info[parent]["config"], rng)
            if config_key(child) not in run.ids:
                break
        if run.out_of_time(child, epochs):
            return "max_time_s"
        population.append(run.evaluate(child, epochs, f"mutation of #{parent}: {mutation.describe()}", parent))
        population.pop(0)  # aging: the oldest member leaves, however good it is
    return "max_candidates"


def _halve(run: _Run, space: SearchSpace, strategy: SuccessiveHalving, rng: random.Random) -> str:
    current = _distinct_samples(space, rng, run.budget.max_candidates)
    for r, epochs in enumerate(run.budget.epochs):
        ids = []
        for config in current:
            if run.out_of_time(config, epochs):
                return "max_time_s"
            ids.append(run.evaluate(config, epochs))
        if r + 1 < len(run.budget.epochs):
            keep = max(1, math.ceil(len(ids) / strategy.eta))
            current = [run.info[i]["config"] for i in run.rank(ids, epochs)[:keep]]
    return "complete"


def search_architectures(
    space: SearchSpace,
    task: SearchTask,
    *,
    strategy: Evolution | SuccessiveHalving | None = None,
    budget: SearchBudget | None = None,
    objective: Objective | None = None,
    cache: SearchCache | str | Path | None = None,
    meter: Meter | None = None,
    seed: int = 0,
    min_window_s: float | None = None,
    repeats: int = 3,
    progress: bool | Callable[[str], None] = True,
    on_candidate: Callable[[Candidate], None] | None = None,
) -> SearchResult:
    """Search ``space`` for architectures with the best accuracy for their measured energy on this machine.

    Args:
        space: the search space.
        task: what candidates are trained and scored on (see :func:`digits_task`).
        strategy: :class:`Evolution` (default) or :class:`SuccessiveHalving`.
        budget: candidates, epochs per rung and wall time (default :class:`SearchBudget`).
        objective: how candidates are ranked (default: MnasNet's reward with w = -0.07).
        cache: a :class:`SearchCache`, or a path to its JSON file; ``None`` caches in memory only. Give a
            path to resume an interrupted search or repeat one without measuring again.
        meter: the meter to measure with (default: a new one, closed at the end).
        seed: seeds the proposals (``random.Random(seed)``) and every build and training run.
        min_window_s: shortest energy window in seconds (default as :func:`greenmeter.compare`).
        repeats: energy windows per candidate; the median is kept.
        progress: ``True`` for a line per evaluation on stderr, ``False`` for none, or a callable.
        on_candidate: called with each candidate after each evaluation; an exception it raises stops the
            search (what was evaluated is already in the cache, so a rerun resumes from there).

    Returns:
        A :class:`SearchResult` with every candidate, the Pareto front and the MACs-energy correlation.

    Raises:
        ConfigError: bad arguments (evolution with several rungs, successive halving with one).
    """
    strategy = strategy if strategy is not None else Evolution()
    budget = budget if budget is not None else SearchBudget()
    objective = objective if objective is not None else Objective()
    if not isinstance(space, SearchSpace) or not isinstance(task, SearchTask):
        raise ConfigError("search needs a SearchSpace and a SearchTask (see digits_cnn_space and digits_task)")
    if isinstance(strategy, Evolution) and len(budget.epochs) != 1:
        raise ConfigError(f"evolution trains every candidate for one length; give epochs as one number, "
                          f"not {budget.epochs!r} (several rungs are for SuccessiveHalving)")
    if isinstance(strategy, SuccessiveHalving) and len(budget.epochs) < 2:
        raise ConfigError("successive halving needs at least two rungs of increasing epochs, e.g. epochs=(1, 3, 9)")
    if not isinstance(strategy, (Evolution, SuccessiveHalving)):
        raise ConfigError(f"strategy must be Evolution() or SuccessiveHalving(), not {type(strategy).__name__}")
    whole_number("repeats", repeats, minimum=1)
    show = progress_printer(progress, prefix=SEARCH_PREFIX)
    cache = cache if isinstance(cache, SearchCache) else SearchCache(cache)
    own_meter = meter is None
    if meter is None:
        meter = Meter(name="architecture-search")
    try:
        evaluator = Evaluator(space, task, cache, meter, seed=seed, min_window_s=min_window_s, repeats=repeats,
                              progress=show)
        run = _Run(evaluator, objective, budget, on_candidate)
        rng = random.Random(seed)
        if isinstance(strategy, Evolution):
            stopped = _evolve(run, space, strategy, rng)
        else:
            stopped = _halve(run, space, strategy, rng)
        return _result(run, space, task, strategy, seed, meter, stopped)
    finally:
        if own_meter:
            meter.close()


def _result(run: _Run, space: SearchSpace, task: SearchTask, strategy: Evolution | SuccessiveHalving, seed: int,
            meter: Meter, stopped: str) -> SearchResult:

    ids = [i for i, info in enumerate(run.info) if "entry" in info]
    target = run.target()
    front = pareto_front([(run.accuracy(i), run.energy(i)) for i in ids])
    candidates = tuple(run.candidate(i, target, on) for i, on in zip(ids, front))
    spent = 0.0
    for c, i in zip(candidates, ids):
        spent += float(run.info[i]["entry"]["energy"]["windows_energy_j"]) + sum(r.train_energy_j for r in c.rungs)
    return SearchResult(
        space=space.to_dict(), strategy=strategy.to_dict(), budget=run.budget.to_dict(),
        objective={**run.objective.to_dict(), "target_energy_j": target}, seed=seed,
        task=run.ev.task_info, hardware=run.ev.hardware, host=meter.host, candidates=candidates, stopped_by=stopped,
        fresh_evaluations=run.ev.fresh, cached_evaluations=run.ev.cached, search_energy_j=spent,
        correlation=correlate([c.macs_per_sample for c in candidates], [c.energy_per_sample_j for c in candidates]),
        sources=provenance_lines(meter.domains),
        duration_s=time.perf_counter() - run.started,
    )
