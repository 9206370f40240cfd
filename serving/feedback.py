"""`pql feedback-report`: conversions and sales feedback by tier.

Checks milestone-based leads against what sales sees: for each tier of a scored file, how many
accounts there were, how many converted after they were scored, and how many reps called good
or bad leads.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serving.store import EventStore

TIER_ORDER = {"hot": 0, "warm": 1, "cold": 2, "unscored": 9}
#: Column names of ``pql score``'s CRM formats, back to the default names.
_CRM_COLUMNS = {"pql_account_id": "account_id", "pql_tier": "tier", "pql_as_of": "as_of",
                "PQL_Account_Id__c": "account_id", "PQL_Tier__c": "tier", "PQL_As_Of__c": "as_of"}


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read a scores file of ``pql score`` in any format (default, hubspot, salesforce).

    Returns ``account_id, tier`` and ``as_of`` when the file has it.

    Raises
    ------
    ValueError
        The file lacks an account id or tier column.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: scores file not found")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(
        path, dtype={"account_id": str, "pql_account_id": str, "PQL_Account_Id__c": str})
    frame = frame.rename(columns=_CRM_COLUMNS)
    missing = [c for c in ("account_id", "tier") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: column(s) {', '.join(missing)} missing; expected a file "
                         "written by `pql score`")
    keep = [c for c in ("account_id", "tier", "as_of") if c in frame.columns]
    out = frame[keep].copy()
    out["account_id"] = out["account_id"].astype(str)
    if "as_of" in out:
        out["as_of"] = pd.to_datetime(out["as_of"], utc=True).dt.tz_localize(None)
    return out


def conversions_counted(scores: pd.DataFrame, conversions: pd.DataFrame) -> pd.DataFrame:
    """The conversions a report on ``scores`` counts: those on or after the scores' ``as_of``
    (all of them when either side lacks the times)."""
    conv = conversions.dropna(subset=["account_id"])
    if "as_of" in scores and "converted_at" in conv:
        conv = conv[pd.to_datetime(conv["converted_at"]) >= scores["as_of"].min()]
    return conv


def feedback_report(store: EventStore | None, scores: pd.DataFrame | None = None,
                    conversions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per tier: accounts, converted, conversion rate, good, bad, share good.

    Parameters
    ----------
    store : EventStore, optional
        Holds the feedback table (tier recorded with each verdict when known).
    scores : DataFrame, optional
        ``account_id, tier`` (and ``as_of``) of a scoring run; its tier takes precedence over
        the tier stored with the verdict.
    conversions : DataFrame, optional
        ``account_id`` (and ``converted_at``) of converted accounts. With ``as_of`` in
        ``scores`` only conversions at or after it count: the question is whether the
        score foresaw them.

    Returns
    -------
    DataFrame
        Columns ``tier, accounts, converted, conversion_rate, good, bad, share_good``, hot
        first; ``accounts``/``converted`` are absent without ``scores``/``conversions``.
        The latest verdict per account counts (a rep may change their mind).
    """
    fb = store.feedback_frame() if store is not None else pd.DataFrame(
        columns=["id", "account_id", "verdict", "tier"])
    fb["account_id"] = fb["account_id"].astype(str)
    if scores is not None:
        tiers = scores.drop_duplicates("account_id").set_index("account_id")["tier"]
        fb["tier"] = fb["account_id"].map(tiers).fillna(fb["tier"])
    fb["tier"] = fb["tier"].fillna("unscored")
    latest = fb.sort_values("id").drop_duplicates("account_id", keep="last")
    verdicts = (pd.crosstab(latest["tier"], latest["verdict"])
                .reindex(columns=["good", "bad"], fill_value=0)) if len(latest) else pd.DataFrame(
        columns=["good", "bad"], dtype="int64")
    if scores is not None:
        base = scores.groupby("tier").agg(accounts=("account_id", "nunique"))
        if conversions is not None:
            conv = conversions_counted(scores, conversions)
            converted = scores["account_id"].astype(str).isin(set(conv["account_id"].astype(str)))
            base["converted"] = converted.groupby(scores["tier"]).sum()
            base["conversion_rate"] = (base["converted"] / base["accounts"]).round(4)
        report = base.join(verdicts, how="outer")
    else:
        report = verdicts
    report = report.fillna(0)
    for c in ("accounts", "converted", "good", "bad"):
        if c in report:
            report[c] = report[c].astype("int64")
    total = report["good"] + report["bad"]
    report["share_good"] = (report["good"] / total.where(total > 0)).round(3)
    report.index.name = "tier"
    return (report.reset_index().sort_values("tier", key=lambda s: s.map(TIER_ORDER).fillna(5),
                                             kind="stable").reset_index(drop=True))
