"""Benchmark of the serving issue (7): latency, batch throughput and ingestion of the real server.

One run, one client process on loopback, sequentially:

1. a world (``features.synthetic.generate_world``) and a model trained on it by the real trainer
   (``training.train.train_from_data_dir``), registered as ``champion`` in a temporary MLflow store;
2. ``pql serve`` (the champion imported into a temporary Bento store, ``bentoml serve``);
3. ingestion: every event of the world (plus a group call per user) as Segment ``/v1/batch``
   requests of ``--batch-events`` messages from 4 client threads; events/s counts only events
   acknowledged with 200 (the server acknowledges after COMMIT, SQLite WAL, synchronous=FULL);
4. ``/score`` by account id with reasons, one account per request, at 1, 8 and 32 concurrent
   clients (p50, p99, requests/s), each level bounded by ``--requests`` and ``--seconds``;
5. batch scoring: ``--batch-accounts`` account scorings by id in requests of 100 ids;
6. the in-process limit: ``predict(raw_score)`` + ``predict(pred_contrib)`` rows/s on the same
   model and feature rows, no features, no HTTP.

Run: ``.venv/bin/python bench/bench_serving.py [--accounts 600 --requests 400 --seconds 30]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN, WRITE_KEY = "bench-token", "bench-write-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def segment_batches(world: Path, size: int) -> tuple[list[dict], int]:
    """The world's events as Segment batch bodies (group calls first), and the event count."""
    from features.contract import load_dataset
    from features.identity import attach_accounts, resolve_accounts

    ds = load_dataset(world, quarantine=False)
    ua = resolve_accounts(ds.users, ds.events, ds.accounts).user_accounts
    events = attach_accounts(ds.events, ua)
    accounts = ds.accounts.set_index("account_id")
    msgs = []
    for u, a in ua[["user_id", "account_id"]].dropna().itertuples(index=False):
        traits = {}
        if a in accounts.index:
            row = accounts.loc[a]
            traits = {k: (None if pd.isna(v) else (v.item() if hasattr(v, "item") else str(v)))
                      for k, v in row.items() if k not in ("created_at", "domain_aliases")}
        msgs.append({"type": "group", "userId": u, "groupId": a, "traits": traits,
                     "messageId": f"g-{u}", "timestamp": "2024-01-01T00:00:00Z"})
    n_groups = len(msgs)
    for r in events.itertuples(index=False):
        m = {"type": "track", "userId": r.user_id, "event": r.event, "messageId": r.message_id,
             "timestamp": pd.Timestamp(r.timestamp).isoformat() + "Z"}
        if isinstance(r.account_id, str):
            m["context"] = {"groupId": r.account_id}
        if isinstance(r.properties, str):
            m["properties"] = json.loads(r.properties)
        msgs.append(m)
    return [{"batch": msgs[i:i + size]} for i in range(0, len(msgs), size)], len(msgs) - n_groups


def _json_default(value):
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def timed_requests(fn, n_clients: int, max_requests: int, max_seconds: float) -> dict:
    """Run ``fn(i)`` from ``n_clients`` threads until ``max_requests`` or ``max_seconds``."""
    lat, errors = [], []
    lock = threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.monotonic() + max_seconds

    def worker():
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                ok = fn(i)
            except Exception as e:  # counted, reported
                ok = repr(e)
            dt = time.perf_counter() - t
            with lock:
                (lat.append(dt) if ok is True else errors.append(ok))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as ex:
        for f in [ex.submit(worker) for _ in range(n_clients)]:
            f.result()
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"clients": n_clients, "requests": len(lat), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_ms": float(np.percentile(a, 50)) if len(a) else None,
            "p99_ms": float(np.percentile(a, 99)) if len(a) else None,
            "per_s": len(lat) / wall, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=600, help="accounts in the generated world")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--requests", type=int, default=400, help="max /score requests per concurrency level")
    ap.add_argument("--seconds", type=float, default=30, help="max seconds per concurrency level")
    ap.add_argument("--batch-accounts", type=int, default=10_000)
    ap.add_argument("--batch-events", type=int, default=500, help="messages per /v1/batch request")
    ap.add_argument("--world", type=Path, help="reuse a generated world directory")
    ap.add_argument("--tracking-uri", help="reuse an MLflow store whose champion was trained on --world")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    import httpx

    from features.synthetic import generate_world
    from training.train import TrainConfig, train_from_data_dir

    tmp = Path(tempfile.mkdtemp(prefix="pql-bench-serving-"))
    server = None
    try:
        t = time.perf_counter()
        world = args.world or tmp / "world"
        if args.world is None:
            generate_world(world, n_accounts=args.accounts, seed=args.seed)
        uri = args.tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}"
        if args.tracking_uri is None:
            train_from_data_dir(world, world / "milestones.yaml", tracking_uri=uri,
                                config=TrainConfig(progress=False, baselines=False, shap_rows=300,
                                                   min_converters=5))
        print(f"setup: world of {args.accounts} accounts + training {time.perf_counter() - t:.0f} s", flush=True)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PQL_", "BENTOML_"))}
        env.update(BENTOML_HOME=str(tmp / "bentoml"), PQL_API_TOKEN=TOKEN, PQL_WRITE_KEY=WRITE_KEY,
                   BENTOML_DO_NOT_TRACK="True", PQL_MAX_EVENTS="5000", PQL_MAX_BODY_BYTES=str(8 << 20))
        log = (tmp / "server.log").open("wb")
        server = subprocess.Popen([sys.executable, "-m", "pql.cli", "serve", "--port", str(port),
                                   "--tracking-uri", uri, "--store-url", f"sqlite:///{tmp / 'events.db'}"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start:\n" + (tmp / "server.log").read_text()[-3000:])
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

        # --- ingestion --------------------------------------------------------------------
        bodies, n_events = segment_batches(world, args.batch_events)
        basic = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
                 "Content-Type": "application/json"}
        payloads = [json.dumps(b, default=_json_default).encode() for b in bodies]
        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "c"):
                local.c = httpx.Client(timeout=120)
            return local.c

        acked = [0]

        def ingest(i):
            r = client().post(url + "/v1/batch", content=payloads[i], headers=basic)
            if r.status_code != 200:
                return f"{r.status_code} {r.text[:200]}"
            acked[0] += sum(1 for m in bodies[i]["batch"] if m["type"] == "track")
            return True

        ing = timed_requests(ingest, 4, len(payloads), 600)
        ing_rate = acked[0] / ing["wall_s"]
        print(f"ingestion: {acked[0]:,} of {n_events:,} events (+ group calls) in {ing['wall_s']:.1f} s "
              f"= {ing_rate:,.0f} events/s acknowledged durable; p50 {ing['p50_ms']:.0f} ms per "
              f"{args.batch_events}-message request; errors {ing['errors']} {ing['first_error'] or ''}",
              flush=True)

        # --- /score latency -----------------------------------------------------------------
        events = pd.read_parquet(world / "events.parquet", columns=["timestamp"])
        as_of = (events["timestamp"].max() + pd.Timedelta(seconds=1)).isoformat()
        ids = sorted(pd.read_parquet(world / "accounts.parquet")["account_id"])
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        rng = np.random.default_rng(0)

        def score_one(i):
            aid = ids[int(rng.integers(len(ids)))]
            r = client().post(url + "/score", json={"accounts": [{"account_id": aid, "as_of": as_of}]},
                              headers=bearer)
            if r.status_code != 200:
                return f"{r.status_code} {r.text[:200]}"
            (out,) = r.json()
            return True if ("reasons_up" in out or "error" in out) else f"bad body {out}"

        score_one(0)  # warm-up
        levels = []
        for n in (1, 8, 32):
            res = timed_requests(score_one, n, args.requests, args.seconds)
            levels.append(res)
            print(f"/score by id with reasons, {n:>2} clients: p50 {res['p50_ms']:.1f} ms, "
                  f"p99 {res['p99_ms']:.1f} ms, {res['per_s']:.1f} req/s "
                  f"({res['requests']} requests, errors {res['errors']} {res['first_error'] or ''})", flush=True)

        # --- batch scoring ------------------------------------------------------------------
        per = 100
        n_req = -(-args.batch_accounts // per)
        scored = [0]

        def score_batch(i):
            chunk = [ids[(i * per + k) % len(ids)] for k in range(per)]
            r = client().post(url + "/score", json={"accounts": [{"account_id": a, "as_of": as_of}
                                                                 for a in chunk]}, headers=bearer)
            if r.status_code != 200:
                return f"{r.status_code} {r.text[:200]}"
            scored[0] += sum(1 for x in r.json() if "score" in x)
            return True

        bres = timed_requests(score_batch, 2, n_req, 600)
        batch_rate = scored[0] / bres["wall_s"]
        print(f"batch scoring: {scored[0]:,} accounts scored with reasons ({len(ids)} distinct) in "
              f"{bres['wall_s']:.1f} s = {batch_rate:,.0f} accounts/s; errors {bres['errors']}", flush=True)

        # --- in-process limit ---------------------------------------------------------------
        from features.contract import load_dataset
        from features.identity import attach_accounts, resolve_accounts
        from features.pipeline import online_features
        from serving.model import Scorer, load_from_registry

        bundle = load_from_registry(None, uri)
        scorer = Scorer(bundle)
        ds = load_dataset(world, quarantine=False)
        ev = attach_accounts(ds.events, resolve_accounts(ds.users, ds.events, ds.accounts).user_accounts)
        feats = online_features(ev, bundle.spec, pd.Timestamp(as_of), accounts=ds.accounts,
                                manifest=bundle.manifest)
        X, _ = scorer.prepare(feats)
        X = np.resize(X, (args.batch_accounts, X.shape[1]))
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            scorer.raw_score(X)
            scorer.contributions(X)
            best = max(best, len(X) / (time.perf_counter() - t))
        print(f"in-process limit (predict + pred_contrib, {len(X):,} rows, "
              f"{bundle.booster.num_trees()} trees, {X.shape[1]} features): {best:,.0f} rows/s", flush=True)
        print(f"batched throughput / limit = {batch_rate / best:.1%}")
        print(json.dumps({"ingest_events_per_s": ing_rate, "score": levels,
                          "batch_accounts_per_s": batch_rate, "limit_rows_per_s": best}, default=str))
    finally:
        if server is not None and server.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(server.pid, sig)
                    server.wait(15)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


if __name__ == "__main__":
    main()
