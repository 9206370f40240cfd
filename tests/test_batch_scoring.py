"""Batch scoring: one row per account, CRM formats, unscorable accounts listed, MLflow log."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from serving.batch import score_frame, to_format, write_scores, log_distribution
from serving_fixtures import shared_bundle, shared_scorer


@pytest.fixture(scope="module")
def result():
    scorer = shared_scorer()
    feats = shared_bundle()["frame"].head(60).reset_index(drop=True).copy()
    feats["fit__industry"] = feats["fit__industry"].astype(object)
    feats.loc[7, "fit__industry"] = "aerospace"  # unknown to the model
    return scorer, feats, *score_frame(feats, scorer, dt.datetime(2024, 6, 1, 12))


def test_one_row_per_account_and_unscorable_listed(result):
    scorer, feats, scores, unscored = result
    assert len(scores) + len(unscored) == len(feats)
    assert scores["account_id"].is_unique
    assert list(unscored["account_id"]) == [feats.loc[7, "account_id"]]
    assert "aerospace" in unscored["reason"].iloc[0]
    assert scores["score"].between(0, 100).all()
    assert set(scores["tier"]) <= {"hot", "warm", "cold"}
    assert (scores["top_reasons"].str.count(" \| ") <= 2).all()
    assert (scores["model_version"] == scorer.bundle.version).all()


def test_crm_formats(result, tmp_path):
    _, _, scores, _ = result
    hs = to_format(scores, "hubspot")
    assert "pql_score" in hs and hs["pql_scored_at"].iloc[0] == "2024-06-01"
    sf = to_format(scores, "salesforce")
    assert all(c.endswith("__c") or c == "Website" for c in sf.columns)
    assert sf["PQL_Scored_At__c"].iloc[0] == "2024-06-01T12:00:00Z"
    assert sf["PQL_Probability__c"].max() <= 100
    out = write_scores(sf, tmp_path / "scores.csv")
    back = pd.read_csv(out)
    assert len(back) == len(scores) and not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match="csv or .parquet"):
        write_scores(sf, tmp_path / "scores.xlsx")


def test_distribution_logged_to_mlflow(result, tmp_path, monkeypatch):
    import mlflow

    # Keep artifacts out of the working tree (the store's default root is ./mlruns).
    client = mlflow.MlflowClient(shared_bundle()["tracking_uri"])
    if client.get_experiment_by_name("pql-batch-scoring") is None:
        client.create_experiment("pql-batch-scoring", artifact_location=(tmp_path / "art").as_uri())

    scorer, _, scores, _ = result
    b = shared_bundle()
    run_id = log_distribution(scores, scorer.bundle, "2024-06-01", b["tracking_uri"])
    run = mlflow.MlflowClient(b["tracking_uri"]).get_run(run_id)
    shares = [run.data.metrics[f"share_{t}"] for t in ("hot", "warm", "cold")]
    assert sum(shares) == pytest.approx(1.0)
    assert run.data.metrics["share_hot"] == pytest.approx((scores["tier"] == "hot").mean())
