"""Metrics: each figure checked against a case worked by hand or against its definition."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (evaluate_predictions, expected_calibration_error, gains_table,
                              precision_recall_at_k, top_fraction_lift)


def test_ece_is_zero_for_perfectly_calibrated_bins_and_large_for_overconfidence():
    y = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2)
    p = np.array([0.3] * 10 + [0.8] * 10)
    assert expected_calibration_error(y, p) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(20, 0.99)) == pytest.approx(abs(0.55 - 0.99))


def test_ece_weights_bins_by_their_rows():
    y = np.array([0] * 9 + [1])
    p = np.array([0.1] * 9 + [0.5])  # bin 1: gap 0.1 over 9 rows; bin 5: gap 0.5 over 1 row
    assert expected_calibration_error(y, p) == pytest.approx((9 * 0.1 + 1 * 0.5) / 10)


def test_top_decile_lift_counts_converters_in_best_tenth():
    rng = np.random.default_rng(0)
    y = np.zeros(1000, dtype=int)
    y[:50] = 1  # 5 % base rate
    score = rng.random(1000)
    score[:40] += 10  # 40 of the 50 converters are in the top 100
    assert top_fraction_lift(y, score, 0.1) == pytest.approx((40 / 100) / 0.05)


def test_precision_recall_at_k_per_group_is_averaged():
    y = [1, 0, 0, 1, 1, 0]
    s = [0.9, 0.8, 0.1, 0.2, 0.9, 0.1]
    g = ["a", "a", "a", "b", "b", "b"]
    p, r = precision_recall_at_k(y, s, k=1, groups=g)
    assert p == pytest.approx(1.0)  # both groups' best account converted
    assert r == pytest.approx((1 / 1 + 1 / 2) / 2)


def test_evaluate_predictions_matches_definitions_and_rejects_one_class():
    rng = np.random.default_rng(1)
    p = rng.random(2000)
    y = (rng.random(2000) < p).astype(int)  # calibrated by construction
    m = evaluate_predictions(y, p, top_k=100)
    assert m["roc_auc"] == pytest.approx(5 / 6, abs=0.03)  # P(p_pos > p_neg) for p ~ U(0, 1), y ~ Bernoulli(p)
    assert m["ece"] < 0.05
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["top_decile_lift"] > 1.5
    with pytest.raises(ValueError, match="both"):
        evaluate_predictions(np.zeros(10), p[:10])


def test_gains_table_accumulates_to_all_converters():
    y = np.array([1, 0, 1, 0, 0, 0, 0, 1, 0, 0])
    g = gains_table(y, np.arange(10)[::-1], n_bins=5)
    assert g["cum_share_converters"].iloc[-1] == pytest.approx(1.0)
    assert g["converters"].sum() == 3
    assert g["lift"].iloc[0] == pytest.approx((1 / 2) / 0.3)
