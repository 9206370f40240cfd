"""Ingestion's plain fast path gives exactly the data contract's rows, or steps aside."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pandas as pd
import pytest

from serving.ingest import IngestError, batch_messages, contract_rows, parse_request, plain_rows

NOW = pd.Timestamp("2026-06-01 12:00:00")


def _track(i=0, **kw):
    msg = {"type": "track", "userId": f"u{i}", "event": "project_created", "messageId": f"m{i}",
           "timestamp": "2026-05-30T10:00:00.123Z", "context": {"groupId": "acme"},
           "properties": {"plan": "pro", "seats": 3, "nested": {"a": [1, 2]}}}
    msg.update(kw)
    return msg


PLAIN = [
    [_track()],
    [_track(timestamp="2026-05-30T10:00:00+02:00")],
    [_track(timestamp="2026-05-30 10:00:00")],
    [_track(timestamp="2026-05-30T10:00:00.123456")],
    [_track(properties=None)],
    [_track(context=None)],
    [_track(groupId="acme2")],
    [_track(groupId="", context={"groupId": "acme3"})],
    [_track(userId="  padded  ", event=" login ", messageId=" mid ")],
    [{"type": "page", "userId": "u1", "messageId": "p1", "timestamp": "2026-05-30T10:00:00Z", "name": "Home"}],
    [{"type": "identify", "userId": "u1", "messageId": "id1", "traits": {"email": "a@acme.test"},
      "timestamp": "2026-05-01T00:00:00Z"},
     {"type": "group", "userId": "u1", "groupId": "acme", "messageId": "g1",
      "traits": {"industry": "software", "employees": 40}, "timestamp": "2026-05-01T00:00:00Z"},
     _track(1), _track(2, type="screen")],
]

# Valid or not, unusual: the fast path must step aside (the contract decides and words errors).
UNUSUAL = [
    [_track(userId=42)],
    [_track(userId=None, anonymousId="anon-1")],
    [_track(timestamp=1717236000)],
    [_track(timestamp="2026-05-30T10:00:00.1234567Z")],
    [_track(timestamp="not a date")],
    [_track(timestamp="2026-02-30T10:00:00Z")],
    [_track(timestamp="2027-01-01T00:00:00Z")],  # in the future
    [_track(properties={"x": float("nan")})],
    [_track(groupId="   ")],
    [_track(groupId=7)],
    [_track(event="   ")],
    [_track(user_id="other")],
    [{"type": "group", "userId": "u1", "messageId": "g2", "timestamp": "2026-05-01T00:00:00Z"}],
    [_track(), {"type": "alias", "userId": "u1", "previousId": "x", "messageId": "al"}],
]


@pytest.mark.parametrize("msgs", PLAIN)
def test_plain_messages_take_the_fast_path_with_the_contracts_rows(msgs):
    messages, prefix = batch_messages({"batch": copy.deepcopy(msgs)})
    fast = plain_rows(messages, NOW)
    assert fast is not None
    assert fast == contract_rows(messages, prefix, None, NOW)
    assert parse_request({"batch": copy.deepcopy(msgs)}, now=NOW) == fast


@pytest.mark.parametrize("msgs", UNUSUAL)
def test_unusual_messages_go_through_the_contract(msgs):
    try:
        messages, prefix = batch_messages({"batch": copy.deepcopy(msgs)})
    except IngestError:
        return  # refused before either path
    assert plain_rows(messages, NOW) is None
    try:
        expected = contract_rows(messages, prefix, None, NOW)
    except IngestError as e:
        with pytest.raises(IngestError) as got:
            parse_request({"batch": copy.deepcopy(msgs)}, now=NOW)
        assert got.value.field == e.field
    else:
        assert parse_request({"batch": copy.deepcopy(msgs)}, now=NOW) == expected


def test_fast_path_equals_contract_on_a_generated_world(small_world):
    """Every message of a generated world's Segment export, in 100-message batches."""
    from features.synthetic import generate_world

    out = small_world.parent / "seg_world"
    if not (out / "events_segment.jsonl").exists():
        generate_world(out, n_accounts=60, seed=3, segment_export=True)
    lines = (out / "events_segment.jsonl").read_text().splitlines()
    msgs = [json.loads(x) for x in lines]
    now = pd.Timestamp(dt.datetime(2030, 1, 1))
    fast_batches = 0
    for i in range(0, len(msgs), 100):
        messages, prefix = batch_messages({"batch": msgs[i:i + 100]})
        fast = plain_rows(messages, now)
        if fast is not None:
            fast_batches += 1
            assert fast == contract_rows(messages, prefix, None, now)
    assert fast_batches > 0
