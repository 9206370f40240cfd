"""Log a training run to MLflow and register the scorer, moving ``champion`` only on merit.

The run holds parameters, metrics of every model, the dataset digest, the feature manifest,
the milestone file, charts, the learned-weights table, the native LightGBM booster and the
``scorer/`` bundle serving reads (docs/architecture.md, "Model bundle").

Champion rule: the new version becomes ``champion`` only if its ROC AUC on the newest
evaluation period beats the current champion's ROC AUC *on the same rows* (the champion is
re-scored now, with features rebuilt from its own milestone file when it used a different
one); otherwise it gets ``challenger``. The decision and both figures are logged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from features.schema import LABEL_COLUMN, SNAPSHOT_KEYS
from features.spec import load_milestones
from training.metrics import evaluate_predictions
from training.models import calibrator_from_json, model_matrix

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
CHAMPION, CHALLENGER = "champion", "challenger"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (the registry needs a DB)."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def artifact_location_for(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite store's file, so a store is one folder.

    MLflow's default for a SQLite store is ``./mlruns`` under whatever directory the command ran
    in, which scatters one store's artifacts across working directories. Other stores keep
    their server's default (``None``).
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):]).resolve()
        return (db.parent / "mlartifacts" / experiment).as_uri()
    return None


def ensure_experiment(client, tracking_uri: str, name: str) -> str:
    """Return the id of experiment ``name``, creating it with :func:`artifact_location_for`."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location_for(tracking_uri, name))


def write_scorer_bundle(result, milestones_path: Path | None, out_dir: Path) -> Path:
    """Write ``calibrator.json, feature_manifest.csv, milestones.yaml, fit_categories.json, tiers.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibrator.json").write_text(json.dumps(result.calibrator.to_json()), encoding="utf-8")
    result.manifest.to_csv(out / "feature_manifest.csv", index=False)
    if milestones_path is not None and Path(milestones_path).is_file():
        shutil.copyfile(milestones_path, out / "milestones.yaml")  # the file as people wrote it
    else:
        (out / "milestones.yaml").write_text(result.spec.to_yaml(), encoding="utf-8")
    (out / "fit_categories.json").write_text(json.dumps(result.fit_categories, indent=1), encoding="utf-8")
    (out / "tiers.json").write_text(json.dumps(result.tiers, indent=1), encoding="utf-8")
    return out


def _input_example(result, n: int = 5) -> pd.DataFrame:
    return model_matrix(result.frame.loc[result.split.evaluation].head(n), result.feature_columns,
                        result.fit_categories)


def score_champion(client, result, model_name: str,
                   rebuild_features: Callable | None = None) -> dict | None:
    """Score the current champion on the new run's evaluation rows.

    Returns
    -------
    dict or None
        ``{"version", "run_id", "metrics"}``, ``{"version", "error"}`` when it could not be
        scored, or None when there is no champion yet.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    try:
        booster = mlflow.lightgbm.load_model(f"models:/{model_name}@{CHAMPION}")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="scorer",
                                                             dst_path=tmp))
            manifest = pd.read_csv(local / "feature_manifest.csv")
            calibrator = calibrator_from_json(json.loads((local / "calibrator.json").read_text()))
            champion_spec = load_milestones(local / "milestones.yaml")
            categories = json.loads((local / "fit_categories.json").read_text())
        columns = manifest["name"].tolist()
        ev = result.frame.loc[result.split.evaluation].reset_index(drop=True)
        if any(c not in ev.columns for c in columns):
            if rebuild_features is None:
                raise ValueError("champion uses features this run did not build, and no feature builder was given")
            rebuilt = rebuild_features(champion_spec, result.split.evaluation_cutoffs).frame
            keys = list(SNAPSHOT_KEYS)
            ev = ev[[*keys, LABEL_COLUMN]].merge(rebuilt[[*keys, *columns]], on=keys, how="left",
                                                 validate="one_to_one")
        X = model_matrix(ev, columns, {c: v for c, v in categories.items() if c in columns})
        proba = calibrator.predict(booster.predict(X, raw_score=True))
        metrics = evaluate_predictions(ev[LABEL_COLUMN].astype(int), proba, top_k=result.config.top_k,
                                       groups=ev["cutoff"].to_numpy())
        return {"version": str(version.version), "run_id": version.run_id, "metrics": metrics}
    except Exception as e:  # noqa: BLE001 - a broken champion must not crash training; it is logged
        return {"version": str(version.version), "run_id": version.run_id, "error": f"{type(e).__name__}: {e}"}


def decide_alias(new_metrics: dict, champion: dict | None, min_improvement: float = 0.0) -> dict:
    """``champion`` if there is none or the new ROC AUC beats it by more than ``min_improvement``.

    >>> decide_alias({"roc_auc": 0.8}, None)["alias"]
    'champion'
    >>> decide_alias({"roc_auc": 0.8}, {"version": "1", "metrics": {"roc_auc": 0.85}})["alias"]
    'challenger'
    """
    new_auc = float(new_metrics["roc_auc"])
    if champion is None:
        return {"alias": CHAMPION, "reason": "no champion yet", "new_roc_auc": new_auc}
    if "error" in champion:
        return {"alias": CHALLENGER, "reason": f"champion v{champion['version']} could not be scored on the new "
                f"evaluation rows ({champion['error']}); a person must decide", "new_roc_auc": new_auc,
                "champion_version": champion["version"]}
    old_auc = float(champion["metrics"]["roc_auc"])
    beats = new_auc > old_auc + min_improvement
    return {
        "alias": CHAMPION if beats else CHALLENGER,
        "reason": (f"new ROC AUC {new_auc:.4f} {'>' if beats else '<='} champion v{champion['version']} "
                   f"{old_auc:.4f} + {min_improvement} on the same newest evaluation rows"),
        "new_roc_auc": new_auc, "champion_roc_auc": old_auc, "champion_version": champion["version"],
    }


def log_and_register(result, *, milestones_path: Path | None, data_source: str, tracking_uri: str | None = None,
                     rebuild_features: Callable | None = None) -> dict:
    """Log ``result`` as an MLflow run, register it as ``config.model_name`` and set its alias.

    Returns
    -------
    dict
        ``run_id, model_uri, version, alias, reason`` and the champion's figures if any.
    """
    import mlflow
    import mlflow.lightgbm
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from training.plots import plot_calibration, plot_gains, plot_shap_beeswarm

    config = result.config
    uri = resolve_tracking_uri(tracking_uri)
    # The registry lives in the tracking store. Set it explicitly: a registry URI left over in this
    # process (MLflow mirrors set_registry_uri into MLFLOW_REGISTRY_URI) must not redirect the model.
    registry_uri = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` the project's run is already chosen
        ensure_experiment(client, uri, config.experiment)
        mlflow.set_experiment(config.experiment)
    # Score the champion before this run registers anything, on exactly this run's evaluation rows.
    champion = score_champion(client, result, config.model_name, rebuild_features)
    decision = decide_alias(result.model_metrics, champion, config.min_improvement)

    with mlflow.start_run(run_name="train") as run, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, (dict, list)) else v)
                           for k, v in config.as_params().items()})
        mlflow.log_params({"horizon_days": result.spec.settings.horizon_days, "n_features": len(result.feature_columns),
                           "best_iteration": result.booster.current_iteration(),
                           "train_cutoffs": len(result.split.train_cutoffs),
                           "evaluation_first_cutoff": str(min(result.split.evaluation_cutoffs).date())})
        for name, row in result.metrics.iterrows():
            mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in row.items() if np.isfinite(v)})
        mlflow.log_metrics({k: float(v) for k, v in result.model_metrics.items() if np.isfinite(v)})
        schedule = result.spec.settings.cutoffs.model_dump(mode="json", exclude_none=True)
        all_cutoffs = sorted(pd.to_datetime(result.frame["cutoff"]).unique())
        schedule_text = json.dumps(schedule)
        if len(schedule_text) > 6000:  # MLflow's limit for a parameter value (long explicit date lists)
            schedule_text = schedule_text[:5990] + " ..."
        mlflow.log_params({"cutoff_schedule": schedule_text, "n_cutoffs": len(all_cutoffs),
                           "first_cutoff": str(pd.Timestamp(all_cutoffs[0]).date()),
                           "last_cutoff": str(pd.Timestamp(all_cutoffs[-1]).date())})
        for part in result.split_summary.itertuples():
            key = part.part.split(" ")[0]  # "gap (unused)" -> "gap": MLflow names allow no parentheses
            mlflow.log_metrics({f"split.{key}.rows": part.rows, f"split.{key}.converters": part.converters})

        dataset = mlflow.data.from_pandas(_loggable(result.frame), source=data_source, targets=LABEL_COLUMN,
                                          name="snapshots", digest=result.dataset_digest)
        mlflow.log_input(dataset, context="training")

        reports = tmp / "reports"
        reports.mkdir()
        result.metrics.to_csv(reports / "metrics.csv")
        result.split_summary.to_csv(reports / "split_summary.csv", index=False)
        result.weights.to_csv(reports / "learned_weights.csv", index=False)
        result.manifest.to_csv(reports / "feature_manifest.csv", index=False)
        y = result.predictions[LABEL_COLUMN].to_numpy()
        shown = [m for m in ("model", "rules_points", "activity_lightgbm", "logistic_milestones")
                 if m in result.predictions.columns]
        plot_gains(y, {m: result.predictions[m].to_numpy() for m in shown}, reports / "gains_lift.png")
        plot_calibration(y, {m: result.predictions[m].to_numpy() for m in shown}, reports / "calibration_curve.png")
        contrib, X_shap = result.shap_sample
        plot_shap_beeswarm(contrib, X_shap, reports / "shap_beeswarm.png")
        mlflow.log_artifacts(str(reports), artifact_path="reports")
        if milestones_path is not None and Path(milestones_path).is_file():
            mlflow.log_artifact(str(milestones_path))
        mlflow.log_artifacts(str(write_scorer_bundle(result, milestones_path, tmp / "scorer")), artifact_path="scorer")

        example = _input_example(result)
        signature = infer_signature(example, result.booster.predict(example, raw_score=True))
        # Explicit requirements: inferring them spawns a subprocess that re-imports the model (~20 s).
        info = mlflow.lightgbm.log_model(result.booster, name="model", signature=signature,
                                         input_example=example,
                                         pip_requirements=mlflow.lightgbm.get_default_pip_requirements())
        version = mlflow.register_model(info.model_uri, config.model_name)
        client.set_registered_model_alias(config.model_name, decision["alias"], version.version)
        if champion is not None and "metrics" in champion:
            mlflow.log_metrics({f"champion.{k}": float(v) for k, v in champion["metrics"].items() if np.isfinite(v)})
        decision |= {"run_id": run.info.run_id, "model_uri": info.model_uri, "version": str(version.version),
                     "model_name": config.model_name}
        mlflow.log_dict(decision, "registry_decision.json")
        mlflow.set_tags({"registry.alias": decision["alias"], "registry.version": str(version.version),
                         "dataset_digest": result.dataset_digest})
    return decision


def _loggable(frame: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as strings: MLflow schemas and dataset profiles have no category type."""
    out = frame.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype("string").astype(object)
    return out
