"""Batch scoring and CRM export (issue 8): every account as of a date, with reasons.

``pql score DATA_DIR`` goes the serving path: features from ``features.pipeline.online_features``
(the function behind ``/score``) and scores, tiers, reasons and next-best milestones from
:class:`serving.explain.Explainer` (the class behind ``/score``), so a row of the file and the
service's answer for the same account and cutoff agree. Accounts that cannot be scored are
returned with a reason, never dropped; a scored run's distribution goes to MLflow.

CRM formats
-----------
Column names and value types follow what the CRMs' own import tools accept for custom
account/company properties (create the properties once, with these internal names and types):

HubSpot (company import, https://knowledge.hubspot.com/import-and-export/set-up-your-import-file;
property types, https://developers.hubspot.com/docs/api/crm/properties): one header row whose
headers are property names; ``Company Domain Name`` is the unique identifier that updates an
existing company instead of creating one. Number properties take plain numbers (no thousands
separators or % signs); date properties take ISO 8601 ``YYYY-MM-DD`` (a day at midnight UTC);
enumeration (dropdown / multiple checkboxes) properties take internal option values, several
separated by ``;``. Files are UTF-8 CSV.

Salesforce (Data Loader, https://developer.salesforce.com/docs/atlas.en-us.dataLoader.meta/dataLoader/supported_data_types.htm;
date formats, https://help.salesforce.com/s/articleView?id=000385167): custom fields end in
``__c``; upsert on the External ID field ``PQL_Account_Id__c``; Date/Time fields as
``yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`` (UTC); a Percent field holds 12.5 for 12.5 %; multi-select
picklist values separated by ``;``. We do not write the standard ``Website`` field (an upsert would
overwrite what sales typed); the domain goes to ``PQL_Domain__c`` so an admin can match on it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from serving.explain import Explainer
from serving.model import Scorer, load_from_registry

FORMATS = ("default", "hubspot", "salesforce")
DEFAULT_COLUMNS = ["account_id", "probability", "score", "tier", "top_reasons",
                   "next_best_milestone", "milestones_reached", "model_version", "scored_at", "as_of"]
UNSCORED_COLUMNS = ["account_id", "reason_code", "reason"]
#: HubSpot company properties (internal names). Types to create: pql_probability, pql_score
#: Number; pql_tier dropdown (hot, warm, cold); pql_milestones_reached multiple checkboxes
#: (internal values = milestone names) or text; pql_top_reasons multi-line text;
#: pql_scored_at, pql_as_of date picker; the rest single-line text.
HUBSPOT = {"domain": "Company Domain Name", "account_id": "pql_account_id",
           "probability": "pql_probability", "score": "pql_score", "tier": "pql_tier",
           "top_reasons": "pql_top_reasons", "next_best_milestone": "pql_next_best_milestone",
           "milestones_reached": "pql_milestones_reached", "model_version": "pql_model_version",
           "scored_at": "pql_scored_at", "as_of": "pql_as_of"}
#: Salesforce Account custom fields. Types to create: PQL_Account_Id__c Text(255) External ID
#: Unique; PQL_Probability__c Percent(3,2); PQL_Score__c Number(3,0); PQL_Tier__c Picklist;
#: PQL_Top_Reasons__c Long Text Area; PQL_Milestones_Reached__c Multi-Select Picklist or Long
#: Text Area; PQL_Scored_At__c, PQL_As_Of__c Date/Time; the rest Text(255).
SALESFORCE = {"account_id": "PQL_Account_Id__c", "domain": "PQL_Domain__c",
              "probability": "PQL_Probability__c", "score": "PQL_Score__c", "tier": "PQL_Tier__c",
              "top_reasons": "PQL_Top_Reasons__c",
              "next_best_milestone": "PQL_Next_Best_Milestone__c",
              "milestones_reached": "PQL_Milestones_Reached__c",
              "model_version": "PQL_Model_Version__c", "scored_at": "PQL_Scored_At__c",
              "as_of": "PQL_As_Of__c"}
EXPERIMENT = "pql-batch-scoring"


@dataclass
class BatchScores:
    """Result of :func:`score_accounts`.

    Attributes
    ----------
    scores : DataFrame
        One row per scored account, in the requested format.
    unscored : DataFrame
        ``account_id, reason_code, reason`` of every account that could not be scored
        (``no_events``, ``not_started``, ``converted``, ``unknown_category``).
    cutoff : Timestamp
        The as-of time T (naive UTC); features saw only events before it.
    model_version : str
        ``NAME/VERSION`` of the registered model used.
    mlflow_run_id : str or None
        The run holding the score distribution, if logged.
    timings : dict of str to float
        Wall seconds per stage of the run, in order (``load model``, ``load + validate``,
        ``identity resolution``, ``eligible accounts``, ``features``, ``scoring with reasons``,
        ``MLflow log``, ``CRM format``): what ``pql score`` and the benchmark report.
    """

    scores: pd.DataFrame
    unscored: pd.DataFrame
    cutoff: pd.Timestamp
    model_version: str
    mlflow_run_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def _stage(timings: dict[str, float] | None, name: str):
    """Add the wall time of the ``with`` block to ``timings[name]`` (when timings are kept)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


# --- inputs ---------------------------------------------------------------------------------
def parse_cutoff(as_of, events: pd.DataFrame | None = None) -> pd.Timestamp:
    """The as-of time T as a naive UTC timestamp.

    ``None`` means just after the newest event (what "now" means for a data directory); a
    string is read as ISO 8601 (``2025-06-01``, ``2025-06-01T08:00:00+02:00``); an aware time
    is converted to UTC.

    >>> str(parse_cutoff("2025-06-01T08:00:00+02:00"))
    '2025-06-01 06:00:00'
    """
    if as_of is None:
        if events is None or events.empty:
            raise ValueError("--as-of: no events to take the default cutoff from; pass --as-of")
        # Whole seconds: the cutoff is printed, logged and written into every row.
        return pd.Timestamp(events["timestamp"].max()).floor("s") + pd.Timedelta(seconds=1)
    try:
        t = pd.Timestamp(as_of)
    except (ValueError, TypeError):
        raise ValueError(f"--as-of: cannot read {as_of!r} as a date or time "
                         "(ISO 8601, e.g. 2025-06-01 or 2025-06-01T06:00:00Z)") from None
    if t is pd.NaT:
        raise ValueError(f"--as-of: {as_of!r} is not a date")
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo else t


def load_scoring_data(data_dir: str | Path, timings: dict[str, float] | None = None):
    """Load a data directory and give each event its account (identity resolution).

    The data are read and validated once (``features.contract.load_dataset``, without writing
    quarantine files: scoring must not change the data directory; ``pql validate`` writes them)
    and identity is resolved once, on every event of every time: the resolution the service's
    event store would hold. Nothing here is cut at the cutoff; the feature pipeline does that.

    Parameters
    ----------
    data_dir : path
        A data directory as ``features.contract.load_dataset`` reads it.
    timings : dict, optional
        Receives the wall seconds of ``load + validate`` and ``identity resolution``.

    Returns
    -------
    (Dataset, DataFrame)
        The canonical dataset and its events with ``account_id`` filled where resolvable.
    """
    from features.contract import load_dataset
    from features.identity import attach_accounts, resolve_accounts

    with _stage(timings, "load + validate"):
        ds = load_dataset(Path(data_dir), quarantine=False)
    events = ds.events
    with _stage(timings, "identity resolution"):
        if ds.users is not None and len(ds.users):
            res = resolve_accounts(ds.users, ds.events, ds.accounts)
            events = attach_accounts(ds.events, res.user_accounts)
    return ds, events


# --- scoring --------------------------------------------------------------------------------
def score_frame(features: pd.DataFrame, scorer: Scorer | Explainer, scored_at: dt.datetime,
                as_of=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, unscored) for a feature frame with one row per account, default format.

    Parameters
    ----------
    features : DataFrame
        Pipeline feature columns plus ``account_id`` (and ``cutoff``).
    scorer : Scorer or Explainer
        The model (an Explainer is reused as is; a Scorer gets one with 3 reasons, 1 next-best).
    scored_at : datetime
        When the run happened (aware or naive UTC).
    as_of : datetime-like, optional
        The cutoff; default the frame's ``cutoff`` column.
    """
    explainer = scorer if isinstance(scorer, Explainer) else Explainer(scorer, top_k=3, next_best_k=1)
    table, bad = explainer.summarize(features.reset_index(drop=True), reasons=3)
    stamp = pd.Timestamp(scored_at)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    if as_of is None and "cutoff" in features and len(features):
        as_of = features["cutoff"].iloc[0]
    scores = table.assign(probability=table["probability"].round(6),
                          model_version=explainer.scorer.bundle.version,
                          scored_at=pd.Series(stamp, index=table.index).astype("datetime64[us, UTC]"),
                          as_of=pd.Series(pd.Timestamp(as_of) if as_of is not None else pd.NaT,
                                          index=table.index).astype("datetime64[us]"))
    ids = features["account_id"].astype(str).to_numpy()
    unscored = pd.DataFrame({"account_id": [ids[i] for i in bad],
                             "reason_code": "unknown_category",
                             "reason": list(bad.values())}, columns=UNSCORED_COLUMNS)
    return scores[DEFAULT_COLUMNS], unscored


def _day(t) -> str:
    return pd.Timestamp(t).date().isoformat()


def account_activity(events: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Per account of the events: its first event and whether it has any event before ``cutoff``.

    One DuckDB pass over the two columns (the frame's Arrow-backed columns are scanned in
    place): on 11M events a pandas ``groupby`` plus a boolean row filter of the frame cost
    seconds, this well under one. Events without an account are left out.

    Returns
    -------
    DataFrame
        ``account_id`` (str), ``first_event`` (datetime64), ``active`` (bool), one row per account.
    """
    import duckdb

    columns = {"account_id": pd.Series(dtype=object), "first_event": pd.Series(dtype="datetime64[us]"),
               "active": pd.Series(dtype=bool)}
    if events is None or events.empty:
        return pd.DataFrame(columns)
    con = duckdb.connect()
    try:
        con.register("frame", events[["account_id", "timestamp"]])
        out = con.execute(
            "SELECT CAST(account_id AS VARCHAR) AS account_id, min(timestamp) AS first_event, "
            "bool_or(timestamp < CAST(? AS TIMESTAMP)) AS active FROM frame "
            "WHERE account_id IS NOT NULL GROUP BY 1",
            [pd.Timestamp(cutoff).to_pydatetime()]).df()
    finally:
        con.close()
    return out.astype({"account_id": object, "active": bool})


def eligible_accounts(ds, events: pd.DataFrame, cutoff: pd.Timestamp,
                      include_converted: bool = False) -> tuple[list[str], pd.DataFrame]:
    """Split every known account into those to score at ``cutoff`` and those that cannot be.

    Known accounts are the accounts table plus every account events resolve to (any time).
    An account is scored if it has at least one event before T and (unless
    ``include_converted``) had not converted before T: the model learnt from accounts that had
    not converted yet, and a customer is not a lead.

    Returns
    -------
    (list of account ids, DataFrame ``account_id, reason_code, reason``)
    """
    # Events of users no account could be found for (null account id) belong to no account.
    per_account = account_activity(events, cutoff)
    first = pd.Series(per_account["first_event"].to_numpy(), index=per_account["account_id"].to_numpy())
    active = set(per_account.loc[per_account["active"], "account_id"])
    known = set(first.index)
    if ds.accounts is not None and len(ds.accounts):
        known |= set(ds.accounts["account_id"].dropna().astype(str))
    rows = []
    for aid in sorted(known - active):
        if aid in first.index:
            rows.append((aid, "no_events", f"no events before {cutoff.isoformat()} "
                                           f"(first event {_day(first[aid])})"))
        else:
            rows.append((aid, "no_events", "no events in the data"))
    converted = {}
    if not include_converted and ds.conversions is not None and len(ds.conversions):
        conv = ds.conversions.dropna(subset=["account_id", "converted_at"])
        conv = conv[conv["converted_at"] < cutoff]
        converted = conv.groupby(conv["account_id"].astype(str))["converted_at"].min().to_dict()
    for aid in sorted(active & set(converted)):
        rows.append((aid, "converted", f"already converted on {_day(converted[aid])}, before "
                                       f"{cutoff.isoformat()} (--include-converted scores it anyway)"))
    to_score = sorted(active - set(converted))
    return to_score, pd.DataFrame(rows, columns=UNSCORED_COLUMNS)


def score_accounts(data_dir: str | Path, as_of=None, model_uri: str | None = None,
                   fmt: str = "default", tracking_uri: str | None = None,
                   log_to_mlflow: bool = True, include_converted: bool = False,
                   scorer: Scorer | None = None) -> BatchScores:
    """Score every eligible account of ``data_dir`` at cutoff ``as_of``, with reasons.

    Parameters
    ----------
    data_dir : path
        A data directory as ``features.contract.load_dataset`` reads it.
    as_of : datetime-like or str, optional
        Cutoff T; default just after the newest event. Only events before T are used.
    model_uri : str, optional
        ``models:/pql-account-scorer@champion`` (default), another alias, a version number or
        ``models:/NAME/VERSION``.
    fmt : {"default", "hubspot", "salesforce"}
        Column names and value types of ``scores`` (see the module docstring).
    tracking_uri : str, optional
        MLflow URI (default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).
    log_to_mlflow : bool
        Log the score histogram and share per tier as a run of experiment ``pql-batch-scoring``.
    include_converted : bool
        Also score accounts that converted before T (listed as unscored otherwise).
    scorer : Scorer, optional
        An already loaded model (benchmarks); ``model_uri`` is then ignored.

    Returns
    -------
    BatchScores

    Raises
    ------
    ValueError
        Unknown ``fmt``, unreadable ``as_of``, or data breaking the contract
        (``features.contract.ContractError``).
    serving.model.ModelError
        The model cannot be found or does not match the feature code.
    """
    from features.pipeline import online_features
    from serving.model import check_manifest

    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if as_of is not None:
        parse_cutoff(as_of)  # fail on a bad date before loading anything
    timings: dict[str, float] = {}
    with _stage(timings, "load model"):
        if scorer is None:
            scorer = Scorer(load_from_registry(model_uri, tracking_uri))
        bundle = scorer.bundle
        check_manifest(bundle)
    ds, events = load_scoring_data(data_dir, timings)
    cutoff = parse_cutoff(as_of, events)
    with _stage(timings, "eligible accounts"):
        to_score, unscored = eligible_accounts(ds, events, cutoff, include_converted)
        keep = set(to_score)
    with _stage(timings, "features"):
        # All events go to the pipeline as they are: it keeps only events before T and with an
        # account (build_feature_table's one full pass), and every account's features come from
        # its own rows, so the rows of the accounts to score are the same as if the events had
        # been cut first. Cutting 11M rows of Arrow strings in pandas cost ~9 s; this costs none.
        feats = (online_features(events, bundle.spec, cutoff, accounts=ds.accounts,
                                 manifest=bundle.manifest)
                 if keep else pd.DataFrame({"account_id": pd.Series(dtype="string")}))
        feats = feats[feats["account_id"].isin(keep)].reset_index(drop=True)
    with _stage(timings, "scoring with reasons"):
        scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
        scores, bad = (score_frame(feats, scorer, scored_at, as_of=cutoff) if len(feats) else
                       (pd.DataFrame(columns=DEFAULT_COLUMNS), pd.DataFrame(columns=UNSCORED_COLUMNS)))
        # Accounts with events before T for which the pipeline made no snapshot: they start
        # later (CRM created_at after T) or had only marketing touches before T.
        missing = sorted(keep - set(feats["account_id"].astype(str)))
        created = (ds.accounts.set_index(ds.accounts["account_id"].astype(str))["created_at"]
                   if ds.accounts is not None and "created_at" in ds.accounts else pd.Series(dtype=object))
        not_started = pd.DataFrame({
            "account_id": missing, "reason_code": "not_started",
            "reason": [f"not started before {cutoff.isoformat()}: "
                       + (f"created on {_day(created[a])}" if a in created.index and pd.notna(created[a])
                          else "no product events before it") for a in missing]},
            columns=UNSCORED_COLUMNS)
        unscored = pd.concat([df for df in (unscored, not_started, bad) if len(df)] or [unscored],
                             ignore_index=True).sort_values("account_id", kind="stable").reset_index(drop=True)
    run_id = None
    with _stage(timings, "MLflow log"):
        if log_to_mlflow and len(scores):
            run_id = log_distribution(scores, bundle, cutoff, tracking_uri, unscored=unscored)
    with _stage(timings, "CRM format"):
        domains = account_domains(ds.accounts, scores["account_id"])
        formatted = to_format(scores, fmt, domains)
    return BatchScores(formatted, unscored, cutoff, bundle.version, run_id, timings)


def account_domains(accounts: pd.DataFrame | None, account_ids: pd.Series) -> pd.Series:
    """Company domain per account id: the accounts table's ``domain``, else a provisional id's.

    Identity resolution names accounts known only by their email domain ``domain:<domain>``.
    """
    ids = pd.Series(account_ids, dtype=object).astype(str)
    table = {}
    if accounts is not None and "domain" in accounts:
        d = accounts.dropna(subset=["account_id"])
        table = dict(zip(d["account_id"].astype(str), d["domain"]))
    prov = ids.str.extract(r"^domain:(.+)$")[0]
    out = ids.map(table)
    out = out.where(out.notna(), prov)
    return pd.Series(out.to_numpy(), index=ids.to_numpy(), dtype=object)


def to_format(scores: pd.DataFrame, fmt: str, domains: pd.Series | None = None) -> pd.DataFrame:
    """Rename columns and convert value types for a CRM import tool (see module docstring).

    ``domains`` maps account id to company domain (HubSpot's company identifier).
    """
    if fmt == "default":
        return scores.reset_index(drop=True)
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    out = scores.reset_index(drop=True).copy()
    out["domain"] = (out["account_id"].map(domains) if domains is not None else None)
    out["domain"] = out["domain"].astype(object).where(out["domain"].notna(), "")
    scored = pd.to_datetime(out["scored_at"], utc=True)
    as_of = pd.to_datetime(out["as_of"])
    out["score"] = out["score"].astype("int64")
    if fmt == "hubspot":
        out["scored_at"] = scored.dt.strftime("%Y-%m-%d")
        out["as_of"] = as_of.dt.strftime("%Y-%m-%d")
        out["probability"] = out["probability"].astype(float).round(4)
        cols = HUBSPOT
    else:
        out["scored_at"] = scored.dt.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        out["as_of"] = as_of.dt.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        out["probability"] = (out["probability"].astype(float) * 100).round(2)  # a Percent field
        cols = SALESFORCE
    return out[list(cols)].rename(columns=cols)


# --- outputs --------------------------------------------------------------------------------
def write_scores(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write ``.csv`` (UTF-8) or ``.parquet`` atomically: a temp file beside it, then rename."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"{out}: expected a .csv or .parquet file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.stem}-", suffix=out.suffix,
                                     delete=False) as f:
        tmp = Path(f.name)
    try:
        if out.suffix == ".csv":
            frame.to_csv(tmp, index=False, encoding="utf-8")
        else:
            frame.to_parquet(tmp, index=False)
        _publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _publish(tmp: Path, out: Path) -> None:
    # NamedTemporaryFile makes 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    tmp.replace(out)


def write_text_atomic(text: str, out: str | Path) -> Path:
    """Write a text file (UTF-8) atomically: a temp file beside it, then rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=out.parent, prefix=f".{out.stem}-",
                                     suffix=out.suffix, delete=False) as f:
        f.write(text)
        tmp = Path(f.name)
    try:
        _publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def score_histogram(scores: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Counts of scores per point (bins [0,1), [1,2), ... [100,100]): fine enough for models
    whose probabilities all lie below 15 %."""
    return np.histogram(np.asarray(scores, float), bins=np.arange(0, 102), range=(0, 101))


def population_stability(prev: np.ndarray, cur: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index between two histograms (same bins).

    >>> population_stability(np.array([10, 10]), np.array([10, 10]))
    0.0
    """
    p = np.asarray(prev, float) / max(np.sum(prev), 1)
    q = np.asarray(cur, float) / max(np.sum(cur), 1)
    p, q = np.clip(p, eps, None), np.clip(q, eps, None)
    return float(np.sum((q - p) * np.log(q / p)))


def log_distribution(scores: pd.DataFrame, bundle, cutoff, tracking_uri: str | None = None,
                     unscored: pd.DataFrame | None = None) -> str:
    """Log a scored run's distribution to MLflow; return the run id.

    One run of experiment ``pql-batch-scoring`` per scoring: metrics ``accounts``,
    ``share_<tier>`` for every tier (cold included), ``mean_score``, probability quantiles,
    ``unscored_<reason_code>``, and ``psi_vs_previous`` (population stability of the score
    histogram against the previous run with the same model); artifacts
    ``score_histogram.json`` and ``score_histogram.png``. Uses an explicit client, so the
    caller's global MLflow state is untouched. ``scores`` is in the default format.
    """
    from mlflow.entities import Metric, Param, RunTag

    from serving.model import _client

    client, uri = _client(tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        # Keep a SQLite store's artifacts beside its file rather than in ./mlruns of the cwd.
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / EXPERIMENT).as_uri()
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    counts, edges = score_histogram(scores["score"])
    previous = client.search_runs([exp_id], filter_string=f"tags.model_version = '{bundle.version}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    cutoff = pd.Timestamp(cutoff)
    run = client.create_run(exp_id, run_name=f"score-{cutoff.date()}",
                            tags={"model_version": bundle.version, "cutoff": cutoff.isoformat(),
                                  "score_histogram": json.dumps(counts.tolist())})
    run_id = run.info.run_id
    try:
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        tiers = list(bundle.tiers) + ["cold"]
        shares = scores["tier"].value_counts(normalize=True)
        prob = scores["probability"].astype(float)
        metrics = {"accounts": len(scores), "mean_score": float(scores["score"].mean()),
                   "mean_probability": float(prob.mean()),
                   **{f"probability_p{q}": float(prob.quantile(q / 100)) for q in (50, 90, 99)},
                   **{f"share_{t}": float(shares.get(t, 0.0)) for t in tiers},
                   **{f"accounts_{t}": int((scores["tier"] == t).sum()) for t in tiers}}
        if unscored is not None:
            metrics["unscored"] = len(unscored)
            for code, n in unscored["reason_code"].value_counts().items():
                metrics[f"unscored_{code}"] = int(n)
        if previous and "score_histogram" in previous[0].data.tags:
            prev = np.asarray(json.loads(previous[0].data.tags["score_histogram"]))
            if prev.shape == counts.shape:
                metrics["psi_vs_previous"] = population_stability(prev, counts)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                         params=[Param("model_version", bundle.version),
                                 Param("cutoff", cutoff.isoformat()),
                                 Param("tier_cuts", json.dumps(bundle.tiers))])
        client.log_dict(run_id, {"bin_edges": edges.tolist(), "counts": counts.tolist(),
                                 "share_per_tier": {t: float(shares.get(t, 0.0)) for t in tiers}},
                        "score_histogram.json")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(edges[:-1], counts, width=1.0, align="edge")
        for t, cut in bundle.tiers.items():
            ax.axvline(cut, color="grey", linestyle=":", linewidth=1)
            ax.text(cut, ax.get_ylim()[1] * 0.95, f" {t}", fontsize=8, va="top")
        top = max(float(np.max(scores["score"])) + 2, max(bundle.tiers.values(), default=0) + 2)
        ax.set_xlim(0, min(101, top))
        ax.set_xlabel("score (100 x calibrated probability)")
        ax.set_ylabel("accounts")
        ax.set_title(f"{len(scores):,} accounts as of {cutoff.date()} · {bundle.version}")
        fig.tight_layout()
        client.log_figure(run_id, fig, "score_histogram.png")
        plt.close(fig)
        client.set_terminated(run_id)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


# --- one account (pql explain) ---------------------------------------------------------------
def explain_account(data_dir: str | Path, account_id: str, as_of=None, model_uri: str | None = None,
                    tracking_uri: str | None = None, scorer: Scorer | None = None):
    """Every contribution of one account at cutoff ``as_of`` (``pql explain``).

    Same loading and feature path as :func:`score_accounts`, so the explanation matches the
    account's row of a scores file for the same cutoff.

    Returns
    -------
    serving.explain.Explanation
        With ``contributions`` (every group) filled, ready for ``render_html``.

    Raises
    ------
    ValueError
        Unknown account, no events before the cutoff, or a fit category unknown to the model.
    """
    from features.pipeline import online_features

    ds, events = load_scoring_data(data_dir)
    cutoff = parse_cutoff(as_of, events)
    mine = events[events["account_id"].eq(str(account_id)).fillna(False).to_numpy(dtype=bool)]
    if mine.empty:
        raise ValueError(f"account_id {account_id!r}: no events in {data_dir}")
    mine = mine[mine["timestamp"] < cutoff]
    if mine.empty:
        raise ValueError(f"account_id {account_id!r}: no events before {cutoff.isoformat()}")
    scorer = scorer or Scorer(load_from_registry(model_uri, tracking_uri))
    accounts = (ds.accounts[ds.accounts["account_id"].astype(str) == str(account_id)]
                if ds.accounts is not None else None)
    feats = online_features(mine, scorer.bundle.spec, cutoff, accounts=accounts,
                            manifest=scorer.bundle.manifest)
    if feats.empty:
        raise ValueError(f"account_id {account_id!r}: not started before {cutoff.isoformat()}")
    exps, bad = Explainer(scorer).explain(feats, with_all=True)
    if not exps:
        raise ValueError(f"account_id {account_id!r} cannot be scored: {next(iter(bad.values()))}")
    return exps[0]
