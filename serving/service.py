"""The BentoML service: scores with reasons, explanations, Segment-compatible ingestion, feedback.

Run with ``pql serve`` (imports the champion into the Bento model store, then
``bentoml serve serving.service:PQLScorer``). Configuration comes from the environment:

``PQL_API_TOKEN``    bearer token for /score, /explain, /feedback (required)
``PQL_WRITE_KEY``    Segment write key for /v1/* (basic auth, key as user name; required)
``PQL_MARKETING_WRITE_KEY``  optional write key of a marketing tool's Segment source: its
                     events are stored as ``source = marketing`` (demand-gen features)
``PQL_STORE_URL``    SQLAlchemy URL of the event store (default ``sqlite:///pql_events.db``)
``PQL_BENTO_MODEL``  Bento model tag (default ``pql-account-scorer:latest``)
``PQL_MODEL_DIR``    a local bundle directory instead of the Bento store (tests, notebooks)
``PQL_TIERS``        tier cut points as JSON, e.g. ``{"hot": 75, "warm": 45}``
``PQL_MAX_EVENTS`` / ``PQL_MAX_BODY_BYTES``  request limits
``PQL_CUTOFF_GRANULARITY``  "now" (no ``as_of``) is rounded up to this (default ``5min``)
``PQL_FEATURE_CACHE``  ``0`` turns the per-worker feature cache off (default on)
``PQL_ANSWER_CACHE``  ``0``: cache features only; model and reasons computed per request
                     (default on: /score answers cache hits with the stored answer)
``PQL_CACHE_REFRESH_SECONDS``  how often the cache warmer checks the current/next cutoff
                     (default 30; ``0``: warm only at start-up)
``PQL_CACHE_WARM_LEAD_SECONDS``  the next cutoff is warmed only this long before it becomes the
                     default one (default 90: the last 90 s of each 5-minute window)

Scoring by account id goes through a per-worker cache of the pipeline's features and answers,
keyed by (cutoff, account, the account's event-store watermark): a request reads the
watermarks of its accounts (one indexed query), answers the unchanged ones from the cache and
computes the rest with the pipeline's compiled query in one batch. The cache is warmed for
every account of the store at start-up and, shortly before each new "now" cutoff, by a
separate warm-up process (so its work never holds the serving worker's GIL). Answers are
cached as their serialised JSON (:class:`serving.online.Answer`): /score sends cache hits by
concatenating bytes.

``/livez``, ``/readyz`` and ``/metrics`` stay open (BentoML's own endpoints).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hmac
import json
import logging
import os
import threading
import time
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
# BentoML's root IO model (not re-exported by ``bentoml``): /score's output spec subclasses it.
from _bentoml_sdk.io_models import IORootModel
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, WithJsonSchema

from serving.explain import Explainer, render_html
from serving.ingest import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST, IngestError, accounts_frame, parse_request
from serving.model import ModelError, Scorer, check_manifest, load_bundle
from serving.online import Answer, CachedScore, FeatureCache, OnlineFeatureQuery, answers_json
from serving.store import DEFAULT_URL, EventStore

logger = logging.getLogger("pql.serving")

PROTECTED = ("/score", "/explain", "/feedback", "/cache_stats")
INGEST_PREFIX = "/v1/"
#: Default rounding of "now" for requests without as_of (pandas offset alias).
DEFAULT_GRANULARITY = "5min"


# --- request shapes -------------------------------------------------------------------------
class EventIn(BaseModel):
    """One product event given inline."""

    user_id: str = Field(min_length=1)
    event: str = Field(min_length=1)
    timestamp: dt.datetime
    properties: dict[str, Any] | None = None
    message_id: str | None = None
    source: Literal["product", "marketing"] = "product"


class AccountIn(BaseModel):
    """An account to score: by id (events from the store) or inline events and fit attributes."""

    account_id: str = Field(min_length=1)
    events: list[EventIn] | None = Field(None, description="inline events; omit to use the event store")
    fit: dict[str, str | float | int | bool | None] | None = Field(
        None, description="fit attributes, e.g. {'industry': 'software', 'employees': 40}")
    as_of: dt.datetime | None = Field(None, description="cutoff; default now (UTC)")


class FeedbackIn(BaseModel):
    """A sales rep's verdict on a lead."""

    account_id: str = Field(min_length=1)
    verdict: Literal["good", "bad"]
    note: str | None = Field(None, max_length=5000)
    rep: str | None = None


class ScoreAnswers(IORootModel[Annotated[list[Any], WithJsonSchema(
        {"type": "array", "items": {"type": "object"}})]]):
    """/score's output: a JSON array of answers, written by concatenating pre-serialised answers.

    BentoML's default output path validates ``list[dict]`` with pydantic, dumps it to Python
    objects and serialises them again: for a 100-id batch, ~200 KB of nested dicts walked
    twice per request. Each :class:`~serving.online.Answer` already holds its JSON (cached
    answers were serialised once, when computed), so the response body is their concatenation;
    BentoML sends ``bytes`` returned by ``model_dump()`` as the body as is. The JSON clients
    receive is the same array of objects as before.
    """

    def model_dump(self, **kwargs):
        """The response body (``bytes``); with arguments, pydantic's own dump."""
        if kwargs:
            return super().model_dump(**kwargs)
        return answers_json(self.root)


# --- auth and limits: one ASGI middleware in front of everything ---------------------------
def _reply(send, status: int, body: dict, headers=()):
    payload = json.dumps(body).encode()

    async def go():
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), *headers]})
        await send({"type": "http.response.body", "body": payload})
    return go()


class GuardMiddleware:
    """Bearer token on scoring routes, write key on ingestion, a body-size cap on both.

    Checked before BentoML parses anything, so an unauthenticated or oversized request costs
    nothing and never reaches the store.
    """

    def __init__(self, app, api_token: str | None = None, write_key: str | None = None,
                 max_body_bytes: int | None = None, marketing_write_key: str | None = None):
        self.app = app
        self.api_token = api_token if api_token is not None else os.environ.get("PQL_API_TOKEN", "")
        self.write_key = write_key if write_key is not None else os.environ.get("PQL_WRITE_KEY", "")
        # Segment gives every source its own write key: a marketing tool's source (email, ads,
        # webinars) is told apart from the product's by the key it sends, not by event names.
        self.marketing_write_key = (marketing_write_key if marketing_write_key is not None
                                    else os.environ.get("PQL_MARKETING_WRITE_KEY", ""))
        self.max_body = int(max_body_bytes or os.environ.get("PQL_MAX_BODY_BYTES", MAX_BODY_BYTES))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        guarded = path.startswith(INGEST_PREFIX) or path in PROTECTED
        if not guarded:
            return await self.app(scope, receive, send)
        auth = headers.get("authorization", "")
        if path.startswith(INGEST_PREFIX):
            source = self._write_key_source(auth)
            if source is None:
                return await _reply(send, 401, {"success": False, "error": "invalid write key",
                                                "field": "Authorization"},
                                    [(b"www-authenticate", b'Basic realm="pql"')])
            scope.setdefault("state", {})["pql_source"] = source  # read by _ingest
        elif not (self.api_token and auth.startswith("Bearer ")
                  and hmac.compare_digest(auth[7:].strip(), self.api_token)):
            return await _reply(send, 401, {"error": "missing or invalid bearer token",
                                            "field": "Authorization"},
                                [(b"www-authenticate", b'Bearer realm="pql"')])
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _reply(send, 413, {"success": False, "field": "body",
                                            "error": f"body of {length} bytes exceeds {self.max_body}"})
        return await self.app(scope, self._capped(receive, send), send)

    def _write_key_source(self, auth: str) -> str | None:
        """``product`` or ``marketing`` for a known write key, else None."""
        if not auth.startswith("Basic "):
            return None
        try:
            user = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return None
        for key, source in ((self.write_key, "product"), (self.marketing_write_key, "marketing")):
            if key and hmac.compare_digest(user, key):
                return source
        return None

    def _capped(self, receive, send):
        # Chunked bodies carry no Content-Length: count while reading.
        seen = 0
        limit = self.max_body

        async def wrapped():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return msg
        return wrapped


class BodyTooLarge(Exception):
    """Raised while streaming a body over the size limit."""


class ScoreFastPath:
    """ASGI middleware answering a /score request on the event loop when the cache holds all of it.

    BentoML's adaptive batching (``batchable=True``) sends every /score request through its
    cork dispatcher and a worker thread. The dispatcher delays a request by the *average* wait
    of the last 50 batches (``n * wait_n <= 0.95 * mean wait``), so one slow batch (a miss, a
    warm-up chunk, the start-up) makes the next several hundred requests wait tens to hundreds
    of ms for no batching gain: that feedback, plus the thread hop, was the /score p99 (50-200
    ms at 8 clients while the server's own work per hit is ~1 ms). A request whose accounts are
    all by id and all answered by the cache (unchanged watermark) needs no batching: it is
    answered here from the pre-serialised answers (one indexed watermark read, dictionary
    look-ups, a byte join). Anything else (a miss, inline events, an ``as_of`` that is not
    cached, a body this path does not recognise, even an invalid one) goes on, body replayed,
    to the batched endpoint, which computes, caches and validates exactly as before. Installed
    after :class:`GuardMiddleware`: authentication and size limits apply first. The answers are
    the bytes the batched endpoint would send for the same cache entries.
    """

    #: Larger requests take the batched path (the dispatcher's max_batch_size).
    MAX_ACCOUNTS = 1000

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != "/score" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        svc = _current_scorer()
        headers = dict(scope.get("headers") or [])
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
        if svc is None or media != b"application/json":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        try:
            while more:
                msg = await receive()
                if msg["type"] != "http.request":  # client went away
                    return
                chunks.append(msg.get("body", b""))
                more = msg.get("more_body", False)
        except BodyTooLarge:
            return await _reply(send, 413, {"success": False, "field": "body", "error": "body too large"})
        body = b"".join(chunks)
        try:
            payload = cached_score_response(svc, body, self.MAX_ACCOUNTS)
        except Exception:  # e.g. the store unreadable: the batched endpoint reports it properly
            logger.exception("/score fast path failed; handing the request on")
            payload = None
        if payload is not None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode()),
                                    (b"server", f"BentoML Service/{PQLScorer.name}".encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


def _current_scorer():
    """The worker's service instance (None before start-up or without an answer cache)."""
    try:
        svc = bentoml.get_current_service()
    except Exception:  # not started yet
        return None
    if getattr(svc, "cache", None) is None or not getattr(svc, "answer_cache", False):
        return None
    return svc


# --- the service ----------------------------------------------------------------------------
segment_app = FastAPI(title="Segment-compatible ingestion", docs_url=None, redoc_url=None)


def _refuse_to_start(error: Exception) -> None:
    """Stop ``bentoml serve`` itself when a worker cannot start.

    BentoML's arbiter respawns a worker whose start-up failed, forever; a model that does not
    match the feature code (or a missing secret) fails identically every time, so after
    logging the reason we ask the arbiter (our parent process) to shut the server down.
    Outside a ``bentoml serve`` worker (tests, direct use) the exception simply propagates.
    """
    from bentoml._internal.context import server_context

    logger.critical("PQL scorer refuses to start: %s", error)
    if server_context.worker_index is not None and os.getppid() > 1:
        import signal

        os.kill(os.getppid(), signal.SIGTERM)


def _required_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"{name} is not set: the service refuses to start without it "
                           f"(export {name}=<secret>)")
    return value


@bentoml.service(name="pql_scorer", traffic={"timeout": 60}, workers=1)
@bentoml.asgi_app(segment_app, path="/v1")
class PQLScorer:
    """Scores, reasons, next-best milestones; Segment ingestion; sales feedback."""

    bundle_ref = bentoml.models.BentoModel(os.environ.get("PQL_BENTO_MODEL", "pql-account-scorer:latest"))

    def __init__(self) -> None:
        try:
            self._setup()
        except (ModelError, RuntimeError) as e:
            _refuse_to_start(e)
            raise

    def _setup(self) -> None:
        _required_env("PQL_API_TOKEN")
        _required_env("PQL_WRITE_KEY")
        model_dir = os.environ.get("PQL_MODEL_DIR") or self.bundle_ref.path
        tiers = json.loads(os.environ["PQL_TIERS"]) if os.environ.get("PQL_TIERS") else None
        bundle = load_bundle(model_dir, tiers=tiers)
        # Refuse to start when the model expects columns the feature code no longer makes.
        check_manifest(bundle)
        self.scorer = Scorer(bundle)
        self.explainer = Explainer(self.scorer)
        # The pipeline's feature query compiled once (compiling it per request costs ~1 s).
        self.features = OnlineFeatureQuery(bundle.spec, bundle.manifest)
        self.store = EventStore(os.environ.get("PQL_STORE_URL", DEFAULT_URL))
        self.max_events = int(os.environ.get("PQL_MAX_EVENTS", MAX_EVENTS_PER_REQUEST))
        self.granularity = os.environ.get("PQL_CUTOFF_GRANULARITY", DEFAULT_GRANULARITY)
        try:
            pd.Timedelta(self.granularity)
        except ValueError:
            raise RuntimeError(f"PQL_CUTOFF_GRANULARITY={self.granularity!r}: expected a duration "
                               "such as 1min or 5min") from None
        self.cache = None
        self.warmer = None
        self.answer_cache = os.environ.get("PQL_ANSWER_CACHE", "1") != "0"
        if os.environ.get("PQL_FEATURE_CACHE", "1") != "0":
            self.cache = FeatureCache()
            # Warm before the worker reports ready: the first requests then hit the cache.
            t = time.perf_counter()
            cutoff = default_cutoff(pd.Timestamp.now("UTC").tz_localize(None), self.granularity)
            n = warm_cache(self, cutoff)
            # The warm-up takes ~30 s: when a window boundary passed meanwhile, requests now ask
            # for the next cutoff; warm that one too, so the worker is warm when it reports ready.
            later = default_cutoff(pd.Timestamp.now("UTC").tz_localize(None), self.granularity)
            if later != cutoff:
                n = warm_cache(self, later)
            logger.info("feature cache warmed: %d accounts in %.1f s", n, time.perf_counter() - t)
            _freeze_heap()
            refresh = float(os.environ.get("PQL_CACHE_REFRESH_SECONDS", "30"))
            if refresh > 0:
                lead = float(os.environ.get("PQL_CACHE_WARM_LEAD_SECONDS", WARM_LEAD_SECONDS))
                self.warmer = CacheWarmer(self, refresh, model_dir=str(model_dir), tiers=tiers,
                                          lead_seconds=lead)
                self.warmer.start()
        logger.info("serving %s with store %s", bundle.version, self.store.url)

    @bentoml.api(route="/cache_stats")
    def cache_stats(self) -> dict:
        """Feature cache hits, misses and size of this worker (bearer token needed)."""
        return self.cache.stats() if self.cache is not None else {"enabled": False}

    # ---- scoring -----------------------------------------------------------------------
    # max_latency_ms is BentoML's load-shedding bound (503 beyond it), not the latency target:
    # at 200 ms a busy 2-core host shed most requests at 8 clients. One request may carry up to
    # max_batch_size accounts (batch scoring sends 100 ids per request).
    @bentoml.api(batchable=True, max_batch_size=1000, max_latency_ms=10_000, output_spec=ScoreAnswers)
    def score(self, accounts: list[AccountIn]) -> list[Answer]:
        """Probability, score 0-100, tier, milestones reached, top reasons, next-best milestones.

        Each answer is an :class:`~serving.online.Answer` (a read-only mapping over its JSON).
        """
        return score_accounts_online(self, accounts, with_all=False)

    @bentoml.api
    def explain(self, account: AccountIn) -> dict:
        """One account with every contribution and a reviewer page (``html``)."""
        (exp,) = explain_accounts_online(self, [account], with_all=True)
        if isinstance(exp, dict):
            raise bentoml.exceptions.NotFound(f"account_id {account.account_id}: {exp['error']}")
        return _jsonable(dict(exp.to_dict(), html=render_html(exp)))

    @bentoml.api
    def feedback(self, item: FeedbackIn) -> dict:
        """Store a sales verdict (good or bad lead) with a note."""
        fid = self.store.add_feedback(item.account_id, item.verdict, note=item.note, rep=item.rep,
                                      model_version=self.scorer.bundle.version)
        return {"id": fid, "account_id": item.account_id, "verdict": item.verdict}

    # ---- Segment-compatible ingestion (mounted FastAPI app, class views) ----------------
    @segment_app.post("/batch")
    async def segment_batch(self, request: Request):
        return await self._ingest(request, None)

    @segment_app.post("/track")
    async def segment_track(self, request: Request):
        return await self._ingest(request, "track")

    @segment_app.post("/identify")
    async def segment_identify(self, request: Request):
        return await self._ingest(request, "identify")

    @segment_app.post("/group")
    async def segment_group(self, request: Request):
        return await self._ingest(request, "group")

    @segment_app.post("/page")
    async def segment_page(self, request: Request):
        return await self._ingest(request, "page")

    async def _ingest(self, request: Request, kind: str | None) -> JSONResponse:
        try:
            raw = await request.body()
        except BodyTooLarge:
            return JSONResponse({"success": False, "field": "body", "error": "body too large"}, 413)
        try:
            if request.headers.get("content-encoding", "").lower() == "gzip":
                raw = _gunzip(raw, int(os.environ.get("PQL_MAX_BODY_BYTES", MAX_BODY_BYTES)))
            body = json.loads(raw)
        except BodyTooLarge:
            return JSONResponse({"success": False, "field": "body", "error": "body too large"}, 413)
        except (ValueError, OSError) as e:
            return JSONResponse({"success": False, "field": "body", "error": f"not valid JSON: {e}"}, 400)
        # Validation (pandas) and the commit are blocking: both run off the event loop, so
        # other requests are read and parsed meanwhile. The response is sent only after COMMIT.
        import anyio

        source = getattr(request.state, "pql_source", "product")

        def parse_and_store():
            return self.store.append(parse_request(body, kind, max_events=self.max_events, source=source))

        try:
            result = await anyio.to_thread.run_sync(parse_and_store)
        except IngestError as e:
            return JSONResponse(e.to_dict(), e.status)
        return JSONResponse({"success": True, "received": result.received,
                             "stored": result.stored, "duplicates": result.duplicates})


PQLScorer.add_asgi_middleware(GuardMiddleware)
PQLScorer.add_asgi_middleware(ScoreFastPath)


def _gunzip(data: bytes, limit: int) -> bytes:
    with gzip.GzipFile(fileobj=__import__("io").BytesIO(data)) as f:
        out = f.read(limit + 1)
    if len(out) > limit:
        raise BodyTooLarge()
    return out


# --- the scoring path (a plain function: tests and benchmarks call it directly) -----------
def _inline_events(acc: AccountIn) -> pd.DataFrame:
    rows = [{"user_id": e.user_id, "account_id": acc.account_id, "event": e.event,
             "timestamp": pd.Timestamp(e.timestamp).tz_convert("UTC").tz_localize(None)
             if pd.Timestamp(e.timestamp).tzinfo else pd.Timestamp(e.timestamp),
             "message_id": e.message_id, "source": e.source,
             "properties": json.dumps(e.properties) if e.properties is not None else None}
            for e in acc.events or []]
    return pd.DataFrame(rows, columns=["user_id", "account_id", "event", "timestamp",
                                       "message_id", "source", "properties"])


def default_cutoff(now: pd.Timestamp, granularity: str = DEFAULT_GRANULARITY) -> pd.Timestamp:
    """The cutoff of a request without ``as_of``: now rounded *up* to ``granularity``.

    Rounding up keeps every event stored so far (all timestamps before now) inside the
    features, while requests within one granularity share one cutoff, hence one feature cache
    entry per account. The only staleness is time itself: recency and decay are computed at
    most one granularity ahead (5 minutes by default, ~0.0035 days).

    >>> str(default_cutoff(pd.Timestamp("2024-06-01 10:01:30"), "5min"))
    '2024-06-01 10:05:00'
    """
    return pd.Timestamp(now).ceil(granularity)


def _cutoff(acc: AccountIn, default: pd.Timestamp) -> pd.Timestamp:
    if acc.as_of is None:
        return default
    t = pd.Timestamp(acc.as_of)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo else t


def cached_score_response(svc, body: bytes, max_accounts: int = 1000) -> bytes | None:
    """The /score response body for ``body`` if the answer cache holds every account, else None.

    Accepts exactly ``{"accounts": [{"account_id": ..., "as_of": ...}, ...]}`` with accounts by
    id (no inline ``events``); an account the store has never seen is answered "no events"
    (as the full path does, without computing anything). Counts hits and misses like the full
    path, but only when it answers: a request handed on is counted there, once.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.keys() != {"accounts"}:
        return None
    raw = data["accounts"]
    if not isinstance(raw, list) or not raw or len(raw) > max_accounts:
        return None
    now = pd.Timestamp.now("UTC").tz_localize(None)
    default = default_cutoff(now, getattr(svc, "granularity", DEFAULT_GRANULARITY))
    wanted: list[tuple[str, pd.Timestamp]] = []
    for item in raw:
        if type(item) is dict and item.keys() == {"account_id"} and type(item["account_id"]) is str \
                and item["account_id"]:
            wanted.append((item["account_id"], default))  # the common shape, no validation model
            continue
        try:
            acc = AccountIn.model_validate(item)
        except ValueError:  # pydantic's ValidationError: the full path reports it
            return None
        if acc.events is not None:
            return None
        wanted.append((acc.account_id, _cutoff(acc, default)))
    cache = svc.cache
    wm = svc.store.watermarks(list(dict.fromkeys(aid for aid, _ in wanted)))
    found: dict[tuple[str, pd.Timestamp], Answer] = {}
    for key in dict.fromkeys(wanted):
        aid, cutoff = key
        if aid not in wm:  # the store knows nothing of it: nothing to compute
            found[key] = Answer.of(_no_events(aid, cutoff))
            continue
        entry = cache.peek(cutoff, aid, wm[aid])
        if entry is None:
            return None
        found[key] = entry.result
    unknown = sum(1 for aid, _ in dict.fromkeys(wanted) if aid not in wm)
    cache.count(hits=len(found) - unknown, misses=unknown)
    return answers_json(found[key] for key in wanted)


def score_accounts_online(svc, accounts: list[AccountIn], with_all: bool = False) -> list[Answer]:
    """Score a batch of accounts the way /score does (features from the store or inline).

    Accounts that cannot be scored get ``{"account_id", "error"}`` in their place, so one bad
    account never fails the others in an adaptive batch. Accounts by id are answered from the
    worker's :class:`~serving.online.FeatureCache` when their store watermark is unchanged.
    Every answer is an :class:`~serving.online.Answer` (its JSON plus dict-like access),
    serialised the same way whether it came from the cache or was just computed.
    """
    return [Answer.of(r if isinstance(r, (dict, Answer)) else r.to_dict())
            for r in _answers(svc, accounts, with_all, as_dicts=not with_all)]


def explain_accounts_online(svc, accounts: list[AccountIn], with_all: bool = False) -> list:
    """Like :func:`score_accounts_online` but returns ``Explanation`` objects (or error dicts)."""
    return _answers(svc, accounts, with_all, as_dicts=False)


def _answers(svc, accounts: list[AccountIn], with_all: bool, as_dicts: bool) -> list:
    results: list = [None] * len(accounts)
    now = pd.Timestamp.now("UTC").tz_localize(None)
    default = default_cutoff(now, getattr(svc, "granularity", DEFAULT_GRANULARITY))
    by_cutoff: dict[pd.Timestamp, list[int]] = {}
    for i, acc in enumerate(accounts):
        by_cutoff.setdefault(_cutoff(acc, default), []).append(i)
    for cutoff, idx in by_cutoff.items():
        stored = [i for i in idx if accounts[i].events is None]
        inline = [i for i in idx if accounts[i].events is not None]
        if stored:
            ids = list(dict.fromkeys(accounts[i].account_id for i in stored))
            got = _stored_answers(svc, ids, cutoff, with_all, as_dicts)
            for i in stored:
                results[i] = got[accounts[i].account_id]
        if inline:
            got = _inline_answers(svc, [accounts[i] for i in inline], cutoff, with_all)
            for i, r in zip(inline, got):
                results[i] = r
    return results


def _no_events(aid: str, cutoff: pd.Timestamp) -> dict:
    return {"account_id": aid, "error": f"no events before {cutoff.isoformat()}: nothing to score"}


def _features(svc, events: pd.DataFrame, acc_frame: pd.DataFrame, cutoff: pd.Timestamp,
              query=None) -> pd.DataFrame:
    """The pipeline's features (compiled query) at ``cutoff``; one row per account with events."""
    from features.pipeline import online_features

    if not len(events):
        return pd.DataFrame({"account_id": pd.Series(dtype="string")})
    query = query or getattr(svc, "features", None)
    bundle = svc.scorer.bundle
    feats = (query(events, acc_frame, cutoff) if query is not None else
             online_features(events, bundle.spec, cutoff, accounts=acc_frame, manifest=bundle.manifest))
    return feats.drop_duplicates("account_id").reset_index(drop=True)


def _explained(svc, feats: pd.DataFrame, with_all: bool) -> tuple[dict, dict]:
    """({account_id: Explanation}, {account_id: why it cannot be scored}) for a feature frame."""
    if not len(feats):
        return {}, {}
    exps, bad = svc.explainer.explain(feats, with_all=with_all)
    ids = feats["account_id"].astype(str).to_numpy()
    return {e.account_id: e for e in exps}, {str(ids[r]): msg for r, msg in bad.items()}


def compute_stored(svc, account_ids: list[str] | None, cutoff: pd.Timestamp,
                   watermarks: dict | None = None, query=None) -> dict[str, "CachedScore"]:
    """Features and /score answers of stored accounts at ``cutoff``, as cache entries.

    One store read, one run of the pipeline's compiled query and one vectorised
    :meth:`Explainer.explain` for the whole set; ``account_ids=None`` means every account of
    the store (the warm-up). Watermarks are read *before* the events, so an event committed
    in between can only make an entry look older than it is (a needless recomputation later),
    never newer. Accounts the store knows nothing about are left out.
    """
    store = svc.store
    wm = store.watermarks(account_ids) if watermarks is None else watermarks
    if account_ids is None:
        account_ids = sorted(wm)
    known = [a for a in account_ids if a in wm]
    if not known:
        return {}
    warm = len(known) == len(wm) and watermarks is None and len(known) > 500
    # A whole-store read scans once instead of binding thousands of ids (SQLite caps them).
    events = store.events(None if warm else known, before=cutoff.to_pydatetime())
    acc_frame = accounts_frame(store, None if warm else known)
    if warm:
        have = set(acc_frame["account_id"]) if len(acc_frame) else set()
        extra = pd.DataFrame({"account_id": [a for a in known if a not in have]})
        acc_frame = pd.concat([acc_frame, extra], ignore_index=True) if len(extra) else acc_frame
    feats = _features(svc, events, acc_frame, cutoff, query)
    exps, bad = _explained(svc, feats, with_all=False)
    position = {str(a): k for k, a in enumerate(feats["account_id"])} if len(feats) else {}
    out = {}
    for aid in known:
        if aid in exps:
            result = Answer.of(exps[aid].to_dict())
        else:
            result = {"account_id": aid, "error": bad[aid]} if aid in bad else _no_events(aid, cutoff)
        out[aid] = CachedScore(wm[aid], feats if aid in position else None, position.get(aid, -1), result)
    return out


def _stored_answers(svc, ids: list[str], cutoff: pd.Timestamp, with_all: bool,
                    as_dicts: bool) -> dict:
    cache = getattr(svc, "cache", None)
    entries: dict[str, CachedScore] = {}
    if cache is not None:
        wm = svc.store.watermarks(ids)
        missing = []
        for aid in ids:
            hit = cache.get(cutoff, aid, wm.get(aid))
            if hit is None:
                missing.append(aid)
            else:
                entries[aid] = hit
        if missing:
            fresh = compute_stored(svc, missing, cutoff, watermarks={a: wm[a] for a in missing if a in wm})
            cache.put(cutoff, fresh)
            entries.update(fresh)
    else:
        entries = compute_stored(svc, ids, cutoff)
    out: dict = {}
    if as_dicts and getattr(svc, "answer_cache", True):
        for aid in ids:
            out[aid] = entries[aid].result if aid in entries else _no_events(aid, cutoff)
        return out
    # Explanation objects (/explain with every contribution, or /score with the answer cache
    # off): model and reasons computed now from the cached feature rows.
    rows = [(aid, entries[aid]) for aid in ids if aid in entries and entries[aid].frame is not None]
    for frame_id in {id(e.frame) for _, e in rows}:
        group = [(aid, e) for aid, e in rows if id(e.frame) == frame_id]
        frame = group[0][1].frame.iloc[[e.position for _, e in group]].reset_index(drop=True)
        exps, bad = _explained(svc, frame, with_all)
        out.update(exps)
        out.update({aid: {"account_id": aid, "error": msg} for aid, msg in bad.items()})
    for aid in ids:
        if aid not in out:
            out[aid] = entries[aid].result if aid in entries else _no_events(aid, cutoff)
    return out


def _inline_answers(svc, accounts: list[AccountIn], cutoff: pd.Timestamp, with_all: bool) -> list:
    events = pd.concat([_inline_events(a) for a in accounts], ignore_index=True)
    acc_frame = pd.DataFrame([dict(account_id=a.account_id, **(a.fit or {})) for a in accounts])
    exps, bad = _explained(svc, _features(svc, events, acc_frame, cutoff), with_all)
    return [exps.get(a.account_id) or ({"account_id": a.account_id, "error": bad[a.account_id]}
                                       if a.account_id in bad else _no_events(a.account_id, cutoff))
            for a in accounts]


def warm_cache(svc, cutoff: pd.Timestamp, query=None) -> int:
    """Fill ``svc.cache`` at ``cutoff`` for every account of the store, in one batch.

    The SAME compiled pipeline query as a request runs, over all the store's accounts at once
    (then one vectorised explanation). Returns the number of accounts cached.
    """
    entries = compute_stored(svc, None, cutoff, query=query)
    svc.cache.put(cutoff, entries, warmed=True)
    return len(entries)


def _freeze_heap(collect: bool = True) -> None:
    """Move everything alive now out of the cyclic GC's reach (``gc.freeze``).

    A warm cache holds every answer's nested dicts and lists (10,000 accounts); every full
    collection would walk them all, a pause of tens of ms in the middle of some request (the
    /score p99). Frozen objects are still freed by reference counting when an entry is
    dropped; only cyclic garbage among them would wait, and cache entries hold none.
    ``collect`` first runs a full collection (at start-up, before the worker is ready; not
    while serving, where that collection would be the very pause we avoid).
    """
    import gc

    if collect:
        gc.collect()
    gc.freeze()


#: Accounts per message from the warm-up process: answers travel as JSON bytes, so unpickling
#: one chunk (its answers and its slice of the feature frame) holds the serving worker's GIL
#: for well under a millisecond; requests never wait long behind it.
WARM_CHUNK = 100
#: How long before a cutoff becomes the default one ("now" rounded up) the warm-up computes it.
#: Warming it earlier only puts its load (and its entries in the worker) in the middle of the
#: window's traffic for no gain; later risks misses at the boundary (~20-40 s of warm-up).
WARM_LEAD_SECONDS = 90.0


def warm_due(now: pd.Timestamp, granularity: str = DEFAULT_GRANULARITY,
             lead_seconds: float = WARM_LEAD_SECONDS) -> list[pd.Timestamp]:
    """The default cutoffs the cache should hold at ``now``.

    The current one (``now`` rounded up) always; the next one only in the last
    ``lead_seconds`` of the current window, so it is warm when requests start asking for it.

    >>> [str(c) for c in warm_due(pd.Timestamp("2024-06-01 10:01:30"), "5min", 90)]
    ['2024-06-01 10:05:00']
    >>> [str(c) for c in warm_due(pd.Timestamp("2024-06-01 10:03:45"), "5min", 90)]
    ['2024-06-01 10:05:00', '2024-06-01 10:10:00']
    """
    current = default_cutoff(now, granularity)
    due = [current]
    if (current - pd.Timestamp(now)).total_seconds() <= lead_seconds:
        due.append(current + pd.Timedelta(granularity))
    return due


def seconds_until_due_changes(now: pd.Timestamp, granularity: str = DEFAULT_GRANULARITY,
                              lead_seconds: float = WARM_LEAD_SECONDS) -> float:
    """Seconds from ``now`` until :func:`warm_due` returns something new.

    That is when the next cutoff enters its lead time, or, once it has, when the window ends
    (the next cutoff becomes the current one and a new next one follows).

    >>> seconds_until_due_changes(pd.Timestamp("2024-06-01 10:01:30"), "5min", 90)
    120.0
    >>> seconds_until_due_changes(pd.Timestamp("2024-06-01 10:04:00"), "5min", 90)
    60.0
    """
    left = (default_cutoff(now, granularity) - pd.Timestamp(now)).total_seconds()
    return left - lead_seconds if left > lead_seconds else left


def _warm_in_child(conn, model_dir: str, tiers: dict | None, store_url: str,
                   chunk_size: int = WARM_CHUNK) -> None:
    """Body of the warm-up process: compute whole-store cache entries per requested cutoff.

    Receives cutoffs on ``conn`` and answers each with chunks of ``[(account_id,
    CachedScore), ...]`` (each chunk with its own slice of the feature frame, so the serving
    worker unpickles little at a time) followed by ``("done", n)``. Exits on ``None`` or when
    the serving worker is gone (EOF). It runs :func:`compute_stored`, the same code path as the
    in-process warm-up and as a request's misses, on its own model, query and store handles.
    """
    import types

    # Background work: lowest CPU priority, so on a busy host the serving worker (the other
    # process on these cores) is scheduled first and request latency does not pay for it.
    try:
        os.nice(19)
    except OSError:  # not permitted on some platforms; only a priority hint
        pass
    bundle = load_bundle(model_dir, tiers=tiers)
    scorer = Scorer(bundle)
    svc = types.SimpleNamespace(scorer=scorer, explainer=Explainer(scorer),
                                features=OnlineFeatureQuery(bundle.spec, bundle.manifest),
                                store=EventStore(store_url))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        cutoff, ids = request if isinstance(request, tuple) else (request, None)
        try:
            entries = compute_stored(svc, ids, cutoff)
        except Exception as e:  # report, keep the process for the next cutoff
            conn.send(("error", f"{type(e).__name__}: {e}"))
            continue
        ids = list(entries)
        for start in range(0, len(ids), chunk_size):
            chunk = ids[start:start + chunk_size]
            with_rows = [a for a in chunk if entries[a].frame is not None]
            frame = (entries[with_rows[0]].frame.iloc[[entries[a].position for a in with_rows]]
                     .reset_index(drop=True) if with_rows else None)
            at = {a: k for k, a in enumerate(with_rows)}
            conn.send([(a, CachedScore(entries[a].watermark, frame if a in at else None,
                                       at.get(a, -1), entries[a].result)) for a in chunk])
        conn.send(("done", len(ids)))


class CacheWarmer(threading.Thread):
    """Background thread keeping the current default cutoff warm, and the next one in time.

    It warms what :func:`warm_due` names and is not warm yet: the cutoff of "now", and the next
    bucket's only in the last ``lead_seconds`` of the window; it wakes when that changes and at
    least every ``check_seconds``. The work itself (~20 s of pandas, DuckDB and explanation for
    10,000 accounts) runs in a separate *process* (:func:`_warm_in_child`, started with
    ``spawn``): in this thread it would hold the worker's GIL and stall requests for hundreds
    of ms (the p99 of /score). This thread only receives the finished entries (answers as JSON
    bytes) in chunks of :data:`WARM_CHUNK` and puts them into the cache with a short pause
    between chunks.
    """

    def __init__(self, svc, check_seconds: float, model_dir: str, tiers: dict | None = None,
                 pause_seconds: float = 0.02, chunk_size: int = WARM_CHUNK,
                 lead_seconds: float = WARM_LEAD_SECONDS):
        super().__init__(name="pql-cache-warmer", daemon=True)
        self.svc = svc
        self.check_seconds = check_seconds
        self.model_dir = str(model_dir)
        self.tiers = tiers
        self.pause_seconds = pause_seconds
        self.chunk_size = chunk_size
        self.lead_seconds = lead_seconds
        self.stop_event = threading.Event()
        self._proc = None
        self._conn = None

    def _process(self):
        if self._proc is None or not self._proc.is_alive():
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # fork would copy DuckDB/LightGBM threads and locks
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_warm_in_child, name="pql-cache-warmer",
                                     args=(child, self.model_dir, self.tiers, self.svc.store.url,
                                           self.chunk_size),
                                     daemon=True)
            self._proc.start()
            child.close()
        return self._conn

    def warm(self, cutoff: pd.Timestamp, account_ids: list[str] | None = None) -> int:
        """Warm ``cutoff`` through the warm-up process; returns the number of accounts cached.

        ``account_ids=None``: every account of the store (the cutoff is then marked warm);
        otherwise only those accounts (see :meth:`catch_up`).
        """
        conn = self._process()
        conn.send((cutoff, account_ids))
        n = 0
        while True:
            # poll() with a timeout keeps stop() responsive; recv() releases the GIL on I/O.
            while not conn.poll(0.5):
                if self.stop_event.is_set() or not self._proc.is_alive():
                    raise RuntimeError("warm-up process stopped")
            msg = conn.recv()
            if isinstance(msg, tuple):
                kind, value = msg
                if kind == "error":
                    raise RuntimeError(f"warm-up process failed: {value}")
                self.svc.cache.put(cutoff, {}, warmed=account_ids is None)
                _freeze_heap(collect=False)
                return n
            self.svc.cache.put(cutoff, dict(msg))
            n += len(msg)
            time.sleep(self.pause_seconds)

    #: At most this many accounts per catch-up message (SQLite binds their ids in one query).
    CATCH_UP_MAX = 500

    def catch_up(self, cutoff: pd.Timestamp) -> int:
        """Recompute the accounts of a warm ``cutoff`` whose store watermark moved since.

        A warm-up reads the store once; events committed after that read make those accounts
        miss at the cutoff until a request recomputes them. After a window change that can be
        hundreds of accounts, and a 100-id batch request with a single miss takes the computing
        path (~100+ ms instead of ~5). So the warm-up process recomputes them in the background
        (at most :attr:`CATCH_UP_MAX` per call); returns how many it recomputed.
        """
        if not self.svc.cache.warmed(cutoff):
            return 0
        stale = self.svc.cache.stale(cutoff, self.svc.store.watermarks(None))
        return self.warm(cutoff, stale[:self.CATCH_UP_MAX]) if stale else 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            now = pd.Timestamp.now("UTC").tz_localize(None)
            try:
                for cutoff in warm_due(now, self.svc.granularity, self.lead_seconds):
                    if self.stop_event.is_set():
                        break
                    t = time.perf_counter()
                    if not self.svc.cache.warmed(cutoff):
                        n = self.warm(cutoff)
                        logger.info("feature cache warmed at %s: %d accounts in %.1f s",
                                    cutoff, n, time.perf_counter() - t)
                    elif n := self.catch_up(cutoff):
                        logger.info("feature cache caught up at %s: %d accounts in %.1f s",
                                    cutoff, n, time.perf_counter() - t)
            except Exception:  # a failed warm-up only costs cache misses; keep serving
                logger.exception("feature cache warm-up failed")
            wait = seconds_until_due_changes(pd.Timestamp.now("UTC").tz_localize(None),
                                             self.svc.granularity, self.lead_seconds)
            # +0.5 s: wake just past the moment, not just before it (then sleep ~0 again).
            self.stop_event.wait(max(0.5, min(self.check_seconds, wait + 0.5)))

    def stop(self) -> None:
        """Stop the thread and the warm-up process."""
        self.stop_event.set()
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
        if self._proc is not None:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
