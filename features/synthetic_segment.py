"""Write a generated world as a Segment-spec message stream (``events_segment.jsonl``).

The same data as the parquet files, shaped as a Segment / RudderStack export: one ``identify``
per user (e-mail, sign-up time, typed company, inviter), one ``group`` per user whose account
the product knows (with the account's traits), and one ``track`` per product event
(``context.groupId`` when the event names its account). Marketing touches come from a marketing
system, not from the product's Segment source, so they are not in the stream.

Meant for format tests on small worlds: it is a plain per-row loop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


def _iso(ts) -> str | None:
    if ts is None or pd.isna(ts):
        return None
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and not (isinstance(v, float) and pd.isna(v))}


def segment_messages(world_dir: Path):
    """Yield the Segment messages (dicts) for the world in ``world_dir``."""
    world_dir = Path(world_dir)
    users = pd.read_parquet(world_dir / "users.parquet")
    accounts = pd.read_parquet(world_dir / "accounts.parquet").set_index("account_id")
    events = pd.read_parquet(world_dir / "events.parquet")
    for u in users.astype(object).where(users.notna(), None).itertuples(index=False):
        yield {"type": "identify", "userId": u.user_id, "messageId": f"identify-{u.user_id}",
               "timestamp": _iso(u.created_at),
               "traits": _clean({"email": u.email, "createdAt": _iso(u.created_at), "company": u.company,
                                 "invitedBy": u.invited_by})}
        if u.account_id is not None:
            a = accounts.loc[u.account_id]
            yield {"type": "group", "userId": u.user_id, "groupId": u.account_id,
                   "messageId": f"group-{u.user_id}", "timestamp": _iso(u.created_at),
                   "traits": _clean({"name": a["name"], "website": f"https://www.{a['domain']}/",
                                     "createdAt": _iso(a["created_at"]), "employees": int(a["employees"]),
                                     "industry": a["industry"], "country": a["country"],
                                     "icp_segment": a["icp_segment"]})}
    product = events[events["source"] == "product"]
    for e in product.astype(object).where(product.notna(), None).itertuples(index=False):
        msg = {"type": "track", "userId": e.user_id, "event": e.event, "messageId": e.message_id,
               "timestamp": _iso(e.timestamp), "properties": json.loads(e.properties) if e.properties else {}}
        if e.account_id is not None:
            msg["context"] = {"groupId": e.account_id}
        yield msg


def write_segment_export(path: Path, world_dir: Path) -> Path:
    """Write :func:`segment_messages` as JSON lines to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for msg in segment_messages(world_dir):
                fh.write(json.dumps(msg, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
