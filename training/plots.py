"""Charts and the "learned milestone weights" table logged with every training run.

SHAP values come from LightGBM's own ``predict(X, pred_contrib=True)`` — the TreeSHAP that
``shap.TreeExplainer`` runs for LightGBM — in log-odds; the last column is the base value and
each row sums to ``predict(X, raw_score=True)``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs under pytest, MLflow projects and CI

import lightgbm as lgb  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from features.spec import MilestoneSpec  # noqa: E402
from training.metrics import gains_table  # noqa: E402


def shap_values(booster: lgb.Booster, X: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Per-row, per-feature contributions (log-odds) and the base value."""
    contrib = np.asarray(booster.predict(X, pred_contrib=True))
    return contrib[:, :-1], float(contrib[0, -1]) if len(contrib) else 0.0


def _group_of(column: str, manifest: pd.DataFrame | None) -> tuple[str, str]:
    """(group name, kind) of a feature: a milestone's / sequence's columns form one group."""
    if manifest is not None and "milestone" in manifest.columns:
        row = manifest.loc[manifest["name"] == column]
        if len(row) and isinstance(row["milestone"].iloc[0], str) and row["milestone"].iloc[0]:
            kind = ("sequence" if column.startswith("seq__") else
                    "warning" if column.startswith("ws__") else "milestone")
            return row["milestone"].iloc[0], kind
    parts = column.split("__")
    kinds = {"ms": "milestone", "seq": "sequence", "ws": "warning"}
    if parts[0] in kinds and len(parts) >= 3:
        return parts[1], kinds[parts[0]]
    return column, "feature"


def learned_weights(contributions: np.ndarray, columns, spec: MilestoneSpec,
                    manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean |SHAP| per milestone (all of its columns summed per row) and its points equivalent.

    Points equivalent: the milestone file's total points shared out in proportion to learned
    weight over milestones and sequences, so a team can set it beside its own ``points``.

    Returns
    -------
    DataFrame
        ``group, kind, label, mean_abs_shap, share, points_equivalent, rules_points, rank``,
        sorted by weight (largest first).
    """
    columns = list(columns)
    groups = [_group_of(c, manifest) for c in columns]
    frame = pd.DataFrame(contributions, columns=columns)
    # Sum signed contributions within a group per row first: a milestone's columns often
    # offset each other (reached vs days_since), and the account feels the sum.
    summed = frame.T.groupby([g for g, _ in groups], sort=False).sum().T
    kinds = dict(groups)
    labels = ({m.name: m.label for m in spec.milestones} | {s.name: s.wording for s in spec.sequences}
              | {w.name: w.label for w in spec.warning_signs})
    points = {m.name: m.points for m in spec.milestones} | {s.name: s.points for s in spec.sequences}
    out = pd.DataFrame({"group": summed.columns, "mean_abs_shap": summed.abs().mean().to_numpy()})
    out["kind"] = out["group"].map(kinds)
    out["label"] = out["group"].map(labels)
    out["rules_points"] = out["group"].map(points)
    is_ms = out["kind"].isin(["milestone", "sequence"])
    total = out.loc[is_ms, "mean_abs_shap"].sum()
    out["share"] = np.where(is_ms, out["mean_abs_shap"] / total if total > 0 else np.nan, np.nan)
    budget = sum(points.values())
    out["points_equivalent"] = (out["share"] * budget).round(1)
    out = out.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out[["group", "kind", "label", "mean_abs_shap", "share", "points_equivalent", "rules_points", "rank"]]


def top_milestones(weights: pd.DataFrame, n: int = 5) -> list[str]:
    """Names of the ``n`` milestones (not sequences or other features) with the largest weight."""
    return weights.loc[weights["kind"] == "milestone", "group"].head(n).tolist()


def _save(fig, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_gains(y, scores: dict[str, np.ndarray], path: Path) -> Path:
    """Cumulative gains (left) and lift per decile (right) for each model's scores."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="random")
    for name, s in scores.items():
        g = gains_table(y, s)
        ax1.plot(np.r_[0, g["cum_share_rows"]], np.r_[0, g["cum_share_converters"]], marker=".", label=name)
        ax2.plot(g["decile"], g["lift"], marker="o", label=name)
    ax1.set(xlabel="share of accounts called (best first)", ylabel="share of converters found", title="Cumulative gains")
    ax2.axhline(1, ls="--", c="grey", lw=1)
    ax2.set(xlabel="score decile (1 = best)", ylabel="lift", title="Lift per decile")
    ax1.legend(fontsize=7)
    return _save(fig, path)


def plot_calibration(y, probabilities: dict[str, np.ndarray], path: Path, n_bins: int = 10) -> Path:
    """Reliability diagram: mean predicted probability vs observed conversion rate per bin."""
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    y = np.asarray(y, dtype=float)
    top = 0.0
    for name, p in probabilities.items():
        p = np.asarray(p, dtype=float)
        idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
        frame = pd.DataFrame({"b": idx, "p": p, "y": y}).groupby("b").agg(p=("p", "mean"), y=("y", "mean"))
        ax.plot(frame["p"], frame["y"], marker="o", label=name)
        top = max(top, frame["p"].max(), frame["y"].max())
    lim = min(1.0, top * 1.1 + 0.02)
    ax.set(xlim=(0, lim), ylim=(0, lim), xlabel="predicted probability", ylabel="observed conversion rate",
           title="Calibration (evaluation period)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_shap_beeswarm(contributions: np.ndarray, X: pd.DataFrame, path: Path, max_display: int = 20) -> Path:
    """SHAP summary (beeswarm) of the booster's pred_contrib values."""
    import shap

    # shap colours points by feature value; categorical fit columns become their codes.
    values = X.copy()
    for c in values.columns:
        if isinstance(values[c].dtype, pd.CategoricalDtype):
            values[c] = values[c].cat.codes.astype(float)
    values = values.astype(float)
    shap.summary_plot(contributions, values, max_display=max_display, show=False)
    fig = plt.gcf()
    fig.suptitle("SHAP (log-odds), evaluation period")
    return _save(fig, path)
