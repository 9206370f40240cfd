"""The models the milestone model must beat, and its ablations, all on the same split.

- ``rules_points``: the points model teams use today — the milestone file's fixed ``points``
  summed over reached milestones and completed sequences;
- ``activity_lightgbm``: LightGBM on raw activity counts only (logins, page views, all events):
  the "activity trap" — busy is not the same as getting value;
- ``logistic_milestones``: logistic regression on the milestone / sequence flags;
- ablations of the main model: ``ablation_product`` (milestones + sequences),
  ``ablation_fit`` (firmographic fit only), ``ablation_product_fit_dg`` (product + fit + demand gen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features.spec import MilestoneSpec

#: Column-name prefix -> feature family (docs/architecture.md), used when a manifest lacks one.
PREFIX_FAMILY = {"ms__": "milestone", "seq__": "sequence", "ws__": "warning", "acct__": "account", "fit__": "fit",
                 "dg__": "demand_gen", "raw__": "activity"}
#: Families the main model uses; raw activity is for the baseline only.
MODEL_FAMILIES = ("milestone", "sequence", "warning", "account", "fit", "demand_gen")


def family_of(column: str) -> str | None:
    """Feature family of a column from its name.

    >>> family_of("ms__invited__reached"), family_of("raw__logins"), family_of("label")
    ('milestone', 'activity', None)
    """
    for prefix, family in PREFIX_FAMILY.items():
        if column.startswith(prefix):
            return family
    return None


def is_flag(column: str) -> bool:
    """Milestone-reached or sequence-completed flag."""
    return (column.startswith("ms__") and column.endswith("__reached")) or (
        column.startswith("seq__") and column.endswith("__completed"))


@dataclass(frozen=True)
class Candidate:
    """One model to fit and compare: a name, how to fit it, and its input columns."""

    name: str
    kind: str  # "lightgbm" | "rules" | "logistic"
    columns: list[str]
    description: str
    monotone: bool = True
    extra: dict = field(default_factory=dict)


def columns_of(feature_columns, families) -> list[str]:
    """The feature columns belonging to any of ``families``, in input order."""
    return [c for c in feature_columns if family_of(c) in families]


def candidates(feature_columns, spec: MilestoneSpec, *, include_baselines: bool = True,
               monotone: bool = True) -> list[Candidate]:
    """The main model first, then baselines and ablations that have at least one input column."""
    cols = list(feature_columns)
    out = [Candidate("model", "lightgbm", columns_of(cols, MODEL_FAMILIES),
                     "LightGBM on milestones, sequences, warning signs, account rollup, fit and demand gen", monotone)]
    if not include_baselines:
        return out
    flags = [c for c in cols if is_flag(c)]
    out += [
        Candidate("rules_points", "rules", flags, "fixed points per milestone from the milestone file",
                  extra={"points": rule_points(spec, flags)}),
        Candidate("activity_lightgbm", "lightgbm", columns_of(cols, ("activity",)),
                  "LightGBM on raw activity counts only", False),
        Candidate("logistic_milestones", "logistic", flags, "logistic regression on milestone flags"),
        Candidate("ablation_product", "lightgbm", columns_of(cols, ("milestone", "sequence", "warning")),
                  "LightGBM on product milestones, sequences and warning signs only", monotone),
        Candidate("ablation_fit", "lightgbm", columns_of(cols, ("fit",)), "LightGBM on fit only", monotone),
        Candidate("ablation_product_fit_dg", "lightgbm",
                  columns_of(cols, ("milestone", "sequence", "warning", "fit", "demand_gen")),
                  "LightGBM on product milestones + fit + demand gen", monotone),
    ]
    return [c for c in out if c.columns]


def rule_points(spec: MilestoneSpec, flag_columns) -> dict[str, float]:
    """Points of each flag column: ``ms__<m>__reached`` -> m.points, ``seq__<s>__completed`` -> s.points."""
    by_name = {f"ms__{m.name}__reached": m.points for m in spec.milestones}
    by_name |= {f"seq__{s.name}__completed": s.points for s in spec.sequences}
    return {c: float(by_name[c]) for c in flag_columns if c in by_name}


class RulesPointsModel:
    """Score = sum of the points of the milestones reached (nothing is learned from labels).

    >>> m = RulesPointsModel({"ms__a__reached": 10, "ms__b__reached": 5}).fit(
    ...     pd.DataFrame({"ms__a__reached": [1, 0], "ms__b__reached": [1, 1]}), [1, 0])
    >>> m.decision_function(pd.DataFrame({"ms__a__reached": [1, 0], "ms__b__reached": [1, 1]})).tolist()
    [15.0, 5.0]
    """

    def __init__(self, points: dict[str, float]):
        self.points = points

    def fit(self, X: pd.DataFrame, y=None) -> "RulesPointsModel":
        missing = [c for c in self.points if c not in X.columns]
        if missing:
            raise ValueError(f"RulesPointsModel: feature table lacks milestone flags {missing}")
        self.columns_ = list(self.points)
        self.weights_ = np.array([self.points[c] for c in self.columns_], dtype=float)
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        flags = (X[self.columns_].to_numpy(dtype=float, na_value=0.0) > 0).astype(float)
        return flags @ self.weights_


def make_logistic(seed: int = 0):
    """Logistic regression on flags (scaled so the L2 penalty treats flags alike)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
