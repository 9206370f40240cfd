"""Batch scoring and CRM export (issue 8): every account as of a date, with reasons.

Uses exactly the serving path: ``features.pipeline.online_features`` for the features and
:class:`serving.explain.Explainer` for probability, tier, reasons and next-best milestones.
Accounts that cannot be scored are returned with the reason, never dropped.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from serving.explain import Explainer
from serving.model import Scorer, load_from_registry

FORMATS = ("default", "hubspot", "salesforce")
DEFAULT_COLUMNS = ["account_id", "probability", "score", "tier", "top_reasons",
                   "next_best_milestone", "milestones_reached", "model_version", "scored_at"]
#: HubSpot company import: internal property names; numbers plain, dates YYYY-MM-DD,
#: multiple checkboxes separated by ";". "Company Domain Name" matches existing companies.
HUBSPOT = {"domain": "Company Domain Name", "account_id": "pql_account_id",
           "probability": "pql_probability", "score": "pql_score", "tier": "pql_tier",
           "top_reasons": "pql_top_reasons", "next_best_milestone": "pql_next_best_milestone",
           "milestones_reached": "pql_milestones_reached", "model_version": "pql_model_version",
           "scored_at": "pql_scored_at"}
#: Salesforce Data Loader / Import Wizard for Account: custom fields end in __c; upsert on the
#: external id PQL_Account_Id__c; multi-select picklists separated by ";"; ISO-8601 datetimes.
SALESFORCE = {"account_id": "PQL_Account_Id__c", "domain": "Website",
              "probability": "PQL_Probability__c", "score": "PQL_Score__c", "tier": "PQL_Tier__c",
              "top_reasons": "PQL_Top_Reasons__c",
              "next_best_milestone": "PQL_Next_Best_Milestone__c",
              "milestones_reached": "PQL_Milestones_Reached__c",
              "model_version": "PQL_Model_Version__c", "scored_at": "PQL_Scored_At__c"}


def score_frame(features: pd.DataFrame, scorer: Scorer, scored_at: dt.datetime) -> tuple[
        pd.DataFrame, pd.DataFrame]:
    """(scores, unscored) for a feature frame, one row per account."""
    exps, bad = Explainer(scorer, top_k=3, next_best_k=1).explain(features)
    stamp = pd.Timestamp(scored_at).isoformat()
    scores = pd.DataFrame({
        "account_id": [e.account_id for e in exps],
        "probability": np.round([e.probability for e in exps], 6),
        "score": [e.score for e in exps],
        "tier": [e.tier for e in exps],
        "top_reasons": [" | ".join(r["text"] for r in sorted(
            e.reasons_up + e.reasons_down, key=lambda r: -abs(r["contribution"]))[:3]) for e in exps],
        "next_best_milestone": [e.next_best[0]["label"] if e.next_best else "" for e in exps],
        "milestones_reached": [";".join(m["name"] for m in e.milestones_reached) for e in exps],
        "model_version": scorer.bundle.version,
        "scored_at": stamp,
    }, columns=DEFAULT_COLUMNS)
    unscored = pd.DataFrame({"account_id": [str(features["account_id"].iloc[i]) for i in bad],
                             "reason": list(bad.values())})
    return scores, unscored


def score_accounts(data_dir: str | Path, as_of=None, model_uri: str | None = None,
                   fmt: str = "default", tracking_uri: str | None = None,
                   log_to_mlflow: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every account of ``data_dir`` at cutoff ``as_of`` with reasons.

    Parameters
    ----------
    data_dir : path
        A data directory as ``features.contract.load_dataset`` reads it.
    as_of : datetime-like, optional
        Cutoff T; default just after the newest event.
    model_uri : str, optional
        ``models:/pql-account-scorer@champion`` (default), another alias or a version.
    fmt : {"default", "hubspot", "salesforce"}
        Column names and value types of the output.
    tracking_uri : str, optional
        MLflow URI (default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).
    log_to_mlflow : bool
        Log the score histogram and share per tier as an MLflow run.

    Returns
    -------
    (scores, unscored)
        One row per scored account; accounts that could not be scored with ``reason``.
    """
    from features.contract import load_dataset
    from features.identity import attach_accounts, resolve_accounts
    from features.pipeline import online_features

    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
    ds = load_dataset(Path(data_dir), quarantine=False)
    res = resolve_accounts(ds.users, ds.events, ds.accounts)
    events = attach_accounts(ds.events, res.user_accounts)
    cutoff = (pd.Timestamp(as_of).tz_convert("UTC").tz_localize(None) if as_of is not None and
              pd.Timestamp(as_of).tzinfo else pd.Timestamp(as_of) if as_of is not None
              else events["timestamp"].max() + pd.Timedelta(seconds=1))
    bundle = load_from_registry(model_uri, tracking_uri)
    scorer = Scorer(bundle)
    feats = online_features(events, bundle.spec, cutoff, accounts=ds.accounts, manifest=bundle.manifest)
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    scores, unscored = score_frame(feats.reset_index(drop=True), scorer, scored_at)
    known = set(ds.accounts["account_id"].dropna().astype(str)) | set(
        events["account_id"].dropna().astype(str))
    missing = sorted(known - set(scores["account_id"]) - set(unscored["account_id"]))
    unscored = pd.concat([unscored, pd.DataFrame({
        "account_id": missing, "reason": f"no events before {cutoff.isoformat()}"})], ignore_index=True)
    if log_to_mlflow and len(scores):
        log_distribution(scores, bundle, cutoff, tracking_uri)
    domains = ds.accounts.set_index("account_id")["domain"] if "domain" in ds.accounts else None
    return to_format(scores, fmt, domains), unscored


def to_format(scores: pd.DataFrame, fmt: str, domains: pd.Series | None = None) -> pd.DataFrame:
    """Rename columns and convert value types for a CRM import tool."""
    if fmt == "default":
        return scores
    out = scores.copy()
    out["domain"] = out["account_id"].map(domains) if domains is not None else None
    if fmt == "hubspot":
        out["scored_at"] = pd.to_datetime(out["scored_at"]).dt.strftime("%Y-%m-%d")
        out["probability"] = out["probability"].round(4)
        cols = HUBSPOT
    else:
        out["scored_at"] = pd.to_datetime(out["scored_at"]).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        out["probability"] = (out["probability"] * 100).round(2)  # a Percent field
        cols = SALESFORCE
    return out[list(cols)].rename(columns=cols)


def write_scores(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write ``.csv`` or ``.parquet`` atomically (temp file, then rename)."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"{out}: expected a .csv or .parquet file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=out.suffix, delete=False) as f:
        tmp = Path(f.name)
    try:
        if out.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def log_distribution(scores: pd.DataFrame, bundle, cutoff, tracking_uri: str | None = None) -> str:
    """Log a scored run's histogram and share per tier to MLflow; return the run id."""
    import mlflow

    from serving.model import _client

    _, uri = _client(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("pql-batch-scoring")
    counts, edges = np.histogram(scores["score"], bins=10, range=(0, 100))
    with mlflow.start_run(run_name=f"score-{pd.Timestamp(cutoff).date()}") as run:
        mlflow.log_params({"model_version": bundle.version, "cutoff": str(cutoff),
                           "accounts": len(scores)})
        shares = scores["tier"].value_counts(normalize=True)
        for tier in list(bundle.tiers) + ["cold"]:
            mlflow.log_metric(f"share_{tier}", float(shares.get(tier, 0.0)))
        mlflow.log_metric("mean_score", float(scores["score"].mean()))
        mlflow.log_dict({"bin_edges": edges.tolist(), "counts": counts.tolist()},
                        "score_histogram.json")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(edges[:-1], counts, width=10, align="edge")
        ax.set_xlabel("score")
        ax.set_ylabel("accounts")
        mlflow.log_figure(fig, "score_histogram.png")
        plt.close(fig)
    return run.info.run_id
