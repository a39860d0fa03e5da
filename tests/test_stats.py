"""Tests of greenmeter.stats against hand-computed values, a textbook example and scipy."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

from greenmeter._errors import ConfigError
from greenmeter.records.measurement import LatencyStats
from greenmeter.stats import (
    Interval,
    QuantileSketch,
    Significance,
    bootstrap_test,
    mcnemar_exact,
    mean_ci,
    energy_test,
    paired_bootstrap,
    paired_ratio_test,
    pareto_front,
    percentile,
    welch_test,
)

# Welch's t-test, Wikipedia "Welch's t-test", example 1: t = -2.46, df = 24.99, p = 0.021 (A1 - A2).
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def test_importing_stats_loads_neither_scipy_nor_numpy() -> None:
    code = "import sys, greenmeter.stats; print(sorted(m for m in ('scipy', 'numpy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -------------------------------------------------------------------------------------- mean_ci


def test_mean_ci_matches_a_hand_computed_t_interval() -> None:
    # mean 3, s = sqrt(2.5), se = s / sqrt(5) = 0.7071068, t(0.975, 4) = 2.7764451 -> half width 1.9632432
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci.mean == 3.0 and ci.n == 5 and ci.confidence == 0.95
    assert ci.low == pytest.approx(3.0 - 1.9632432, abs=1e-6)
    assert ci.high == pytest.approx(3.0 + 1.9632432, abs=1e-6)
    assert ci.half_width == pytest.approx(1.9632432, abs=1e-6)


def test_mean_ci_level_changes_the_width() -> None:
    # t(0.95, 4) = 2.1318468 for a 90% interval
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], confidence=0.90)
    assert ci.half_width == pytest.approx(2.1318468 * math.sqrt(0.5), abs=1e-6)


def test_mean_ci_single_value_has_no_interval_and_identical_values_have_zero_width() -> None:
    one = mean_ci([4.25])
    assert (one.mean, one.low, one.high, one.n, one.half_width) == (4.25, None, None, 1, None)
    same = mean_ci([2.0, 2.0, 2.0])
    assert (same.low, same.high) == (2.0, 2.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [([], "empty"), ([1.0, float("nan")], "non-finite"), ([1.0, float("inf")], "non-finite"), (["x"], "numbers")],
)
def test_mean_ci_rejects_bad_values(values: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mean_ci(values)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95, -0.5, True])
def test_mean_ci_rejects_bad_confidence(confidence: float) -> None:
    with pytest.raises(ConfigError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=confidence)


def test_interval_round_trips_through_a_dict() -> None:
    for ci in (mean_ci([1.0, 2.0, 4.0]), mean_ci([7.0])):
        assert Interval.from_dict(ci.to_dict()) == ci


# ------------------------------------------------------------------------------------ welch_test


def test_welch_test_matches_the_textbook_example() -> None:
    result = welch_test(A2, A1)  # variant A1 minus baseline A2: t = -2.46
    assert result.test == "welch"
    assert result.statistic == pytest.approx(-2.46, abs=0.005)
    assert result.p_value == pytest.approx(0.021, abs=0.0005)
    assert result.diff_mean == pytest.approx(sum(A1) / 15 - sum(A2) / 15)
    assert result.significant is True
    # the sign follows "variant minus baseline"
    flipped = welch_test(A1, A2)
    assert flipped.statistic == pytest.approx(-result.statistic)
    assert flipped.p_value == pytest.approx(result.p_value)


def test_welch_test_matches_scipy_and_a_hand_computation() -> None:
    from scipy import stats

    baseline, variant = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0, 8.0]
    # by hand: se = sqrt(1/3 + 2.5/5) = 0.9128709, t = 4 / se = 4.3817805, df = 0.6944444 / 0.1180556 = 5.8823529
    result = welch_test(baseline, variant)
    assert result.statistic == pytest.approx(4.3817805, abs=1e-6)
    reference = stats.ttest_ind(variant, baseline, equal_var=False)
    assert reference.df == pytest.approx(5.8823529, abs=1e-6)
    assert result.p_value == pytest.approx(float(reference.pvalue), rel=1e-9)
    assert result.statistic == pytest.approx(float(reference.statistic), rel=1e-12)
    ci = reference.confidence_interval(0.95)
    assert (result.diff_low, result.diff_high) == (pytest.approx(float(ci.low)), pytest.approx(float(ci.high)))
    assert result.diff_mean == 4.0 and result.significant is True


def test_welch_interval_level_follows_alpha() -> None:
    from scipy import stats

    result = welch_test(A1, A2, alpha=0.01)
    ci = stats.ttest_ind(A2, A1, equal_var=False).confidence_interval(0.99)
    assert (result.diff_low, result.diff_high) == (pytest.approx(float(ci.low)), pytest.approx(float(ci.high)))
    assert result.diff_low < 0 < result.diff_high  # p = 0.021 is not below 0.01, so the 99% interval holds 0
    assert result.significant is False and result.alpha == 0.01


def test_welch_test_with_too_few_repeats_gives_no_p_value() -> None:
    result = welch_test([1.0], [2.0, 3.0])
    assert result.diff_mean == 1.5
    assert (result.p_value, result.statistic, result.significant, result.diff_low, result.diff_high) == (
        None, None, None, None, None)


def test_welch_test_with_zero_variance_on_both_sides() -> None:
    same = welch_test([2.0, 2.0, 2.0], [2.0, 2.0])
    assert (same.p_value, same.significant, same.statistic, same.diff_mean) == (1.0, False, None, 0.0)
    assert (same.diff_low, same.diff_high) == (0.0, 0.0)
    apart = welch_test([2.0, 2.0, 2.0], [3.0, 3.0])
    assert (apart.p_value, apart.significant, apart.statistic, apart.diff_mean) == (0.0, True, None, 1.0)
    assert (apart.diff_low, apart.diff_high) == (1.0, 1.0)


def test_welch_test_with_zero_variance_on_one_side_uses_the_other_sides_df() -> None:
    from scipy import stats

    # variant mean 5, var 10/3 (n 4); baseline var 0: se = sqrt(10/12), df = n_variant - 1 = 3
    result = welch_test([4.0, 4.0, 4.0], [4.0, 6.0, 7.0, 3.0])
    t = 1.0 / math.sqrt(10.0 / 12.0)
    assert result.statistic == pytest.approx(t)
    assert result.p_value == pytest.approx(2.0 * float(stats.t.sf(t, 3)))


def test_welch_test_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="baseline is empty"):
        welch_test([], [1.0, 2.0])
    with pytest.raises(ConfigError, match="variant holds 1 non-finite"):
        welch_test([1.0, 2.0], [1.0, float("nan")])
    with pytest.raises(ConfigError, match="alpha"):
        welch_test([1.0, 2.0], [1.0, 2.0], alpha=1.5)


def test_significance_round_trips_through_a_dict() -> None:
    for result in (welch_test(A1, A2), welch_test([1.0], [2.0]), bootstrap_test(A1, A2, n_resamples=200)):
        assert Significance.from_dict(result.to_dict()) == result


# -------------------------------------------------------------------------------- bootstrap_test


def test_bootstrap_finds_clearly_different_samples() -> None:
    result = bootstrap_test([10.0, 11.0, 12.0, 10.5, 11.5], [20.0, 21.0, 19.0, 20.5, 19.5])
    assert result.test == "bootstrap" and result.statistic is None
    assert result.diff_mean == 9.0
    assert result.p_value == pytest.approx(2 / 10_001)  # no resample reached 0: the smallest p it can give
    assert result.significant is True
    assert 8.0 < result.diff_low < 9.0 < result.diff_high < 10.0


def test_bootstrap_p_is_large_for_the_same_distribution() -> None:
    same = bootstrap_test([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert same.diff_mean == 0.0 and same.p_value > 0.9 and same.significant is False
    assert same.diff_low < 0.0 < same.diff_high
    constant = bootstrap_test([3.0, 3.0], [3.0, 3.0, 3.0])
    assert (constant.p_value, constant.diff_low, constant.diff_high) == (1.0, 0.0, 0.0)


def test_bootstrap_agrees_with_welch_on_the_textbook_example() -> None:
    boot, welch = bootstrap_test(A2, A1), welch_test(A2, A1)
    assert boot.diff_mean == pytest.approx(welch.diff_mean)
    assert boot.significant is True and 0.001 < boot.p_value < 0.05
    assert boot.diff_low == pytest.approx(welch.diff_low, abs=0.4)
    assert boot.diff_high == pytest.approx(welch.diff_high, abs=0.4)


def test_bootstrap_is_deterministic_given_the_seed() -> None:
    first = bootstrap_test(A1, A2, n_resamples=1000, seed=7)
    assert bootstrap_test(A1, A2, n_resamples=1000, seed=7) == first
    assert bootstrap_test(A1, A2, n_resamples=1000, seed=8) != first


def test_bootstrap_with_too_few_repeats_and_bad_arguments() -> None:
    short = bootstrap_test([1.0, 2.0], [5.0])
    assert (short.diff_mean, short.p_value, short.significant, short.diff_low) == (3.5, None, None, None)
    with pytest.raises(ConfigError, match="n_resamples"):
        bootstrap_test([1.0, 2.0], [1.0, 2.0], n_resamples=10)
    with pytest.raises(ConfigError, match="non-finite"):
        bootstrap_test([1.0, float("inf")], [1.0, 2.0])


# ---------------------------------------------------------------------------------- pareto_front


def _outcomes(losses: int, gains: int, same: int) -> tuple[list[int], list[int]]:
    """Baseline and variant 0/1 outcomes: ``losses`` right then wrong, ``gains`` wrong then right, ``same`` right."""
    return [1] * losses + [0] * gains + [1] * same, [0] * losses + [1] * gains + [1] * same


def test_mcnemar_exact_matches_the_binomial_test_and_its_exact_interval() -> None:
    from scipy.stats import binomtest

    base, variant = _outcomes(9, 2, 439)  # 11 discordant pairs of 450 samples
    result = mcnemar_exact(base, variant)
    exact = binomtest(2, 11, 0.5)
    ci = exact.proportion_ci(0.95, method="exact")  # Clopper-Pearson
    assert result.test == "mcnemar" and result.statistic == 11.0
    assert result.p_value == pytest.approx(exact.pvalue, rel=1e-12) == pytest.approx(0.0654296875)
    assert result.diff_mean == pytest.approx(-7 / 450)
    assert result.diff_low == pytest.approx(11 / 450 * (2 * ci.low - 1))
    assert result.diff_high == pytest.approx(11 / 450 * (2 * ci.high - 1))
    assert result.significant is False and result.diff_low < 0 < result.diff_high


def test_mcnemar_interval_excludes_zero_exactly_when_the_test_is_significant() -> None:
    for losses, gains in [(0, 0), (3, 0), (5, 0), (6, 0), (8, 1), (9, 1), (20, 8), (20, 6), (4, 4)]:
        r = mcnemar_exact(*_outcomes(losses, gains, 300))
        assert r.significant == (r.p_value < 0.05)
        assert r.significant == (not r.diff_low <= 0 <= r.diff_high) or (losses, gains) == (0, 0), (losses, gains)
    none = mcnemar_exact(*_outcomes(0, 0, 50))  # no discordant pair: nothing to test
    assert none.p_value == 1.0 and (none.diff_low, none.diff_mean, none.diff_high) == (0.0, 0.0, 0.0)
    one_sample = mcnemar_exact([1], [0])
    assert one_sample.p_value == 1.0 and one_sample.diff_mean == -1.0 and one_sample.diff_low == -1.0


def test_mcnemar_rejects_other_values_and_unpaired_sides() -> None:
    with pytest.raises(ConfigError, match="0/1 outcomes"):
        mcnemar_exact([1, 0, 0.5], [1, 1, 1])
    with pytest.raises(ConfigError, match="baseline has 3 and the variant 2"):
        mcnemar_exact([1, 0, 1], [1, 1])
    with pytest.raises(ConfigError, match="empty"):
        mcnemar_exact([], [])


def test_paired_bootstrap_keeps_the_pairing() -> None:
    rng = random.Random(4)
    base = [rng.gauss(0, 1) for _ in range(200)]
    variant = [b + 0.05 + rng.gauss(0, 0.02) for b in base]  # a small shift, hidden by unpaired noise
    paired = paired_bootstrap(base, variant, seed=1)
    assert paired.test == "paired-bootstrap" and paired.diff_mean == pytest.approx(sum(variant) / 200 - sum(base) / 200)
    assert paired.significant and paired.diff_low > 0.04 and paired.diff_high < 0.06
    assert bootstrap_test(base, variant, seed=1).significant is False  # the unpaired test cannot see it
    assert paired_bootstrap(base, variant, seed=1) == paired  # seeded


def test_paired_bootstrap_of_a_statistic_uses_the_same_resamples() -> None:
    import numpy as np

    rng = random.Random(5)
    base = np.array([rng.gauss(0, 1) for _ in range(60)])
    variant = base + np.array([rng.gauss(0.1, 0.3) for _ in range(60)])
    by_mean = paired_bootstrap(base, variant, n_resamples=400, seed=3)
    by_statistic = paired_bootstrap(base, variant, statistic=lambda side, idx: float(side[idx].mean()),
                                    n_resamples=400, seed=3)
    assert by_statistic.p_value == by_mean.p_value
    assert by_statistic.diff_low == pytest.approx(by_mean.diff_low) and by_statistic.diff_high == pytest.approx(
        by_mean.diff_high)
    with pytest.raises(ConfigError, match="finite"):
        paired_bootstrap(base, variant, statistic=lambda side, idx: float("nan"), n_resamples=100)
    with pytest.raises(ConfigError, match="same samples"):
        paired_bootstrap(base, variant[:10], statistic=lambda side, idx: 0.0)
    single = paired_bootstrap([1.0], [2.0])
    assert single.p_value is None and single.diff_mean == 1.0


def test_paired_ratio_test_is_a_paired_t_test_of_the_log_ratios() -> None:
    from scipy import stats

    base = [0.30, 0.16, 0.15, 0.14, 0.10]
    variant = [0.035, 0.033, 0.039, 0.035, 0.034]
    result = paired_ratio_test(base, variant)
    logs = [math.log(v / b) for b, v in zip(base, variant)]
    ref = stats.ttest_1samp(logs, 0.0)
    ci = ref.confidence_interval(0.95)
    mean_b = sum(base) / 5
    assert result.test == "paired" and result.p_value == pytest.approx(float(ref.pvalue))
    assert result.statistic == pytest.approx(float(ref.statistic))
    assert result.diff_mean == pytest.approx(mean_b * math.expm1(sum(logs) / 5))  # the geometric-mean ratio
    assert result.diff_low == pytest.approx(mean_b * math.expm1(float(ci.low)))
    assert result.diff_high == pytest.approx(mean_b * math.expm1(float(ci.high)))
    assert result.significant and result.diff_high < 0
    assert float(stats.ttest_rel(variant, base).pvalue) != pytest.approx(result.p_value)  # logs, not differences


def test_pairing_by_round_removes_a_load_every_round_shares() -> None:
    # Each round the machine is slower by its own factor (other work); the variant is 0.8x the baseline
    # within every round, give or take 1%. Taken as independent samples the rounds' spread hides the saving.
    rng = random.Random(7)
    load = [rng.uniform(1.0, 4.0) for _ in range(5)]
    base = [1e-4 * f for f in load]
    variant = [1e-4 * f * 0.8 * rng.uniform(0.99, 1.01) for f in load]
    paired = paired_ratio_test(base, variant)
    assert paired.significant and paired.p_value < 1e-4 and paired.diff_high < 0
    assert paired.diff_low / (sum(base) / 5) == pytest.approx(-0.2, abs=0.02)  # about the 0.8x within the rounds
    assert welch_test(base, variant).significant is False  # the unpaired test cannot see it
    assert energy_test("paired", base, variant) == paired and energy_test("welch", base, variant).test == "welch"
    assert energy_test("bootstrap", base, variant, seed=2) == bootstrap_test(base, variant, seed=2)
    assert energy_test("paired", base, variant[:4]).test == "welch"  # rounds that do not pair: unpaired


def test_paired_ratio_test_edge_cases() -> None:
    one = paired_ratio_test([2.0], [1.0])
    assert one.p_value is None and one.significant is None and one.diff_mean == pytest.approx(-1.0)
    same = paired_ratio_test([1.0, 2.0, 4.0], [0.5, 1.0, 2.0])  # exactly half in every round
    assert (same.p_value, same.significant, same.statistic) == (0.0, True, None)
    assert same.diff_mean == same.diff_low == same.diff_high == pytest.approx(-7 / 6)
    equal = paired_ratio_test([1.0, 2.0], [1.0, 2.0])
    assert (equal.p_value, equal.significant, equal.diff_mean) == (1.0, False, 0.0)
    zero = paired_ratio_test([0.0, 1.0, 2.0], [0.5, 1.4, 2.6])  # no ratio of a 0: the differences instead
    from scipy import stats

    assert zero.p_value == pytest.approx(float(stats.ttest_rel([0.5, 1.4, 2.6], [0.0, 1.0, 2.0]).pvalue))
    assert zero.diff_mean == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="one value per round on both sides: the baseline has 3 and the variant 2"):
        paired_ratio_test([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ConfigError, match="finite"):
        paired_ratio_test([1.0, float("nan")], [1.0, 2.0])


def test_pareto_front_with_ties_and_nan() -> None:
    nan = float("nan")
    points = [
        (0.90, 10.0),   # front: the cheapest
        (0.95, 20.0),   # front: more accurate, costs more
        (0.85, 15.0),   # dominated by (0.90, 10)
        (0.90, 10.0),   # an exact tie with the first: both on the front
        (nan, 1.0),     # NaN: never on the front
        (0.99, nan),    # NaN: never on the front, and dominates nothing
        (0.95, 25.0),   # same accuracy as (0.95, 20) but costs more: dominated
        (0.99, 30.0),   # front: the most accurate
    ]
    assert pareto_front(points) == [True, True, False, True, False, False, False, True]


def test_pareto_front_directions() -> None:
    points = [(1.0, 1.0), (2.0, 2.0), (1.0, 2.0)]
    assert pareto_front(points) == [True, True, False]
    assert pareto_front(points, maximize_first=False) == [True, False, False]
    assert pareto_front(points, minimize_second=False) == [False, True, False]
    assert pareto_front(points, maximize_first=False, minimize_second=False) == [False, False, True]


def test_pareto_front_edge_cases() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 3.0)]) == [True]
    assert pareto_front([(float("nan"), float("nan"))]) == [False]
    with pytest.raises(ConfigError, match="point 1"):
        pareto_front([(1.0, 2.0), (1.0,)])


# ------------------------------------------------------------------------------------ percentile


def test_percentile_matches_latency_stats() -> None:
    durations = [0.013, 0.011, 0.019, 0.012, 0.050, 0.014, 0.016, 0.010, 0.017, 0.015, 0.018, 0.021]
    stats = LatencyStats.from_durations(durations)
    assert stats is not None
    assert percentile(durations, 0.50) == stats.p50_s == 0.015  # ceil(6) = 6th smallest
    assert percentile(durations, 0.95) == stats.p95_s == 0.050  # ceil(11.4) = 12th
    assert percentile(durations, 0.99) == stats.p99_s
    assert percentile(durations, 0.0) == 0.010 and percentile(durations, 1.0) == 0.050
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.25) == 1.0 and percentile([3.0, 1.0, 2.0, 4.0], 0.26) == 2.0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="0.95 for p95"):
        percentile([1.0, 2.0], 95)
    with pytest.raises(ConfigError, match="empty"):
        percentile([], 0.5)
    with pytest.raises(ConfigError, match="non-finite"):
        percentile([1.0, float("nan")], 0.5)


# ------------------------------------------------------------------------------------ the quantile sketch

QS = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]


def _within_bound(sketch: QuantileSketch, values: list[float]) -> None:
    a = sketch.relative_accuracy
    for q in QS:
        exact = percentile(values, q)
        assert abs(sketch.quantile(q) - exact) <= a * exact * (1 + 1e-12), (q, sketch.quantile(q), exact)


@pytest.mark.parametrize("name", ["uniform", "lognormal", "ties", "zeros", "bimodal"])
def test_sketch_quantiles_are_within_the_stated_error_of_the_exact_nearest_rank(name: str) -> None:
    rng = random.Random(7)
    values = {
        "uniform": [rng.uniform(0.001, 0.1) for _ in range(20_000)],
        "lognormal": [rng.lognormvariate(-6.0, 1.5) for _ in range(20_000)],
        "ties": [rng.choice([0.010, 0.011, 0.5]) for _ in range(5_000)],  # many equal values
        "zeros": [0.0] * 300 + [rng.expovariate(100.0) for _ in range(700)],
        "bimodal": [rng.gauss(0.002, 1e-4) for _ in range(3_000)] + [rng.gauss(2.0, 0.1) for _ in range(300)],
    }[name]
    for accuracy in (0.005, 0.02):
        sketch = QuantileSketch.from_values(values, relative_accuracy=accuracy)
        _within_bound(sketch, values)
        assert sketch.count == len(values) and sketch.min == min(values) and sketch.max == max(values)
        assert sketch.sum == pytest.approx(sum(values), rel=1e-12) and sketch.collapsed == 0


def test_sketch_of_a_few_values() -> None:
    for values in ([0.25], [0.3, 0.1], [5.0, 1.0, 3.0], [0.0], [0.0, 2.0]):
        sketch = QuantileSketch().add_many(values)
        _within_bound(sketch, values)
        assert sketch.quantile(0.0) == min(values) and sketch.quantile(1.0) == max(values)  # kept exactly
    sketch = QuantileSketch().add(0.010).add(0.020)
    assert sketch.quantile(0.5) == pytest.approx(0.010, rel=0.005) and sketch.mean == pytest.approx(0.015)
    empty = QuantileSketch()
    assert empty.count == 0 and empty.min is None and empty.max is None and empty.mean is None
    with pytest.raises(ConfigError, match="empty"):
        empty.quantile(0.5)


def test_merged_sketches_equal_the_sketch_of_the_union() -> None:
    rng = random.Random(3)
    a = [rng.lognormvariate(-5.0, 1.0) for _ in range(4_000)]
    b = [rng.lognormvariate(-4.0, 0.3) for _ in range(1_000)] + [0.0]
    merged = QuantileSketch.from_values(a).merge(QuantileSketch.from_values(b))
    union = QuantileSketch.from_values(a + b)
    m, u = merged.to_dict(), union.to_dict()
    assert m.pop("sum") == pytest.approx(u.pop("sum"), rel=1e-12) and m == u  # the sum is added in another order
    assert [merged.quantile(q) for q in QS] == [union.quantile(q) for q in QS]
    _within_bound(merged, a + b)
    lone = QuantileSketch.from_values(b)
    lone.copy().merge(QuantileSketch.from_values(a))
    assert lone.count == len(b)  # merging into a copy leaves the original alone
    with pytest.raises(ConfigError, match="relative accuracy"):
        merged.merge(QuantileSketch(relative_accuracy=0.01))


def test_sketch_round_trips_through_json_and_stays_small() -> None:
    rng = random.Random(5)
    values = [rng.lognormvariate(-4.0, 0.5) for _ in range(100_000)]
    sketch = QuantileSketch.from_values(values)
    text = json.dumps(sketch.to_dict())
    again = QuantileSketch.from_dict(json.loads(text))
    assert again == sketch and [again.quantile(q) for q in QS] == [sketch.quantile(q) for q in QS]
    assert len(text) < 4_000 and sketch.buckets < 600  # 100,000 values in a few hundred buckets
    broken = sketch.to_dict()
    broken["count"] += 1
    with pytest.raises(ConfigError, match="do not add up"):
        QuantileSketch.from_dict(broken)


def test_sketch_memory_is_bounded_and_the_upper_quantiles_keep_their_bound() -> None:
    values = [10.0 ** (k / 10) for k in range(-200, 101)]  # 30 decades, more than 64 buckets of 5% span
    sketch = QuantileSketch.from_values(values, relative_accuracy=0.05, max_buckets=64)
    stored = sketch.to_dict()
    assert sketch.buckets <= 64 and len(stored["counts"]) <= 64 and sketch.collapsed > 0
    trusted_above = sketch.zero_count + stored["counts"][0]  # the lowest bucket holds every value folded into it
    checked = 0
    for q in QS:
        if math.ceil(q * len(values)) > trusted_above:
            exact = percentile(values, q)
            assert abs(sketch.quantile(q) - exact) <= 0.05 * exact * (1 + 1e-12)
            checked += 1
    assert checked >= 4  # p95, p99, p99.9, max
    other = QuantileSketch.from_values([1e-40, 1e-39], relative_accuracy=0.05, max_buckets=64)
    merged = sketch.copy().merge(other)
    assert merged.buckets <= 64 and merged.collapsed >= sketch.collapsed + 2
    assert merged.to_dict()["counts"][0] >= merged.collapsed


def test_sketch_rejects_bad_values_and_settings() -> None:
    sketch = QuantileSketch().add_many([1.0, 2.0])
    for bad in ([1.0, -0.5], [float("nan")], [float("inf"), 1.0]):
        with pytest.raises(ConfigError, match="finite values >= 0"):
            sketch.add_many(bad)
    with pytest.raises(ConfigError, match="numbers"):
        sketch.add_many(["a", "b"])  # type: ignore[list-item]
    assert sketch.count == 2  # nothing added by a refused call
    with pytest.raises(ConfigError, match="relative_accuracy"):
        QuantileSketch(relative_accuracy=0.0)
    with pytest.raises(ConfigError, match="max_buckets"):
        QuantileSketch(max_buckets=2)
    with pytest.raises(ConfigError, match="0.95 for p95"):
        sketch.quantile(95)


def test_latency_stats_from_a_sketch_say_their_error() -> None:
    rng = random.Random(11)
    durations = [rng.lognormvariate(-4.0, 0.4) for _ in range(10_000)]
    exact = LatencyStats.from_durations(durations)
    sketched = LatencyStats.from_sketch(QuantileSketch.from_values(durations))
    assert exact is not None and sketched is not None
    assert exact.relative_error == 0.0 and sketched.relative_error == 0.005
    assert (sketched.count, sketched.min_s, sketched.max_s) == (exact.count, exact.min_s, exact.max_s)
    assert sketched.mean_s == pytest.approx(exact.mean_s, rel=1e-12)
    for name in ("p50_s", "p95_s", "p99_s"):
        assert abs(getattr(sketched, name) - getattr(exact, name)) <= 0.005 * getattr(exact, name) * (1 + 1e-12)
    assert LatencyStats.from_sketch(QuantileSketch()) is None
    assert LatencyStats.from_dict(sketched.to_dict()) == sketched
