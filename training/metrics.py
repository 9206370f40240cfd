"""Scoring metrics for a ranked list of accounts, all computed from predictions.

Why from predictions and not ``mlflow.models.evaluate``: MLflow 3 cannot evaluate a binary
native Booster URI, and every model here (LightGBM, rules points, logistic regression) is
compared on the same rows, so one small function over ``(y, p)`` is the fairest judge.

Example
-------
>>> import numpy as np
>>> y = np.array([0, 0, 1, 1])
>>> p = np.array([0.1, 0.4, 0.35, 0.8])
>>> round(evaluate_predictions(y, p, top_k=2)["roc_auc"], 2)
0.75
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

#: The metric columns of every comparison table, in display order.
METRIC_COLUMNS = ("roc_auc", "pr_auc", "brier", "ece", "top_decile_lift", "precision_at_k", "recall_at_k")


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins.

    The count-weighted mean of ``|mean(y) - mean(p)|`` per bin: 0 means the score is a
    probability ("30 % of accounts scored 0.3 convert").

    >>> expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])
    0.0
    """
    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(y_prob, dtype=float), 0.0, 1.0)
    if y.size == 0:
        raise ValueError("expected_calibration_error: no rows")
    # Bin index in 0..n_bins-1; p == 1.0 belongs to the last bin.
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    filled = counts > 0
    gaps = np.abs(sum_y[filled] - sum_p[filled]) / counts[filled]
    return float(np.sum(gaps * counts[filled]) / y.size)


def top_fraction_lift(y_true, y_score, fraction: float = 0.1) -> float:
    """Conversion rate in the top ``fraction`` of scores divided by the overall rate.

    >>> top_fraction_lift([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], [9, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    10.0
    """
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(y_score, dtype=float)
    base = y.mean()
    if base == 0:
        return float("nan")
    n_top = max(1, int(round(fraction * y.size)))
    # Stable sort on the negated score: ties keep input order, so the figure is reproducible.
    top = np.argsort(-s, kind="stable")[:n_top]
    return float(y[top].mean() / base)


def precision_recall_at_k(y_true, y_score, k: int, groups: Sequence | None = None) -> tuple[float, float]:
    """Precision and recall among the ``k`` highest scores.

    ``k`` is how many accounts sales can call. With ``groups`` (e.g. the cutoff of each
    snapshot) the top ``k`` is taken within each group — sales calls the best accounts of
    *that* week — and the figures are averaged over groups that have a converter.

    >>> precision_recall_at_k([1, 0, 1, 0], [0.9, 0.8, 0.1, 0.0], k=2)
    (0.5, 0.5)
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(y_score, dtype=float)
    if groups is None:
        groups = np.zeros(y.size)
    frame = pd.DataFrame({"y": y, "s": s, "g": np.asarray(groups)})
    precisions, recalls = [], []
    for _, part in frame.groupby("g", sort=True):
        positives = part["y"].sum()
        if positives == 0:
            continue
        top = part.sort_values("s", ascending=False, kind="stable").head(k)
        precisions.append(top["y"].sum() / len(top))
        recalls.append(top["y"].sum() / positives)
    if not precisions:
        return float("nan"), float("nan")
    return float(np.mean(precisions)), float(np.mean(recalls))


def evaluate_predictions(y_true, y_prob, *, top_k: int = 100, groups: Sequence | None = None,
                         n_bins: int = 10) -> dict[str, float]:
    """All comparison metrics for one model on one set of rows.

    Parameters
    ----------
    y_true : array-like of {0, 1}
        Converted within the horizon.
    y_prob : array-like of float
        Calibrated probability to convert (ranking metrics only need the order).
    top_k : int
        How many accounts sales can call (per group when ``groups`` is given).
    groups : array-like, optional
        Group of each row (the cutoff) for precision/recall at k.
    n_bins : int
        Equal-width bins for the expected calibration error.

    Returns
    -------
    dict
        ``roc_auc, pr_auc, brier, ece, top_decile_lift, precision_at_k, recall_at_k``.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(y_prob, dtype=float)
    if len(np.unique(y)) < 2:
        raise ValueError("evaluate_predictions needs both converters and non-converters")
    precision, recall = precision_recall_at_k(y, p, top_k, groups)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, np.clip(p, 0, 1))),
        "ece": expected_calibration_error(y, p, n_bins),
        "top_decile_lift": top_fraction_lift(y, p, 0.1),
        "precision_at_k": precision,
        "recall_at_k": recall,
    }


def gains_table(y_true, y_score, n_bins: int = 10) -> pd.DataFrame:
    """Cumulative gains and lift by score decile (best decile first).

    Columns: ``decile, rows, converters, rate, lift, cum_share_rows, cum_share_converters``.
    """
    y = np.asarray(y_true, dtype=float)
    order = np.argsort(-np.asarray(y_score, dtype=float), kind="stable")
    y_sorted = y[order]
    chunks = np.array_split(np.arange(y.size), n_bins)
    base = y.mean() if y.size else float("nan")
    rows = []
    for i, idx in enumerate(chunks, start=1):
        conv = y_sorted[idx].sum()
        rows.append({"decile": i, "rows": len(idx), "converters": conv,
                     "rate": conv / len(idx) if len(idx) else float("nan")})
    out = pd.DataFrame(rows)
    out["lift"] = out["rate"] / base
    out["cum_share_rows"] = out["rows"].cumsum() / y.size
    out["cum_share_converters"] = out["converters"].cumsum() / max(y.sum(), 1)
    return out
