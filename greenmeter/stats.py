"""Statistics for comparing model variants over repeated runs: intervals, tests, the Pareto front.

All functions take plain sequences of floats (joules, seconds, accuracies: the unit is the caller's and
carries through unchanged) and return frozen records with ``to_dict``/``from_dict``.

* :func:`mean_ci`: the mean of repeats with a Student's t confidence interval.
* :func:`welch_test`: Welch's unequal-variance t-test of a variant against a baseline.
* :func:`paired_ratio_test`: a paired t-test of per-round ratios, for variants measured in the same rounds.
* :func:`energy_test`: one of those three by the name a comparison's ``significance`` setting gives;
  :func:`describe_test` names any test in words.
* :func:`bootstrap_test`: a percentile bootstrap of the same difference, for samples far from normal.
* :func:`mcnemar_exact`: McNemar's exact test of two 0/1 outcomes on the same samples (an accuracy change).
* :func:`paired_bootstrap`: a paired bootstrap over samples of any metric's change on the same samples.
* :func:`pareto_front`: which (metric, energy) points no other point beats on both.
* :func:`percentile`: nearest-rank percentile, the rule :class:`greenmeter.records.measurement.LatencyStats` uses.
* :class:`QuantileSketch`: the same percentiles of a stream of any length in bounded memory, each within a stated
  relative error (a DDSketch), mergeable; what a window of many steps keeps instead of every step's duration.

Differences are always **variant minus baseline**: a negative ``diff_mean`` of energies means the variant
uses less. scipy and numpy are imported inside the functions that need them, so ``import greenmeter``
stays light.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from greenmeter._checks import fraction, number, whole_number
from greenmeter._errors import ConfigError

__all__ = ["Interval", "QuantileSketch", "Significance", "bootstrap_test", "describe_test", "energy_test", "mcnemar_exact", "mean_ci",
           "paired_bootstrap", "paired_ratio_test", "pareto_front", "percentile", "welch_test"]


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval, in the unit of the values.

    Attributes:
        mean: the sample mean.
        low, high: the interval's bounds; ``None`` when ``n == 1`` (no spread can be estimated).
        n: the number of values.
        confidence: the interval's coverage, e.g. ``0.95``.
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    confidence: float

    @property
    def half_width(self) -> float | None:
        """Half the interval's width (the "±" figure), or ``None`` when there is no interval."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Interval:
        return cls(
            mean=float(data["mean"]),
            low=None if data.get("low") is None else float(data["low"]),
            high=None if data.get("high") is None else float(data["high"]),
            n=int(data["n"]),
            confidence=float(data["confidence"]),
        )


TestName = Literal["paired", "welch", "bootstrap", "mcnemar", "paired-bootstrap"]

#: Each test as reports name it.
TEST_NAMES = {"paired": "paired t-test of per-round ratios", "welch": "Welch's t-test",
              "bootstrap": "percentile bootstrap", "mcnemar": "McNemar's exact test",
              "paired-bootstrap": "paired bootstrap"}


def describe_test(test: str) -> str:
    """A test's name in words (``"welch"`` -> ``"Welch's t-test"``); unknown names as they are."""
    return TEST_NAMES.get(test, test)


@dataclass(frozen=True)
class Significance:
    """Whether a variant differs from the baseline: a test's p-value and the difference's interval.

    Attributes:
        test: ``"paired"`` (paired t-test of per-round ratios), ``"welch"`` (Welch's t-test), ``"bootstrap"``
            (percentile bootstrap), ``"mcnemar"`` (McNemar's exact test of paired 0/1 outcomes) or
            ``"paired-bootstrap"`` (a bootstrap over paired samples).
        p_value: the two-sided p-value; ``None`` when either side has fewer than 2 values.
        statistic: Welch's t (variant minus baseline); the paired test's t of the log ratios; for McNemar's
            test the number of discordant pairs; ``None`` for the bootstraps, for fewer than 2 values per side,
            and when both sides have zero variance (t would be 0/0 or infinite).
        diff_mean: mean(variant) - mean(baseline), in the unit of the values; for the paired ratio test, the
            geometric-mean ratio applied to the baseline's mean (:func:`paired_ratio_test`).
        diff_low, diff_high: the ``1 - alpha`` confidence interval of that difference (95% at the default
            ``alpha=0.05``); ``None`` when either side has fewer than 2 values.
        significant: ``p_value < alpha``; ``None`` when there is no p-value.
        alpha: the significance level.
    """

    test: TestName
    p_value: float | None
    statistic: float | None
    diff_mean: float
    diff_low: float | None
    diff_high: float | None
    significant: bool | None
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "p_value": self.p_value,
            "statistic": self.statistic,
            "diff_mean": self.diff_mean,
            "diff_low": self.diff_low,
            "diff_high": self.diff_high,
            "significant": self.significant,
            "alpha": self.alpha,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Significance:
        def opt(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        significant = data.get("significant")
        return cls(
            test=data["test"],
            p_value=opt("p_value"),
            statistic=opt("statistic"),
            diff_mean=float(data["diff_mean"]),
            diff_low=opt("diff_low"),
            diff_high=opt("diff_high"),
            significant=None if significant is None else bool(significant),
            alpha=float(data["alpha"]),
        )


# ----------------------------------------------------------------------------------------- checks


def _finite(values: Sequence[float], what: str) -> list[float]:
    """``values`` as a list of floats; raise ConfigError when empty or any is NaN or infinite."""
    if isinstance(values, (str, bytes)):
        raise ConfigError(f"{what} must be a sequence of numbers, not a string")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what} must be a sequence of numbers: {err}") from err
    if not out:
        raise ConfigError(f"{what} is empty: at least one value is needed")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"{what} holds {len(bad)} non-finite value(s) (e.g. {bad[0]}); drop failed runs first")
    return out


def _level(value: float, name: str) -> float:
    return number(name, value, low=0, high=1, low_open=True, high_open=True)


def _mean_var(values: list[float]) -> tuple[float, float]:
    """Mean and sample variance (ddof=1; 0 for a single value)."""
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, var


# ------------------------------------------------------------------------------------- functions


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with a Student's t confidence interval (sample standard deviation, n - 1 df).

    Args:
        values: repeated measurements (any unit; the interval is in the same unit).
        confidence: the interval's coverage, strictly between 0 and 1.

    Returns:
        An :class:`Interval`; with one value ``low`` and ``high`` are ``None``; with identical values the
        interval has zero width.

    Raises:
        ConfigError: ``values`` is empty or holds NaN or infinity; ``confidence`` is not in (0, 1).
    """
    data = _finite(values, "mean_ci values")
    confidence = _level(confidence, "confidence")
    n = len(data)
    mean, var = _mean_var(data)
    if n == 1:
        return Interval(mean, None, None, 1, confidence)
    from scipy.stats import t

    half = float(t.ppf((1.0 + confidence) / 2.0, n - 1)) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n, confidence)


def welch_test(baseline: Sequence[float], variant: Sequence[float], alpha: float = 0.05) -> Significance:
    """Welch's unequal-variance t-test of ``variant`` against ``baseline`` (two-sided).

    ``t = (mean_v - mean_b) / se`` with ``se = sqrt(var_v / n_v + var_b / n_b)`` (sample variances) and
    Welch-Satterthwaite degrees of freedom; the difference's interval is ``diff ± t_{1-alpha/2, df} * se``,
    so it excludes zero exactly when ``p < alpha``. Matches ``scipy.stats.ttest_ind(variant, baseline,
    equal_var=False)``.

    Degenerate cases:
        * fewer than 2 values on either side: ``p_value``, ``statistic``, ``significant`` and the interval
          are ``None`` (``diff_mean`` is still given).
        * zero variance on both sides: if the means are equal, ``p_value=1.0`` and not significant; if they
          differ, ``p_value=0.0`` and significant (identical repeats that differ are taken at face value).
          ``statistic`` is ``None`` and the interval has zero width at ``diff_mean``.

    Args:
        baseline: repeated measurements of the baseline.
        variant: repeated measurements of the variant, in the same unit as ``baseline``.
        alpha: significance level, in (0, 1).

    Raises:
        ConfigError: a side is empty or holds NaN or infinity; ``alpha`` is not in (0, 1).
    """
    a = _finite(baseline, "welch_test baseline")
    b = _finite(variant, "welch_test variant")
    alpha = _level(alpha, "alpha")
    mean_a, var_a = _mean_var(a)
    mean_b, var_b = _mean_var(b)
    diff = mean_b - mean_a
    if len(a) < 2 or len(b) < 2:
        return Significance("welch", None, None, diff, None, None, None, alpha)
    sa, sb = var_a / len(a), var_b / len(b)
    se = math.sqrt(sa + sb)
    if se == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
        return Significance("welch", p, None, diff, diff, diff, p < alpha, alpha)
    from scipy.stats import t

    df = (sa + sb) ** 2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    stat = diff / se
    p = min(1.0, float(2.0 * t.sf(abs(stat), df)))
    half = float(t.ppf(1.0 - alpha / 2.0, df)) * se
    return Significance("welch", p, stat, diff, diff - half, diff + half, p < alpha, alpha)


def paired_ratio_test(baseline: Sequence[float], variant: Sequence[float], alpha: float = 0.05) -> Significance:
    """A paired t-test of per-round energy ratios: the variant against the baseline measured in the same rounds.

    ``compare`` measures every variant once per round, in a shuffled order, so the ``i``-th values of both
    sides were taken minutes apart on a machine in the same state. A load that slows a whole round (another
    process, a frequency change) moves both sides by about the same factor; pairing by round removes that
    factor, which Welch's test, treating the two sides as independent samples, cannot.

    The test is a one-sample t-test of ``d_i = ln(variant_i / baseline_i)`` against 0 (``n - 1`` degrees of
    freedom); ``exp(mean(d))`` is the geometric-mean ratio and ``exp(mean(d) ± t * se)`` its interval. The
    difference is reported in the values' unit as the ratio applied to the baseline's mean:
    ``diff_mean = mean(baseline) * (exp(mean(d)) - 1)`` and each bound ``mean(baseline) * (exp(bound) - 1)``,
    so the interval excludes zero exactly when ``p < alpha`` and its sign always agrees with ``diff_mean``. Where a value is not positive (a ratio has no
    logarithm), the test runs on the differences ``variant_i - baseline_i`` instead, and its interval is
    theirs.

    Degenerate cases as :func:`welch_test`: fewer than 2 pairs gives ``None`` for the p-value, statistic,
    verdict and interval; pairs whose ratios (or differences) are all equal give ``p_value=1.0`` when that
    ratio is 1 (difference 0) and ``0.0`` otherwise, with a zero-width interval.

    Args:
        baseline: one value per round for the baseline.
        variant: one value per round for the variant, the rounds in the same order as ``baseline``.
        alpha: significance level, in (0, 1).

    Returns:
        A :class:`Significance` with ``test="paired"`` and ``statistic`` the t of the log ratios (of the
        differences, where a value is not positive).

    Raises:
        ConfigError: a side is empty or holds NaN or infinity; the sides have different lengths (rounds that
            do not pair); ``alpha`` is not in (0, 1).
    """
    a = _finite(baseline, "paired_ratio_test baseline")
    b = _finite(variant, "paired_ratio_test variant")
    alpha = _level(alpha, "alpha")
    if len(a) != len(b):
        raise ConfigError(f"paired_ratio_test needs one value per round on both sides: the baseline has {len(a)} "
                          f"and the variant {len(b)}")
    mean_a, _ = _mean_var(a)
    ratios = all(x > 0 for x in a + b)
    d = [math.log(y / x) for x, y in zip(a, b)] if ratios else [y - x for x, y in zip(a, b)]
    mean_d, var_d = _mean_var(d)

    def scale(value: float) -> float:
        return mean_a * math.expm1(value) if ratios else value

    diff = scale(mean_d)
    if len(a) < 2:
        return Significance("paired", None, None, diff, None, None, None, alpha)
    se = math.sqrt(var_d / len(d))
    if se == 0.0:
        p = 1.0 if mean_d == 0.0 else 0.0
        return Significance("paired", p, None, diff, diff, diff, p < alpha, alpha)
    from scipy.stats import t

    stat = mean_d / se
    df = len(d) - 1
    p = min(1.0, float(2.0 * t.sf(abs(stat), df)))
    half = float(t.ppf(1.0 - alpha / 2.0, df)) * se
    return Significance("paired", p, stat, diff, scale(mean_d - half), scale(mean_d + half), p < alpha, alpha)


def energy_test(name: str, baseline: Sequence[float], variant: Sequence[float], seed: int = 0) -> Significance:
    """A comparison's energy test ``name`` (``"paired"``, ``"welch"`` or ``"bootstrap"``) of two variants' energies.

    The values are one energy per sample per round, in round order (``VariantResult.energy_values_j``). The
    paired test needs the same rounds on both sides; where their numbers differ (never in a comparison
    ``compare`` made) Welch's test is used.
    """
    if name == "bootstrap":
        return bootstrap_test(baseline, variant, seed=seed)
    if name == "paired" and len(baseline) == len(variant):
        return paired_ratio_test(baseline, variant)
    return welch_test(baseline, variant)


def bootstrap_test(
    baseline: Sequence[float], variant: Sequence[float], n_resamples: int = 10_000, alpha: float = 0.05,
    seed: int = 0,
) -> Significance:
    """Percentile bootstrap of mean(variant) - mean(baseline), with a two-sided p-value.

    Each side is resampled with replacement on its own, ``n_resamples`` times (numpy's PCG64 seeded with
    ``seed``, so the result is the same on every run). The interval is the ``alpha/2`` and
    ``1 - alpha/2`` percentiles of the resampled differences. The p-value inverts that percentile
    interval: ``p = min(1, 2 * min(k_le + 1, k_ge + 1) / (n_resamples + 1))`` where ``k_le`` and ``k_ge``
    count resampled differences ``<= 0`` and ``>= 0``; it is never exactly 0, and it is 1 when every
    resample gives the same zero difference. With very few repeats (< 5 a side) the bootstrap
    understates the spread; prefer :func:`welch_test` there.

    Args:
        baseline: repeated measurements of the baseline.
        variant: repeated measurements of the variant, in the same unit as ``baseline``.
        n_resamples: bootstrap resamples (>= 100).
        alpha: significance level, in (0, 1).
        seed: the random generator's seed.

    Returns:
        A :class:`Significance` with ``test="bootstrap"`` and ``statistic=None``; fewer than 2 values on
        either side give ``p_value``, ``significant`` and the interval ``None``.

    Raises:
        ConfigError: a side is empty or holds NaN or infinity; a bad ``n_resamples`` or ``alpha``.
    """
    a = _finite(baseline, "bootstrap_test baseline")
    b = _finite(variant, "bootstrap_test variant")
    alpha = _level(alpha, "alpha")
    n_resamples = whole_number("n_resamples", n_resamples, minimum=100)
    diff = math.fsum(b) / len(b) - math.fsum(a) / len(a)
    if len(a) < 2 or len(b) < 2:
        return Significance("bootstrap", None, None, diff, None, None, None, alpha)
    import numpy as np

    rng = np.random.default_rng(seed)
    diffs = _resampled_means(np.asarray(b), n_resamples, rng) - _resampled_means(np.asarray(a), n_resamples, rng)
    return _percentile_verdict("bootstrap", diffs, diff, alpha)


def _percentile_verdict(test: TestName, diffs: Any, diff: float, alpha: float) -> Significance:
    """A bootstrap's verdict from its resampled differences: the percentile interval and the p-value that
    inverts it, ``min(1, 2 * min(k_le + 1, k_ge + 1) / (R + 1))``."""
    import numpy as np

    k_le, k_ge = int(np.count_nonzero(diffs <= 0.0)), int(np.count_nonzero(diffs >= 0.0))
    p = min(1.0, 2.0 * (min(k_le, k_ge) + 1) / (len(diffs) + 1))
    low, high = np.quantile(diffs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Significance(test, p, None, diff, float(low), float(high), p < alpha, alpha)


def _resampled_means(values: Any, n_resamples: int, rng: Any) -> Any:
    """Means of ``n_resamples`` resamples with replacement, drawn in chunks to bound memory."""
    import numpy as np

    n = len(values)
    chunk = max(1, 1_000_000 // n)
    parts = []
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        parts.append(values[rng.integers(0, n, size=(rows, n))].mean(axis=1))
    return np.concatenate(parts)


def _paired_arrays(baseline: Any, variant: Any, what: str) -> tuple[Any, Any]:
    """Both sides as float arrays of the same, non-zero length, every value finite."""
    import numpy as np

    out = []
    for side, values in (("baseline", baseline), ("variant", variant)):
        if isinstance(values, (str, bytes)):
            raise ConfigError(f"{what} {side} must be a sequence of numbers, not a string")
        try:
            array = np.asarray(values, dtype=float).reshape(-1)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{what} {side} must be a sequence of numbers: {err}") from err
        if array.size == 0:
            raise ConfigError(f"{what} {side} is empty: at least one sample is needed")
        if not np.all(np.isfinite(array)):
            raise ConfigError(f"{what} {side} holds non-finite values; drop failed samples first")
        out.append(array)
    if len(out[0]) != len(out[1]):
        raise ConfigError(f"{what} needs one value per sample on both sides, in the same order: the baseline has "
                          f"{len(out[0])} and the variant {len(out[1])}")
    return out[0], out[1]


def mcnemar_exact(baseline: Sequence[float], variant: Sequence[float], alpha: float = 0.05) -> Significance:
    """McNemar's exact test of two 0/1 outcomes on the same samples (two-sided), with an exact interval.

    ``baseline[i]`` and ``variant[i]`` are the outcomes (1 = right, 0 = wrong) of the two models on the
    same sample ``i``. Only the discordant pairs carry information: ``b`` samples the baseline got right
    and the variant wrong, ``c`` the other way round, ``n_d = b + c``. Under the null hypothesis (the
    same accuracy) ``c ~ Binomial(n_d, 1/2)``, and the exact two-sided p-value is
    ``min(1, 2 * P(X <= min(b, c)))``. The difference of means is ``(c - b) / n``; its interval is the
    Clopper-Pearson interval ``[pL, pU]`` of ``c / n_d`` mapped through ``n_d / n * (2p - 1)``, conditional
    on ``n_d`` as the test is, so it excludes zero exactly when ``p < alpha``. With no discordant pair
    the p-value is 1 and the interval is ``[0, 0]``.

    Args:
        baseline: one 0/1 (or bool) outcome per sample for the baseline.
        variant: one 0/1 (or bool) outcome per sample for the variant, the same samples in the same order.
        alpha: significance level, in (0, 1); the interval covers ``1 - alpha``.

    Returns:
        A :class:`Significance` with ``test="mcnemar"``, ``statistic`` the number of discordant pairs and
        ``diff_mean`` the change in the fraction right, variant minus baseline.

    Raises:
        ConfigError: an empty side, sides of different lengths, or an outcome other than 0 or 1; a bad ``alpha``.
    """
    a, b = _paired_arrays(baseline, variant, "mcnemar_exact")
    alpha = _level(alpha, "alpha")
    import numpy as np

    if not (np.all((a == 0) | (a == 1)) and np.all((b == 0) | (b == 1))):
        raise ConfigError("mcnemar_exact needs 0/1 outcomes (right or wrong per sample); use paired_bootstrap for "
                          "other per-sample values")
    n = len(a)
    losses = int(np.count_nonzero((a == 1) & (b == 0)))
    gains = int(np.count_nonzero((a == 0) & (b == 1)))
    n_d = losses + gains
    diff = (gains - losses) / n
    if n_d == 0:
        return Significance("mcnemar", 1.0, 0.0, 0.0, 0.0, 0.0, False, alpha)
    from scipy.stats import beta, binom

    p = min(1.0, float(2.0 * binom.cdf(min(losses, gains), n_d, 0.5)))
    low_p = 0.0 if gains == 0 else float(beta.ppf(alpha / 2.0, gains, n_d - gains + 1))
    high_p = 1.0 if gains == n_d else float(beta.ppf(1.0 - alpha / 2.0, gains + 1, n_d - gains))
    scale = n_d / n
    return Significance("mcnemar", p, float(n_d), diff, scale * (2 * low_p - 1), scale * (2 * high_p - 1),
                        p < alpha, alpha)


def paired_bootstrap(
    baseline: Any, variant: Any, *, statistic: Callable[[Any, Any], float] | None = None, n_resamples: int = 2000,
    alpha: float = 0.05, seed: int = 0,
) -> Significance:
    """A paired percentile bootstrap of statistic(variant) - statistic(baseline) over the same samples.

    Each resample draws ``n`` sample indices with replacement (numpy's PCG64 seeded with ``seed``) and uses
    the same indices on both sides, so the pairing of samples is kept. The interval and the two-sided
    p-value follow the rule of :func:`bootstrap_test`: percentiles ``alpha/2`` and ``1 - alpha/2`` of the
    resampled differences, and ``p = min(1, 2 * min(k_le + 1, k_ge + 1) / (n_resamples + 1))``.

    Args:
        baseline: without ``statistic``, one number per sample (the statistic is their mean). With
            ``statistic``, anything it reads (for instance model outputs).
        variant: the same for the variant, with the same ``len`` as ``baseline``.
        statistic: ``statistic(side, indices) -> float`` on ``baseline`` or ``variant`` at the numpy index
            array ``indices`` (for a metric over a data set: ``lambda out, i: metric(out[i], targets[i])``).
            It is called ``2 * (n_resamples + 1)`` times.
        n_resamples: bootstrap resamples (>= 100).
        alpha: significance level, in (0, 1).
        seed: the random generator's seed.

    Returns:
        A :class:`Significance` with ``test="paired-bootstrap"`` and ``statistic=None``; with a single
        sample the p-value, ``significant`` and the interval are ``None``.

    Raises:
        ConfigError: empty sides or sides of different lengths, non-finite values or statistics, a bad
            ``n_resamples`` or ``alpha``.
    """
    import numpy as np

    alpha = _level(alpha, "alpha")
    n_resamples = whole_number("n_resamples", n_resamples, minimum=100)
    if statistic is None:
        a, b = _paired_arrays(baseline, variant, "paired_bootstrap")
        per_sample = b - a
        n = len(per_sample)
        diff = float(per_sample.mean())
    else:
        n = len(baseline)
        if n == 0 or len(variant) != n:
            raise ConfigError(f"paired_bootstrap needs the same samples on both sides: the baseline has {n} and the "
                              f"variant {len(variant)}")
        everything = np.arange(n)
        diff = _statistic(statistic, variant, everything) - _statistic(statistic, baseline, everything)
    if n < 2:
        return Significance("paired-bootstrap", None, None, diff, None, None, None, alpha)
    rng = np.random.default_rng(seed)
    if statistic is None:
        diffs = _resampled_means(per_sample, n_resamples, rng)
    else:
        diffs = np.empty(n_resamples)
        for i in range(n_resamples):
            idx = rng.integers(0, n, size=n)
            diffs[i] = _statistic(statistic, variant, idx) - _statistic(statistic, baseline, idx)
    return _percentile_verdict("paired-bootstrap", diffs, diff, alpha)


def _statistic(statistic: Callable[[Any, Any], float], side: Any, idx: Any) -> float:
    value = float(statistic(side, idx))
    if not math.isfinite(value):
        raise ConfigError(f"paired_bootstrap: the statistic gave {value} on a resample; it must be a finite number")
    return value


def pareto_front(
    points: Sequence[tuple[float, float]], *, maximize_first: bool = True, minimize_second: bool = True,
) -> list[bool]:
    """Which points are on the Pareto front (no other point is at least as good on both and better on one).

    By default the first coordinate is a quality metric (higher is better, e.g. accuracy) and the second
    a cost (lower is better, e.g. joules per sample). Equal points do not dominate each other, so
    duplicates on the front are all on it. A point with NaN in either coordinate is never on the front
    and dominates nothing. O(n²), for the handful of variants a comparison holds.

    Args:
        points: ``(first, second)`` pairs.
        maximize_first: higher first coordinate is better (``False``: lower is).
        minimize_second: lower second coordinate is better (``False``: higher is).

    Returns:
        One bool per point, in order: ``True`` where the point is non-dominated.

    Raises:
        ConfigError: a point is not a pair of numbers.
    """
    keyed: list[tuple[float, float] | None] = []
    for i, point in enumerate(points):
        try:
            first, second = (float(v) for v in point)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"pareto_front: point {i} is not a pair of numbers: {point!r}") from err
        if math.isnan(first) or math.isnan(second):
            keyed.append(None)
        else:  # both as "higher is better"
            keyed.append((first if maximize_first else -first, -second if minimize_second else second))

    def dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
        return p[0] >= q[0] and p[1] >= q[1] and (p[0] > q[0] or p[1] > q[1])

    valid = [k for k in keyed if k is not None]
    return [k is not None and not any(dominates(other, k) for other in valid) for k in keyed]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the ``ceil(q * n)``-th smallest value (the smallest for ``q = 0``).

    The same rule as :meth:`greenmeter.records.measurement.LatencyStats.from_durations`, so p95 here equals the p95
    in a measurement. Always returns one of ``values``, no interpolation.

    Args:
        values: the values, any order and unit.
        q: the fraction, in [0, 1] (``0.95`` for p95, not 95).

    Raises:
        ConfigError: ``values`` is empty or holds NaN or infinity; ``q`` is outside [0, 1].
    """
    data = sorted(_finite(values, "percentile values"))
    q = fraction("percentile q", q, note="0.95 for p95")
    return data[max(0, math.ceil(q * len(data)) - 1)]


# ------------------------------------------------------------------------------------ the sketch


class QuantileSketch:
    """Nearest-rank quantiles of a stream of values >= 0, in bounded memory, within a stated relative error.

    A DDSketch (Masson, Rim and Lee, VLDB 2019) with the nearest-rank rule of :func:`percentile`. A value
    ``x > 0`` is counted in the logarithmic bucket ``k = ceil(log(x) / log(gamma))``, with
    ``gamma = (1 + a) / (1 - a)`` for the relative accuracy ``a``: bucket ``k`` holds the values in
    ``(gamma**(k - 1), gamma**k]`` and stands for ``2 * gamma**k / (gamma + 1)``, which is within ``a * x`` of
    every ``x`` in it. Zeros have a bucket of their own (and read back exactly). :meth:`quantile` returns the
    representative of the bucket that holds the ``ceil(q * n)``-th smallest value, clamped to the exact
    ``[min, max]``.

    **Guarantee**: ``|quantile(q) - percentile(values, q)| <= a * percentile(values, q)`` for every ``q`` (up to
    floating-point rounding, ~1e-15 relative), whatever the distribution and however many values: a
    deterministic bound, not a probabilistic one. ``count``, ``sum``, ``min`` and ``max`` are exact (``sum`` up
    to float addition). :meth:`merge` adds bucket counts, so the merge of two sketches is the sketch of the
    union and keeps the same guarantee.

    Memory is bounded by ``max_buckets``: the buckets span at most that many consecutive keys, a ratio of
    ``gamma**max_buckets`` between the largest and the smallest positive value (about 10**17.8 at the
    defaults). Values further below the largest are folded into the lowest bucket, which then reads high;
    ``collapsed`` counts them. The guarantee holds for every ``q`` whose rank ``ceil(q * n)`` is above
    ``zero_count`` plus the lowest bucket's count while ``collapsed > 0``: the upper quantiles, which latency
    reports use; with ``collapsed == 0`` (the usual case) it holds for all.

    The sketch is mutable (:meth:`add`, :meth:`add_many` and :meth:`merge` work in place); a record holding one
    leaves it alone. Two sketches are equal when their :meth:`to_dict` forms are.

    Args:
        relative_accuracy: ``a``, in (0, 0.5]; 0.005 (0.5%) keeps ~230 buckets per decade of values.
        max_buckets: the most buckets kept, >= 16.

    Raises:
        ConfigError: ``relative_accuracy`` or ``max_buckets`` out of range.
    """

    __slots__ = ("relative_accuracy", "max_buckets", "_gamma", "_inv_log_gamma", "_counts", "_zero", "_count",
                 "_sum", "_min", "_max", "_collapsed")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, relative_accuracy: float = 0.005, max_buckets: int = 4096) -> None:
        self.relative_accuracy = number("relative_accuracy", relative_accuracy, low=0, high=0.5, low_open=True)
        self.max_buckets = whole_number("max_buckets", max_buckets, minimum=16)
        self._gamma = (1.0 + self.relative_accuracy) / (1.0 - self.relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._counts: dict[int, int] = {}
        self._zero = 0
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._collapsed = 0

    # Reading -------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """How many values were added."""
        return self._count

    @property
    def sum(self) -> float:
        """The sum of the values (0.0 when empty)."""
        return self._sum

    @property
    def mean(self) -> float | None:
        """The mean of the values; ``None`` when empty."""
        return self._sum / self._count if self._count else None

    @property
    def min(self) -> float | None:
        """The smallest value, exactly; ``None`` when empty."""
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        """The largest value, exactly; ``None`` when empty."""
        return self._max if self._count else None

    @property
    def zero_count(self) -> int:
        """How many of the values were 0."""
        return self._zero

    @property
    def collapsed(self) -> int:
        """Values moved up into the lowest bucket to keep within ``max_buckets`` (0: none; see the class)."""
        return self._collapsed

    @property
    def buckets(self) -> int:
        """How many buckets are in use (memory and stored size grow with this, never past ``max_buckets``)."""
        return len(self._counts)

    def quantile(self, q: float) -> float:
        """The nearest-rank ``q`` quantile, within ``relative_accuracy`` of the exact one (see the class).

        Args:
            q: the fraction, in [0, 1] (``0.95`` for p95).

        Returns:
            The estimate, in the unit of the values.

        Raises:
            ConfigError: ``q`` outside [0, 1], or the sketch is empty.
        """
        q = fraction("quantile q", q, note="0.95 for p95")
        if not self._count:
            raise ConfigError("the quantile sketch is empty: add values before asking for a quantile")
        rank = max(1, math.ceil(q * self._count))
        seen = self._zero
        if rank <= seen:
            return 0.0
        if rank == 1 or rank == self._count:  # the exact smallest and largest are kept
            return self._min if rank == 1 else self._max
        counts = self._counts
        for key in sorted(counts):
            seen += counts[key]
            if seen >= rank:
                return min(max(2.0 * self._gamma ** key / (self._gamma + 1.0), self._min), self._max)
        return self._max  # not reached: the counts add up to count

    # Adding --------------------------------------------------------------------------------
    def add(self, value: float) -> QuantileSketch:
        """Add one value (>= 0, finite), in place; returns the sketch.

        Raises:
            ConfigError: a negative, NaN or infinite value.
        """
        return self.add_many((value,))

    def add_many(self, values: Iterable[float]) -> QuantileSketch:
        """Add values (each >= 0 and finite), in place; returns the sketch. About 0.1 us a value.

        Raises:
            ConfigError: a value is not a number, is negative, NaN or infinite (nothing is added then).
        """
        data = sorted(values)  # then one bucket at a time: a log and a bisection per bucket, not per value
        if not data:
            return self
        try:
            total = sum(data)
        except TypeError as err:
            raise ConfigError(f"a quantile sketch takes numbers: {err}") from err
        if not math.isfinite(total) or data[0] < 0:
            bad = next(v for v in data if not 0 <= v < math.inf)
            raise ConfigError(f"a quantile sketch takes finite values >= 0, not {bad!r}")
        log, ceil, inv, gamma = math.log, math.ceil, self._inv_log_gamma, self._gamma
        counts = self._counts
        n = len(data)
        i = zeros = bisect_right(data, 0.0)
        while i < n:
            key = ceil(log(data[i]) * inv)
            j = bisect_right(data, gamma ** key, i)
            if j == i:  # data[i] a rounding error above its bucket's bound: it is the bound
                j = i + 1
            counts[key] = counts.get(key, 0) + j - i
            i = j
        self._zero += zeros
        self._count += n
        self._sum += total
        self._min = min(self._min, data[0])
        self._max = max(self._max, data[-1])
        self._bound()
        return self

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Add every value of ``other`` to this sketch, in place (``other`` is unchanged); returns this sketch.

        The result is the sketch of the union of both streams, with the same guarantee.

        Raises:
            ConfigError: ``other`` is not a QuantileSketch, or has another relative accuracy.
        """
        if not isinstance(other, QuantileSketch):
            raise ConfigError(f"can only merge a QuantileSketch, not {type(other).__name__}")
        if other.relative_accuracy != self.relative_accuracy:
            raise ConfigError(f"cannot merge quantile sketches of relative accuracy {self.relative_accuracy} and "
                              f"{other.relative_accuracy}: their buckets differ")
        if not other._count:
            return self
        misplaced: dict[int, int] = {}  # where each side's collapsed values sit: its lowest bucket
        for side in (self, other):
            if side._collapsed:
                low = min(side._counts)
                misplaced[low] = misplaced.get(low, 0) + side._collapsed
        counts = self._counts
        for key, n in other._counts.items():
            counts[key] = counts.get(key, 0) + n
        self._zero += other._zero
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        if misplaced:  # keep every value that reads high in the one lowest bucket
            self._collapse_below(max(misplaced), misplaced)
        self._bound()
        return self

    def copy(self) -> QuantileSketch:
        """An independent copy."""
        return QuantileSketch(self.relative_accuracy, self.max_buckets).merge(self)

    @classmethod
    def from_values(cls, values: Iterable[float], relative_accuracy: float = 0.005,
                    max_buckets: int = 4096) -> QuantileSketch:
        """A sketch of ``values`` (see :meth:`add_many` for what it raises)."""
        return cls(relative_accuracy, max_buckets).add_many(values)

    def _bound(self) -> None:
        counts = self._counts
        if len(counts) > 1:
            floor = max(counts) - self.max_buckets + 1
            if min(counts) < floor:  # the collapsed values, if any, are in the lowest bucket: below the floor
                self._collapse_below(floor, {})

    def _collapse_below(self, floor: int, misplaced: Mapping[int, int]) -> None:
        """Move the buckets below ``floor`` into it. ``misplaced``: collapsed values by bucket, all <= floor."""
        counts = self._counts
        moved = sum(counts.pop(key) for key in [key for key in counts if key < floor])
        if moved or floor in counts:
            counts[floor] = counts.get(floor, 0) + moved
        self._collapsed = moved + misplaced.get(floor, 0)

    # Records -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the settings, the exact figures and the bucket counts from the lowest key on."""
        keys = sorted(self._counts)
        low = keys[0] if keys else 0
        dense = [0] * (keys[-1] - low + 1) if keys else []
        for key in keys:
            dense[key - low] = self._counts[key]
        return {
            "relative_accuracy": self.relative_accuracy, "max_buckets": self.max_buckets, "count": self._count,
            "sum": self._sum, "min": self.min, "max": self.max, "zero_count": self._zero,
            "collapsed": self._collapsed, "offset": low, "counts": dense,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantileSketch:
        """The sketch :meth:`to_dict` wrote.

        Raises:
            ConfigError: the counts do not add up to the count, or a setting is out of range.
        """
        sketch = cls(data["relative_accuracy"], data.get("max_buckets", 4096))
        offset = int(data.get("offset", 0))
        sketch._counts = {offset + i: int(n) for i, n in enumerate(data.get("counts", ())) if n}
        sketch._zero = int(data.get("zero_count", 0))
        sketch._count = int(data["count"])
        sketch._sum = float(data.get("sum", 0.0))
        sketch._collapsed = int(data.get("collapsed", 0))
        if sketch._count:
            sketch._min, sketch._max = float(data["min"]), float(data["max"])
        if sum(sketch._counts.values()) + sketch._zero != sketch._count:
            raise ConfigError(f"not a quantile sketch: its bucket counts do not add up to its count {sketch._count}")
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"QuantileSketch(count={self._count}, buckets={len(self._counts)}, "
                f"relative_accuracy={self.relative_accuracy})")
