"""Event store: WAL mode, dedupe by messageId, all-or-nothing batches, several writer processes."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import sqlite3

import pytest
import sqlalchemy as sa

from serving.store import EventStore


def _msg(i, account="a1", user="u1", event="login", ts=None, **kw):
    return {"message_id": f"m{i}", "type": "track", "user_id": user, "account_id": account,
            "event": event, "timestamp": ts or dt.datetime(2024, 1, 1) + dt.timedelta(minutes=i),
            **kw}


def test_sqlite_file_is_in_wal_mode(tmp_path):
    db = tmp_path / "events.db"
    store = EventStore(f"sqlite:///{db}")
    store.append([_msg(1)])
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_duplicates_by_message_id_are_stored_once(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    first = store.append([_msg(1), _msg(2), _msg(2)])
    again = store.append([_msg(2), _msg(3)])
    assert (first.stored, first.duplicates) == (2, 1)
    assert (again.stored, again.duplicates) == (1, 1)
    assert store.count() == 3
    assert sorted(store.events()["message_id"]) == ["m1", "m2", "m3"]


def test_a_bad_row_rolls_the_whole_batch_back(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    bad = _msg(3)
    bad["timestamp"] = None  # violates NOT NULL inside the transaction
    with pytest.raises(sa.exc.IntegrityError):
        store.append([_msg(1), _msg(2), bad])
    assert store.count() == 0


def test_events_follow_group_calls_to_their_account(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    store.append([
        _msg(1, account=None, user="u9"),
        {"message_id": "g1", "type": "group", "user_id": "u9", "account_id": "acme",
         "timestamp": dt.datetime(2024, 1, 1), "traits": '{"industry": "software"}'},
        {"message_id": "g2", "type": "group", "user_id": "u9", "account_id": "acme",
         "timestamp": dt.datetime(2024, 1, 2), "traits": '{"employees": 40}'},
        _msg(2, account="other", user="u2"),
    ])
    ev = store.events(["acme"])
    assert list(ev["message_id"]) == ["m1"] and list(ev["account_id"]) == ["acme"]
    assert str(ev["timestamp"].dtype) == "datetime64[us]"
    assert store.account_traits(["acme"]) == {"acme": {"industry": "software", "employees": 40}}


def test_feedback_round_trip_and_validation(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    store.add_feedback("a1", "good", note="asked for a demo", rep="kim", score=81, tier="hot")
    with pytest.raises(ValueError, match="verdict"):
        store.add_feedback("a1", "maybe")
    fb = store.feedback_frame()
    assert list(fb["verdict"]) == ["good"] and fb.loc[0, "note"] == "asked for a demo"


def _writer(url, start, stop, barrier):
    store = EventStore(url)
    barrier.wait()
    for i in range(start, stop, 10):
        store.append([_msg(j) for j in range(i, min(i + 10, stop))])


def test_two_processes_write_overlapping_batches(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    EventStore(url)  # create tables before the race
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    # Overlapping ranges: messages 100..199 are sent by both processes.
    procs = [ctx.Process(target=_writer, args=(url, 0, 200, barrier)),
             ctx.Process(target=_writer, args=(url, 100, 300, barrier))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    store = EventStore(url)
    assert store.count() == 300
    assert store.events()["message_id"].is_unique


def _group(i, user, account, ts=None):
    return {"message_id": f"g{i}", "type": "group", "user_id": user, "account_id": account,
            "timestamp": ts or dt.datetime(2024, 1, 1), "traits": "{}"}


def test_watermarks_move_with_every_commit_that_can_change_an_account(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    store.append([_group(1, "u1", "acme"), _msg(1, account="acme", user="u1"),
                  _msg(2, account="other", user="u2")])
    w0 = store.watermarks()
    assert set(w0) == {"acme", "other"} and store.watermarks(["acme", "nobody"]) == {"acme": w0["acme"]}

    store.append([_msg(3, account=None, user="u1")])  # a member's event without an account
    w1 = store.watermarks()
    assert w1["acme"] != w0["acme"] and w1["other"] == w0["other"]

    store.append([_msg(3, account=None, user="u1")])  # a duplicate changes nothing
    assert store.watermarks() == w1

    bad = _msg(9, account="other", user="u2")
    bad["timestamp"] = None
    with pytest.raises(sa.exc.IntegrityError):
        store.append([_msg(8, account="other", user="u2"), bad])
    assert store.watermarks() == w1  # rolled back together with the messages

    # u3's earlier event counts for acme once u3 joins: the join moves acme, not "other".
    store.append([_msg(4, account=None, user="u3")])
    w2 = store.watermarks()
    store.append([_group(2, "u3", "acme")])
    w3 = store.watermarks()
    assert w3["acme"] != w2["acme"] and w3["other"] == w2["other"]
    # u1 moves to "other": both accounts' features change, both watermarks move.
    store.append([_group(3, "u1", "other", ts=dt.datetime(2024, 2, 1))])
    w4 = store.watermarks()
    assert w4["acme"] != w3["acme"] and w4["other"] != w3["other"]


def test_a_store_written_before_the_watermark_table_is_backfilled(tmp_path):
    db = tmp_path / "e.db"
    store = EventStore(f"sqlite:///{db}")
    store.append([_group(1, "u1", "acme"), _msg(1, account=None, user="u1"),
                  _msg(2, account="other", user="u2")])
    expected = store.watermarks()
    con = sqlite3.connect(db)
    con.execute("DROP TABLE account_watermarks")
    con.execute("DROP TABLE memberships")
    con.commit()
    con.close()
    reopened = EventStore(f"sqlite:///{db}")
    assert reopened.watermarks() == expected
    reopened.append([_msg(3, account=None, user="u1")])  # memberships were backfilled too
    assert reopened.watermarks()["acme"] != expected["acme"]
