"""`pql feedback-report`: conversions and sales feedback by tier.

Checks milestone-based leads against what sales sees: for each tier of a scored file, how many
accounts converted and how many reps called good or bad leads.
"""

from __future__ import annotations

import pandas as pd

from serving.store import EventStore


def feedback_report(store: EventStore, scores: pd.DataFrame | None = None,
                    conversions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per tier: accounts, converted, conversion rate, good, bad, share good.

    Parameters
    ----------
    store : EventStore
        Holds the feedback table (tier recorded with each verdict when known).
    scores : DataFrame, optional
        ``account_id, tier`` of a scoring run; takes precedence over the tier on feedback rows.
    conversions : DataFrame, optional
        ``account_id`` of converted accounts.
    """
    fb = store.feedback_frame()
    if scores is not None:
        tiers = scores.set_index("account_id")["tier"]
        fb["tier"] = fb["account_id"].map(tiers).fillna(fb["tier"])
    fb["tier"] = fb["tier"].fillna("unscored")
    # The latest verdict per account counts (a rep may change their mind).
    latest = fb.sort_values("id").drop_duplicates("account_id", keep="last")
    verdicts = latest.pivot_table(index="tier", columns="verdict", values="id", aggfunc="count",
                                  fill_value=0).reindex(columns=["good", "bad"], fill_value=0)
    if scores is not None:
        base = scores.groupby("tier").agg(accounts=("account_id", "nunique"))
        if conversions is not None:
            conv = scores["account_id"].isin(set(conversions["account_id"]))
            base["converted"] = conv.groupby(scores["tier"]).sum()
            base["conversion_rate"] = base["converted"] / base["accounts"]
        report = base.join(verdicts, how="outer")
    else:
        report = verdicts
    report = report.fillna(0)
    total = report["good"] + report["bad"]
    report["share_good"] = (report["good"] / total.where(total > 0)).round(3)
    order = {"hot": 0, "warm": 1, "cold": 2}
    return report.reset_index().sort_values("tier", key=lambda s: s.map(order).fillna(9)).reset_index(drop=True)
