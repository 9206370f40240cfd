"""Segment / RudderStack messages → the contract's events, users and accounts.

Segment-spec exports (and RudderStack, which copies the spec) put every call in one stream:
``track`` (an event), ``page``/``screen`` (a view), ``identify`` (who a user is) and ``group``
(which account a user belongs to, with the account's traits). This module splits such a stream
into the flat shapes ``features.contract`` validates. It is shared by the batch loader and by the
webhook ingest, so both read messages the same way.

Field names are accepted in camelCase (Segment, RudderStack event stream) and snake_case
(RudderStack / Segment warehouse exports). ``context.groupId`` is the account of a ``track`` call
when the source sets it.

Example
-------
>>> raw = messages_to_frame([
...     {"type": "identify", "userId": "u1", "traits": {"email": "a@acme.com",
...      "company": {"name": "Acme"}}, "timestamp": "2024-01-01T00:00:00Z"},
...     {"type": "group", "userId": "u1", "groupId": "acc1",
...      "traits": {"name": "Acme", "website": "https://www.acme.com/", "employees": 50}},
...     {"type": "track", "userId": "u1", "event": "Report Created", "messageId": "m1",
...      "timestamp": "2024-01-02T10:00:00+01:00", "properties": {"n": 1}}])
>>> tables = split_messages(raw)
>>> tables.events[["user_id", "event", "message_id"]].values.tolist()
[['u1', 'Report Created', 'm1']]
>>> tables.users[["user_id", "email", "company", "account_id"]].values.tolist()
[['u1', 'a@acme.com', 'Acme', 'acc1']]
>>> tables.accounts[["account_id", "name", "domain", "employees"]].values.tolist()
[['acc1', 'Acme', 'acme.com', 50]]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from features.timestamps import check_timestamps, to_utc_naive

#: Message types of the Segment spec that this loader understands.
EVENT_TYPES = ("track", "page", "screen")
PROFILE_TYPES = ("identify", "group")
MESSAGE_TYPES = EVENT_TYPES + PROFILE_TYPES
#: Event names given to page and screen calls (the feature pipeline's default activity names).
VIEW_EVENT = {"page": "page_view", "screen": "screen_view"}

#: Raw fields read from each message; each canonical field takes the first non-empty alias.
FIELD_ALIASES = {
    "type": ("type",),
    "user_id": ("userId", "user_id"),
    "anonymous_id": ("anonymousId", "anonymous_id"),
    "event": ("event", "event_text"),
    "name": ("name",),
    "timestamp": ("timestamp", "originalTimestamp", "original_timestamp", "receivedAt",
                  "received_at", "sentAt", "sent_at"),
    "message_id": ("messageId", "message_id"),
    "group_id": ("groupId", "group_id", "context_groupId"),
    "properties": ("properties",),
    "traits": ("traits", "context_traits"),
}
#: Columns of the raw message frame (JSON objects are kept as JSON text).
RAW_COLUMNS = tuple(dict.fromkeys(a for aliases in FIELD_ALIASES.values() for a in aliases))
JSON_FIELDS = ("properties", "traits", "context_traits")

# Account traits with a contract meaning; every other scalar trait becomes a fit attribute.
_ACCOUNT_TRAIT_ALIASES = {
    "name": ("name", "company_name", "companyName"),
    "domain": ("domain", "website", "url"),
    "created_at": ("createdAt", "created_at"),
    "employees": ("employees", "employee_count", "employeeCount", "num_employees", "size"),
    "industry": ("industry",),
    "country": ("country",),
}
_USER_TRAIT_ALIASES = {
    "email": ("email",),
    "created_at": ("createdAt", "created_at"),
    "invited_by": ("invitedBy", "invited_by", "inviter_id", "invitedByUserId"),
}
_SKIP_ACCOUNT_TRAITS = {"id", "groupId", "group_id", "email", "address", "plan_id"}

#: Columns of :attr:`SegmentTables.nulled`.
NULLED_COLUMNS = ("_row", "table", "column", "field", "reason", "value")


@dataclass
class SegmentTables:
    """What a stream of Segment messages holds, in the contract's flat shapes.

    Attributes
    ----------
    events : DataFrame
        Raw (still unvalidated) event rows: ``user_id, event, timestamp, message_id, account_id,
        properties, source`` as text, plus ``_row`` (the source row number).
    users : DataFrame
        One row per identified user: ``user_id, email, created_at, account_id, company,
        invited_by`` (the latest non-empty value of each trait wins).
    accounts : DataFrame
        One row per ``group`` id: ``account_id, name, domain, created_at`` and fit traits.
    user_accounts : DataFrame
        ``user_id, account_id`` from ``group`` calls (a user's latest group wins).
    rejected : DataFrame
        ``_row, reason`` for messages that cannot be used (unknown type, missing ids).
    routed : int
        Number of ``identify``/``group`` messages turned into users/accounts rows.
    nulled : DataFrame
        Trait values that were dropped (set to null) while the message itself was used:
        ``_row`` (source row of the message), ``table`` (``users``/``accounts``), ``column``
        (``created_at``), ``field`` (``traits.createdAt``), ``reason`` (``unparseable created_at``
        or ``future created_at``, the contract's quarantine reasons) and ``value`` (as text).
        The contract counts them per table (``TableReport.nulled``); the webhook ingest can
        point at the offending message.
    """

    events: pd.DataFrame
    users: pd.DataFrame
    accounts: pd.DataFrame
    user_accounts: pd.DataFrame
    rejected: pd.DataFrame
    routed: int
    nulled: pd.DataFrame = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self):
        if self.nulled is None:
            self.nulled = _empty_nulled()


def looks_like_segment(frame: pd.DataFrame, sample: int = 1000) -> bool:
    """True when a frame's ``type`` column holds Segment message types (track, identify, ...)."""
    if "type" not in frame.columns:
        return False
    kinds = frame["type"].dropna().head(sample).astype(str).str.lower()
    return len(kinds) > 0 and kinds.isin(MESSAGE_TYPES + ("alias",)).mean() >= 0.5


def messages_to_frame(messages: Iterable[Mapping]) -> pd.DataFrame:
    """Flatten Segment message dicts (e.g. a ``/v1/batch`` body) into the raw message frame.

    Objects (``properties``, ``traits``) become JSON text; ``context.groupId`` and
    ``context.traits`` are lifted to ``context_groupId`` / ``context_traits``.
    """
    rows = []
    for message in messages:
        context = message.get("context") if isinstance(message.get("context"), Mapping) else {}
        row = {k: message.get(k) for k in RAW_COLUMNS if k in message}
        if context.get("groupId") is not None:
            row["context_groupId"] = context["groupId"]
        if context.get("traits") is not None:
            row["context_traits"] = context["traits"]
        for key in JSON_FIELDS:
            if key in row and not isinstance(row[key], str) and row[key] is not None:
                row[key] = json.dumps(row[key], default=str)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(RAW_COLUMNS), dtype=object)
    frame["_row"] = np.arange(1, len(frame) + 1)
    return frame


def _first_present(raw: pd.DataFrame, aliases: tuple[str, ...]) -> pd.Series:
    """Coalesce the alias columns of ``raw`` left to right; empty text counts as missing."""
    out = pd.Series(pd.NA, index=raw.index, dtype="string")
    for name in aliases:
        if name in raw.columns:
            values = raw[name].astype("string").str.strip()
            out = out.fillna(values.mask(values == ""))
    return out


def _parse_object(text) -> dict:
    if text is None or text is pd.NA or (isinstance(text, float) and np.isnan(text)):
        return {}
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _pick(traits: dict, aliases: tuple[str, ...]):
    for key in aliases:
        value = traits.get(key)
        if value not in (None, ""):
            return value
    return None


def _domain_of(value) -> str | None:
    """``https://www.Acme.com/about`` → ``acme.com``."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    host = urlsplit(text if "//" in text else "//" + text).hostname or ""
    host = host.removeprefix("www.")
    return host or None


def _latest_per_key(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Collapse to one row per ``key``: the latest non-empty value of each column wins."""
    if frame.empty:
        return frame
    ordered = frame.sort_values("_ts", kind="stable", na_position="first")
    return ordered.drop(columns="_ts").groupby(key, sort=False).last().reset_index()


def _user_rows(identifies: pd.DataFrame) -> pd.DataFrame:
    records = []
    for traits_text in identifies["traits"]:
        traits = _parse_object(traits_text)
        company = traits.get("company")
        company_name = company.get("name") if isinstance(company, dict) else company
        company_id = company.get("id") if isinstance(company, dict) else None
        records.append({
            "email": _pick(traits, _USER_TRAIT_ALIASES["email"]),
            "created_at": _pick(traits, _USER_TRAIT_ALIASES["created_at"]),
            "company": None if company_name in (None, "") else str(company_name),
            "invited_by": _pick(traits, _USER_TRAIT_ALIASES["invited_by"]),
            "trait_account_id": None if company_id in (None, "") else str(company_id),
        })
    users = pd.DataFrame.from_records(records, index=identifies.index,
                                      columns=["email", "created_at", "company", "invited_by",
                                               "trait_account_id"])
    users.insert(0, "user_id", identifies["user_id"])
    # An explicit group id on the identify call beats a company id buried in traits.
    users["account_id"] = identifies["group_id"].fillna(users.pop("trait_account_id"))
    users["_ts"] = identifies["_ts"]
    return users


def _account_rows(groups: pd.DataFrame) -> pd.DataFrame:
    records = []
    for traits_text in groups["traits"]:
        traits = _parse_object(traits_text)
        row = {key: _pick(traits, aliases) for key, aliases in _ACCOUNT_TRAIT_ALIASES.items()}
        if row["country"] is None and isinstance(traits.get("address"), dict):
            row["country"] = traits["address"].get("country")
        row["domain"] = _domain_of(row["domain"])
        used = {a for aliases in _ACCOUNT_TRAIT_ALIASES.values() for a in aliases}
        for key, value in traits.items():
            # Other scalar traits are fit attributes (plan, region, ...); nested objects are not.
            if key not in used and key not in _SKIP_ACCOUNT_TRAITS and (
                    isinstance(value, (str, int, float, bool)) or value is None):
                row[key] = value
        records.append(row)
    accounts = pd.DataFrame.from_records(records, index=groups.index)
    accounts.insert(0, "account_id", groups["group_id"])
    accounts["_ts"] = groups["_ts"]
    return accounts


def _empty_nulled() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "_row" else object) for c in NULLED_COLUMNS})


def _checked_created_at(rows: pd.DataFrame, table: str, message_rows: pd.Series,
                        future_limit: pd.Timestamp | None) -> pd.DataFrame:
    """Parse ``rows["created_at"]`` (trait values) in place; return the values that were nulled.

    Done per message, before several messages of one user/account are merged, so that a bad
    ``createdAt`` in a later call cannot hide a good one from an earlier call.
    """
    values = rows["created_at"].astype(object)
    check = check_timestamps(values, future_limit)
    dropped = check.unparseable | check.future
    # Same reason strings as the contract's quarantine reasons (features.contract).
    reason = np.where(check.unparseable, "unparseable created_at", "future created_at")
    parsed = check.parsed.mask(pd.Series(check.future, index=rows.index))
    rows["created_at"] = parsed
    if not dropped.any():
        return _empty_nulled()
    return pd.DataFrame({
        "_row": message_rows.loc[rows.index[dropped]].to_numpy(dtype="int64"),
        "table": table, "column": "created_at", "field": "traits.createdAt",
        "reason": reason[dropped], "value": values[dropped].astype(str).to_numpy(dtype=object),
    })


def split_messages(raw: pd.DataFrame, future_limit: pd.Timestamp | None = None) -> SegmentTables:
    """Split a raw message frame (see :func:`messages_to_frame`) into contract tables.

    Parameters
    ----------
    raw : DataFrame
        Columns named as in Segment/RudderStack exports (any subset of :data:`RAW_COLUMNS`),
        JSON objects as text, and ``_row``, the 1-based source row of each message.
    future_limit : pandas.Timestamp, optional
        Naive UTC. A ``traits.createdAt`` later than this is nulled (and counted in
        ``nulled``), as the contract does for ``created_at`` in files; without a limit only
        unparseable values are nulled. Event rows are not checked here (the contract does).

    Returns
    -------
    SegmentTables
        Nothing is dropped silently: each message is an event row, a users/accounts row
        (``routed``), or ``rejected`` with a reason; each trait value dropped is in ``nulled``.
    """
    rows = raw["_row"] if "_row" in raw.columns else pd.Series(np.arange(1, len(raw) + 1), index=raw.index)
    f = {name: _first_present(raw, aliases) for name, aliases in FIELD_ALIASES.items()
         if name not in ("properties", "traits")}
    kind = f["type"].str.lower()
    who = f["user_id"].fillna(f["anonymous_id"])
    props = raw["properties"] if "properties" in raw.columns else pd.Series(pd.NA, index=raw.index)
    traits = _first_present(raw, FIELD_ALIASES["traits"])

    is_event = kind.isin(EVENT_TYPES).fillna(False).astype(bool)
    is_identify = (kind == "identify").fillna(False).astype(bool)
    is_group = (kind == "group").fillna(False).astype(bool)
    reason = pd.Series("", index=raw.index, dtype=object)
    reason[~(is_event | is_identify | is_group)] = "unsupported message type"
    reason[is_identify & who.isna()] = "empty user_id"
    reason[is_group & f["group_id"].isna()] = "empty account_id"
    reason[is_group & f["group_id"].notna() & who.isna()] = "empty user_id"
    rejected = pd.DataFrame({"_row": rows[reason != ""], "reason": reason[reason != ""]})

    # Events: validated afterwards like any flat events file (ids, timestamp, properties).
    event_name = f["event"].where(kind == "track", kind.map(VIEW_EVENT).astype("string"))
    events = pd.DataFrame({
        "user_id": who, "event": event_name, "timestamp": f["timestamp"],
        "message_id": f["message_id"], "account_id": f["group_id"], "properties": props,
        "source": "product", "_row": rows,
    })[is_event]

    ok = reason == ""
    ts = to_utc_naive(f["timestamp"])
    profile = pd.DataFrame({"user_id": who, "group_id": f["group_id"], "traits": traits, "_ts": ts})
    identifies = profile[is_identify & ok]
    groups = profile[is_group & ok]

    nulled = []
    if len(identifies):
        user_rows = _user_rows(identifies)
        nulled.append(_checked_created_at(user_rows, "users", rows, future_limit))
        users = _latest_per_key(user_rows, "user_id")
    else:
        users = _empty_users()
    links = groups[["user_id", "group_id", "_ts"]].rename(columns={"group_id": "account_id"})
    user_accounts = _latest_per_key(links, "user_id") if len(links) else pd.DataFrame(
        {"user_id": pd.Series(dtype="string"), "account_id": pd.Series(dtype="string")})
    # Users seen only in group calls still exist (with their account link).
    if len(user_accounts):
        users = users.merge(user_accounts.rename(columns={"account_id": "_group_account"}),
                            on="user_id", how="outer")
        users["account_id"] = users["_group_account"].fillna(users["account_id"])
        users = users.drop(columns="_group_account")
    users["created_at"] = to_utc_naive(users["created_at"])  # typed already; NaT for group-only users
    if len(groups):
        account_rows = _account_rows(groups)
        nulled.append(_checked_created_at(account_rows, "accounts", rows, future_limit))
        accounts = _latest_per_key(account_rows, "account_id")
        accounts["created_at"] = to_utc_naive(accounts["created_at"])
    else:
        accounts = pd.DataFrame({"account_id": pd.Series(dtype="string")})
    accounts = accounts.infer_objects()
    nulled = [n for n in nulled if len(n)]
    return SegmentTables(events=events.reset_index(drop=True), users=users.reset_index(drop=True),
                         accounts=accounts.reset_index(drop=True),
                         user_accounts=user_accounts.reset_index(drop=True),
                         rejected=rejected.reset_index(drop=True),
                         routed=int((is_identify | is_group)[ok].sum()),
                         nulled=(pd.concat(nulled, ignore_index=True).sort_values("_row", kind="stable")
                                 .reset_index(drop=True) if nulled else _empty_nulled()))


def _empty_users() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in
                         ("user_id", "email", "created_at", "company", "invited_by", "account_id")})
