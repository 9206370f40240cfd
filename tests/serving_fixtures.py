"""A tiny but real model bundle for serving tests.

Trains a small LightGBM booster on a hand-made feature frame whose columns follow the
pipeline's naming (docs/architecture.md), logs it with ``mlflow.lightgbm.log_model`` into a
temporary SQLite tracking store together with the ``scorer/*`` artifacts, registers it as
``pql-account-scorer`` and sets the ``champion`` alias: the very path serving reads in production.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from features.spec import parse_milestones

MILESTONES_YAML = """
version: 1
settings: {half_life_days: 14, horizon_days: 30}
milestones:
  - {name: created_project, category: activation, label: created a project, event: project_created}
  - {name: invited_teammate, category: collaboration, label: invited teammates, event: teammate_invited}
  - {name: connected_integration, category: adoption, label: connected an integration,
     event: integration_connected}
  - {name: added_seats, category: expansion, label: added seats, event: seats_added, min_count: 2}
sequences:
  - {name: project_then_invite, steps: [created_project, invited_teammate], within_days: 14,
     label: created a project and then invited teammates within 14 days}
warning_signs:
  - {name: cancelled_trial, label: cancelled the trial, event: trial_cancelled}
"""

MILESTONES = ["created_project", "invited_teammate", "connected_integration", "added_seats"]
INDUSTRIES = ["fintech", "health", "retail", "software"]
#: How strongly each milestone drives conversion in the hand-made world.
EFFECT = {"created_project": 0.8, "invited_teammate": 1.6, "connected_integration": 1.1,
          "added_seats": 0.9}


def manifest_frame() -> pd.DataFrame:
    """The model's input columns in pipeline naming, with family and milestone."""
    rows = []
    for m in MILESTONES:
        for stat in ("reached", "count", "users", "days_since_first", "days_since_last", "decayed"):
            rows.append((f"ms__{m}__{stat}", "milestone", m, "float64"))
    rows += [(f"ws__cancelled_trial__{stat}", "warning", "cancelled_trial", "float64")
             for stat in ("reached", "count", "days_since_last", "decayed")]
    rows += [("seq__project_then_invite__completed", "sequence", "project_then_invite", "float64"),
             ("seq__project_then_invite__days_since", "sequence", "project_then_invite", "float64"),
             ("acct__active_users_7d", "account", "", "float64"),
             ("acct__active_users_30d", "account", "", "float64"),
             ("fit__industry", "fit", "", "category"),
             ("fit__employees", "fit", "", "float64")]
    return pd.DataFrame(rows, columns=["name", "family", "milestone", "dtype"]).assign(description="")


def feature_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Random accounts with consistent milestone statistics and a label driven by milestones."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {"account_id": np.array([f"acc{i:05d}" for i in range(n)])}
    logit = np.full(n, -2.0)
    reached_all = {}
    for m in MILESTONES:
        reached = rng.random(n) < 0.45
        reached_all[m] = reached
        users = np.where(reached, rng.integers(1, 6, n), 0)
        count = np.where(reached, users + rng.integers(0, 8, n), 0)
        first = np.where(reached, rng.integers(3, 60, n), np.nan)
        last = np.where(reached, np.floor(first * rng.random(n)), np.nan)
        cols[f"ms__{m}__reached"] = reached.astype(float)
        cols[f"ms__{m}__count"] = count.astype(float)
        cols[f"ms__{m}__users"] = users.astype(float)
        cols[f"ms__{m}__days_since_first"] = first
        cols[f"ms__{m}__days_since_last"] = last
        cols[f"ms__{m}__decayed"] = np.where(reached, count * 0.5 ** (np.nan_to_num(last) / 14), 0.0)
        logit += EFFECT[m] * reached + 0.15 * users
    seq = reached_all["created_project"] & reached_all["invited_teammate"] & (rng.random(n) < 0.7)
    cols["seq__project_then_invite__completed"] = seq.astype(float)
    cols["seq__project_then_invite__days_since"] = np.where(seq, rng.integers(0, 30, n), np.nan)
    cols["acct__active_users_7d"] = rng.integers(0, 10, n).astype(float)
    cols["acct__active_users_30d"] = cols["acct__active_users_7d"] + rng.integers(0, 10, n)
    industry = rng.choice(INDUSTRIES, n)
    cols["fit__employees"] = rng.integers(5, 500, n).astype(float)
    logit += 0.5 * seq + 0.6 * (industry == "software") + 0.1 * cols["acct__active_users_7d"]
    # the warning sign from its own generator, so every draw above stays what it was
    signs = np.random.default_rng(seed + 1)
    cancelled = signs.random(n) < 0.2
    count = np.where(cancelled, signs.integers(1, 4, n), 0)
    last = np.where(cancelled, signs.integers(0, 40, n), np.nan)
    cols["ws__cancelled_trial__reached"] = cancelled.astype(float)
    cols["ws__cancelled_trial__count"] = count.astype(float)
    cols["ws__cancelled_trial__days_since_last"] = last
    cols["ws__cancelled_trial__decayed"] = np.where(cancelled, count * 0.5 ** (np.nan_to_num(last) / 14), 0.0)
    logit -= 1.5 * cancelled
    df = pd.DataFrame(cols)
    df["fit__industry"] = pd.Categorical(industry, categories=INDUSTRIES)
    df["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    df["cutoff"] = pd.Timestamp("2024-06-01")
    return df


def build_model_bundle(root: Path, n: int = 400, seed: int = 0, alias: str = "champion",
                       tiers: dict | None = None) -> dict:
    """Train, log, register and alias a tiny model under ``root``.

    Returns a dict with ``tracking_uri``, ``model_uri``, ``version``, ``run_id``, ``frame``
    (the training features) and ``manifest``.
    """
    import lightgbm as lgb
    import mlflow
    from mlflow import MlflowClient
    from sklearn.isotonic import IsotonicRegression

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = manifest_frame()
    frame = feature_frame(n, seed)
    X = frame[list(manifest["name"])]
    booster = lgb.train({"objective": "binary", "num_leaves": 7, "learning_rate": 0.1,
                         "min_data_in_leaf": 10, "verbose": -1, "seed": seed, "num_threads": 1},
                        lgb.Dataset(X, frame["label"]), num_boost_round=40)
    raw = booster.predict(X, raw_score=True)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.001, y_max=0.999).fit(raw, frame["label"])
    scorer = root / "scorer_src"
    scorer.mkdir(exist_ok=True)
    (scorer / "calibrator.json").write_text(json.dumps(
        {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}))
    manifest.to_csv(scorer / "feature_manifest.csv", index=False)
    parse_milestones(MILESTONES_YAML)  # fail here, not in serving, if the fixture is broken
    (scorer / "milestones.yaml").write_text(MILESTONES_YAML)
    (scorer / "fit_categories.json").write_text(json.dumps({"fit__industry": INDUSTRIES}))
    (scorer / "tiers.json").write_text(json.dumps(tiers or {"hot": 60, "warm": 30}))

    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp_id = client.create_experiment(f"serving-fixture-{seed}-{alias}",
                                      artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp_id) as run:
        # Explicit requirements: inferring them runs a subprocess that costs ~20 s per call.
        info = mlflow.lightgbm.log_model(
            booster, name="model", registered_model_name="pql-account-scorer",
            pip_requirements=mlflow.lightgbm.get_default_pip_requirements())
        mlflow.log_artifacts(str(scorer), artifact_path="scorer")
    version = info.registered_model_version
    client.set_registered_model_alias("pql-account-scorer", alias, version)
    # Leave no global MLflow state behind: later tests (training, registry) pick their own stores.
    # (MLflow mirrors these setters into MLFLOW_* environment variables, so clear those too.)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(var, None)
    return {"tracking_uri": tracking_uri, "model_uri": f"models:/pql-account-scorer@{alias}",
            "version": str(version), "run_id": run.info.run_id, "frame": frame,
            "manifest": manifest, "booster": booster}


_CACHE: dict = {}


def shared_bundle() -> dict:
    """One registered tiny model per test session (MLflow start-up costs seconds)."""
    if "bundle" not in _CACHE:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="pql-serving-fixture-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHE["bundle"] = build_model_bundle(root)
    return _CACHE["bundle"]


def shared_scorer():
    """A Scorer on :func:`shared_bundle`, loaded through the registry."""
    if "scorer" not in _CACHE:
        from serving.model import Scorer, load_from_registry

        b = shared_bundle()
        _CACHE["scorer"] = Scorer(load_from_registry(b["model_uri"], b["tracking_uri"]))
    return _CACHE["scorer"]
