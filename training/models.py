"""LightGBM scorer and its calibrators.

The booster outputs raw log-odds; a calibrator maps them to "probability to convert within the
horizon". Calibrators are tiny on purpose: serving re-implements them from ``calibrator.json``
(see docs/architecture.md, "Model bundle") without importing ``training/``:

- ``{"method": "isotonic", "x": [...], "y": [...]}``: ``p = numpy.interp(raw, x, y)``
  (linear interpolation, flat beyond the ends);
- ``{"method": "platt", "a": a, "b": b}``: ``p = 1 / (1 + exp(-(a * raw + b)))``.

Example
-------
>>> import numpy as np
>>> raw = np.array([-3.0, -1.0, 0.0, 1.0, 3.0])
>>> cal = IsotonicCalibrator().fit(raw, [0, 0, 1, 0, 1])
>>> bool(np.all(np.diff(cal.predict(np.sort(raw))) >= 0))
True
>>> calibrator_from_json(cal.to_json()).predict(raw).round(3).tolist() == cal.predict(raw).round(3).tolist()
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

#: Features that can only raise the score: reaching a milestone or completing a sequence.
MONOTONE_PATTERN = re.compile(r"^(ms__.+__reached|seq__.+__completed)$")
#: Features that can only lower it: a warning sign seen.
WARNING_PATTERN = re.compile(r"^ws__.+__reached$")


class IsotonicCalibrator:
    """Centred isotonic regression from raw log-odds to probability.

    Plain isotonic regression is a step function: every account in a step gets the same score,
    which throws ranking away (ties in the top decile). Here each pool-adjacent-violators block
    is replaced by one knot at the block's mean raw score, and knots are joined linearly
    (centred isotonic regression, Oron & Flournoy 2017): still monotone and calibrated, but
    strictly increasing between the outer knots, so the order of the booster is kept.
    """

    method = "isotonic"

    def fit(self, raw_score, y) -> "IsotonicCalibrator":
        raw = np.asarray(raw_score, dtype=float)
        target = np.asarray(y, dtype=float)
        if raw.size == 0 or raw.size != target.size:
            raise ValueError("IsotonicCalibrator.fit needs equally long, non-empty raw_score and y")
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, target)
        fitted = iso.predict(raw)
        blocks = pd.DataFrame({"x": raw, "p": fitted}).groupby("p", sort=True)["x"].mean()
        # Blocks have distinct fitted values and (isotonic) increasing mean x; sort by x.
        knots = blocks.reset_index().sort_values("x")
        self.x_ = knots["x"].to_numpy(dtype=float)
        self.y_ = knots["p"].to_numpy(dtype=float)
        if self.x_.size == 1:  # one block: a constant; make it a valid interpolation table
            self.x_ = np.array([self.x_[0] - 1.0, self.x_[0] + 1.0])
            self.y_ = np.repeat(self.y_, 2)
        return self

    def predict(self, raw_score) -> np.ndarray:
        return np.interp(np.asarray(raw_score, dtype=float), self.x_, self.y_)

    def to_json(self) -> dict:
        return {"method": "isotonic", "x": self.x_.tolist(), "y": self.y_.tolist()}


class PlattCalibrator:
    """Platt scaling: a one-feature logistic regression on raw log-odds."""

    method = "platt"

    def fit(self, raw_score, y) -> "PlattCalibrator":
        raw = np.asarray(raw_score, dtype=float).reshape(-1, 1)
        lr = LogisticRegression(C=1e6).fit(raw, np.asarray(y, dtype=int))
        self.a_ = float(lr.coef_[0, 0])
        self.b_ = float(lr.intercept_[0])
        return self

    def predict(self, raw_score) -> np.ndarray:
        z = self.a_ * np.asarray(raw_score, dtype=float) + self.b_
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict:
        return {"method": "platt", "a": self.a_, "b": self.b_}


def make_calibrator(method: str):
    """A fresh calibrator by name (``isotonic`` or ``platt``)."""
    if method == "isotonic":
        return IsotonicCalibrator()
    if method == "platt":
        return PlattCalibrator()
    raise ValueError(f"unknown calibration method {method!r}; use 'isotonic' or 'platt'")


def calibrator_from_json(data: dict):
    """Rebuild a fitted calibrator from its ``calibrator.json`` content."""
    method = data.get("method")
    if method == "isotonic":
        cal = IsotonicCalibrator()
        cal.x_, cal.y_ = np.asarray(data["x"], dtype=float), np.asarray(data["y"], dtype=float)
        return cal
    if method == "platt":
        cal = PlattCalibrator()
        cal.a_, cal.b_ = float(data["a"]), float(data["b"])
        return cal
    raise ValueError(f"calibrator.json: unknown method {method!r}")


def monotone_constraints(columns: Iterable[str], enabled: bool = True) -> list[int]:
    """LightGBM ``monotone_constraints``: +1 for milestone-reached / sequence-completed flags,
    -1 for warning-sign flags (a warning sign can only lower the score).

    >>> monotone_constraints(["ms__invited__reached", "ms__invited__count", "seq__a__completed",
    ...                       "ws__unsubscribed__reached"])
    [1, 0, 1, -1]
    """
    if not enabled:
        return [0] * len(list(columns))
    return [1 if MONOTONE_PATTERN.match(c) else -1 if WARNING_PATTERN.match(c) else 0 for c in columns]


def imbalance_weight(y, mode: str) -> float:
    """``scale_pos_weight`` for the class-imbalance handling ``mode``.

    ``balanced`` weighs converters by negatives/positives, ``sqrt`` by its square root (a
    gentler push that keeps trees from over-splitting on a handful of converters), ``none`` 1.
    Calibration afterwards restores probabilities whatever the weight.
    """
    y = np.asarray(y)
    pos = max(int(y.sum()), 1)
    ratio = (y.size - pos) / pos
    if mode == "balanced":
        return float(ratio)
    if mode == "sqrt":
        return float(np.sqrt(ratio))
    if mode == "none":
        return 1.0
    raise ValueError(f"unknown imbalance mode {mode!r}; use 'balanced', 'sqrt' or 'none'")


def fit_lightgbm(X_train: pd.DataFrame, y_train, X_valid: pd.DataFrame, y_valid, *, params: dict,
                 num_boost_round: int = 2000, early_stopping_rounds: int = 100,
                 monotone: bool = True, imbalance: str = "sqrt", categorical=()) -> lgb.Booster:
    """Fit a binary LightGBM booster with early stopping on the validation rows.

    ``categorical`` names the columns holding category codes (see :func:`model_matrix`).

    Returns
    -------
    lightgbm.Booster
        Trimmed to its best iteration.
    """
    columns = list(X_train.columns)
    full = {
        "objective": "binary",
        # AUC, not log-loss: with scale_pos_weight the raw scores are deliberately shifted, so
        # validation log-loss worsens after a few trees and would stop training far too early.
        # Ranking is what the booster is for; the calibrator restores probabilities.
        "metric": "auc",
        "verbosity": -1,
        "monotone_constraints": monotone_constraints(columns, monotone),
        "monotone_constraints_method": "intermediate",
        "scale_pos_weight": imbalance_weight(y_train, imbalance),
        **params,
    }
    # Cap min_data_in_leaf so small tables can still grow trees (5 % of the training rows).
    full["min_data_in_leaf"] = int(max(5, min(full.get("min_data_in_leaf", 20), len(X_train) // 20)))
    cats = [c for c in categorical if c in columns]
    train_set = lgb.Dataset(X_train, label=np.asarray(y_train), categorical_feature=cats or "auto",
                            free_raw_data=True)
    valid_set = lgb.Dataset(X_valid, label=np.asarray(y_valid), reference=train_set)
    booster = lgb.train(
        full, train_set, num_boost_round=num_boost_round, valid_sets=[valid_set], valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    # Keep only the trees up to the best iteration so the saved model *is* the chosen model.
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def category_levels(frame: pd.DataFrame, columns=None) -> dict[str, list[str]]:
    """Levels of each categorical (``category``, string or object) column, in code order.

    Written to ``fit_categories.json``: the model sees the *code* of a level (its position in
    this list), so training, champion re-scoring and serving encode values identically.
    """
    out = {}
    for c in (frame.columns if columns is None else columns):
        s = frame[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            out[c] = [str(v) for v in s.cat.categories]
        elif not (pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)):
            out[c] = sorted(str(v) for v in s.dropna().unique())
    return out


def model_matrix(frame: pd.DataFrame, columns, categories: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """The booster's input: every column float64; categoricals as codes of ``categories``.

    Why all-numeric: the MLflow signature and input example of a pandas-categorical booster
    cannot round-trip through JSON (pyfunc would hand it strings); codes plus
    ``fit_categories.json`` can, and serving builds the same numeric matrix. Unknown or
    missing levels become NaN (LightGBM's missing value). Nullable pandas dtypes
    (``Int64``, ``boolean``) become float64 with NaN.
    """
    categories = categories or {}
    out = {}
    for c in columns:
        s = frame[c]
        if c in categories:
            text = s.astype("object").where(s.notna(), None)
            text = text.map(lambda v: None if v is None else str(v))
            codes = pd.Categorical(text, categories=categories[c]).codes.astype("float64")
            codes[codes < 0] = np.nan
            out[c] = pd.Series(codes, index=frame.index)
        elif pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            out[c] = pd.Series(s.to_numpy(dtype="float64", na_value=np.nan), index=frame.index)
        else:
            raise ValueError(f"feature column {c!r} has dtype {s.dtype} but no category levels")
    return pd.DataFrame(out, index=frame.index)
