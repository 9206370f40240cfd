"""The per-worker feature cache of /score by id: invalidation by the store watermark, and the
warm-up (one batch over the whole store) answering exactly what the uncached path answers.

Direct calls of ``PQLScorer`` (a second ``to_asgi()`` app in one process would register
BentoML's Prometheus metrics twice).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from serving_fixtures import shared_bundle

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
AS_OF = pd.Timestamp(NOW.replace(tzinfo=None)).ceil("1h")


def _iso(days_ago: float) -> str:
    return (NOW - dt.timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")


def _messages(account: str, n_invites: int, industry: str = "software") -> list[dict]:
    msgs = [{"type": "group", "userId": f"{account}-u1", "groupId": account, "messageId": f"{account}-g1",
             "traits": {"industry": industry, "employees": 10 + n_invites}, "timestamp": _iso(30)},
            {"type": "track", "userId": f"{account}-u1", "event": "project_created",
             "messageId": f"{account}-p1", "timestamp": _iso(12), "context": {"groupId": account}}]
    msgs += [{"type": "track", "userId": f"{account}-u{k + 1}", "event": "teammate_invited",
              "messageId": f"{account}-i{k}", "timestamp": _iso(1 + k), "context": {"groupId": account}}
             for k in range(n_invites)]
    return msgs


@pytest.fixture()
def make_service(tmp_path, monkeypatch):
    """Build PQLScorer instances on one fresh event store (env as `pql serve` sets it)."""
    from serving.model import download_bundle

    b = shared_bundle()
    monkeypatch.setenv("PQL_API_TOKEN", "tok")
    monkeypatch.setenv("PQL_WRITE_KEY", "wk")
    monkeypatch.setenv("PQL_MODEL_DIR", str(download_bundle(b["model_uri"], b["tracking_uri"],
                                                            tmp_path / "bundle")))
    monkeypatch.setenv("PQL_STORE_URL", f"sqlite:///{tmp_path / 'events.db'}")
    monkeypatch.setenv("PQL_CACHE_REFRESH_SECONDS", "0")

    def make(cache: bool = True, answers: bool = True):
        from serving.service import PQLScorer

        monkeypatch.setenv("PQL_FEATURE_CACHE", "1" if cache else "0")
        monkeypatch.setenv("PQL_ANSWER_CACHE", "1" if answers else "0")
        return PQLScorer()
    return make


def _ingest(svc, msgs):
    from serving.ingest import parse_request

    svc.store.append(parse_request({"batch": msgs}))


def _ask(svc, ids, as_of=AS_OF):
    from serving.service import AccountIn

    return svc.score([AccountIn(account_id=a, as_of=as_of) for a in ids])


def test_new_event_for_an_account_is_reflected_by_the_next_score(make_service):
    svc = make_service()
    _ingest(svc, _messages("acme", 2) + _messages("other", 1))
    (first,) = _ask(svc, ["acme"])
    misses = svc.cache.stats()["misses"]
    (again,) = _ask(svc, ["acme"])
    assert again == first and svc.cache.stats()["misses"] == misses  # served from the cache
    assert "connected_integration" not in {m["name"] for m in first["milestones_reached"]}

    # A new event for the account: its watermark moves, the next answer is recomputed.
    _ingest(svc, [{"type": "track", "userId": "acme-u2", "event": "integration_connected",
                   "messageId": "acme-new", "timestamp": _iso(0.5), "context": {"groupId": "acme"}}])
    (after,) = _ask(svc, ["acme"])
    assert svc.cache.stats()["misses"] == misses + 1
    assert "connected_integration" in {m["name"] for m in after["milestones_reached"]}
    assert after["probability"] != first["probability"] or after["reasons_up"] != first["reasons_up"]
    # The other account's entry was not touched by acme's event.
    hits = svc.cache.stats()["hits"]
    _ask(svc, ["other"])
    _ask(svc, ["other"])
    assert svc.cache.stats()["hits"] == hits + 1


def test_a_group_call_linking_a_user_invalidates_the_account(make_service):
    svc = make_service()
    _ingest(svc, _messages("acme", 1))
    # An event of a user not yet linked to any account: not acme's.
    _ingest(svc, [{"type": "track", "userId": "drifter", "event": "integration_connected",
                   "messageId": "d1", "timestamp": _iso(3)}])
    (before,) = _ask(svc, ["acme"])
    assert "connected_integration" not in {m["name"] for m in before["milestones_reached"]}
    # The user joins acme: their earlier event now counts for acme.
    _ingest(svc, [{"type": "group", "userId": "drifter", "groupId": "acme", "messageId": "dg",
                   "timestamp": _iso(2)}])
    (after,) = _ask(svc, ["acme"])
    assert "connected_integration" in {m["name"] for m in after["milestones_reached"]}


def test_warm_up_answers_exactly_what_the_uncached_path_answers(make_service):
    from serving.service import AccountIn, warm_cache

    plain = make_service(cache=False)
    accounts = [f"acc{k}" for k in range(8)]
    for k, acc in enumerate(accounts):
        _ingest(plain, _messages(acc, k % 4, ["software", "retail", "fintech"][k % 3]))
    ids = accounts + ["ghost"]
    expected = _ask(plain, ids)

    cached = make_service(cache=True)
    assert warm_cache(cached, AS_OF) == len(accounts)
    before = cached.cache.stats()
    got = _ask(cached, ids)
    assert got == expected
    # Byte for byte: the pre-serialised answers the cache sends are the bytes the uncached
    # path sends (the warm-up computed them in one whole-store batch, the plain service per call).
    assert [a.json for a in got] == [a.json for a in expected]
    assert b'"reasons_up"' in got[0].json and b'"error"' in got[-1].json
    after = cached.cache.stats()
    assert after["hits"] - before["hits"] == len(accounts)  # every known account from the warm-up
    assert after["misses"] - before["misses"] == 1  # only the unknown one

    # /explain (every contribution) from a cached row equals the uncached explanation.
    one = AccountIn(account_id="acc3", as_of=AS_OF)
    assert cached.explain(one) == plain.explain(one)

    # Features cached, answers computed per request (PQL_ANSWER_CACHE=0): the same bytes, and
    # the features still come from the cache (hits, no recomputation of the pipeline).
    features_only = make_service(cache=True, answers=False)
    assert warm_cache(features_only, AS_OF) == len(accounts)
    before = features_only.cache.stats()
    assert [a.json for a in _ask(features_only, ids)] == [a.json for a in expected]
    assert features_only.cache.stats()["hits"] - before["hits"] == len(accounts)

    # The start-up warm-up (default "now" cutoff) also equals the uncached path.
    warm_at_start = make_service(cache=True)
    assert warm_at_start.cache.stats()["entries"] == len(accounts)
    hits = warm_at_start.cache.stats()["hits"]
    now_cached = warm_at_start.score([AccountIn(account_id=a) for a in accounts])
    if warm_at_start.cache.stats()["hits"] == hits + len(accounts):  # no 5-minute boundary crossed
        assert now_cached == plain.score([AccountIn(account_id=a) for a in accounts])


@pytest.mark.slow  # spawns the warm-up process (~20 s of imports on a busy host)
def test_warm_up_process_fills_the_cache_with_the_uncached_answers(make_service):
    """The next cutoff is warmed in a separate process; its entries answer like the uncached path."""
    import os

    from serving.service import AccountIn, CacheWarmer

    # Not on a 5-minute boundary: the start-up warm-up (default cutoff) never covers it.
    as_of = AS_OF + pd.Timedelta(minutes=1)
    plain = make_service(cache=False)
    accounts = [f"acc{k}" for k in range(8)]
    for k, acc in enumerate(accounts):
        _ingest(plain, _messages(acc, k % 4, ["software", "retail", "fintech"][k % 3]))
    ids = accounts + ["ghost"]
    expected = _ask(plain, ids, as_of)

    cached = make_service(cache=True)
    assert not cached.cache.warmed(as_of)
    # Chunks of 3 accounts: several messages, each with its own slice of the feature frame.
    warmer = CacheWarmer(cached, 0, model_dir=os.environ["PQL_MODEL_DIR"], pause_seconds=0, chunk_size=3)
    try:
        assert warmer.warm(as_of) == len(accounts)
        assert cached.cache.warmed(as_of) and warmer.catch_up(as_of) == 0  # nothing moved
        before = cached.cache.stats()
        assert [a.json for a in _ask(cached, ids, as_of)] == [a.json for a in expected]
        after = cached.cache.stats()
        assert after["hits"] - before["hits"] == len(accounts)

        # An event after the warm-up's read: the catch-up recomputes just that account, in the
        # warm-up process, and the next request hits with the uncached path's new answer.
        _ingest(plain, [{"type": "track", "userId": "acc2-u1", "event": "integration_connected",
                         "messageId": "acc2-late", "timestamp": _iso(0.2), "context": {"groupId": "acc2"}}])
        assert cached.cache.stale(as_of, cached.store.watermarks(None)) == ["acc2"]
        assert warmer.catch_up(as_of) == 1
        (fresh,) = _ask(plain, ["acc2"], as_of)
        hits = cached.cache.stats()["hits"]
        (caught,) = _ask(cached, ["acc2"], as_of)
        assert caught.json == fresh.json and cached.cache.stats()["hits"] == hits + 1
        assert "connected_integration" in {m["name"] for m in caught["milestones_reached"]}
    finally:
        warmer.stop()
    assert not warmer._proc.is_alive()
    # /explain re-explains the row from the chunk's frame slice: equal to the uncached one.
    for acc in ("acc0", "acc4", "acc7"):
        one = AccountIn(account_id=acc, as_of=as_of)
        assert cached.explain(one) == plain.explain(one)
