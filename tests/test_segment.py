"""Segment / RudderStack exports: track, page, identify and group messages into contract tables."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from features.contract import load_dataset
from features.segment import looks_like_segment, messages_to_frame, split_messages

NOW = dt.datetime(2024, 6, 1)

MESSAGES = [
    {"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": "2024-01-01T00:00:00Z",
     "traits": {"email": "Ann@Acme.com", "createdAt": "2024-01-01T08:00:00+08:00",
                "company": {"name": "Acme Inc"}}},
    {"type": "identify", "userId": "u2", "messageId": "i2", "timestamp": "2024-01-02T00:00:00Z",
     "traits": {"email": "bob@gmail.com", "company": "Bob's Bakery", "invitedBy": "u1"}},
    {"type": "identify", "userId": "u1", "messageId": "i3", "timestamp": "2024-01-05T00:00:00Z",
     "traits": {"plan": "free"}},  # a later identify without email keeps the earlier email
    {"type": "group", "userId": "u1", "groupId": "acc1", "messageId": "g1",
     "timestamp": "2024-01-01T00:00:00Z",
     "traits": {"name": "Acme", "website": "https://www.acme.com/about", "employees": 120,
                "industry": "Software", "plan": "trial", "address": {"country": "DE"}}},
    {"type": "track", "userId": "u1", "event": "Report Created", "messageId": "t1",
     "timestamp": "2024-01-03T10:00:00+01:00", "properties": {"workspace_id": "w1"},
     "context": {"groupId": "acc1", "ip": "1.2.3.4"}},
    {"type": "track", "anonymousId": "anon-7", "event": "Pricing Viewed", "messageId": "t2",
     "originalTimestamp": "2024-01-04T10:00:00Z"},
    {"type": "page", "userId": "u2", "messageId": "p1", "timestamp": 1704448800000,
     "properties": {"path": "/pricing"}},
    {"type": "track", "userId": "u1", "event": "Report Created", "messageId": "t1",
     "timestamp": "2024-01-03T10:00:00+01:00"},  # re-delivered message
    {"type": "alias", "userId": "u1", "previousId": "anon-7", "messageId": "a1"},
    {"type": "group", "userId": "u2", "messageId": "g2", "traits": {"name": "No id"}},
]


def write_jsonl(messages, path: Path) -> Path:
    path.write_text("".join(json.dumps(m) + "\n" for m in messages))
    return path


def test_segment_export_fills_events_users_and_accounts(tmp_path):
    write_jsonl(MESSAGES, tmp_path / "events.jsonl")
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.report.segment

    ev = ds.events.set_index("message_id")
    assert list(ev.index) == ["t1", "t2", "p1"]
    assert ev.loc["t1", "timestamp"] == pd.Timestamp("2024-01-03 09:00")
    assert ev.loc["t1", "account_id"] == "acc1"                       # from context.groupId
    assert json.loads(ev.loc["t1", "properties"]) == {"workspace_id": "w1"}
    assert ev.loc["t2", "user_id"] == "anon-7"                        # anonymous visitor
    assert ev.loc["t2", "timestamp"] == pd.Timestamp("2024-01-04 10:00")  # originalTimestamp
    assert ev.loc["p1", "event"] == "page_view"
    assert ev.loc["p1", "timestamp"] == pd.Timestamp("2024-01-05 10:00")  # epoch ms

    users = ds.users.set_index("user_id")
    assert users.loc["u1", "email"] == "ann@acme.com"
    assert users.loc["u1", "created_at"] == pd.Timestamp("2024-01-01 00:00")
    assert users.loc["u1", "company"] == "Acme Inc"
    assert users.loc["u1", "account_id"] == "acc1"                    # from the group call
    assert users.loc["u2", "company"] == "Bob's Bakery" and users.loc["u2", "invited_by"] == "u1"
    assert pd.isna(users.loc["u2", "account_id"])

    acc = ds.accounts.set_index("account_id")
    assert acc.loc["acc1", "domain"] == "acme.com" and acc.loc["acc1", "name"] == "Acme"
    assert acc.loc["acc1", "employees"] == 120 and acc.loc["acc1", "country"] == "DE"
    assert acc.loc["acc1", "plan"] == "trial" and acc.loc["acc1", "industry"] == "Software"

    rep = ds.report.tables["events"]
    assert rep.rows_read == len(MESSAGES)
    assert rep.routed == 4 and rep.duplicates == 1
    assert rep.quarantined == {"unsupported message type": 1, "empty account_id": 1}
    assert rep.rows_read == rep.rows_kept + rep.quarantined_total + rep.duplicates + rep.routed
    assert ds.report.tables["users"].from_segment == 2
    q = pd.read_csv(tmp_path / "quarantine" / "events.csv")
    assert q["row_number"].tolist() == [9, 10]
    assert json.loads(q["raw"].iloc[0])["type"] == "alias"


def test_rudderstack_snake_case_export(tmp_path):
    rows = [
        {"type": "track", "user_id": "u1", "event": "Invite Sent", "message_id": "r1",
         "original_timestamp": "2024-02-01T10:00:00.000+05:30", "properties": {"invitee_email": "x@acme.com"}},
        {"type": "identify", "anonymous_id": "anon", "user_id": "u1", "message_id": "r2",
         "received_at": "2024-02-01T00:00:00Z", "context": {"traits": {"email": "u1@acme.com"}}},
    ]
    write_jsonl(rows, tmp_path / "events.jsonl")
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.events["timestamp"].tolist() == [pd.Timestamp("2024-02-01 04:30")]
    assert json.loads(ds.events["properties"].iloc[0])["invitee_email"] == "x@acme.com"
    assert ds.users.set_index("user_id").loc["u1", "email"] == "u1@acme.com"


def test_file_users_win_over_segment_traits(tmp_path):
    write_jsonl(MESSAGES, tmp_path / "events.jsonl")
    pd.DataFrame({"user_id": ["u1", "u9"], "email": ["crm@acme.com", "nine@beta.io"],
                  "created_at": [None, "2024-01-09"]}).to_csv(tmp_path / "users.csv", index=False)
    users = load_dataset(tmp_path, now=NOW).users.set_index("user_id")
    assert users.loc["u1", "email"] == "crm@acme.com"        # the system of record wins
    assert users.loc["u1", "account_id"] == "acc1"           # Segment fills what it lacks
    assert users.loc["u1", "created_at"] == pd.Timestamp("2024-01-01")  # empty in the file
    assert set(users.index) == {"u1", "u2", "u9"}


def test_messages_to_frame_matches_the_file_path():
    """Webhook ingest (dicts) and batch loading (files) split messages the same way."""
    tables = split_messages(messages_to_frame(MESSAGES))
    assert tables.events["message_id"].tolist() == ["t1", "t2", "p1", "t1"]
    assert tables.user_accounts.values.tolist() == [["u1", "acc1"]]
    assert sorted(tables.rejected["reason"]) == ["empty account_id", "unsupported message type"]
    assert tables.routed == 4


def test_flat_events_are_not_mistaken_for_segment():
    flat = pd.DataFrame({"user_id": ["u1"], "event": ["x"], "type": ["click"]})
    assert not looks_like_segment(flat)
    assert looks_like_segment(messages_to_frame(MESSAGES))


# --- values nulled, never silently --------------------------------------------------------------

BAD_TRAITS = [
    {"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": "2024-01-01T00:00:00Z",
     "traits": {"email": "ann@acme.com", "createdAt": "2024-01-01T00:00:00Z"}},
    {"type": "identify", "userId": "u1", "messageId": "i2", "timestamp": "2024-01-02T00:00:00Z",
     "traits": {"createdAt": "sometime last spring"}},           # later, but not a time
    {"type": "identify", "userId": "u2", "messageId": "i3", "timestamp": "2024-01-02T00:00:00Z",
     "traits": {"email": "bob@beta.io", "createdAt": "2031-01-01T00:00:00Z"}},  # far future
    {"type": "group", "userId": "u1", "groupId": "acc1", "messageId": "g1",
     "timestamp": "2024-01-01T00:00:00Z", "traits": {"name": "Acme", "createdAt": "n/a"}},
    {"type": "track", "userId": "u1", "event": "Report Created", "messageId": "t1",
     "timestamp": "2024-01-03T10:00:00Z"},
]


def test_bad_trait_timestamps_are_nulled_and_counted(tmp_path):
    write_jsonl(BAD_TRAITS, tmp_path / "events.jsonl")
    ds = load_dataset(tmp_path, now=NOW)
    users = ds.users.set_index("user_id")
    # The bad later value does not hide the good earlier one; the future one becomes null.
    assert users.loc["u1", "created_at"] == pd.Timestamp("2024-01-01")
    assert pd.isna(users.loc["u2", "created_at"]) and users.loc["u2", "email"] == "bob@beta.io"
    assert pd.isna(ds.accounts.set_index("account_id").loc["acc1", "created_at"])
    assert ds.report.tables["users"].nulled == {"unparseable created_at": 1, "future created_at": 1}
    assert ds.report.tables["accounts"].nulled == {"unparseable created_at": 1}
    assert ds.report.tables["events"].nulled == {}
    assert any("users values set to null" in w for w in ds.report.warnings)
    assert ds.report.to_dict()["tables"]["accounts"]["nulled"] == {"unparseable created_at": 1}
    rep = ds.report.tables["events"]
    assert rep.balanced and rep.quarantined == {}  # the messages themselves were used


def test_nulled_values_point_at_their_message():
    tables = split_messages(messages_to_frame(BAD_TRAITS), future_limit=pd.Timestamp(NOW))
    nulled = tables.nulled
    assert nulled["_row"].tolist() == [2, 3, 4]
    assert nulled["reason"].tolist() == ["unparseable created_at", "future created_at",
                                         "unparseable created_at"]
    assert nulled["table"].tolist() == ["users", "users", "accounts"]
    assert nulled["value"].iloc[0] == "sometime last spring"
    assert set(nulled["field"]) == {"traits.createdAt"}
    # Without a limit only unparseable values are dropped.
    no_limit = split_messages(messages_to_frame(BAD_TRAITS)).nulled
    assert no_limit["_row"].tolist() == [2, 4]


def test_canonical_profiles_give_what_the_loader_gives(tmp_path):
    """The webhook ingest validates identify/group calls with the loader's own rules."""
    from features.contract import FUTURE_TOLERANCE, canonical_profiles

    write_jsonl(MESSAGES, tmp_path / "events.jsonl")
    ds = load_dataset(tmp_path, now=NOW)
    limit = pd.Timestamp(NOW) + FUTURE_TOLERANCE
    users, accounts = canonical_profiles(split_messages(messages_to_frame(MESSAGES), future_limit=limit))
    pd.testing.assert_frame_equal(users.sort_values("user_id").reset_index(drop=True),
                                  ds.users.sort_values("user_id").reset_index(drop=True))
    assert list(accounts.columns) == list(ds.accounts.columns)
    assert accounts.set_index("account_id").loc["acc1", "domain"] == "acme.com"
