"""Statistics of discovery against scipy and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import fisher_exact

from training import stats

# Hand-checked table: 30 of S=100 converters and 10 of F=200 non-converters reached the milestone.
S, F, s, f = 100, 200, 30, 10


def test_rates_lift_odds_ratio_phi_match_hand_computation():
    t = stats.two_group_table([s], [f], S, F, prior_k=1.0).iloc[0]
    assert t["converter_rate"] == pytest.approx(0.30)
    assert t["non_converter_rate"] == pytest.approx(0.05)
    assert t["lift"] == pytest.approx(6.0)
    # ((s+k)(F-f+k)) / ((S-s+k)(f+k)) = 31*191 / (71*11)
    assert t["odds_ratio"] == pytest.approx(31 * 191 / (71 * 11))
    # phi = (ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d)) with a=30, b=10, c=70, d=190
    assert t["phi"] == pytest.approx((30 * 190 - 10 * 70) / np.sqrt(40 * 260 * 100 * 200))


def test_wilson_interval_matches_formula():
    lo, hi = stats.wilson_interval(30, 100)
    z = 1.959963984540054
    p, n = 0.3, 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (float(lo), float(hi)) == pytest.approx((centre - half, centre + half))
    lo0, hi0 = stats.wilson_interval(0, 20)
    assert float(lo0) == 0.0 and 0 < float(hi0) < 0.2


def test_fisher_matches_scipy_on_hand_table():
    p = stats.fisher_exact_two_sided([s], [f], S, F)[0]
    assert p == pytest.approx(fisher_exact([[s, f], [S - s, F - f]]).pvalue, rel=1e-12)


def test_vectorised_fisher_matches_scipy_on_random_tables_including_ties():
    rng = np.random.default_rng(3)
    n = 400
    S_ = rng.integers(1, 50, n)
    F_ = np.where(rng.random(n) < 0.3, S_, rng.integers(1, 50, n))  # S == F gives exact ties
    s_ = (rng.random(n) * (S_ + 1)).astype(int)
    f_ = np.where(rng.random(n) < 0.2, s_.clip(max=F_), (rng.random(n) * (F_ + 1)).astype(int))
    ours = stats.fisher_exact_two_sided(s_, f_, S_, F_)
    ref = [fisher_exact([[a, b], [c - a, d - b]]).pvalue for a, b, c, d in zip(s_, f_, S_, F_)]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-300)


def test_bh_matches_hand_computation_and_keeps_nan():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    q = stats.bh_qvalues(p)
    # sorted 0.01, 0.03, 0.04, 0.5 over m=4 tests: 0.04, 0.0533, 0.0533, 0.5
    np.testing.assert_allclose(q[[0, 2, 1, 4]], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert np.isnan(q[3])


def test_lift_is_nan_when_nobody_reached_and_inf_when_only_converters():
    assert np.isnan(stats.lift(0, 0, 10, 10))
    assert np.isinf(stats.lift(5, 0, 10, 10))
    assert np.isfinite(stats.smoothed_odds_ratio(5, 0, 10, 10))


def test_conditional_lift_near_one_for_nested_threshold_and_high_for_independent_driver():
    rng = np.random.default_rng(0)
    n = 4000
    converted = rng.random(n) < 0.3
    # "at least 3 projects" drives conversion; "at least 2" is it plus a few random accounts.
    three = np.where(converted, rng.random(n) < 0.6, rng.random(n) < 0.15)
    two = three | (rng.random(n) < 0.05)
    other = np.where(converted, rng.random(n) < 0.5, rng.random(n) < 0.2)
    assert stats.lift(two[converted].sum(), two[~converted].sum(), converted.sum(), (~converted).sum()) > 2
    assert stats.conditional_lift(two, converted, three) < 1.3
    assert stats.conditional_lift(other, converted, three) > 2


def test_cmh_detects_association_and_not_a_size_confounder():
    # Stratum totals; within each stratum the candidate is equally common in both groups.
    S_k, F_k = np.array([50, 150]), np.array([300, 100])
    confounded = np.array([[5, 120]]), np.array([[30, 80]])
    assert stats.cmh_pvalue(confounded[0], confounded[1], S_k, F_k)[0] > 0.2
    real = np.array([[25, 120]]), np.array([[30, 40]])
    assert stats.cmh_pvalue(real[0], real[1], S_k, F_k)[0] < 1e-6


def test_lift_interval_contains_estimate():
    lo, hi = stats.lift_interval(30, 10, 100, 200)
    assert lo < 6 < hi
