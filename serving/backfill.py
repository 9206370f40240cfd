"""Backfill the service's event store from a data directory (history before real-time ingestion).

A team that starts the service already has months of events in files. Scoring by account id
needs them in the event store, tied to accounts the same way training tied them. The data
directory is validated by the data contract (bad rows quarantined, as always); then each
resolved user gets one stored ``group`` call linking it to its account and carrying the account's
traits, and each event one ``track`` row, with its ``source`` kept (marketing touches feed the
demand-gen features, so dropping the source would skew serving against training). Rows without
a message id get a deterministic one, so running the backfill twice stores nothing new.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.contract import load_dataset
from features.identity import attach_accounts, resolve_accounts
from serving.store import DEFAULT_URL, EventStore

#: Rows per transaction: large enough to amortise the commit, small enough to show progress.
CHUNK = 20_000


@dataclass(frozen=True)
class BackfillResult:
    """What a backfill sent and what the store kept (re-running it stores nothing new)."""

    messages: int
    stored: int
    group_calls: int
    track_calls: int

    @property
    def duplicates(self) -> int:
        return self.messages - self.stored


def _iso(ts) -> str | None:
    return None if pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _message_id(*parts) -> str:
    """A deterministic id for rows that have none, so a re-run deduplicates instead of doubling."""
    return "bf-" + hashlib.sha1("\x1f".join("" if p is None else str(p) for p in parts).encode()).hexdigest()


def group_rows(user_accounts: pd.DataFrame, accounts: pd.DataFrame, first_seen: pd.Series) -> list[dict]:
    """One stored ``group`` row per resolved user with events, carrying its account's traits."""
    traits_of: dict[str, str] = {}
    for row in accounts.to_dict("records"):
        traits = {}
        for k, v in row.items():
            # ended_at only shapes training snapshots; as a group trait it would come back as a
            # fit attribute. Missing values (None, NA, NaN, NaT) are simply not sent.
            if k in ("account_id", "domain_aliases", "ended_at") or (pd.api.types.is_scalar(v) and pd.isna(v)):
                continue
            traits["createdAt" if k == "created_at" else k] = _iso(v) if k == "created_at" else (
                v.item() if hasattr(v, "item") else v)
        traits_of[row["account_id"]] = json.dumps(traits)
    out = []
    linked = user_accounts.dropna(subset=["account_id"])
    for user_id, account_id in zip(linked["user_id"], linked["account_id"]):
        ts = first_seen.get(user_id)
        if ts is None or pd.isna(ts):
            continue  # a user with no events has nothing to score
        out.append({"message_id": _message_id("group", user_id, account_id), "type": "group",
                    "user_id": user_id, "account_id": account_id, "event": None,
                    "timestamp": pd.Timestamp(ts).to_pydatetime(), "source": "product",
                    "properties": None, "traits": traits_of.get(account_id, "{}")})
    return out


def track_rows(events: pd.DataFrame) -> list[dict]:
    """One stored ``track`` row per (contract-valid) event, its account and source kept."""
    ids = events["message_id"].astype(object).where(events["message_id"].notna(), None).tolist()
    out = []
    cols = ["user_id", "account_id", "event", "timestamp", "source", "properties"]
    for mid, (user_id, account_id, event, ts, source, props) in zip(ids, events[cols].itertuples(index=False)):
        props = props if isinstance(props, str) and props else None
        out.append({"message_id": mid or _message_id("track", user_id, event, ts, props), "type": "track",
                    "user_id": user_id, "account_id": account_id if isinstance(account_id, str) else None,
                    "event": event, "timestamp": pd.Timestamp(ts).to_pydatetime(), "source": source,
                    "properties": props, "traits": None})
    return out


def backfill(data_dir: str | Path, store_url: str = DEFAULT_URL, *, progress=None) -> BackfillResult:
    """Load ``data_dir`` into the event store at ``store_url``.

    Parameters
    ----------
    data_dir:
        A data directory as :func:`features.contract.load_dataset` reads it.
    store_url:
        SQLAlchemy URL of the event store the service reads (``PQL_STORE_URL``).
    progress:
        Optional callable ``progress(done, total)`` called after each committed chunk.

    Returns
    -------
    BackfillResult
        Rows sent and stored; a second run over the same data stores nothing new.
    """
    ds = load_dataset(Path(data_dir))
    resolution = resolve_accounts(ds.users, ds.events, ds.accounts)
    events = attach_accounts(ds.events, resolution.user_accounts)
    first_seen = events.groupby("user_id")["timestamp"].min()
    groups = group_rows(resolution.user_accounts, ds.accounts, first_seen)
    tracks = track_rows(events)
    rows = groups + tracks
    store = EventStore(store_url)
    stored = 0
    try:
        for start in range(0, len(rows), CHUNK):
            stored += store.append(rows[start:start + CHUNK]).stored  # one transaction per chunk
            if progress:
                progress(min(start + CHUNK, len(rows)), len(rows))
    finally:
        store.dispose()
    return BackfillResult(messages=len(rows), stored=stored, group_calls=len(groups), track_calls=len(tracks))
