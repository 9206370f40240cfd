"""The BentoML service: scores with reasons, explanations, Segment-compatible ingestion, feedback.

Run with ``pql serve`` (imports the champion into the Bento model store, then
``bentoml serve serving.service:PQLScorer``). Configuration comes from the environment:

``PQL_API_TOKEN``    bearer token for /score, /explain, /feedback (required)
``PQL_WRITE_KEY``    Segment write key for /v1/* (basic auth, key as user name; required)
``PQL_STORE_URL``    SQLAlchemy URL of the event store (default ``sqlite:///pql_events.db``)
``PQL_BENTO_MODEL``  Bento model tag (default ``pql-account-scorer:latest``)
``PQL_MODEL_DIR``    a local bundle directory instead of the Bento store (tests, notebooks)
``PQL_TIERS``        tier cut points as JSON, e.g. ``{"hot": 75, "warm": 45}``
``PQL_MAX_EVENTS`` / ``PQL_MAX_BODY_BYTES``  request limits

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
from typing import Any, Literal

import bentoml
import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from serving.explain import Explainer, render_html
from serving.ingest import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST, IngestError, accounts_frame, parse_request
from serving.model import ModelError, Scorer, check_manifest, load_bundle
from serving.online import OnlineFeatureQuery
from serving.store import DEFAULT_URL, EventStore

logger = logging.getLogger("pql.serving")

PROTECTED = ("/score", "/explain", "/feedback")
INGEST_PREFIX = "/v1/"


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
                 max_body_bytes: int | None = None):
        self.app = app
        self.api_token = api_token if api_token is not None else os.environ.get("PQL_API_TOKEN", "")
        self.write_key = write_key if write_key is not None else os.environ.get("PQL_WRITE_KEY", "")
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
            if not self._write_key_ok(auth):
                return await _reply(send, 401, {"success": False, "error": "invalid write key",
                                                "field": "Authorization"},
                                    [(b"www-authenticate", b'Basic realm="pql"')])
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

    def _write_key_ok(self, auth: str) -> bool:
        if not self.write_key or not auth.startswith("Basic "):
            return False
        try:
            user = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.write_key)

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
        logger.info("serving %s with store %s", bundle.version, self.store.url)

    # ---- scoring -----------------------------------------------------------------------
    # max_latency_ms is BentoML's load-shedding bound (503 beyond it), not the latency target:
    # at 200 ms a busy 2-core host shed most requests at 8 clients. One request may carry up to
    # max_batch_size accounts (batch scoring sends 100 ids per request).
    @bentoml.api(batchable=True, max_batch_size=1000, max_latency_ms=10_000)
    def score(self, accounts: list[AccountIn]) -> list[dict]:
        """Probability, score 0-100, tier, milestones reached, top reasons, next-best milestones."""
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

        def parse_and_store():
            return self.store.append(parse_request(body, kind, max_events=self.max_events))

        try:
            result = await anyio.to_thread.run_sync(parse_and_store)
        except IngestError as e:
            return JSONResponse(e.to_dict(), e.status)
        return JSONResponse({"success": True, "received": result.received,
                             "stored": result.stored, "duplicates": result.duplicates})


PQLScorer.add_asgi_middleware(GuardMiddleware)


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


def _cutoff(acc: AccountIn, now: pd.Timestamp | None = None) -> pd.Timestamp:
    if acc.as_of is None:
        return now if now is not None else pd.Timestamp.now("UTC").tz_localize(None).floor("s")
    t = pd.Timestamp(acc.as_of)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo else t


def score_accounts_online(svc, accounts: list[AccountIn], with_all: bool = False) -> list[dict]:
    """Score a batch of accounts the way /score does (features from the store or inline).

    Accounts that cannot be scored get ``{"account_id", "error"}`` in their place, so one bad
    account never fails the others in an adaptive batch.
    """
    return [_jsonable(r if isinstance(r, dict) else r.to_dict())
            for r in explain_accounts_online(svc, accounts, with_all)]


def explain_accounts_online(svc, accounts: list[AccountIn], with_all: bool = False) -> list:
    """Like :func:`score_accounts_online` but returns ``Explanation`` objects (or error dicts)."""
    from features.pipeline import online_features

    results: list[dict | None] = [None] * len(accounts)
    by_cutoff: dict[pd.Timestamp, list[int]] = {}
    # One "now" per batch: accounts without as_of share one cutoff, hence one feature query.
    # Microseconds kept: an event stored a moment ago is before the cutoff.
    now = pd.Timestamp.now("UTC").tz_localize(None)
    for i, acc in enumerate(accounts):
        by_cutoff.setdefault(_cutoff(acc, now), []).append(i)
    features = getattr(svc, "features", None)
    bundle = svc.scorer.bundle
    for cutoff, idx in by_cutoff.items():
        stored_ids = [accounts[i].account_id for i in idx if accounts[i].events is None]
        frames = [_inline_events(accounts[i]) for i in idx if accounts[i].events is not None]
        if stored_ids:
            frames.append(svc.store.events(stored_ids, before=cutoff.to_pydatetime()))
        events = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(
            len(f) for f in frames) else frames[0].iloc[0:0]
        acc_frame = accounts_frame(svc.store, stored_ids) if stored_ids else pd.DataFrame(
            {"account_id": pd.Series(dtype="string")})
        inline_fit = [dict(account_id=accounts[i].account_id, **(accounts[i].fit or {}))
                      for i in idx if accounts[i].events is not None]
        if inline_fit:
            acc_frame = pd.concat([acc_frame, pd.DataFrame(inline_fit)], ignore_index=True)
        if len(events) and features is not None:
            feats = features(events, acc_frame, cutoff)
        elif len(events):
            feats = online_features(events, bundle.spec, cutoff, accounts=acc_frame,
                                    manifest=bundle.manifest)
        else:
            feats = pd.DataFrame({"account_id": pd.Series(dtype="string")})
        feats = feats.drop_duplicates("account_id").reset_index(drop=True)
        exps, bad = svc.explainer.explain(feats, with_all=with_all) if len(feats) else ([], {})
        by_id = {e.account_id: e for e in exps}
        bad_ids = {str(feats.loc[r, "account_id"]): msg for r, msg in bad.items()}
        for i in idx:
            aid = accounts[i].account_id
            if aid in by_id:
                results[i] = by_id[aid]
            else:
                results[i] = {"account_id": aid, "error": bad_ids.get(
                    aid, f"no events before {cutoff.isoformat()}: nothing to score")}
    return results


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
