"""The front, break-even and paired metric tests of ``summarise``: only measurable savings count (issue 16)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter.comparison.compare import accuracy_metric, compare  # noqa: E402
from greenmeter.comparison.steps import OUTPUTS_VARY, Scoring, _Entry, summarise  # noqa: E402
from greenmeter.records.comparison import COMPARISON_SCHEMA_VERSION, Comparison, MakingCost  # noqa: E402
from greenmeter.records.measurement import HostInfo  # noqa: E402

BASE = [1.00e-4, 1.02e-4, 0.98e-4, 1.01e-4, 0.99e-4]
N = 450
TARGETS = torch.zeros(N, dtype=torch.long)


def _logits(wrong: set[int]) -> torch.Tensor:
    """Two-class logits that are right (class 0) on every sample but ``wrong``."""
    out = torch.zeros(N, 2)
    out[:, 0] = 1.0
    for i in wrong:
        out[i] = torch.tensor([0.0, 1.0])
    return out


def _entry(name: str, energy: list[float], wrong: set[int], making_j: float | None = None) -> _Entry:
    making = None if making_j is None else MakingCost(making_j, 1.0, ("cpu: estimated",))
    e = _Entry(name, None, None, making)
    outputs = _logits(wrong)
    e.metric_values = [accuracy_metric(outputs, TARGETS)] * len(energy)
    e.energy, e.durations, e.sizes = list(energy), [0.01] * len(energy), [N] * len(energy)
    e.samples, e.time_s = N * len(energy), 0.01 * len(energy)
    e.facts = {"size_b": 1000, "params_total": 10, "params_nonzero": 10, "params_kind": "parameters", "macs": 1.0,
               "macs_method": "flop-counter", "macs_note": None, "details": {}}
    e.outputs = outputs
    return e


def _summarise(*entries: _Entry, scoring: Scoring | None = None):  # type: ignore[no-untyped-def]
    scoring = scoring or Scoring(accuracy_metric, TARGETS, zero_one=True)
    return {v.name: v for v in summarise(list(entries), "float", None, None, "welch", 0, scoring)}  # type: ignore


def test_a_saving_that_is_not_significant_is_off_the_front_and_gets_no_break_even() -> None:
    base = _entry("float", BASE, {0, 1, 2, 3, 4})
    # Higher accuracy and a lower mean energy, but not significantly lower: before issue 16 it topped the front
    # and pushed the baseline off it, with a break-even for a saving nobody could measure.
    noisy = _entry("prune:0.5", [0.70e-4, 1.10e-4, 0.75e-4, 1.05e-4, 0.95e-4], {0, 1}, making_j=5.0)
    cheap = _entry("int8", [0.50e-4, 0.51e-4, 0.49e-4, 0.50e-4, 0.50e-4], {0, 1, 2, 3, 4, 5}, making_j=2.0)
    out = _summarise(base, noisy, cheap)
    assert not out["prune:0.5"].vs_baseline.measurable_saving
    assert out["prune:0.5"].vs_baseline.energy_significance.p_value > 0.05
    assert not out["prune:0.5"].on_pareto_front and out["prune:0.5"].vs_baseline.break_even_inferences is None
    assert out["float"].on_pareto_front  # the baseline stays: nothing measurable beats it on both
    assert out["int8"].vs_baseline.measurable_saving and out["int8"].on_pareto_front
    assert out["int8"].vs_baseline.break_even_inferences == pytest.approx(2.0 / (sum(BASE) / 5 - 0.50e-4))


def test_a_significantly_higher_energy_is_no_saving_either() -> None:
    base = _entry("float", BASE, set())
    dear = _entry("int4", [2.0e-4, 2.1e-4, 1.9e-4, 2.0e-4, 2.0e-4], set(), making_j=1.0)
    out = _summarise(base, dear)
    sig = out["int4"].vs_baseline.energy_significance
    assert sig.significant and sig.diff_mean > 0
    assert not out["int4"].vs_baseline.measurable_saving and not out["int4"].on_pareto_front


def test_each_accuracy_change_gets_mcnemars_exact_test_on_the_same_samples() -> None:
    base = _entry("float", BASE, {0, 1})
    # loses samples 10, 11, 12 that the baseline had right, gains 0 and 1: 5 discordant pairs, -1 sample net
    variant = _entry("qat", [0.5e-4] * 5, {10, 11, 12})
    test = _summarise(base, variant)["qat"].vs_baseline.metric_test
    assert test.test == "mcnemar" and test.statistic == 5.0
    assert test.p_value == pytest.approx(2 * (1 + 5 + 10) / 32)  # 2 * P(X <= 2), X ~ Binomial(5, 1/2)
    assert test.diff_mean == pytest.approx(-1 / N) and test.diff_low < -1 / N < test.diff_high


def test_another_metric_gets_a_paired_bootstrap_of_the_metric_itself() -> None:
    def margin(outputs: torch.Tensor, targets: torch.Tensor) -> float:  # not a 0/1 outcome per sample
        return float((outputs[:, 0] - outputs[:, 1]).mean())

    base = _entry("float", BASE, {0, 1})
    variant = _entry("int8", [0.5e-4] * 5, {0, 1, 2, 3, 4, 5, 6, 7})
    scoring = Scoring(margin, TARGETS, zero_one=False)
    test = _summarise(base, variant, scoring=scoring)["int8"].vs_baseline.metric_test
    assert test.test == "paired-bootstrap"
    assert test.diff_mean == pytest.approx(margin(variant.outputs, TARGETS) - margin(base.outputs, TARGETS))
    assert test.significant and test.diff_low <= test.diff_mean <= test.diff_high < 0
    again = _summarise(base, variant, scoring=scoring)["int8"].vs_baseline.metric_test
    assert again == test  # seeded


def test_a_metric_that_cannot_be_resampled_is_untested_and_flagged() -> None:
    base = _entry("float", BASE, {0, 1})
    variant = _entry("int8", [0.5e-4] * 5, {2})
    flaky = {"n": 0}

    def once(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        flaky["n"] += 1
        if flaky["n"] > 2:  # the full-data calls work, the resamples fail
            raise ValueError("needs the whole data set")
        return 1.0

    out = _summarise(base, variant, scoring=Scoring(once, TARGETS, zero_one=False))["int8"]
    assert out.vs_baseline.metric_test is None
    assert any(f.startswith("no paired test of its metric change (ValueError: needs the whole data set)")
               for f in out.flags)


def test_outputs_that_change_between_repeats_are_flagged() -> None:
    class Drifting(nn.Module):
        """Its outputs move a little on every call: a model that samples, or a non-deterministic kernel."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.linear(x) + self.calls * 1e-3

    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    result = compare({"float": nn.Linear(4, 3), "drifting": Drifting()}, (x, y), repeats=2, batch_size=20,
                     min_repeat_s=0.0, progress=False)
    assert OUTPUTS_VARY in result.variant("drifting").flags
    assert OUTPUTS_VARY not in result.variant("float").flags
    assert result.variant("drifting").vs_baseline.metric_test.test == "mcnemar"


def test_a_version_1_record_loads_with_the_front_of_measurable_savings() -> None:
    base = _entry("float", BASE, {0, 1, 2, 3, 4})
    noisy = _entry("prune:0.5", [0.70e-4, 1.10e-4, 0.75e-4, 1.05e-4, 0.95e-4], {0, 1}, making_j=5.0)
    cheap = _entry("int8", [0.50e-4, 0.51e-4, 0.49e-4, 0.50e-4, 0.50e-4], {0, 1, 2, 3, 4, 5}, making_j=2.0)
    results = tuple(_summarise(base, noisy, cheap).values())
    host = HostInfo.from_dict({"hostname": "h", "os": "Linux", "python": "3", "cpu_model": "c", "logical_cpus": 2,
                               "greenmeter": "0"})
    data = Comparison(name="c", created_at="2026-01-01T00:00:00+00:00", baseline="float", metric_name="accuracy",
                      repeats=5, warmup=1, samples_per_pass=N, passes_per_repeat=1, variants=results, host=host,
                      backends=(), carbon={}).to_dict()
    assert data["schema_version"] == COMPARISON_SCHEMA_VERSION == 3
    data["schema_version"] = 1  # as the old rule wrote it: prune on the front, with a break-even; no metric test
    for v in data["variants"]:
        if v["name"] == "prune:0.5":
            v["on_pareto_front"], v["vs_baseline"]["break_even_inferences"] = True, 123.0
        if v["name"] == "float":
            v["on_pareto_front"] = False
        if v["vs_baseline"]:
            del v["vs_baseline"]["metric_test"]
    old = Comparison.from_dict(data)
    assert old.pareto_front == ("float", "int8")
    assert old.variant("prune:0.5").vs_baseline.break_even_inferences is None
    assert old.variant("int8").vs_baseline.break_even_inferences == pytest.approx(
        results[2].vs_baseline.break_even_inferences)
    assert old.variant("int8").vs_baseline.metric_test is None
    assert Comparison.from_json(Comparison.from_dict(data).to_json()) == old
