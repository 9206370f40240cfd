"""A straightforward pandas implementation of the feature pipeline.

Two jobs: the speed yardstick of ``bench/bench_features.py`` (the pipeline must be >= 10x faster)
and an independent oracle in ``tests/test_pipeline.py`` (written from the definitions, loop per
cutoff, without sharing code with ``features.pipeline``). It is deliberately plain, not fast.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from features.spec import CATEGORIES, MilestoneSpec

# Written out here, not imported from the pipeline: the reference states its own columns.
_MILESTONE_STATS = ("reached", "count", "users", "days_since_first", "days_since_last", "decayed")
_WARNING_STATS = ("reached", "count", "days_since_last", "decayed")

LN2 = math.log(2.0)


def _matches(props, where: dict) -> bool:
    if not where:
        return True
    if props is None or (isinstance(props, float) and math.isnan(props)) or props is pd.NA:
        return False
    doc = json.loads(props)
    for key, wanted in where.items():
        if key not in doc:
            return False
        got = doc[key]
        got_text = got if isinstance(got, str) else json.dumps(got)
        options = wanted if isinstance(wanted, list) else [wanted]
        if got_text not in [w if isinstance(w, str) else json.dumps(w) for w in options]:
            return False
    return True


def _nth(times: pd.Series, n: int):
    """n-th smallest (1-based) or NaT."""
    s = times.sort_values()
    return s.iloc[n - 1] if len(s) >= n else pd.NaT


def _dg_name(event: str) -> str:
    safe = "".join(ch if ch.isalnum() else "_" for ch in str(event).strip().lower()).strip("_")
    return f"dg__{safe or 'event'}__decayed"


def reference_features(events: pd.DataFrame, accounts: pd.DataFrame, conversions: pd.DataFrame,
                       spec: MilestoneSpec, cutoffs, *, fit_columns=None, marketing_events=None) -> pd.DataFrame:
    """Features per (account_id, cutoff), same columns as ``features.pipeline`` (order not guaranteed)."""
    hl = spec.settings.half_life_days
    horizon = pd.Timedelta(days=spec.settings.horizon_days)
    ev = events[events["account_id"].notna()].copy()
    ev["is_mkt"] = ev["source"].fillna("product") == "marketing"
    product = ev[~ev["is_mkt"]]
    marketing = ev[ev["is_mkt"]]
    if fit_columns is None:
        fit_columns = [c for c in accounts.columns
                       if c not in ("account_id", "domain", "domain_aliases", "name", "created_at", "ended_at")]
    if marketing_events is None:
        marketing_events = sorted(marketing["event"].dropna().unique())

    first_event = product.groupby("account_id")["timestamp"].min()
    created = accounts.set_index("account_id")["created_at"] if len(accounts) else pd.Series(dtype="datetime64[us]")
    ids = sorted(set(accounts["account_id"].dropna()) | set(first_event.index))
    start = pd.Series({a: (created.get(a) if a in created.index and pd.notna(created.get(a))
                           else first_event.get(a, pd.NaT)) for a in ids}, dtype="datetime64[us]")
    first_conv = conversions.groupby("account_id")["converted_at"].min()

    # Qualifying events of each milestone (whole history; cutoffs filter later).
    qual = {}
    reached_at = {}
    user_reached = {}
    for m in [*spec.milestones, *spec.warning_signs]:  # a warning sign has the same rule fields
        q = product[product["event"].isin(m.events)]
        if m.where:
            q = q[[_matches(p, m.where) for p in q["properties"]]]
        if m.within_days:
            q = q[q["timestamp"] <= q["account_id"].map(start) + pd.Timedelta(days=m.within_days)]
        qual[m.name] = q
        # n-th event / n-th distinct user with idiomatic pandas (sort + cumcount), no Python loops
        q = q.sort_values("timestamp", kind="stable")
        count_t = q[q.groupby("account_id").cumcount() == m.min_count - 1].set_index("account_id")["timestamp"]
        firsts = q.groupby(["account_id", "user_id"], as_index=False)["timestamp"].min()
        firsts = firsts.sort_values("timestamp", kind="stable")
        users_t = firsts[firsts.groupby("account_id").cumcount() == m.min_users - 1].set_index("account_id")["timestamp"]
        both = pd.concat([count_t.rename("c"), users_t.rename("u")], axis=1).dropna()
        reached_at[m.name] = both.max(axis=1)
        per_user = q[q.groupby(["account_id", "user_id"]).cumcount() == m.min_count - 1]
        user_reached[m.name] = per_user[["account_id", "user_id", "timestamp"]]

    ended = (accounts.dropna(subset=["ended_at"]).groupby("account_id")["ended_at"].min()
             if "ended_at" in accounts.columns else pd.Series(dtype="datetime64[us]"))
    base = pd.DataFrame({"account_id": ids, "start": start.reindex(ids).to_numpy(),
                         "first_conv": first_conv.reindex(ids).to_numpy(),
                         "ended": ended.reindex(ids).to_numpy()})
    snaps = []
    for T in sorted(pd.Timestamp(c) for c in cutoffs):
        b = base[(base["start"] < T) & (base["first_conv"].isna() | (base["first_conv"] >= T))
                 & (base["ended"].isna() | (base["ended"] > T))]
        snaps.append(pd.DataFrame({"account_id": b["account_id"], "cutoff": T,
                                   "label": ((b["first_conv"] > T) & (b["first_conv"] <= T + horizon)).astype("int64")}))
    frame = pd.concat(snaps, ignore_index=True)
    out = []
    for T, snap in frame.groupby("cutoff", sort=True):
        snap = snap.set_index("account_id")
        t_sec = T

        def days(ts):
            return (t_sec - ts).dt.total_seconds() / 86400.0

        # a warning sign has a milestone's statistics minus users and days since first
        for prefix, rules, stats in (("ms", spec.milestones, _MILESTONE_STATS), ("ws", spec.warning_signs, _WARNING_STATS)):
            for m in rules:
                q = qual[m.name]
                q = q[q["timestamp"] < T]
                g = q.groupby("account_id")
                ra = reached_at[m.name].reindex(snap.index)
                hit = ra.notna() & (ra < T)
                w = np.exp(-LN2 * (T - q["timestamp"]).dt.total_seconds() / 86400.0 / hl)
                values = {
                    "reached": lambda: hit,
                    "count": lambda: g.size().reindex(snap.index).fillna(0).astype("int64"),
                    "users": lambda: g["user_id"].nunique().reindex(snap.index).fillna(0).astype("int64"),
                    "days_since_first": lambda: days(ra).where(hit),
                    "days_since_last": lambda: days(g["timestamp"].max().reindex(snap.index)),
                    "decayed": lambda: w.groupby(q["account_id"]).sum().reindex(snap.index).fillna(0.0),
                }
                for stat in stats:
                    snap[f"{prefix}__{m.name}__{stat}"] = values[stat]()
        for sq in spec.sequences:
            times = [reached_at[st].reindex(snap.index) for st in sq.steps]
            ok = pd.concat([t.notna() for t in times], axis=1).all(axis=1)
            for a, b in zip(times, times[1:]):
                ok &= a <= b
            ok &= (times[-1] - times[0]) <= pd.Timedelta(days=sq.within_days)
            ok &= times[-1] < T
            snap[f"seq__{sq.name}__completed"] = ok
            snap[f"seq__{sq.name}__days_since"] = days(times[-1]).where(ok)
        before = product[product["timestamp"] < T]
        last = before.groupby(["account_id", "user_id"])["timestamp"].max()
        age = (T - last).dt.total_seconds() / 86400.0
        snap["acct__active_users_7d"] = (age <= 7).groupby(level=0).sum().reindex(snap.index).fillna(0).astype("int64")
        snap["acct__active_users_30d"] = (age <= 30).groupby(level=0).sum().reindex(snap.index).fillna(0).astype("int64")
        seen = last.groupby(level=0).size().reindex(snap.index).fillna(0)
        for c in CATEGORIES:
            ur = [user_reached[m.name] for m in spec.milestones if m.category == c]
            ur = pd.concat(ur) if ur else pd.DataFrame(columns=["account_id", "user_id", "timestamp"])
            ur = ur[ur["timestamp"] < T].drop_duplicates(["account_id", "user_id"])
            snap[f"acct__users_{c}"] = ur.groupby("account_id").size().reindex(snap.index).fillna(0).astype("int64")
        snap["acct__share_users_activated"] = np.where(seen > 0, snap["acct__users_activation"] / seen.where(seen > 0, 1), 0.0)
        acc_idx = accounts.set_index("account_id")
        for c in fit_columns:
            snap[f"fit__{c}"] = acc_idx[c].reindex(snap.index) if c in acc_idx.columns else None
        mk = marketing[marketing["timestamp"] < T]
        for e in marketing_events:
            me = mk[mk["event"] == e]
            w = np.exp(-LN2 * (T - me["timestamp"]).dt.total_seconds() / 86400.0 / hl)
            snap[_dg_name(e)] = w.groupby(me["account_id"]).sum().reindex(snap.index).fillna(0.0)
        for fam, names in spec.settings.activity_events.items():
            snap[f"raw__{fam}"] = (before[before["event"].isin(names)].groupby("account_id").size()
                                   .reindex(snap.index).fillna(0).astype("int64"))
        snap["raw__all_events"] = before.groupby("account_id").size().reindex(snap.index).fillna(0).astype("int64")
        out.append(snap.reset_index())
    if not out:
        return frame
    return pd.concat(out, ignore_index=True).sort_values(["cutoff", "account_id"]).reset_index(drop=True)
