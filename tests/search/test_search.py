"""Hardware-aware architecture search: the space, both strategies, the objective, the cache, resuming,
the Pareto front, the MACs-energy correlation and the comparison against a baseline.

Energy comes from a fake counter at the backend boundary: every forward pass of a test model charges it
a fixed number of joules per sample (1 nJ per MAC plus 2 uJ per layer), so measurements are exact and
repeatable and the search under test runs unchanged. Training is a few epochs of a tiny MLP on 300
digits images, so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

import pytest
import torch
from scipy import stats
from torch import nn

from greenmeter import Comparison, ConfigError, Meter, comparison_report
from greenmeter.search import (
    DIGITS_BASELINE_CONFIG,
    Evolution,
    Objective,
    SearchBudget,
    SearchCache,
    SearchResult,
    SearchSpace,
    SearchTask,
    SuccessiveHalving,
    compare_found,
    config_key,
    correlate,
    digits_cnn_space,
    search_architectures,
)
from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading
from greenmeter.demo.digits import DigitsData, load_digits_data, make_digits_cnn, train_classifier
from greenmeter.comparison.facts import count_macs

J_PER_MAC = 1e-9
J_PER_LAYER = 2e-6


class WorkCounter(Backend):
    """A counter the test models charge as they run: joules proportional to the work done."""

    name = "work"

    def __init__(self) -> None:
        self.joules = 0.0

    def probe(self) -> ProbeResult:
        prov = Provenance("measured", "test work counter", "1 nJ per MAC + 2 uJ per layer, per sample")
        return ProbeResult(self.name, True, domains=(Domain("work:dev", "package", True, prov, 0.0),))

    def read(self) -> Reading:
        return Reading(time.monotonic(), {"work:dev": self.joules})


class OtherCounter(WorkCounter):
    name = "other-work"

    def probe(self) -> ProbeResult:
        result = super().probe()
        return ProbeResult(self.name, True, domains=(Domain("other:dev", "package", True,
                                                            result.domains[0].provenance, 0.0),))

    def read(self) -> Reading:
        return Reading(time.monotonic(), {"other:dev": self.joules})


class Charged(nn.Module):
    """Runs ``inner`` and charges the counter ``joules_per_sample`` for every sample of the batch."""

    def __init__(self, inner: nn.Module, counter: WorkCounter, joules_per_sample: float) -> None:
        super().__init__()
        self.inner, self.counter, self.joules_per_sample = inner, counter, joules_per_sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.joules += self.joules_per_sample * len(x)
        return self.inner(x)


def expected_energy(config: dict[str, Any]) -> tuple[int, float]:
    """MACs per sample of the test MLP and the joules per sample the counter charges for it."""
    h, n = config["hidden"], config["layers"]
    macs = 64 * h + (n - 1) * h * h + h * 10
    return macs, macs * J_PER_MAC + (n + 1) * J_PER_LAYER


def mlp_space(counter: WorkCounter) -> SearchSpace:
    def build(config: dict[str, Any]) -> nn.Module:
        h, act = config["hidden"], {"relu": nn.ReLU, "tanh": nn.Tanh}[config["act"]]
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, h), act()]
        for _ in range(config["layers"] - 1):
            layers += [nn.Linear(h, h), act()]
        layers.append(nn.Linear(h, 10))
        return Charged(nn.Sequential(*layers), counter, expected_energy(config)[1])

    return SearchSpace("test-mlp", {"layers": (1, 2), "hidden": (4, 8, 16, 32), "act": ("relu", "tanh")}, build)


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    return load_digits_data()


@pytest.fixture(scope="module")
def task(digits: DigitsData) -> SearchTask:
    small = DigitsData(digits.x_train[:300], digits.y_train[:300], digits.x_test, digits.y_test)

    def train(model: nn.Module, epochs: int, seed: int) -> None:
        train_classifier(model, small, epochs=epochs, lr=1e-2, seed=seed)

    return SearchTask("test-digits-300", train, digits.x_train[1000:1150], digits.y_train[1000:1150])


def run(task: SearchTask, counter: WorkCounter | None = None, *, meter: Meter | None = None, **kwargs: Any
        ) -> SearchResult:
    counter = counter if counter is not None else WorkCounter()
    own = meter is None
    meter = meter if meter is not None else Meter([counter], sync=None)
    kwargs.setdefault("budget", SearchBudget(max_candidates=6, epochs=1))
    kwargs.setdefault("strategy", Evolution(population=3, sample=2))
    try:
        return search_architectures(mlp_space(counter), task, meter=meter, min_window_s=0.0, repeats=2,
                                    progress=False, **kwargs)
    finally:
        if own:
            meter.close()


def figures(result: SearchResult) -> list[tuple[str, str, float, float]]:
    """Each candidate's config, origin, accuracy and energy (to 9 digits: the counter is a running sum)."""
    return [(config_key(c.config), c.origin, c.accuracy, float(f"{c.energy_per_sample_j:.9g}"))
            for c in result.candidates]


# ------------------------------------------------------------------------------------------- space


def test_space_checks_itself_and_mutates_exactly_one_dimension() -> None:
    space = mlp_space(WorkCounter())
    assert space.size == 16
    with pytest.raises(ConfigError, match="repeats a choice"):
        SearchSpace("s", {"w": (8, 8)}, lambda c: nn.Identity())
    with pytest.raises(ConfigError, match="at least one dimension"):
        SearchSpace("s", {}, lambda c: nn.Identity())
    with pytest.raises(ConfigError, match="not one of"):
        space.validate({"layers": 3, "hidden": 8, "act": "relu"})
    with pytest.raises(ConfigError, match=r"missing \['act'\]"):
        space.validate({"layers": 1, "hidden": 8})
    rng = random.Random(1)
    changed = set()
    for _ in range(200):
        parent = space.sample(rng)
        child, mutation = space.mutate(parent, rng)
        diff = [d for d in parent if parent[d] != child[d]]
        assert diff == [mutation.dimension]
        assert (parent[mutation.dimension], child[mutation.dimension]) == (mutation.old, mutation.new)
        changed.add(mutation.dimension)
    assert changed == {"layers", "hidden", "act"}
    assert config_key({"b": 1, "a": "x"}) == '{"a":"x","b":1}'


def test_the_digits_space_holds_the_hand_designed_baseline_layer_for_layer(digits: DigitsData) -> None:
    space = digits_cnn_space()
    assert space.size == 3 * 4 * 2 * 3 * 2
    torch.manual_seed(0)
    found = space.build(space.validate(DIGITS_BASELINE_CONFIG))
    baseline = make_digits_cnn(seed=0)
    assert [type(m) for m in found] == [type(m) for m in baseline]
    found.eval(), baseline.eval()
    with torch.no_grad():
        assert torch.equal(found(digits.x_test[:16]), baseline(digits.x_test[:16]))
    torch.manual_seed(0)
    small = {"depth": 1, "width": 8, "kernel": 5, "hidden": 32}
    for depth in (1, 3):
        for kernel in (3, 5):
            strided = space.build({**small, "depth": depth, "kernel": kernel, "downsample": "stride"})
            pooled = space.build({**small, "depth": depth, "kernel": kernel, "downsample": "pool"})
            assert strided(digits.x_test[:4]).shape == pooled(digits.x_test[:4]).shape == (4, 10)
            assert count_macs(strided, digits.x_test[:4]).macs_per_sample < count_macs(
                pooled, digits.x_test[:4]).macs_per_sample


# ------------------------------------------------------------------------------------- strategies


def test_evolution_is_deterministic_given_a_seed_and_each_child_changes_one_dimension(task: SearchTask) -> None:
    first, again, other = run(task, seed=3), run(task, seed=3), run(task, seed=4)
    assert figures(first) == figures(again)
    assert figures(first) != figures(other)
    assert [c.origin for c in first.candidates[:3]] == ["random"] * 3
    mutated = first.candidates[3:]
    assert len(mutated) == 3
    for child in mutated:
        parent = first.candidate(child.parent)
        diff = [d for d in child.config if child.config[d] != parent.config[d]]
        assert len(diff) == 1
        assert child.origin == f"mutation of #{parent.id}: {diff[0]} {parent.config[diff[0]]}->{child.config[diff[0]]}"
    for c in first.candidates:  # the meter measured exactly what the fake counter charged
        macs, joules = expected_energy(dict(c.config))
        assert c.macs_per_sample == pytest.approx(macs)
        assert c.energy_per_sample_j == pytest.approx(joules, rel=1e-9)
        assert c.energy_values_j == pytest.approx((joules, joules), rel=1e-9)
        assert 0.0 <= c.accuracy <= 1.0
        assert c.reward == pytest.approx(c.accuracy * (joules / first.objective["target_energy_j"]) ** -0.07)
    assert first.stopped_by == "max_candidates" and first.fresh_evaluations == 6


def test_successive_halving_trains_the_best_third_longer(task: SearchTask) -> None:
    result = run(task, strategy=SuccessiveHalving(eta=3), budget=SearchBudget(max_candidates=6, epochs=(1, 3)))
    assert len(result.candidates) == 6 and result.stopped_by == "complete"
    survivors = [c for c in result.candidates if c.epochs == 3]
    assert len(survivors) == 2
    assert all([r.epochs for r in c.rungs] == [1, 3] for c in survivors)
    target = result.objective["target_energy_j"]
    # the survivors are the best two by reward on their one-epoch accuracy
    rung1 = sorted(result.candidates, key=lambda c: -c.rungs[0].accuracy * (c.energy_per_sample_j / target) ** -0.07)
    assert {c.id for c in rung1[:2]} == {c.id for c in survivors}
    assert result.fresh_evaluations == 8
    assert result.search_energy_j == pytest.approx(sum(
        sum(r.train_energy_j for r in c.rungs) + 2 * 150 * c.energy_per_sample_j for c in result.candidates))
    with pytest.raises(ConfigError, match="two rungs"):
        run(task, strategy=SuccessiveHalving(), budget=SearchBudget(epochs=2))
    with pytest.raises(ConfigError, match="one length"):
        run(task, budget=SearchBudget(epochs=(1, 2)))


def test_budgets_are_respected_and_cached_evaluations_cost_no_time(task: SearchTask) -> None:
    cache = SearchCache()
    assert len(run(task, cache=cache, budget=SearchBudget(max_candidates=4, epochs=1)).candidates) == 4

    def slow(_: object) -> None:
        time.sleep(0.05)

    stopped = run(task, budget=SearchBudget(max_candidates=6, epochs=1, max_time_s=0.01), on_candidate=slow)
    assert stopped.stopped_by == "max_time_s" and len(stopped.candidates) <= 1
    replay = run(task, cache=cache, budget=SearchBudget(max_candidates=4, epochs=1, max_time_s=0.01),
                 on_candidate=slow)
    assert replay.stopped_by == "max_candidates" and len(replay.candidates) == 4 and replay.fresh_evaluations == 0
    with pytest.raises(ConfigError, match="single configuration"):
        SearchSpace("one", {"w": (1,)}, lambda c: nn.Identity()).mutate({"w": 1}, random.Random(0))


def test_objective_reward_is_mnasnet_and_checks_itself() -> None:
    soft = Objective()
    assert soft.reward(0.9, 2e-3, 1e-3) == pytest.approx(0.9 * 2 ** -0.07)
    hard = Objective(alpha=0.0, beta=-1.0, target_energy_j=1e-3)
    assert hard.reward(0.9, 0.5e-3, 1e-3) == pytest.approx(0.9)
    assert hard.reward(0.9, 2e-3, 1e-3) == pytest.approx(0.45)
    with pytest.raises(ConfigError, match="target_energy_j"):
        Objective(alpha=0.0, beta=-1.0)
    with pytest.raises(ConfigError, match="kind"):
        Objective(kind="flops")


# ------------------------------------------------------------------------------- cache and resume


def test_a_repeated_search_measures_nothing_new_but_another_machine_does(task: SearchTask, tmp_path) -> None:
    path = tmp_path / "cache.json"
    counter = WorkCounter()
    with Meter([counter], sync=None) as meter:
        first = run(task, counter, meter=meter, cache=path)
        windows = len(meter.measurements)
        assert windows == 6 * (1 + 2)  # a training window and two energy windows per candidate
        again = run(task, counter, meter=meter, cache=path)
        assert len(meter.measurements) == windows
    assert again.fresh_evaluations == 0 and again.cached_evaluations == 6
    assert figures(again) == figures(first)
    assert all(r.cached for c in again.candidates for r in c.rungs)
    assert again.search_energy_j == pytest.approx(first.search_energy_j)
    stored = json.loads(path.read_text())
    assert stored["kind"] == "greenmeter-search-cache" and len(stored["entries"]) == 6
    assert [h["backends"] for h in stored["hardware"].values()] == [["work"]]
    elsewhere = OtherCounter()  # another energy source is another machine: nothing is reused
    moved = run(task, elsewhere, meter=Meter([elsewhere], sync=None), cache=path)
    assert moved.fresh_evaluations == 6 and figures(moved) == figures(first)
    assert len(json.loads(path.read_text())["entries"]) == 12


def test_an_interrupted_search_resumes_from_the_cache_to_the_same_result(task: SearchTask, tmp_path) -> None:
    budget = SearchBudget(max_candidates=7, epochs=1)
    whole = run(task, budget=budget, cache=tmp_path / "whole.json", seed=5)

    class Interrupt(Exception):
        pass

    def stop_at_four(candidate: object) -> None:
        if len(json.loads((tmp_path / "resumed.json").read_text())["entries"]) == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(task, budget=budget, cache=tmp_path / "resumed.json", seed=5, on_candidate=stop_at_four)
    resumed = run(task, budget=budget, cache=tmp_path / "resumed.json", seed=5)
    assert resumed.cached_evaluations == 4 and resumed.fresh_evaluations == 3
    assert figures(resumed) == figures(whole)
    assert [c.id for c in resumed.pareto_front] == [c.id for c in whole.pareto_front]


def test_a_broken_cache_file_is_refused_with_the_fix(tmp_path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable greenmeter search cache"):
        SearchCache(bad)
    bad.write_text('{"entries": {}}')
    with pytest.raises(ConfigError, match="not a greenmeter search cache"):
        SearchCache(bad)


# ------------------------------------------------------------------------ front, correlation, records


def test_the_pareto_front_holds_exactly_the_non_dominated_candidates(task: SearchTask) -> None:
    for objective in (Objective(), Objective(kind="pareto")):
        result = run(task, objective=objective, budget=SearchBudget(max_candidates=8, epochs=1))

        def dominates(a: Any, b: Any) -> bool:
            return (a.accuracy >= b.accuracy and a.energy_per_sample_j <= b.energy_per_sample_j
                    and (a.accuracy > b.accuracy or a.energy_per_sample_j < b.energy_per_sample_j))

        for c in result.candidates:
            beaten = any(dominates(o, c) for o in result.candidates)
            assert c.on_pareto_front is not beaten
        front = result.pareto_front
        assert front and [c.accuracy for c in front] == sorted((c.accuracy for c in front), reverse=True)


def test_the_macs_energy_correlation_is_scipys(task: SearchTask) -> None:
    result = run(task, budget=SearchBudget(max_candidates=8, epochs=1))
    macs = [c.macs_per_sample for c in result.candidates]
    energy = [c.energy_per_sample_j for c in result.candidates]
    corr = result.correlation
    assert corr.n == 8
    assert corr.pearson_r == pytest.approx(stats.pearsonr(macs, energy).statistic)
    assert corr.pearson_p == pytest.approx(stats.pearsonr(macs, energy).pvalue)
    assert corr.spearman_rho == pytest.approx(stats.spearmanr(macs, energy).statistic)
    assert corr.log_pearson_r == pytest.approx(
        stats.pearsonr([math.log(m) for m in macs], [math.log(e) for e in energy]).statistic)
    truth = [expected_energy(dict(c.config)) for c in result.candidates]
    assert corr.pearson_r == pytest.approx(stats.pearsonr(*zip(*truth)).statistic, rel=1e-6)
    assert corr.pearson_r < 0.999  # the per-layer charge is work the MACs do not count
    assert correlate([1, 2], [3, 4]).pearson_r is None and "at least 3" in correlate([1, 2], [3, 4]).note
    assert "same for every" in correlate([1, 1, 1], [1, 2, 3]).note
    assert correlate([1, 2, 3, 4], [4, 3, 2, 1]).spearman_rho == pytest.approx(-1.0)


def test_the_result_round_trips_through_json(task: SearchTask) -> None:
    result = run(task, strategy=SuccessiveHalving(eta=2), budget=SearchBudget(max_candidates=4, epochs=(1, 2)))
    back = SearchResult.from_json(result.to_json())
    assert back == result
    assert back.best == max(result.candidates, key=lambda c: c.reward)
    assert "front" in result.table() and result.table(front_only=True).count("\n") == len(result.pareto_front) + 1
    with pytest.raises(ConfigError, match="newer"):
        SearchResult.from_dict({**result.to_dict(), "schema_version": 99})


def test_found_architectures_become_a_comparison_that_reports_render(task: SearchTask, digits: DigitsData) -> None:
    counter = WorkCounter()
    space = mlp_space(counter)
    with Meter([counter], sync=None) as meter:
        result = search_architectures(space, task, meter=meter, min_window_s=0.0, repeats=2, progress=False,
                                      budget=SearchBudget(max_candidates=6, epochs=1),
                                      strategy=Evolution(population=3, sample=2))
        comparison = compare_found(result, space, task, {"layers": 2, "hidden": 32, "act": "relu"},
                                   (digits.x_test, digits.y_test), top=2, meter=meter, repeats=2,
                                   min_repeat_s=0.0, progress=False)
    names = [v.name for v in comparison.variants]
    assert names[0] == "baseline" and names[1:] == [f"found-{k}" for k in range(1, len(names))]
    assert 1 <= len(names) - 1 <= 2
    found = comparison.variant("found-1")
    assert found.details["config"] == dict(result.pareto_front[0].config)
    assert found.details["search_candidate"] == result.pareto_front[0].id
    expected = expected_energy(dict(result.pareto_front[0].config))[1]
    assert found.energy_per_sample_j.mean == pytest.approx(expected, rel=1e-9)
    assert found.making.energy_j > result.search_energy_j  # its training plus the whole search
    assert comparison.variant("baseline").making.energy_j < found.making.energy_j
    assert any("includes the whole search" in f for f in comparison.flags)
    assert Comparison.from_json(comparison.to_json()) == comparison
    html = comparison_report(comparison)
    assert "found-1" in html and "includes the whole search" in html
    assert "found-1" in comparison_report(comparison, "md")


def test_compare_found_checks_its_arguments(task: SearchTask) -> None:
    result = run(task, budget=SearchBudget(max_candidates=3, epochs=1))
    with pytest.raises(ConfigError, match="top"):
        compare_found(result, mlp_space(WorkCounter()), task, nn.Identity(), None, top=0)
    with pytest.raises(ConfigError, match="space"):
        compare_found(result, digits_cnn_space(), task, nn.Identity(), None)
