"""Segment-compatible ingestion: request bodies -> validated rows for the event store.

Parsing and validation are the data contract's own (``features.segment`` splits the message
stream, ``features.contract`` validates event rows), so a webhook event is accepted exactly
when the same event in a batch file would be. A request is all-or-nothing: one invalid
message rejects the whole request with a 422 naming it (``batch[3].userId: empty user_id``),
so a client retry never meets a half-stored batch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import pandas as pd

from features import contract
from features.segment import MESSAGE_TYPES, VIEW_EVENT, messages_to_frame, split_messages
from features.schema import EVENT_SOURCES
from features.timestamps import to_utc_naive

#: Default limits; Segment's own API caps a batch at 500 KB and a message at 32 KB.
MAX_EVENTS_PER_REQUEST = 2500
MAX_BODY_BYTES = 2 * 1024 * 1024

# Contract column -> the Segment field a client should fix.
_FIELD = {"user_id": "userId", "event": "event", "timestamp": "timestamp",
          "message_id": "messageId", "properties": "properties", "account_id": "groupId",
          "source": "source"}


class IngestError(ValueError):
    """A request that cannot be stored; ``field`` names the offending JSON field."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def to_dict(self) -> dict:
        """Error body returned to the client."""
        return {"success": False, "error": str(self), "field": self.field}


def _message_id(msg: dict) -> str:
    # Segment's HTTP API does not require messageId; a content hash keeps retries idempotent.
    blob = json.dumps({k: v for k, v in msg.items() if k not in ("sentAt", "_metadata")},
                      sort_keys=True, default=str)
    return "sha1:" + hashlib.sha1(blob.encode()).hexdigest()


def batch_messages(body, kind: str | None = None,
                   max_events: int = MAX_EVENTS_PER_REQUEST) -> tuple[list[dict], str]:
    """The messages of a request body and the JSON path prefix used in error messages.

    ``kind`` is the endpoint's message type (``track`` for ``/v1/track``), or None for
    ``/v1/batch`` whose body is ``{"batch": [...]}``.
    """
    if not isinstance(body, dict):
        raise IngestError("body", "expected a JSON object", 400)
    if kind is None:
        batch = body.get("batch")
        if not isinstance(batch, list):
            raise IngestError("batch", "expected a list of messages", 422)
        prefix = "batch"
    else:
        batch, prefix = [dict(body, type=body.get("type") or kind)], ""
        if str(batch[0]["type"]).lower() != kind:
            raise IngestError("type", f"this endpoint takes {kind} calls, got {batch[0]['type']!r}")
    if len(batch) > max_events:
        raise IngestError(prefix or "body", f"{len(batch)} messages exceed the limit of "
                          f"{max_events} per request; split the batch", 413)
    ctx = body.get("context") if kind is None and isinstance(body.get("context"), dict) else None
    out = []
    for i, msg in enumerate(batch):
        where = f"{prefix}[{i}]" if prefix else "body"
        if not isinstance(msg, dict):
            raise IngestError(where, "expected a JSON object")
        if str(msg.get("type", "")).lower() not in MESSAGE_TYPES:
            raise IngestError(f"{where}.type" if prefix else "type",
                              f"unsupported message type {msg.get('type')!r} "
                              f"(expected one of {', '.join(MESSAGE_TYPES)})")
        kind_i = str(msg["type"]).lower()
        if kind_i in ("track", "page", "screen", "identify") and not (
                msg.get("userId") or msg.get("anonymousId")):
            raise IngestError(_path(prefix, i, "userId"), "empty user_id (or anonymousId)")
        if kind_i == "track" and not msg.get("event"):
            raise IngestError(_path(prefix, i, "event"), "empty event")
        if ctx and "context" not in msg:
            msg = dict(msg, context=ctx)
        for obj in ("properties", "traits", "context"):
            if obj in msg and msg[obj] is not None and not isinstance(msg[obj], dict):
                raise IngestError(_path(prefix, i, obj), "expected a JSON object")
        if not msg.get("messageId"):
            msg = dict(msg, messageId=_message_id(msg))
        out.append(msg)
    return out, prefix


def _path(prefix: str, i: int, field: str) -> str:
    return f"{prefix}[{i}].{field}" if prefix else field


def parse_request(body, kind: str | None = None, *,
                  max_events: int = MAX_EVENTS_PER_REQUEST,
                  now: pd.Timestamp | None = None, source: str = "product") -> list[dict]:
    """Validate a Segment request body and return rows for :meth:`EventStore.append`.

    ``source`` is what the events are: ``product`` (the app's own Segment source) or
    ``marketing`` (a marketing tool's source, told apart by its write key), which feeds the
    demand-gen features instead of the milestone ones.

    Raises
    ------
    IngestError
        400 for a body that is not a JSON object, 413 for too many messages, 422 naming
        the first invalid field (``batch[2].timestamp: unparseable timestamp``).
    """
    messages, prefix = batch_messages(body, kind, max_events)
    if not messages:
        return []
    now = now or pd.Timestamp.now("UTC").tz_localize(None)
    if source not in EVENT_SOURCES:
        raise ValueError(f"source must be one of {EVENT_SOURCES}, not {source!r}")
    rows = plain_rows(messages, now)
    if rows is None:
        rows = contract_rows(messages, prefix, kind, now)
    if source != "product":
        for row in rows:
            if row["event"] is not None:  # identify/group rows describe people, not touches
                row["source"] = source
    return rows


def contract_rows(messages: list[dict], prefix: str, kind: str | None,
                  now: pd.Timestamp) -> list[dict]:
    """Rows of :func:`parse_request` through the data contract's own (pandas) validation.

    The authority on what is valid, and the path that words every error.
    """
    raw = messages_to_frame(messages)
    tables = split_messages(raw)
    if len(tables.rejected):
        row, reason = tables.rejected.iloc[0]
        i = int(row) - 1
        col = reason.split(" ", 1)[1] if reason.startswith("empty ") else "type"
        raise IngestError(_path(prefix, i, _FIELD.get(col, col)), reason)
    rows: list[dict] = []
    if len(tables.events):
        try:
            events, reasons = contract._canonical_events(
                tables.events, Path(f"/v1/{kind or 'batch'}"), now + contract.FUTURE_TOLERANCE)
        except contract.ContractError as e:
            # Mostly-unparseable timestamps fail the whole table; point at the first bad one.
            ts = tables.events["timestamp"]
            bad_ts = ts.notna() & to_utc_naive(ts).isna()
            if bad_ts.any():
                i = int(tables.events.loc[bad_ts.idxmax(), "_row"]) - 1
                raise IngestError(_path(prefix, i, "timestamp"), "unparseable timestamp") from None
            raise IngestError(prefix or "body", str(e)) from None
        bad = reasons[reasons != ""]
        if len(bad):
            pos = bad.index[0]
            i = int(tables.events.loc[pos, "_row"]) - 1
            reason = bad.iloc[0]
            col = next((c for c in _FIELD if reason.endswith(c)), "event")
            raise IngestError(_path(prefix, i, _FIELD[col]), reason)
        for pos, ev in zip(tables.events["_row"], events.itertuples(index=False)):
            msg = messages[int(pos) - 1]
            rows.append({"message_id": ev.message_id, "type": str(msg["type"]).lower(),
                         "user_id": ev.user_id, "account_id": _na(ev.account_id),
                         "event": ev.event, "timestamp": ev.timestamp.to_pydatetime(),
                         "source": ev.source, "properties": _na(ev.properties), "traits": None})
    for i, msg in enumerate(messages):
        kind_i = str(msg["type"]).lower()
        if kind_i not in ("identify", "group"):
            continue
        ts = to_utc_naive(pd.Series([msg.get("timestamp") or msg.get("originalTimestamp")],
                                    dtype=object)).iloc[0]
        if pd.isna(ts):
            if msg.get("timestamp") or msg.get("originalTimestamp"):
                raise IngestError(_path(prefix, i, "timestamp"), "unparseable timestamp")
            ts = now
        group = msg.get("groupId") or (msg.get("context") or {}).get("groupId")
        rows.append({"message_id": str(msg["messageId"]), "type": kind_i,
                     "user_id": str(msg.get("userId") or msg.get("anonymousId")),
                     "account_id": None if group is None else str(group),
                     "event": None, "timestamp": pd.Timestamp(ts).to_pydatetime(),
                     "source": "product", "properties": None,
                     "traits": json.dumps(msg.get("traits") or {}, default=str)})
    return rows


# --- the plain fast path --------------------------------------------------------------------
# Timestamps both pandas' ISO-8601 parser (the contract's) and datetime.fromisoformat read
# identically; anything else (epoch numbers, other layouts, >6 fraction digits) takes the
# contract path.
_PLAIN_TS = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?")
# Alias fields that could change which value the contract's coalescing picks.
_ALIASES = frozenset(("user_id", "anonymous_id", "event_text", "message_id", "group_id",
                      "context_groupId", "context_traits"))


def _plain_text(v) -> str | None:
    """A str with content after stripping, stripped (else None)."""
    if isinstance(v, str):
        t = v.strip()
        return t or None
    return None


def _plain_time(v) -> dt.datetime | None:
    if not isinstance(v, str) or not _PLAIN_TS.fullmatch(v):
        return None
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def plain_rows(messages: list[dict], now: pd.Timestamp) -> list[dict] | None:
    """The rows :func:`contract_rows` returns, without pandas, for plain valid messages; else None.

    Segment libraries send string ids, an ISO-8601 ``timestamp`` and object ``properties``:
    for such messages the contract's rules (``features.segment.split_messages`` then
    ``features.contract.canonical_events``: stripped non-empty ids, a parseable timestamp not
    beyond ``now + FUTURE_TOLERANCE``, properties a JSON object, ``groupId`` before
    ``context.groupId``) reduce to a few checks on plain dicts. Whenever a message is anything
    else - invalid, unusual or merely ambiguous - this returns None and the request takes the
    contract's path, which stays the single authority (and words the error). A test checks
    that both paths give identical rows.
    """
    limit = (now + contract.FUTURE_TOLERANCE).to_pydatetime()
    events: list[dict] = []
    profiles: list[dict] = []
    for msg in messages:
        kind = msg.get("type")
        if not isinstance(kind, str) or not _ALIASES.isdisjoint(msg):
            return None
        kind = kind.lower()
        user = _plain_text(msg.get("userId"))
        mid = _plain_text(msg.get("messageId"))
        ts = _plain_time(msg.get("timestamp"))
        if user is None or mid is None or ts is None:
            return None
        context = msg.get("context") or {}
        group = msg.get("groupId")
        if group in (None, ""):
            group = context.get("groupId")
        if group is not None and _plain_text(group) is None:
            return None
        if kind in ("track", "page", "screen"):
            event = _plain_text(msg.get("event")) if kind == "track" else VIEW_EVENT[kind]
            props = msg.get("properties")
            if event is None or ts > limit or not (props is None or isinstance(props, dict)):
                return None
            try:
                props_text = None if props is None else json.dumps(props, allow_nan=False)
            except (TypeError, ValueError):
                return None
            events.append({"message_id": mid, "type": kind, "user_id": user,
                           "account_id": _plain_text(group), "event": event, "timestamp": ts,
                           "source": "product", "properties": props_text, "traits": None})
        elif kind in ("identify", "group"):
            if kind == "group" and group is None:
                return None
            # The contract path keeps profile ids as sent (unstripped): do the same.
            profiles.append({"message_id": str(msg["messageId"]), "type": kind,
                             "user_id": str(msg["userId"]),
                             "account_id": None if group is None else str(group),
                             "event": None, "timestamp": ts, "source": "product",
                             "properties": None,
                             "traits": json.dumps(msg.get("traits") or {}, default=str)})
        else:
            return None
    return events + profiles


def _na(v):
    return None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v)


def profile_messages(store, account_ids=None) -> list[dict]:
    """Stored group calls of ``account_ids`` (``None``: of every account) back in Segment shape
    (for ``features.segment.split_messages``, so fit traits are parsed as in batch loads)."""
    import sqlalchemy as sa

    from serving.store import messages as t

    q = (sa.select(t.c.type, t.c.user_id, t.c.account_id, t.c.traits, t.c.timestamp)
         .where(t.c.type == "group", t.c.account_id.is_not(None))
         .order_by(t.c.timestamp, t.c.seq))
    if account_ids is not None:
        q = q.where(t.c.account_id.in_(list(account_ids)))
    with store.engine.connect() as conn:
        return [{"type": ty, "userId": u, "groupId": a, "traits": json.loads(tr or "{}"),
                 "timestamp": ts.isoformat()} for ty, u, a, tr, ts in conn.execute(q)]


def accounts_frame(store, account_ids) -> pd.DataFrame:
    """Account rows (``account_id`` + fit traits) from the stored group calls.

    Every id of ``account_ids`` gets a row (without traits if it made no group call); ``None``
    reads the accounts of every group call in the store (the cache warm-up).
    """
    msgs = profile_messages(store, account_ids)
    if account_ids is None:
        account_ids = []
    accounts = split_messages(messages_to_frame(msgs)).accounts if msgs else pd.DataFrame()
    known = set(accounts["account_id"]) if len(accounts) else set()
    missing = [a for a in account_ids if a not in known]
    if missing:
        accounts = pd.concat([accounts, pd.DataFrame({"account_id": missing})], ignore_index=True)
    return accounts
