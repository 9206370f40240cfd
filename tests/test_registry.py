"""MLflow logging and the champion / challenger rule, on a real (temporary) sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from train_fixtures import FakeFeatureSet, fake_feature_set, fake_spec
from training.registry import decide_alias, log_and_register
from training.train import TrainConfig, train

NAME = "pql-account-scorer"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def feature_set():
    return fake_feature_set(n_accounts=500, n_cutoffs=12, seed=11)


def _train(fs, spec=None, crippled=False, name=NAME):
    cfg = TrainConfig(progress=False, min_converters=20, baselines=False, model_name=name, experiment="tests")
    if crippled:  # one stump: a clearly worse model on the very same rows
        cfg.num_boost_round, cfg.lgb_params = 1, cfg.lgb_params | {"num_leaves": 2}
    return train(fs, spec or fake_spec(), config=cfg)


def _decision(client, run_id) -> dict:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="registry_decision.json")
    return json.loads(Path(path).read_text())


def test_champion_moves_only_when_beaten_on_the_same_rows(store, feature_set, tmp_path):
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store, registry_uri=store)
    weak = _train(feature_set, crippled=True)
    first = log_and_register(weak, milestones_path=None, data_source="fake", tracking_uri=store)
    assert first["alias"] == "champion" and first["reason"] == "no champion yet", first

    strong = _train(feature_set)
    second = log_and_register(strong, milestones_path=None, data_source="fake", tracking_uri=store)
    assert second["alias"] == "champion"
    # the old champion was re-scored on this run's evaluation rows: same figure as its own run
    assert second["champion_roc_auc"] == pytest.approx(weak.model_metrics["roc_auc"], abs=1e-9)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == second["version"]

    third = log_and_register(_train(feature_set, crippled=True), milestones_path=None, data_source="fake",
                             tracking_uri=store)
    assert third["alias"] == "challenger"
    assert third["champion_roc_auc"] == pytest.approx(strong.model_metrics["roc_auc"], abs=1e-9)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == second["version"]
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == third["version"]
    assert _decision(client, third["run_id"])["alias"] == "challenger"


def test_run_holds_metrics_inputs_artifacts_and_a_bundle_serving_can_load(store, feature_set, tmp_path):
    mlflow.set_tracking_uri(store)
    client = MlflowClient(store, registry_uri=store)
    spec = fake_spec()
    ms = tmp_path / "milestones.yaml"
    ms.write_text(spec.to_yaml())
    r = _train(feature_set, name="bundle-test")
    d = log_and_register(r, milestones_path=ms, data_source="fake", tracking_uri=store)
    run = client.get_run(d["run_id"])
    assert run.data.metrics["model.roc_auc"] == pytest.approx(r.model_metrics["roc_auc"])
    assert run.data.metrics["split.evaluation.converters"] == r.split_summary.set_index("part").loc["evaluation", "converters"]
    assert run.inputs.dataset_inputs[0].dataset.digest == r.dataset_digest
    reports = {Path(f.path).name for f in client.list_artifacts(d["run_id"], "reports")}
    assert {"gains_lift.png", "calibration_curve.png", "shap_beeswarm.png", "learned_weights.csv"} <= reports

    from serving.model import download_bundle, load_bundle

    bundle = load_bundle(download_bundle(f"models:/bundle-test/{d['version']}", store, tmp_path / "b"))
    X = r.frame.loc[r.split.evaluation].head(50)
    from training.models import model_matrix

    raw = bundle.booster.predict(model_matrix(X, r.feature_columns, r.fit_categories).to_numpy(), raw_score=True)
    np.testing.assert_allclose(bundle.calibrator(raw), r.fitted["model"].predict_proba(X), atol=1e-9)
    assert list(bundle.tiers) == ["hot", "warm"]


def test_a_champion_with_another_milestone_file_is_rescored_with_its_own_features(store, feature_set):
    mlflow.set_tracking_uri(store)
    full = _train(feature_set, name="respec-test")
    log_and_register(full, milestones_path=None, data_source="fake", tracking_uri=store)
    # the new run uses a milestone file without "shared_report": its table lacks those columns
    spec = fake_spec()
    narrow_spec = spec.model_copy(update={"milestones": [m for m in spec.milestones if m.name != "shared_report"]})
    drop = [c for c in feature_set.frame.columns if c.startswith("ms__shared_report__")]
    narrow = FakeFeatureSet(feature_set.frame.drop(columns=drop),
                            feature_set.manifest[~feature_set.manifest["name"].isin(drop)])
    asked = []

    def rebuild(champion_spec, cutoffs):
        asked.append(([m.name for m in champion_spec.milestones], list(cutoffs)))
        return feature_set

    d = log_and_register(_train(narrow, narrow_spec, name="respec-test"), milestones_path=None, data_source="fake",
                         tracking_uri=store, rebuild_features=rebuild)
    assert asked and "shared_report" in asked[0][0]
    assert d["champion_roc_auc"] == pytest.approx(full.model_metrics["roc_auc"], abs=1e-9)


def test_decide_alias_needs_a_strict_improvement():
    champ = {"version": "3", "metrics": {"roc_auc": 0.80}}
    assert decide_alias({"roc_auc": 0.80}, champ)["alias"] == "challenger"
    assert decide_alias({"roc_auc": 0.81}, champ)["alias"] == "champion"
    assert decide_alias({"roc_auc": 0.81}, champ, min_improvement=0.02)["alias"] == "challenger"
    assert decide_alias({"roc_auc": 0.9}, {"version": "3", "error": "boom"})["alias"] == "challenger"
