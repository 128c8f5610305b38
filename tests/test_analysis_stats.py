"""IQM, stratified bootstrap intervals, probability of improvement, sample efficiency."""

import numpy as np
import pytest
from scipy import stats as sps

from sppo_bench.analysis.stats import (
    auroc,
    correlations,
    episodes_to_threshold,
    iqm,
    iqm_ci,
    mean_ci_over_runs,
    median_episodes_to_threshold,
    probability_of_improvement,
    stratified_bootstrap,
)


def test_iqm_hand_computed():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean(3, 4, 5, 6)
    assert iqm([-100, 0, 0, 1, 1, 1, 1, 100]) == pytest.approx(0.75)  # mean(0, 1, 1, 1)
    # n = 10: floor(2.5) = 2 dropped from each end -> mean(2..7) = 4.5
    assert iqm(np.arange(10)[::-1]) == pytest.approx(4.5)
    rows = np.array([np.arange(1, 9), np.arange(1, 9) * 2])
    np.testing.assert_allclose(iqm(rows, axis=1), [4.5, 9.0])


def test_iqm_ci_single_task_point_and_bounds():
    scores = np.array([0.1, 0.2, 0.4, 0.5, 0.6, 0.9, 0.95, 1.0])
    est = iqm_ci([scores], reps=500)
    assert est.point == pytest.approx(iqm(scores))
    assert scores.min() <= est.lo <= est.point <= est.hi <= scores.max()
    assert est.hi > est.lo


def test_stratified_bootstrap_keeps_strata():
    # task A scores are all 0, task B all 1: every replicate keeps 3 zeros and 2 ones
    dist = stratified_bootstrap([[np.zeros(3), np.ones(2)]], lambda g: g[0][1].sum(1))
    assert np.all(dist == 2)
    pooled_mean = stratified_bootstrap(
        [[np.zeros(3), np.ones(2)]], lambda g: np.concatenate(g[0], 1).mean(1)
    )
    np.testing.assert_allclose(pooled_mean, 0.4)


def test_probability_of_improvement_hand_computed():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0])
    # pairs won: (1,0) (2,0) (3,0) (3,2) = 4, tie (2,2) = 0.5 -> 4.5 / 6
    est = probability_of_improvement([x], [y], reps=200)
    assert est.point == pytest.approx(4.5 / 6)
    u = sps.mannwhitneyu(x, y).statistic
    assert est.point == pytest.approx(u / 6)
    two = probability_of_improvement([x, np.array([0.0])], [y, np.array([1.0])], reps=200)
    assert two.point == pytest.approx((4.5 / 6 + 0.0) / 2)
    assert 0.0 <= two.lo <= two.point <= two.hi <= 1.0


def test_intervals_cover_the_truth_on_synthetic_data():
    """95% intervals cover the true aggregate IQM and P(X > Y) in most repetitions."""
    rng = np.random.default_rng(0)
    true_poi = sps.norm.cdf(0.5 / np.sqrt(2))  # X ~ N(0.5, 1), Y ~ N(0, 1)
    hits_iqm = hits_poi = 0
    trials = 150
    for t in range(trials):
        x = [rng.normal(0.5, 1.0, 10) for _ in range(3)]
        y = [rng.normal(0.0, 1.0, 10) for _ in range(3)]
        est = iqm_ci(x, reps=400, seed=t)  # symmetric distribution: population IQM = mean
        hits_iqm += est.lo <= 0.5 <= est.hi
        poi = probability_of_improvement(x, y, reps=400, seed=t)
        hits_poi += poi.lo <= true_poi <= poi.hi
    assert 0.85 <= hits_iqm / trials <= 1.0
    assert 0.85 <= hits_poi / trials <= 1.0


def test_episodes_to_threshold():
    eps, succ = [0, 10, 20, 30], [0.1, 0.5, 0.9, 0.7]
    assert episodes_to_threshold(eps, succ, 0.8) == 20
    assert episodes_to_threshold(eps, succ, 0.5) == 10  # "at or above"
    assert np.isnan(episodes_to_threshold(eps, succ, 0.95))
    assert median_episodes_to_threshold(np.array([10, np.nan, 30])) == 30
    assert median_episodes_to_threshold(np.array([10, np.nan, np.nan])) == np.inf


def test_correlations_auroc_and_curve_band():
    rho, r = correlations(np.array([0.1, 0.2, 0.3]), np.array([0.0, 0.5, 1.0]))
    assert rho == pytest.approx(1.0) and r == pytest.approx(1.0)
    assert np.isnan(correlations(np.ones(3), np.arange(3))[0])
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0 and auroc([0.5], [0.5]) == 0.5
    mean, lo, hi = mean_ci_over_runs(np.tile([0.0, 0.5, 1.0], (4, 1)))
    np.testing.assert_allclose([mean, lo, hi], [[0, 0.5, 1]] * 3)
    mean, lo, hi = mean_ci_over_runs(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert np.all(lo <= mean) and np.all(mean <= hi) and np.all(hi > lo)


def test_binomial_ci_is_clopper_pearson():
    """Closed forms at the edges, scipy's exact binomial test in between."""
    from scipy.stats import binomtest

    from sppo_bench.analysis.stats import binomial_ci

    lo, hi = binomial_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    lo, hi = binomial_ci(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    for k, n in ((2, 10), (7, 10), (16, 20), (31, 50)):
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert binomial_ci(k, n) == pytest.approx((ref.low, ref.high), rel=1e-9)
    # 5/10 cannot tell a coin from a 0.2 or a 0.8 rate
    lo, hi = binomial_ci(5, 10)
    assert lo < 0.2 and hi > 0.8
    with pytest.raises(ValueError, match="0 <= k <= n"):
        binomial_ci(3, 2)
