"""Training: a calibrated LightGBM scorer on point-in-time snapshots, beside its baselines.

``train`` is pure (a feature set in, fitted models and a comparison table out, no MLflow);
``train_from_data_dir`` loads a data directory, builds features, trains, logs the run to
MLflow and registers the model (``training.registry``).

Example
-------
>>> from training.train import TrainConfig
>>> TrainConfig().calibration
'isotonic'
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.schema import LABEL_COLUMN, SNAPSHOT_KEYS
from features.spec import MilestoneSpec, load_milestones
from training.baselines import Candidate, RulesPointsModel, candidates, make_logistic
from training.metrics import METRIC_COLUMNS, evaluate_predictions
from training.models import category_levels, fit_lightgbm, make_calibrator, model_matrix
from training.plots import learned_weights, shap_values
from training.split import USED_PARTS, SplitError, TimeSplit, time_split, training_cutoffs


class TrainingDataError(ValueError):
    """The data cannot train a scorer; the message says what data is needed."""


class EmptySplitPartError(TrainingDataError):
    """A part of the time split has only converters or only non-converters."""


def empty_part_message(part, frame: pd.DataFrame, horizon_days: int) -> str:
    """Say which part of the split lacks a class, where the converters are, and how to fix it.

    ``part`` is a row of :meth:`TimeSplit.summary`; ``frame`` the snapshot table (cutoff, label).
    """
    one = "converters" if part.converters == 0 else "non-converters"
    why = (f"no account converts within {horizon_days} days (the horizon) after those cutoffs"
           if part.converters == 0 else "every snapshot there converts")
    text = (f"the {part.part} part of the time split (cutoffs {part.first_cutoff:%Y-%m-%d}..{part.last_cutoff:%Y-%m-%d}: "
            f"{part.cutoffs} cutoffs, {part.rows} snapshots) has no {one}: {why}, and every part (train, "
            f"calibration, evaluation) needs both. ")
    per_cutoff = frame.groupby("cutoff")[LABEL_COLUMN].agg(["sum", "size"])
    with_conv = per_cutoff.index[per_cutoff["sum"] > 0]
    if len(with_conv):
        text += (f"Snapshots with converters exist at {len(with_conv)} of {len(per_cutoff)} cutoffs, "
                 f"{with_conv.min():%Y-%m-%d}..{with_conv.max():%Y-%m-%d}. ")
    return text + ("Use cutoffs within the span where conversions happen (pql train --cutoffs DATE,DATE,... or "
                   "--every-days/--count; settings.cutoffs in the milestone file), spaced so that each part's "
                   "label windows reach conversions, or a longer settings.horizon_days.")


def _default_lgb_params() -> dict:
    return {
        # Small, strongly regularised trees: a few hundred converters per period, and measured
        # on the synthetic world they generalise to the next period better than 31 leaves.
        "learning_rate": 0.03,
        "num_leaves": 7,
        "min_data_in_leaf": 300,  # capped at 5 % of the training rows for small data
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        # One thread: on a shared 2-core machine OpenMP threads spin-wait on each other and
        # training got 15x slower under load (bench/bench_train.py measures 1 vs 2 threads).
        "num_threads": 1,
        "seed": 0,
        "deterministic": True,
        "force_col_wise": True,
    }


@dataclass
class TrainConfig:
    """Knobs of a training run (all logged as MLflow parameters)."""

    holdout_fraction: float = 0.4  #: share of cutoffs (newest) held out for calibration + evaluation
    calibration_share: float = 0.5  #: share of held-out cutoffs (oldest) for early stopping + calibrator
    calibration: str = "isotonic"  #: "isotonic" or "platt"
    monotone: bool = True  #: reached / completed flags may only raise the score
    imbalance: str = "sqrt"  #: scale_pos_weight mode: "balanced", "sqrt" or "none"
    num_boost_round: int = 2000
    early_stopping_rounds: int = 100
    lgb_params: dict = field(default_factory=_default_lgb_params)
    top_k: int = 50  #: accounts sales can call per cutoff (precision/recall at k)
    min_converters: int = 50  #: refuse to train below this many converting snapshots
    baselines: bool = True  #: fit baselines and ablations too
    shap_rows: int = 5000  #: evaluation rows sampled for SHAP weights and the beeswarm
    seed: int = 0
    progress: bool = True  #: show rich progress and print tables
    # Registry (train_from_data_dir only)
    register: bool = True
    model_name: str = "pql-account-scorer"
    experiment: str = "pql-milestones"
    min_improvement: float = 0.0  #: ROC AUC margin a challenger needs to become champion

    def as_params(self) -> dict:
        """Flat parameters for MLflow."""
        flat = {k: v for k, v in self.__dict__.items() if k != "lgb_params"}
        flat |= {f"lgb.{k}": v for k, v in self.lgb_params.items()}
        return flat


@dataclass
class FittedCandidate:
    """A fitted model (main, baseline or ablation) with its own calibrator."""

    candidate: Candidate
    estimator: object
    calibrator: object
    categories: dict

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        X = model_matrix(frame, self.candidate.columns, self.categories)
        if self.candidate.kind == "lightgbm":
            return np.asarray(self.estimator.predict(X, raw_score=True))
        return np.asarray(self.estimator.decision_function(X))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibrator.predict(self.predict_raw(frame))


@dataclass
class TrainResult:
    """Everything a training run produced (``train`` fills all but ``registration``)."""

    booster: object
    calibrator: object
    feature_columns: list[str]
    manifest: pd.DataFrame
    metrics: pd.DataFrame  #: one row per model, METRIC_COLUMNS, on the evaluation period
    split: TimeSplit
    split_summary: pd.DataFrame
    weights: pd.DataFrame  #: learned milestone weights (plots.learned_weights)
    fit_categories: dict
    tiers: dict
    spec: MilestoneSpec
    config: TrainConfig
    frame: pd.DataFrame  #: the snapshot table trained on
    predictions: pd.DataFrame  #: evaluation rows: keys, label, <model> probabilities
    fitted: dict[str, FittedCandidate]
    shap_sample: tuple[np.ndarray, pd.DataFrame]  #: (contributions, X) behind the weights
    dataset_digest: str
    registration: dict | None = None

    @property
    def model_metrics(self) -> dict[str, float]:
        return self.metrics.loc["model"].to_dict()


def dataset_digest(frame: pd.DataFrame) -> str:
    """A short, content-based digest of the snapshot table (row order matters)."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    header = "|".join(f"{c}:{frame[c].dtype}" for c in frame.columns).encode()
    return hashlib.sha256(header + hashed.tobytes()).hexdigest()[:16]


def _feature_columns(frame: pd.DataFrame, manifest: pd.DataFrame | None) -> list[str]:
    keys = set(SNAPSHOT_KEYS) | {LABEL_COLUMN}
    if manifest is not None and len(manifest):
        missing = [n for n in manifest["name"] if n not in frame.columns]
        if missing:
            raise TrainingDataError(f"feature manifest names columns missing from the feature table: {missing[:10]}")
        return [n for n in manifest["name"] if n not in keys]
    return [c for c in frame.columns if c not in keys]


def check_training_data(frame: pd.DataFrame, spec: MilestoneSpec, min_converters: int) -> None:
    """Refuse data that cannot train an honest scorer, saying what data is needed.

    Raises
    ------
    TrainingDataError
        Missing keys or label, no converters, fewer converters than ``min_converters``, or a
        milestone file that does not match the feature table / the data.
    """
    missing = [c for c in (*SNAPSHOT_KEYS, LABEL_COLUMN) if c not in frame.columns]
    if missing:
        raise TrainingDataError(f"feature table lacks columns {missing}; build it with features.pipeline.compute_features")
    labels = frame[LABEL_COLUMN]
    if labels.isna().any():
        raise TrainingDataError(f"label is missing in {int(labels.isna().sum())} snapshot rows; every snapshot needs a 0/1 label")
    bad = sorted(set(pd.unique(labels)) - {0, 1, True, False})
    if bad:
        raise TrainingDataError(f"label must be 0/1, found values {bad[:5]}")
    converters = int(labels.astype(int).sum())
    if converters == 0:
        raise TrainingDataError(
            "no converters: no snapshot has an account converting within the horizon. Training needs "
            "conversions (conversions table: account_id, converted_at) that fall after the cutoffs, for accounts "
            "that also have product events")
    if converters < min_converters:
        raise TrainingDataError(
            f"only {converters} converting snapshots, fewer than the floor of {min_converters}: a scorer fit on so few "
            f"converters would be noise. Provide a longer history or more accounts with conversions "
            f"(or lower the floor knowingly with --min-converters)")
    expected = [f"ms__{m.name}__reached" for m in spec.milestones]
    absent = [c for c in expected if c not in frame.columns]
    if absent:
        raise TrainingDataError(
            f"the feature table was not built with this milestone file: columns {absent[:5]} are missing; "
            f"rebuild features with the same milestones.yaml")
    reached = frame[expected].fillna(0).astype(float).to_numpy().sum(axis=0)
    if not (reached > 0).any():
        events = sorted(spec.all_events)
        raise TrainingDataError(
            "the milestone file does not match the data: no account reaches any of its milestones before any cutoff. "
            f"The data needs product events named as in the milestone file (e.g. {events[:8]}), or a milestone "
            "file discovered from this data (pql discover)")


def _fit_candidate(cand: Candidate, X: pd.DataFrame, y: np.ndarray, split: TimeSplit,
                   config: TrainConfig, categories: dict) -> FittedCandidate:
    Xc = X[cand.columns]
    tr, ca = split.train, split.calibration
    if cand.kind == "lightgbm":
        est = fit_lightgbm(Xc[tr], y[tr], Xc[ca], y[ca], params=config.lgb_params | {"seed": config.seed},
                           num_boost_round=config.num_boost_round,
                           early_stopping_rounds=config.early_stopping_rounds,
                           monotone=cand.monotone, imbalance=config.imbalance,
                           categorical=[c for c in cand.columns if c in categories])
        raw_cal = est.predict(Xc[ca], raw_score=True)
    elif cand.kind == "rules":
        est = RulesPointsModel(cand.extra["points"]).fit(Xc[tr], y[tr])
        raw_cal = est.decision_function(Xc[ca])
    elif cand.kind == "logistic":
        est = make_logistic(config.seed).fit(Xc[tr].fillna(0).astype(float), y[tr])
        est = _FilledLogistic(est)
        raw_cal = est.decision_function(Xc[ca])
    else:  # pragma: no cover - candidates() only makes the three kinds
        raise ValueError(cand.kind)
    calibrator = make_calibrator(config.calibration).fit(raw_cal, y[ca])
    return FittedCandidate(cand, est, calibrator, {c: v for c, v in categories.items() if c in cand.columns})


class _FilledLogistic:
    """A fitted sklearn pipeline that reads flags with missing values as 0 (not reached)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.pipeline.decision_function(X.fillna(0).astype(float))


def make_tiers(probabilities, shares=(("hot", 0.10), ("warm", 0.20))) -> dict:
    """Tier cut points on the 0-100 score (``100 * calibrated probability``), for ``tiers.json``.

    ``hot`` is the top 10 % of held-out snapshots, ``warm`` the next 20 %, the rest ``cold``;
    an account's tier is the highest whose cut point its score reaches. ``cuts`` is what
    serving reads; ``tiers`` spells the same out as a list.

    >>> make_tiers([0.01] * 70 + [0.2] * 20 + [0.6] * 10)["cuts"]
    {'hot': 60.0, 'warm': 20.0}
    """
    scores = np.round(100 * np.asarray(probabilities, dtype=float), 1)
    tiers, covered = [], 0.0
    last = 101.0
    for name, share in shares:
        covered += share
        cut = round(float(np.quantile(scores, 1 - covered, method="higher")), 1) if scores.size else 0.0
        cut = min(cut, last)  # never above the tier before it
        tiers.append({"name": name, "min_score": cut})
        last = cut
    tiers.append({"name": "cold", "min_score": 0.0})
    return {"score": "100 * calibrated probability", "cuts": {t["name"]: t["min_score"] for t in tiers[:-1]},
            "tiers": tiers}


def train(feature_set, spec: MilestoneSpec, *, config: TrainConfig | None = None) -> TrainResult:
    """Fit the milestone scorer, its calibrator, baselines and ablations on one time split.

    Parameters
    ----------
    feature_set : FeatureSet-like
        ``.frame`` (account_id, cutoff, label, feature columns) and ``.manifest`` (name, family,
        milestone, description, dtype) from ``features.pipeline.compute_features``.
    spec : MilestoneSpec
        The milestone file the features were built with (points for the rules baseline,
        horizon for the split, labels for the weights table).
    config : TrainConfig

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingDataError
        When the data cannot train a scorer (see :func:`check_training_data`), or a part of
        the time split lacks converters or non-converters.
    """
    config = config or TrainConfig()
    frame = feature_set.frame.reset_index(drop=True)
    manifest = getattr(feature_set, "manifest", None)
    check_training_data(frame, spec, config.min_converters)
    columns = _feature_columns(frame, manifest)
    try:
        split = time_split(frame["cutoff"], spec.settings.horizon_days, holdout_fraction=config.holdout_fraction,
                           calibration_share=config.calibration_share)
    except SplitError as e:
        raise TrainingDataError(str(e)) from None
    y = frame[LABEL_COLUMN].astype(int).to_numpy()
    summary = split.summary(y)
    _say(config, "Time split (sizes and converters):", summary)
    for row in summary.itertuples():
        if row.part in USED_PARTS and (row.converters == 0 or row.converters == row.rows):
            raise EmptySplitPartError(empty_part_message(row, frame, spec.settings.horizon_days))

    categories = category_levels(frame, columns)
    X = model_matrix(frame, columns, categories)
    cands = candidates(columns, spec, include_baselines=config.baselines, monotone=config.monotone)
    main = cands[0]
    if not main.columns:
        raise TrainingDataError("the feature table has no model features (ms__, seq__, acct__, fit__, dg__ columns)")
    fitted: dict[str, FittedCandidate] = {}
    ev = split.evaluation
    predictions = frame.loc[ev, [*SNAPSHOT_KEYS, LABEL_COLUMN]].reset_index(drop=True)
    rows = {}
    with _progress(config) as progress:
        task = progress.add_task("training models", total=len(cands)) if progress else None
        for cand in cands:
            if progress:
                progress.update(task, description=f"training {cand.name}")
            fc = _fit_candidate(cand, X, y, split, config, categories)
            fitted[cand.name] = fc
            proba = fc.calibrator.predict(_raw(fc, X[ev]))
            predictions[cand.name] = proba
            rows[cand.name] = evaluate_predictions(y[ev], proba, top_k=config.top_k,
                                                   groups=frame.loc[ev, "cutoff"].to_numpy())
            if progress:
                progress.advance(task)
    metrics = pd.DataFrame.from_dict(rows, orient="index")[list(METRIC_COLUMNS)]
    metrics.index.name = "model"
    _say(config, f"Evaluation period (newest cutoffs), k = {config.top_k}:", metrics.round(4))

    model = fitted["model"]
    Xm = X.loc[ev, main.columns]
    if len(Xm) > config.shap_rows:
        Xm = Xm.sample(config.shap_rows, random_state=config.seed)
    contrib, _ = shap_values(model.estimator, Xm)
    weights = learned_weights(contrib, main.columns, spec, manifest)
    top = weights.head(12)
    _say(config, "Learned weights, strongest 12 (mean |SHAP| on evaluation rows; learned points = the file's "
         "points shared out by weight over milestones and sequences):", pd.DataFrame({
             "rank": top["rank"].astype(str), "group": top["group"], "kind": top["kind"],
             "mean |SHAP|": top["mean_abs_shap"],
             "learned points": top["points_equivalent"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}"),
             "file's points": top["rules_points"].map(lambda v: "" if pd.isna(v) else f"{v:g}")}))
    model_manifest = _model_manifest(manifest, main.columns)
    calib_proba = model.calibrator.predict(_raw(model, X.loc[split.calibration]))
    return TrainResult(
        booster=model.estimator, calibrator=model.calibrator, feature_columns=main.columns,
        manifest=model_manifest, metrics=metrics, split=split, split_summary=summary, weights=weights,
        fit_categories=model.categories, tiers=make_tiers(calib_proba), spec=spec,
        config=config, frame=frame, predictions=predictions, fitted=fitted, shap_sample=(contrib, Xm),
        dataset_digest=dataset_digest(frame),
    )


def _raw(fc: FittedCandidate, X: pd.DataFrame) -> np.ndarray:
    Xc = X[fc.candidate.columns]
    if fc.candidate.kind == "lightgbm":
        return np.asarray(fc.estimator.predict(Xc, raw_score=True))
    return np.asarray(fc.estimator.decision_function(Xc))


def _model_manifest(manifest: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """The manifest rows of the model's input columns, in the model's column order."""
    from training.baselines import family_of

    if manifest is None or not len(manifest):
        return pd.DataFrame({"name": columns, "family": [family_of(c) for c in columns], "milestone": None,
                             "description": "", "dtype": ""})
    indexed = manifest.set_index("name")
    return indexed.loc[columns].reset_index()


def _say(config: TrainConfig, title: str, table: pd.DataFrame) -> None:
    if not config.progress:
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    show = table.reset_index() if table.index.name else table
    for c in show.columns:
        t.add_column(str(c), justify="right" if pd.api.types.is_numeric_dtype(show[c]) else "left")
    for row in show.itertuples(index=False):
        t.add_row(*[f"{v:%Y-%m-%d}" if isinstance(v, pd.Timestamp) else
                    (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row])
    Console(stderr=True, width=None if sys.stderr.isatty() else 150).print(t)


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(config: TrainConfig):
    if not config.progress:
        return _NoProgress()
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    transient=False)


def with_cutoff_schedule(spec: MilestoneSpec, **changes) -> MilestoneSpec:
    """A copy of ``spec`` whose ``settings.cutoffs`` has ``changes`` applied (None values ignored).

    ``dates`` replaces the whole schedule; ``every_days`` / ``count`` / ``start`` / ``end``
    change those fields of the file's schedule.

    Raises
    ------
    features.spec.SpecError
        When a value is invalid (e.g. ``count`` below 1).

    >>> from features.spec import MilestoneSpec
    >>> spec = MilestoneSpec.model_validate({"milestones": [
    ...     {"name": "a", "category": "adoption", "label": "a", "event": "a"}]})
    >>> with_cutoff_schedule(spec, every_days=14, count=None).settings.cutoffs.every_days
    14
    """
    from pydantic import ValidationError

    from features.spec import CutoffSchedule, SpecError

    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return spec
    current = {} if changes.get("dates") else spec.settings.cutoffs.model_dump(exclude_none=True)
    current.pop("dates", None)  # a regular schedule asked for replaces the file's explicit dates
    try:
        schedule = CutoffSchedule.model_validate(current | changes)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise SpecError(f"cutoff schedule: {bad}") from None
    settings = spec.settings.model_copy(update={"cutoffs": schedule})
    return spec.model_copy(update={"settings": settings})


def train_from_data_dir(data_dir: str | Path, milestones_path: str | Path, *, tracking_uri: str | None = None,
                        config: TrainConfig | None = None, cutoffs: dict | None = None) -> TrainResult:
    """Load a data directory, build features, train, log the run to MLflow and register the model.

    Parameters
    ----------
    data_dir : path
        Directory with events, users, accounts and conversions (parquet/csv/jsonl).
    milestones_path : path
        The milestone file (``milestones.yaml``).
    tracking_uri : str, optional
        MLflow tracking URI; default ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the
        working directory.
    config : TrainConfig
    cutoffs : dict, optional
        Overrides of the file's ``settings.cutoffs`` (``dates``, ``every_days``, ``count``,
        ``start``, ``end``; see :func:`with_cutoff_schedule`). The run logs the schedule used.

    Returns
    -------
    TrainResult
        With ``registration`` describing the run, version and alias decision.

    Raises
    ------
    TrainingDataError, features.spec.SpecError, features.contract.ContractError
        Bad input; nothing is logged or registered.
    """
    from features.contract import load_dataset
    from features.identity import resolve_accounts
    from features.pipeline import compute_features
    from training.quiet import known_noise_silenced

    config = config or TrainConfig()
    spec = with_cutoff_schedule(load_milestones(milestones_path), **(cutoffs or {}))
    dataset = load_dataset(Path(data_dir))
    check_dataset(dataset, spec)
    resolution = resolve_accounts(dataset.users, dataset.events, dataset.accounts)
    user_accounts = resolution.user_accounts
    converted_at = dataset.conversions["converted_at"]
    try:
        snapshot_cutoffs = training_cutoffs(spec, dataset.events["timestamp"], converted_at)
    except SplitError as e:
        raise TrainingDataError(str(e)) from None

    def build(spec_: MilestoneSpec, cutoffs=None):
        return compute_features(dataset, spec_, cutoffs=cutoffs, engine="duckdb", user_accounts=user_accounts,
                                progress=config.progress)

    if config.progress:
        from rich.console import Console

        Console(stderr=True).print(f"[bold]building features[/] for {len(dataset.accounts)} accounts at "
                                   f"{len(snapshot_cutoffs)} cutoffs ...")
    with known_noise_silenced():
        feature_set = build(spec, snapshot_cutoffs)
        try:
            result = train(feature_set, spec, config=config)
        except EmptySplitPartError as e:
            conv = pd.to_datetime(converted_at).dropna()
            raise EmptySplitPartError(
                f"{e} Conversions in the data: first {conv.min():%Y-%m-%d}, last {conv.max():%Y-%m-%d} "
                f"(converted_at); a cutoff T has converters only if some fall in (T, T + "
                f"{spec.settings.horizon_days} days].") from None
        if config.register:
            from training.registry import log_and_register

            result.registration = log_and_register(
                result, milestones_path=Path(milestones_path), data_source=str(Path(data_dir).resolve()),
                tracking_uri=tracking_uri, rebuild_features=build)
            # How users were tied to accounts shaped every feature: keep the report with the run.
            import mlflow

            mlflow.MlflowClient().log_dict(result.registration["run_id"], resolution.report.to_dict(),
                                           "identity_report.json")
    return result


def check_dataset(dataset, spec: MilestoneSpec) -> None:
    """Refuse a data directory that cannot train a scorer, before the (slow) feature build.

    Milestones whose events never occur are not refused here (the feature pipeline warns about
    them once).
    """
    conversions = dataset.conversions
    if conversions is None or len(conversions) == 0:
        raise TrainingDataError(
            "no converters: the conversions table is empty. Training needs a conversions file "
            "(account_id, converted_at) with the accounts that became paying customers")
    events = dataset.events["event"].dropna().unique() if len(dataset.events) else []
    unused = spec.unused_milestones(events)
    if len(unused) == len(spec.milestones):
        raise TrainingDataError(
            "the milestone file does not match the data: none of its events occurs in the events table "
            f"(it expects e.g. {sorted(spec.all_events)[:8]}). Use a milestone file discovered from this data "
            "(pql discover) or events named as the file says")
