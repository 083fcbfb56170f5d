"""Statistics that say whether a difference between two policies is real: pure functions on arrays.

One home for the tests every comparison in papo uses (the mini reproduction's seeds, `papo eval
--compare`'s questions). Built on scipy/numpy, never hand-written distributions:

* `paired_bootstrap_ci`: the mean of paired differences ``d_i = b_i - a_i`` with a seeded
  percentile-bootstrap confidence interval (``scipy.stats.bootstrap`` resampling the pairs);
* `paired_t_test`: the two-sided paired t-test over the same pairs (``scipy.stats.ttest_rel``);
* `mcnemar_exact`: McNemar's exact test on paired 0/1 outcomes (binomial test on the discordant pairs);
* `benjamini_hochberg`: q-values across several comparisons (``scipy.stats.false_discovery_control``);
* `stratified_bootstrap_ci`: the mean over strata (benchmarks) of the mean paired difference, each stratum
  resampled on its own (``scipy.stats.bootstrap`` over several samples);
* `compare_benchmarks`: all of the above per benchmark and overall, for two evaluations of the same questions.

A result is "inside the noise" when its confidence interval contains 0; it counts as outside the noise
(`PairedComparison.significant`) only when the paired t-test agrees too (few pairs make the percentile
bootstrap optimistic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "PairedComparison",
    "paired_bootstrap_ci",
    "paired_t_test",
    "compare_paired",
    "mcnemar_exact",
    "benjamini_hochberg",
    "stratified_bootstrap_ci",
    "majority_correct",
    "compare_benchmarks",
    "seed_spread",
]


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(
            f"paired samples must be 1-D and the same length, got {a_arr.shape} and {b_arr.shape}"
        )
    if a_arr.size == 0:
        raise ValueError("paired samples are empty")
    return b_arr - a_arr


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean paired difference ``mean(b - a)`` and its percentile-bootstrap CI.

    Args:
        a, b: shape ``(n,)``, paired measurements (pair ``i`` = seed ``i``, or question ``i``).
        confidence: the CI level (0.95: the 2.5th and 97.5th percentiles of the resampled means).
        n_resamples: bootstrap replicates; `seed` makes them reproducible.

    Returns ``(mean, low, high)``. With one pair, or all differences equal, the interval is the
    single value (there is no spread to resample).
    """
    from scipy import stats

    diffs = _paired(a, b)
    mean = float(diffs.mean())
    if np.isnan(mean):  # a metric not measured on some pair
        return mean, mean, mean
    if diffs.size < 2 or np.all(diffs == diffs[0]):
        return mean, mean, mean
    result = stats.bootstrap(
        (diffs,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test that ``mean(b - a) == 0``; nan with < 2 pairs or no spread."""
    from scipy import stats

    diffs = _paired(a, b)
    if diffs.size < 2 or np.isnan(diffs).any() or np.all(diffs == diffs[0]):
        return math.nan
    return float(stats.ttest_rel(b, a).pvalue)


@dataclass(frozen=True)
class PairedComparison:
    """``b`` against ``a`` over paired samples: mean difference, bootstrap CI, paired-test p-value."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float  # two-sided, of `test`
    test: str = "paired t-test"  # what p_value comes from (per-question comparisons: McNemar's exact test)

    @property
    def ci_excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def significant(self) -> bool:
        """True when the CI excludes 0 *and* the test agrees (p < 1 - confidence).

        With few pairs (5 seeds) the percentile bootstrap is too narrow; requiring the t-test too keeps a
        "gain" from resting on that optimism alone. Without a p-value (no spread) the CI decides.
        """
        if math.isnan(self.p_value):
            return self.ci_excludes_zero
        return self.ci_excludes_zero and self.p_value < 1 - self.confidence

    def verdict(self) -> str:
        """One plain sentence for reports."""
        if math.isnan(self.mean_diff):
            return "not measured on every pair"
        if self.n < 2:
            return "one pair only: no estimate of the noise"
        if not self.ci_excludes_zero:
            return f"inside the noise ({self.confidence:.0%} CI contains 0)"
        if not self.significant:
            return (
                f"not established (the bootstrap CI excludes 0 but the {self.test} gives p = {self.p_value:.3f} "
                f"over {self.n} pairs)"
            )
        return f"{'gain' if self.mean_diff > 0 else 'loss'} outside the noise ({self.confidence:.0%} CI excludes 0)"

    def to_dict(self) -> dict:
        return asdict(self) | {"significant": self.significant, "verdict": self.verdict()}


def compare_paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """`paired_bootstrap_ci` and `paired_t_test` of ``b - a`` in one record."""
    mean, low, high = paired_bootstrap_ci(a, b, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return PairedComparison(
        n=len(a),
        mean_a=float(np.mean(a)),
        mean_b=float(np.mean(b)),
        mean_diff=mean,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_value=paired_t_test(a, b),
    )


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """McNemar's exact two-sided p-value for paired 0/1 outcomes (shape ``(n,)`` each).

    Only the discordant pairs count: ``n01`` (a wrong, b right) against ``n10`` (a right, b wrong);
    under the null each discordant pair is a fair coin, so p = binomtest(n01, n01 + n10, 0.5). 1.0
    when there are no discordant pairs.
    """
    from scipy import stats

    a_arr = np.asarray(a_correct, dtype=bool)
    b_arr = np.asarray(b_correct, dtype=bool)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(
            f"paired outcomes must be 1-D and the same length, got {a_arr.shape} and {b_arr.shape}"
        )
    n01 = int(np.sum(~a_arr & b_arr))
    n10 = int(np.sum(a_arr & ~b_arr))
    if n01 + n10 == 0:
        return 1.0
    return float(stats.binomtest(n01, n01 + n10, 0.5).pvalue)


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values (same order as `p_values`); nan p-values stay nan and are not counted."""
    from scipy import stats

    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(p[finite], method="bh")
    return [float(x) for x in q]


def stratified_bootstrap_ci(
    pairs: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``mean over strata s of mean(b_s - a_s)`` and its percentile-bootstrap CI, resampling within strata.

    Each stratum (a benchmark: its questions, paired) is resampled independently, so the statistic keeps
    Table 1's definition of Overall (a mean of per-benchmark accuracies). One stratum reduces to
    `paired_bootstrap_ci`.
    """
    from scipy import stats

    diffs = [_paired(a, b) for a, b in pairs]
    if not diffs:
        raise ValueError("no strata given")
    mean = float(np.mean([d.mean() for d in diffs]))
    if len(diffs) == 1:
        return paired_bootstrap_ci(*pairs[0], confidence=confidence, n_resamples=n_resamples, seed=seed)
    if all(d.size < 2 or np.all(d == d[0]) for d in diffs):
        return mean, mean, mean

    def statistic(*samples, axis=-1):
        return np.mean([np.mean(sample, axis=axis) for sample in samples], axis=0)

    result = stats.bootstrap(
        tuple(diffs),
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        batch=500,  # 500 replicates at a time: memory ~ 500 x all questions, not 10,000 x
        random_state=np.random.default_rng(seed),
    )
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def majority_correct(correct: Sequence[Sequence[bool]]) -> np.ndarray:
    """Per question, whether a strict majority of its k samples is correct (shape ``(n,)``; k/2 is not)."""
    return np.array([2 * sum(bool(c) for c in samples) > len(samples) for samples in correct], dtype=bool)


def compare_benchmarks(
    benchmarks: dict[str, dict[str, Sequence]],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Candidate vs baseline on the same questions, per benchmark and overall, in percentage points.

    Args:
        benchmarks: ``{name: {"baseline": per-question accuracy in [0, 1] (mean of its k samples),
            "candidate": the same questions' accuracies, "baseline_correct": per-question lists of per-sample
            correctness, "candidate_correct": ...}}``, questions in the same order in both runs.

    Per benchmark: ``diff`` = 100·mean(candidate − baseline) with its paired-bootstrap CI (questions
    resampled, `n_resamples` replicates, `seed`); ``mcnemar_p``, McNemar's exact test on per-question
    correctness by **strict majority over the k samples**; ``q_value``, Benjamini-Hochberg across the
    benchmarks; ``verdict``. Overall: the mean of the per-benchmark differences (Table 1's Overall) with a
    bootstrap CI that resamples questions within each benchmark, and McNemar's test over all questions.
    """
    rows: dict[str, dict] = {}
    for name, data in benchmarks.items():
        a, b = data["baseline"], data["candidate"]
        mean, low, high = paired_bootstrap_ci(a, b, confidence=confidence, n_resamples=n_resamples, seed=seed)
        p = mcnemar_exact(
            majority_correct(data["baseline_correct"]), majority_correct(data["candidate_correct"])
        )
        rows[name] = _comparison_row(len(a), mean, low, high, p, confidence)
    q_values = benjamini_hochberg([row["mcnemar_p"] for row in rows.values()])
    for row, q in zip(rows.values(), q_values, strict=True):
        row["q_value"] = q
    overall = None
    if rows:
        pairs = [(data["baseline"], data["candidate"]) for data in benchmarks.values()]
        mean, low, high = stratified_bootstrap_ci(
            pairs, confidence=confidence, n_resamples=n_resamples, seed=seed
        )
        a_major = np.concatenate([majority_correct(d["baseline_correct"]) for d in benchmarks.values()])
        b_major = np.concatenate([majority_correct(d["candidate_correct"]) for d in benchmarks.values()])
        overall = _comparison_row(len(a_major), mean, low, high, mcnemar_exact(a_major, b_major), confidence)
    return {
        "benchmarks": rows,
        "overall": overall,
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
        "units": "percentage points",
        "mcnemar_on": "per-question correctness by strict majority of the k samples",
        "q_values": "Benjamini-Hochberg over the benchmarks' McNemar p-values",
    }


def _comparison_row(n: int, mean: float, low: float, high: float, p: float, confidence: float) -> dict:
    """A per-question comparison's row, judged by the one rule (`PairedComparison`): outside the noise only
    when the bootstrap CI excludes 0 and McNemar's test agrees."""
    judged = PairedComparison(n, math.nan, math.nan, mean, low, high, confidence, p, test="McNemar test")
    return {
        "n": n,
        "diff": 100 * mean,
        "ci_low": 100 * low,
        "ci_high": 100 * high,
        "confidence": confidence,
        "mcnemar_p": p,
        "significant": judged.significant and n >= 2,
        "verdict": judged.verdict(),
    }


def seed_spread(values: Sequence[float]) -> dict:
    """Spread of one metric over runs that differ only in their seed: n, mean, sample SD (ddof 1), min, max."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"seed_spread needs a non-empty 1-D sequence, got shape {arr.shape}")
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }
