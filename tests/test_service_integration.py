"""`pql serve` for real: the champion imported from the MLflow registry into a fresh Bento
model store, `bentoml serve` on a free port, `bentoml.SyncHTTPClient` and the official Segment
library talking to it over loopback.

Slow (a server start costs ~20-60 s on a loaded 2-core machine); every wait is bounded and the
server's whole process group is killed by the fixture finalizer, pass or fail.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import bentoml
import httpx
import pytest

from serving_fixtures import shared_bundle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "it-token"
WRITE_KEY = "it-write-key"
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `pql serve` subprocess in its own session (so its bentoml workers die with it)."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pql.cli", "serve", "--port", str(self.port), *args],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.output()[-4000:]}")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout} s:\n{self.output()[-4000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log_file.close()


def server_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PQL_", "BENTOML_"))}
    env.update(BENTOML_HOME=str(home / "bentoml"), PQL_API_TOKEN=TOKEN, PQL_WRITE_KEY=WRITE_KEY,
               BENTOML_DO_NOT_TRACK="True", PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The fixture champion served by `pql serve` with a tmp Bento store and event store."""
    b = shared_bundle()
    home = tmp_path_factory.mktemp("serve")
    store_url = f"sqlite:///{home / 'events.db'}"
    server = Server(["--model", b["model_uri"], "--tracking-uri", b["tracking_uri"],
                     "--store-url", store_url], server_env(home), home / "server.log")
    try:
        server.wait_ready()
        yield {"url": server.url, "port": server.port, "store_url": store_url, "home": home,
               "bundle": b}
    finally:
        server.stop()


def _iso(days_ago: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)


def test_health_and_metrics_stay_open(served):
    for path in ("/livez", "/readyz"):
        assert httpx.get(served["url"] + path, timeout=10).status_code == 200
    metrics = httpx.get(served["url"] + "/metrics", timeout=10)
    assert metrics.status_code == 200
    # Prometheus text exposition format: HELP/TYPE comments, then samples.
    assert "text/plain" in metrics.headers["content-type"]
    assert "# TYPE " in metrics.text and "# HELP " in metrics.text
    assert httpx.post(served["url"] + "/score", json={"accounts": []}, timeout=10).status_code == 401


def test_the_champion_came_from_the_registry_into_the_bento_store(served):
    out = subprocess.run([sys.executable, "-m", "bentoml", "models", "list", "-o", "json"],
                         env=server_env(served["home"]), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pql-account-scorer" in out.stdout


def test_segment_library_events_are_stored_once_and_scored(served):
    import segment.analytics as analytics

    from serving.store import EventStore

    errors = []
    analytics.write_key = WRITE_KEY
    analytics.host = served["url"]
    analytics.sync_mode = True
    analytics.max_retries = 1
    analytics.on_error = lambda e, batch: errors.append(e)
    ctx = {"groupId": "seg-acme"}
    for _ in range(2):  # the retry a Segment client would make: same message ids
        analytics.identify("seg-u1", {"email": "kim@acme.test"}, message_id="seg-id-1",
                           timestamp=_iso(9))
        analytics.group("seg-u1", "seg-acme", {"name": "Acme", "industry": "software",
                                               "employees": 40}, message_id="seg-g-1",
                        timestamp=_iso(9))
        analytics.track("seg-u1", "project_created", {"plan": "pro"}, context=ctx,
                        message_id="seg-t-1", timestamp=_iso(5))
        for k in range(3):
            analytics.track(f"seg-u{k + 1}", "teammate_invited", context=ctx,
                            message_id=f"seg-t-inv-{k}", timestamp=_iso(2 + k))
        analytics.flush()
    assert not errors, errors

    store = EventStore(served["store_url"])
    frame = store.events(["seg-acme"])
    assert sorted(frame["message_id"]) == ["seg-t-1", "seg-t-inv-0", "seg-t-inv-1", "seg-t-inv-2"]
    assert store.account_traits(["seg-acme"])["seg-acme"]["industry"] == "software"
    assert store.count() == 6  # identify + group + 4 tracks, each once

    client = bentoml.SyncHTTPClient(served["url"], token=TOKEN, timeout=60)
    try:
        (acme,) = client.score(accounts=[{"account_id": "seg-acme"}])
    finally:
        client.close()
    reached = {m["name"] for m in acme["milestones_reached"]}
    assert reached == {"created_project", "invited_teammate"}
    texts = " | ".join(r["text"] for r in acme["reasons_up"] + acme["reasons_down"])
    assert acme["score"] == round(100 * acme["probability"])
    assert {n["name"] for n in acme["next_best"]}.isdisjoint(reached)
    assert "invited teammates" in texts or "created a project" in texts


def test_score_explain_feedback_with_the_bentoml_client(served):
    from serving.store import EventStore

    events = [{"user_id": "c1", "event": "project_created", "timestamp": _iso(4).isoformat()},
              {"user_id": "c2", "event": "integration_connected", "timestamp": _iso(1).isoformat()}]
    client = bentoml.SyncHTTPClient(served["url"], token=TOKEN, timeout=60)
    try:
        (inline,) = client.score(accounts=[{"account_id": "inline-1", "events": events,
                                            "fit": {"industry": "retail", "employees": 12}}])
        assert {m["name"] for m in inline["milestones_reached"]} == {"created_project",
                                                                    "connected_integration"}
        exp = client.explain(account={"account_id": "inline-1", "events": events,
                                      "fit": {"industry": "retail", "employees": 12}})
        total = exp["base_value"] + sum(c["contribution"] for c in exp["contributions"])
        assert total == pytest.approx(exp["raw_score"], abs=1e-9)
        assert exp["probability"] == pytest.approx(inline["probability"], abs=1e-12)
        assert '<svg id="waterfall"' in exp["html"]
        fb = client.feedback(item={"account_id": "inline-1", "verdict": "bad", "note": "student"})
        assert fb["verdict"] == "bad"
    finally:
        client.close()
    stored = EventStore(served["store_url"]).feedback_frame()
    assert stored.iloc[-1][["account_id", "verdict", "note"]].tolist() == ["inline-1", "bad", "student"]

    unauthorised = bentoml.SyncHTTPClient(served["url"], token="wrong", timeout=30)
    try:
        with pytest.raises(bentoml.exceptions.BentoMLException):
            unauthorised.score(accounts=[{"account_id": "inline-1"}])
    finally:
        unauthorised.close()


def test_refuses_a_model_whose_manifest_the_feature_code_does_not_produce(served, tmp_path):
    """A bundle whose milestones.yaml lost a milestone the model still uses must not serve."""
    from serving.model import download_bundle

    b = served["bundle"]
    bundle = download_bundle(b["model_uri"], b["tracking_uri"], tmp_path / "bundle")
    yaml_path = bundle / "scorer" / "milestones.yaml"
    lines = yaml_path.read_text().splitlines()
    yaml_path.write_text("\n".join(x for x in lines if "added_seats" not in x) + "\n")
    env = server_env(tmp_path, PQL_MODEL_DIR=str(bundle),
                     PQL_STORE_URL=f"sqlite:///{tmp_path / 'e.db'}")
    server = Server(["--model", b["model_uri"], "--tracking-uri", b["tracking_uri"]], env,
                    tmp_path / "bad.log")
    try:
        # Refusing means the server stops by itself (BentoML's arbiter would otherwise respawn
        # the failing worker forever) and never reports ready; its exit code is BentoML's.
        server.wait_exit(START_TIMEOUT_S)
    finally:
        server.stop()
    out = server.output()
    assert "refuses to start" in out and "ms__added_seats__" in out and "retrain" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/readyz", timeout=2)



def test_bentoml_build_makes_a_bento_that_references_the_champion(served):
    """`bentoml build` with [tool.bentoml.build] of pyproject.toml (model from the class scope)."""
    import yaml

    env = server_env(served["home"])
    tools = ROOT / ".tools" / "bin"  # BentoML shells out to uv; the repo keeps one here
    if tools.is_dir():
        env["PATH"] = f"{tools}{os.pathsep}{env['PATH']}"
    models = subprocess.run([sys.executable, "-m", "bentoml", "models", "list", "-o", "json"],
                            env=env, capture_output=True, text=True, timeout=120)
    tag = next(m["tag"] for m in __import__("json").loads(models.stdout)
               if m["tag"].startswith("pql-account-scorer:"))
    env["PQL_BENTO_MODEL"] = tag
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", str(ROOT)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    bentos = Path(env["BENTOML_HOME"]) / "bentos" / "pql-milestones"
    (bento_yaml,) = sorted(bentos.glob("*/bento.yaml"), key=lambda p: p.stat().st_mtime)[-1:]
    info = yaml.safe_load(bento_yaml.read_text())
    assert info["service"] == "serving.service:PQLScorer"
    assert [m["tag"] for m in info["services"][0]["models"]] == [tag]
    assert (bento_yaml.parent / "src" / "serving" / "service.py").is_file()
    assert (bento_yaml.parent / "src" / "features" / "pipeline.py").is_file()
