"""Statistics that say whether a difference between two policies is real: pure functions on arrays.

One home for the tests every comparison in papo uses (the mini reproduction's seeds, `papo eval
--compare`'s questions). Built on scipy/numpy, never hand-written distributions:

* `paired_bootstrap_ci`: the mean of paired differences ``d_i = b_i - a_i`` with a seeded
  percentile-bootstrap confidence interval (``scipy.stats.bootstrap`` resampling the pairs);
* `paired_t_test`: the two-sided paired t-test over the same pairs (``scipy.stats.ttest_rel``);
* `mcnemar_exact`: McNemar's exact test on paired 0/1 outcomes (binomial test on the discordant pairs);
* `benjamini_hochberg`: q-values across several comparisons (``scipy.stats.false_discovery_control``).

A result is "inside the noise" when its confidence interval contains 0 (`PairedComparison.significant`).
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
    p_value: float  # paired t-test, two-sided

    @property
    def significant(self) -> bool:
        """True when the CI excludes 0: the difference is outside the noise at this confidence."""
        return self.ci_low > 0 or self.ci_high < 0

    def verdict(self) -> str:
        """One plain sentence for reports."""
        if math.isnan(self.mean_diff):
            return "not measured on every pair"
        if self.n < 2:
            return "one pair only: no estimate of the noise"
        if not self.significant:
            return f"inside the noise ({self.confidence:.0%} CI contains 0)"
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
