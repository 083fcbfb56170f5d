"""papo.stats against hand-made cases and scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from papo.stats import benjamini_hochberg, compare_paired, mcnemar_exact, paired_bootstrap_ci, paired_t_test


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    a = [0.30, 0.32, 0.28, 0.35, 0.31]
    b = [0.40, 0.45, 0.33, 0.41, 0.39]
    mean, low, high = paired_bootstrap_ci(a, b, seed=3)
    assert mean == pytest.approx(np.mean(np.subtract(b, a)))
    assert low < mean < high
    # Percentile bootstrap of a mean: the CI lies within the range of the differences.
    diffs = np.subtract(b, a)
    assert diffs.min() <= low and high <= diffs.max()
    assert paired_bootstrap_ci(a, b, seed=3) == (mean, low, high)
    # With 5 pairs the percentiles fall on the same resampled means for most seeds; with 30 they do not.
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert paired_bootstrap_ci(x, y, seed=3) != paired_bootstrap_ci(x, y, seed=4)


def test_bootstrap_ci_matches_scipy_directly():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(0.3, 1, size=40)
    _, low, high = paired_bootstrap_ci(a, b, seed=7, n_resamples=2000)
    ref = stats.bootstrap(
        (b - a,), np.mean, n_resamples=2000, method="percentile", random_state=np.random.default_rng(7)
    ).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))


def test_noise_verdicts():
    same = compare_paired([0.5, 0.6, 0.4, 0.5], [0.52, 0.58, 0.43, 0.49])
    assert not same.significant and "inside the noise" in same.verdict()
    gain = compare_paired([0.1, 0.2, 0.15, 0.12, 0.18], [0.5, 0.62, 0.55, 0.51, 0.6])
    assert gain.significant and gain.verdict().startswith("gain")
    expected = stats.ttest_rel([0.5, 0.62, 0.55, 0.51, 0.6], [0.1, 0.2, 0.15, 0.12, 0.18]).pvalue
    assert gain.p_value == pytest.approx(expected)
    assert gain.to_dict()["significant"] is True


def test_degenerate_pairs():
    assert paired_bootstrap_ci([1.0], [2.0]) == (1.0, 1.0, 1.0)
    assert paired_bootstrap_ci([1.0, 2.0], [2.0, 3.0]) == (1.0, 1.0, 1.0)
    assert math.isnan(paired_t_test([1.0], [2.0]))
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_ci([], [])


def test_mcnemar_exact_hand_case():
    # 1 pair a-right/b-wrong, 8 pairs a-wrong/b-right, the rest agree.
    a = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    b = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert mcnemar_exact(a, b) == pytest.approx(stats.binomtest(8, 9, 0.5).pvalue)
    assert mcnemar_exact(a, b) == pytest.approx(20 / 512)  # 2 * (C(9,0) + C(9,1)) / 2**9
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0


def test_benjamini_hochberg():
    p = [0.01, 0.04, 0.03, float("nan"), 0.5]
    q = benjamini_hochberg(p)
    assert math.isnan(q[3])
    # By hand: sorted p .01 .03 .04 .5 (m = 4) -> .04, .06, .0533, .5 -> running minimum from the top.
    assert q[:3] + q[4:] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_stratified_ci_matches_scipy_and_reduces_to_the_paired_one():
    from papo.stats import stratified_bootstrap_ci

    rng = np.random.default_rng(2)
    pairs = [(rng.random(30), rng.random(30)), (rng.random(12), rng.random(12) + 0.2)]
    mean, low, high = stratified_bootstrap_ci(pairs, n_resamples=2000, seed=5)
    assert mean == pytest.approx(np.mean([np.mean(b - a) for a, b in pairs]))
    ref = stats.bootstrap(
        tuple(b - a for a, b in pairs),
        lambda *s, axis=-1: np.mean([np.mean(x, axis=axis) for x in s], axis=0),
        n_resamples=2000,
        method="percentile",
        vectorized=True,
        batch=500,
        random_state=np.random.default_rng(5),
    ).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))
    assert stratified_bootstrap_ci(pairs[:1], seed=1) == paired_bootstrap_ci(*pairs[0], seed=1)


def test_compare_benchmarks_on_a_hand_made_case():
    from papo.stats import compare_benchmarks, majority_correct

    assert list(majority_correct([[1, 1, 0], [1, 0], [0, 0, 1], [1, 1]])) == [True, False, False, True]
    # Benchmark X: 10 questions, k = 2. The candidate fixes 6 questions and breaks 1 (by majority).
    base_x = [[0, 0]] * 6 + [[1, 1]] + [[1, 1]] * 2 + [[0, 1]]
    cand_x = [[1, 1]] * 6 + [[0, 0]] + [[1, 1]] * 2 + [[0, 1]]
    # Benchmark Y: identical runs.
    base_y = cand_y = [[1, 0], [1, 1], [0, 0], [1, 1]]
    acc = lambda rows: [sum(r) / len(r) for r in rows]  # noqa: E731
    data = {
        "X": {
            "baseline": acc(base_x),
            "candidate": acc(cand_x),
            "baseline_correct": base_x,
            "candidate_correct": cand_x,
        },
        "Y": {
            "baseline": acc(base_y),
            "candidate": acc(cand_y),
            "baseline_correct": base_y,
            "candidate_correct": cand_y,
        },
    }
    result = compare_benchmarks(data, n_resamples=2000, seed=0)
    x, y = result["benchmarks"]["X"], result["benchmarks"]["Y"]
    assert x["diff"] == pytest.approx(100 * (6 - 1) / 10)
    assert x["mcnemar_p"] == pytest.approx(stats.binomtest(6, 7, 0.5).pvalue)
    _, low, high = paired_bootstrap_ci(acc(base_x), acc(cand_x), n_resamples=2000, seed=0)
    assert (x["ci_low"], x["ci_high"]) == pytest.approx((100 * low, 100 * high))
    assert (y["diff"], y["mcnemar_p"]) == (0.0, 1.0) and y["verdict"].startswith("inside the noise")
    # X: the CI excludes 0 but McNemar's p = 0.125: the one rule (papo.stats.PairedComparison) says not
    # established, as it does for the seed comparisons
    assert x["ci_low"] > 0 and not x["significant"]
    assert x["verdict"].startswith("not established") and "McNemar test gives p = 0.125" in x["verdict"]
    q = stats.false_discovery_control([x["mcnemar_p"], 1.0], method="bh")
    assert [x["q_value"], y["q_value"]] == pytest.approx(list(q))
    overall = result["overall"]
    assert overall["n"] == 14 and overall["diff"] == pytest.approx((x["diff"] + 0.0) / 2)
    assert overall["mcnemar_p"] == pytest.approx(stats.binomtest(6, 7, 0.5).pvalue)
    assert result["mcnemar_on"].startswith("per-question correctness by strict majority")


def test_seed_spread_against_numpy():
    import statistics

    from papo.stats import seed_spread

    values = [41.2, 44.0, 42.5, 43.1]
    spread = seed_spread(values)
    assert spread["sd"] == pytest.approx(statistics.stdev(values))
    assert (spread["n"], spread["mean"], spread["min"], spread["max"]) == (4, pytest.approx(42.7), 41.2, 44.0)
    assert math.isnan(seed_spread([50.0])["sd"])
    with pytest.raises(ValueError, match="non-empty"):
        seed_spread([])


def test_a_narrow_bootstrap_alone_does_not_make_a_gain():
    """5 seeds: the percentile CI excludes 0 but the t-test does not agree -> not established."""
    a = [0.0, 0.0, 0.0, 0.0, 0.0]
    b = [0.01, 0.005, 0.012, -0.004, 0.017]
    result = compare_paired(a, b)
    assert result.ci_excludes_zero and result.p_value > 0.05
    assert not result.significant and result.verdict().startswith("not established")
