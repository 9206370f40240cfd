"""Batch scoring: one row per account, CRM formats, unscorable accounts listed with reasons,
point in time, the very same answers as the service's /score, distribution logged to MLflow.

The data directory is hand-made for the tiny registered model of ``serving_fixtures`` (its four
milestones, ``industry`` and ``employees``), so every expectation below is known by construction.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from serving.batch import (HUBSPOT, SALESFORCE, BatchScores, account_activity, explain_account,
                           parse_cutoff,
                           score_accounts, score_frame, to_format, write_scores)
from serving.explain import Explainer, reason_line
from serving_fixtures import shared_bundle, shared_scorer

T = pd.Timestamp("2024-06-01")
#: account -> (industry, employees, domain)
ACCOUNTS = {
    "a1": ("software", 40, "a1.io"), "a2": ("fintech", 12, "a2.io"), "a3": ("health", 300, "a3.io"),
    "a4": ("retail", 7, "a4.io"), "a5": ("software", 90, "a5.io"),
    "late": ("software", 20, "late.io"),  # first event after T
    "silent": ("health", 5, "silent.io"),  # no event at all
    "conv": ("fintech", 50, "conv.io"),  # converted before T
    "alien": ("aerospace", 60, "alien.io"),  # a category the model never saw
}


def _events() -> pd.DataFrame:
    rows = []

    def add(acc, user, event, days_before_t, n=1):
        for k in range(n):
            rows.append({"user_id": f"{acc}-{user}", "account_id": acc, "event": event,
                         "timestamp": T - pd.Timedelta(days=days_before_t, hours=k + 1)})

    add("a1", "u1", "project_created", 20)
    for u, d in (("u1", 12), ("u2", 6), ("u3", 2)):
        add("a1", u, "teammate_invited", d)
    add("a1", "u2", "integration_connected", 4)
    add("a2", "u1", "project_created", 40)
    add("a2", "u1", "seats_added", 3, n=2)
    add("a3", "u1", "integration_connected", 9)
    add("a3", "u2", "teammate_invited", 15)
    add("a4", "u1", "page_view", 1)
    add("a5", "u1", "project_created", 25)
    add("a5", "u1", "teammate_invited", 18)
    add("conv", "u1", "project_created", 30)
    add("alien", "u1", "project_created", 10)
    add("late", "u1", "project_created", -3)  # after T
    # After T: a4 reaches three milestones and a1 invites more; none may change a score at T.
    add("a4", "u1", "project_created", -1)
    add("a4", "u2", "teammate_invited", -2)
    add("a4", "u2", "seats_added", -2, n=3)
    add("a1", "u4", "teammate_invited", -1, n=4)
    return pd.DataFrame(rows).assign(source="product")


def _write_world(path, events: pd.DataFrame) -> None:
    path.mkdir(parents=True, exist_ok=True)
    events.to_parquet(path / "events.parquet", index=False)
    pd.DataFrame([{"account_id": a, "domain": d, "industry": i, "employees": e}
                  for a, (i, e, d) in ACCOUNTS.items()]).to_parquet(path / "accounts.parquet", index=False)
    pd.DataFrame({"account_id": ["conv", "a2"],
                  "converted_at": [T - pd.Timedelta(days=5), T + pd.Timedelta(days=10)]}
                 ).to_parquet(path / "conversions.parquet", index=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The fixture registry, with the batch experiment's artifacts kept out of the work tree."""
    import mlflow

    b = shared_bundle()
    client = mlflow.MlflowClient(b["tracking_uri"])
    if client.get_experiment_by_name("pql-batch-scoring") is None:
        client.create_experiment("pql-batch-scoring",
                                 artifact_location=tmp_path_factory.mktemp("batch-art").as_uri())
    return b


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    _write_world(root / "world", _events())
    return root / "world"


@pytest.fixture(scope="module")
def run(world, registry) -> BatchScores:
    """One real `pql score` run: model from the registry, distribution logged to MLflow."""
    return score_accounts(world, as_of=T, model_uri=registry["model_uri"],
                          tracking_uri=registry["tracking_uri"])


def test_every_account_is_scored_or_listed_with_its_reason(run):
    scores, unscored = run.scores, run.unscored
    assert list(scores.columns) == ["account_id", "probability", "score", "tier", "top_reasons",
                                    "next_best_milestone", "milestones_reached", "model_version",
                                    "scored_at", "as_of"]
    assert sorted(scores["account_id"]) == ["a1", "a2", "a3", "a4", "a5"]
    reasons = dict(zip(unscored["account_id"], unscored["reason_code"]))
    assert reasons == {"late": "no_events", "silent": "no_events", "conv": "converted",
                       "alien": "unknown_category"}
    text = dict(zip(unscored["account_id"], unscored["reason"]))
    assert "first event 2024-06-03" in text["late"] and "no events in the data" == text["silent"]
    assert "2024-05-27" in text["conv"] and "'aerospace'" in text["alien"]
    assert run.cutoff == T and (scores["as_of"] == T).all()
    assert scores["score"].between(0, 100).all() and set(scores["tier"]) <= {"hot", "warm", "cold"}
    assert (scores["score"] == np.rint(scores["probability"] * 100)).all()
    # Milestones reached follow the events before T (a4 only viewed a page before T).
    reached = dict(zip(scores["account_id"], scores["milestones_reached"]))
    assert reached["a4"] == "" and set(reached["a1"].split(";")) == {
        "created_project", "invited_teammate", "connected_integration"}
    assert set(reached["a2"].split(";")) == {"created_project", "added_seats"}
    top = dict(zip(scores["account_id"], scores["top_reasons"]))
    assert all(1 <= len(t.split(" | ")) <= 3 for t in top.values())
    assert any("3 users invited teammates" in r for r in top["a1"].split(" | ")) or \
        "invited" not in top["a1"]
    # The next-best milestone is never one the account already reached.
    for acc, nb in zip(scores["account_id"], scores["next_best_milestone"]):
        labels = {m.name: m.label for m in shared_scorer().bundle.spec.milestones}
        assert nb == "" or nb not in {labels[m] for m in reached[acc].split(";") if m}


def test_include_converted_scores_them(world, registry):
    res = score_accounts(world, as_of=T, scorer=shared_scorer(), log_to_mlflow=False,
                         include_converted=True)
    assert "conv" in set(res.scores["account_id"])
    assert "conv" not in set(res.unscored["account_id"])


def test_events_after_as_of_do_not_change_the_scores(run, world, tmp_path):
    """Point in time: the same world without anything after T scores identically at T."""
    ev = _events()
    _write_world(tmp_path / "cut", ev[ev["timestamp"] < T])
    cut = score_accounts(tmp_path / "cut", as_of=T, scorer=shared_scorer(), log_to_mlflow=False)
    cols = ["account_id", "probability", "score", "tier", "top_reasons", "next_best_milestone",
            "milestones_reached"]
    pd.testing.assert_frame_equal(run.scores[cols].reset_index(drop=True),
                                  cut.scores[cols].reset_index(drop=True))
    # ... while a later cutoff does see them: a4 reached its milestones after T.
    later = score_accounts(world, as_of=T + pd.Timedelta(days=5), scorer=shared_scorer(),
                           log_to_mlflow=False)
    a4 = later.scores.set_index("account_id").loc["a4"]
    assert {"created_project", "invited_teammate", "added_seats"} <= set(a4["milestones_reached"].split(";"))
    assert "late" in set(later.scores["account_id"])


def test_a_row_does_not_depend_on_the_other_accounts_of_the_batch(run, tmp_path):
    """The whole event frame goes through the pipeline at once: an account's row must be the
    one it gets when its events are the only ones (other accounts' events, converted accounts
    and events after T included in the batch change nothing)."""
    ev = _events()
    _write_world(tmp_path / "alone", ev[ev["account_id"] == "a1"])
    alone = score_accounts(tmp_path / "alone", as_of=T, scorer=shared_scorer(), log_to_mlflow=False)
    assert list(alone.scores["account_id"]) == ["a1"]
    cols = ["probability", "score", "tier", "top_reasons", "next_best_milestone", "milestones_reached"]
    pd.testing.assert_series_equal(alone.scores[cols].iloc[0],
                                   run.scores.set_index("account_id").loc["a1", cols], check_names=False)


def test_account_activity_first_event_and_activity_before_the_cutoff():
    ev = pd.DataFrame({
        "account_id": pd.array(["x", "x", "y", None, "z"], dtype="string"),
        "timestamp": pd.to_datetime(["2024-05-01", "2024-07-01", "2024-06-01", "2024-01-01",
                                     "2024-06-02"]).astype("datetime64[us]")})
    act = account_activity(ev, T).set_index("account_id")
    assert sorted(act.index) == ["x", "y", "z"]  # no row for the events without an account
    assert act.loc["x", "first_event"] == pd.Timestamp("2024-05-01")
    # y's only event is at T exactly: not before T
    assert act["active"].to_dict() == {"x": True, "y": False, "z": False}
    assert account_activity(ev.iloc[0:0], T).empty


def test_run_reports_its_stage_timings(run):
    assert list(run.timings) == ["load model", "load + validate", "identity resolution",
                                 "eligible accounts", "features", "scoring with reasons",
                                 "MLflow log", "CRM format"]
    assert all(v >= 0 for v in run.timings.values())


def test_default_cutoff_is_just_after_the_newest_event(world):
    res = score_accounts(world, scorer=shared_scorer(), log_to_mlflow=False)
    newest = _events()["timestamp"].max()
    assert newest < res.cutoff <= newest + pd.Timedelta(seconds=1)
    assert "late" in set(res.scores["account_id"])


def test_as_of_parsing():
    assert parse_cutoff("2024-06-01T02:00:00+02:00") == T
    assert parse_cutoff("2024-06-01") == T
    with pytest.raises(ValueError, match="--as-of.*tomorrow"):
        parse_cutoff("tomorrow")


def test_same_answers_as_the_service(run, registry, tmp_path, monkeypatch):
    """Each batch row equals what the service's /score returns for the same account, events
    and cutoff (``PQLScorer.score`` called directly: a second ``to_asgi()`` app in one process
    would register BentoML's Prometheus metrics twice)."""
    from serving.model import download_bundle
    from serving.service import AccountIn, PQLScorer

    monkeypatch.setenv("PQL_API_TOKEN", "tok")
    monkeypatch.setenv("PQL_WRITE_KEY", "wk")
    monkeypatch.setenv("PQL_MODEL_DIR", str(download_bundle(
        registry["model_uri"], registry["tracking_uri"], tmp_path / "bundle")))
    monkeypatch.setenv("PQL_STORE_URL", f"sqlite:///{tmp_path / 'events.db'}")
    ev = _events()
    accounts = []
    for acc in ["a1", "a2", "a3", "a4", "a5"]:
        mine = ev[(ev["account_id"] == acc) & (ev["timestamp"] < T)]
        industry, employees, _ = ACCOUNTS[acc]
        accounts.append(AccountIn.model_validate(
            {"account_id": acc, "as_of": T.isoformat() + "Z",
             "fit": {"industry": industry, "employees": employees},
             "events": [{"user_id": r.user_id, "event": r.event, "timestamp": r.timestamp.isoformat() + "Z"}
                        for r in mine.itertuples()]}))
    answers = PQLScorer().score(accounts)
    batch = run.scores.set_index("account_id")
    assert [a["account_id"] for a in answers] == ["a1", "a2", "a3", "a4", "a5"]
    for online in answers:
        row = batch.loc[online["account_id"]]
        assert online["probability"] == pytest.approx(row["probability"], abs=5e-7)
        assert online["score"] == row["score"] and online["tier"] == row["tier"]
        strongest = sorted(online["reasons_up"] + online["reasons_down"],
                           key=lambda x: -abs(x["contribution"]))[:3]
        assert " | ".join(reason_line(x) for x in strongest) == row["top_reasons"]
        best = online["next_best"][0]["label"] if online["next_best"] else ""
        assert best == row["next_best_milestone"]
        assert ";".join(m["name"] for m in online["milestones_reached"]) == row["milestones_reached"]


def test_explain_account_matches_the_batch_row(run, world):
    e = explain_account(world, "a1", as_of=T, scorer=shared_scorer())
    row = run.scores.set_index("account_id").loc["a1"]
    assert e.score == row["score"] and e.probability == pytest.approx(row["probability"], abs=5e-7)
    assert e.base_value + sum(c["contribution"] for c in e.contributions) == pytest.approx(e.raw_score)
    with pytest.raises(ValueError, match="no events before"):
        explain_account(world, "late", as_of=T, scorer=shared_scorer())
    with pytest.raises(ValueError, match="no events in"):
        explain_account(world, "nobody", as_of=T, scorer=shared_scorer())


# --- CRM formats --------------------------------------------------------------------------------
def test_hubspot_format(run, tmp_path):
    domains = pd.Series({a: d for a, (_, _, d) in ACCOUNTS.items()})
    hs = to_format(run.scores, "hubspot", domains)
    assert list(hs.columns) == list(HUBSPOT.values())
    assert list(hs["Company Domain Name"]) == [domains[a] for a in run.scores["account_id"]]
    assert hs["pql_scored_at"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert (hs["pql_as_of"] == "2024-06-01").all()
    assert hs["pql_score"].dtype == "int64"
    assert hs["pql_probability"].between(0, 1).all()
    back = pd.read_csv(write_scores(hs, tmp_path / "hs.csv"), dtype=str, keep_default_na=False)
    # Plain numbers: no thousands separators, percent signs or exponents.
    assert back["pql_probability"].str.fullmatch(r"\d+(\.\d+)?").all()
    assert back["pql_score"].str.fullmatch(r"\d{1,3}").all()
    # Multiple-checkbox values separated by ";" (internal values = milestone names).
    reached = back.set_index("pql_account_id").loc["a1", "pql_milestones_reached"]
    assert set(reached.split(";")) == {"created_project", "invited_teammate", "connected_integration"}


def test_salesforce_format(run, tmp_path):
    sf = to_format(run.scores, "salesforce", pd.Series({"a1": "a1.io"}))
    assert list(sf.columns) == list(SALESFORCE.values())
    assert all(c.endswith("__c") for c in sf.columns)
    assert sf["PQL_Scored_At__c"].str.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.000Z").all()
    assert (sf["PQL_As_Of__c"] == "2024-06-01T00:00:00.000Z").all()
    # A Percent field holds 12.5 for 12.5 %.
    np.testing.assert_allclose(sf["PQL_Probability__c"], (run.scores["probability"] * 100).round(2))
    assert sf.set_index("PQL_Account_Id__c").loc["a2", "PQL_Domain__c"] == ""
    out = write_scores(sf, tmp_path / "sf.parquet")
    assert pd.read_parquet(out)["PQL_Score__c"].dtype == "int64"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    with pytest.raises(ValueError, match="csv or .parquet"):
        write_scores(sf, tmp_path / "scores.xlsx")
    with pytest.raises(ValueError, match="--format"):
        score_accounts(tmp_path, fmt="pipedrive")


def test_provisional_accounts_take_their_domain():
    from serving.batch import account_domains

    d = account_domains(pd.DataFrame({"account_id": ["a1"], "domain": ["a1.io"]}),
                        pd.Series(["a1", "domain:acme.com", "x"]))
    assert list(d.fillna("")) == ["a1.io", "acme.com", ""]


def test_unknown_fit_category_is_listed_by_score_frame():
    feats = shared_bundle()["frame"].head(30).reset_index(drop=True).copy()
    feats["fit__industry"] = feats["fit__industry"].astype(object)
    feats.loc[7, "fit__industry"] = "aerospace"
    scores, unscored = score_frame(feats, shared_scorer(), dt.datetime(2024, 6, 1, 12))
    assert len(scores) + len(unscored) == len(feats) and scores["account_id"].is_unique
    assert list(unscored["account_id"]) == [feats.loc[7, "account_id"]]
    assert unscored["reason_code"].iloc[0] == "unknown_category"
    # The batch summary and the per-account explanations agree row for row.
    exps, _ = Explainer(shared_scorer(), top_k=3, next_best_k=1).explain(feats)
    assert [e.score for e in exps] == list(scores["score"])
    assert [(e.next_best[0]["label"] if e.next_best else "") for e in exps] == list(
        scores["next_best_milestone"])


# --- MLflow -------------------------------------------------------------------------------------
def test_distribution_logged_to_mlflow(run, registry, world):
    import json

    from mlflow import MlflowClient

    client = MlflowClient(registry["tracking_uri"])
    r = client.get_run(run.mlflow_run_id)
    scores = run.scores
    for tier in ("hot", "warm", "cold"):
        assert r.data.metrics[f"share_{tier}"] == pytest.approx((scores["tier"] == tier).mean())
    assert r.data.metrics["accounts"] == len(scores)
    assert r.data.metrics["unscored_no_events"] == 2 and r.data.metrics["unscored_converted"] == 1
    assert r.data.params["cutoff"] == T.isoformat()
    assert r.data.tags["model_version"] == scores["model_version"].iloc[0]
    local = client.download_artifacts(run.mlflow_run_id, "score_histogram.json")
    hist = json.loads(open(local).read())
    assert sum(hist["counts"]) == len(scores)
    assert hist["counts"][int(scores["score"].iloc[0])] >= 1
    arts = {a.path for a in client.list_artifacts(run.mlflow_run_id)}
    assert {"score_histogram.json", "score_histogram.png"} <= arts
    # A second night with the same model is compared with the first.
    again = score_accounts(world, as_of=T, scorer=shared_scorer(), tracking_uri=registry["tracking_uri"])
    assert client.get_run(again.mlflow_run_id).data.metrics["psi_vs_previous"] == pytest.approx(0, abs=1e-9)


# --- the commands -------------------------------------------------------------------------------
def test_cli_score_explain_feedback_report(world, registry, tmp_path):
    from typer.testing import CliRunner

    from pql.cli import app
    from serving.store import EventStore

    runner = CliRunner()
    uri = ["--tracking-uri", registry["tracking_uri"]]
    out = tmp_path / "scores.csv"
    r = runner.invoke(app, ["score", str(world), "--as-of", "2024-06-01", "--format", "hubspot",
                            "--out", str(out), "--model", registry["version"], *uri])
    assert r.exit_code == 0, r.output
    hs = pd.read_csv(out)
    assert sorted(hs["pql_account_id"]) == ["a1", "a2", "a3", "a4", "a5"]
    unscored = pd.read_csv(tmp_path / "scores_unscored.csv")
    assert set(unscored["account_id"]) == {"late", "silent", "conv", "alien"}
    assert "4 accounts could not be scored" in r.output

    r = runner.invoke(app, ["explain", str(world), "a1", "--as-of", "2024-06-01",
                            "--html", str(tmp_path / "a1.html"), *uri])
    assert r.exit_code == 0, r.output
    assert "invited teammates" in r.output and "model output" in r.output
    assert 'id="waterfall"' in (tmp_path / "a1.html").read_text()
    r = runner.invoke(app, ["explain", str(world), "late", "--as-of", "2024-06-01", *uri])
    assert r.exit_code == 2 and "no events before" in r.output
    r = runner.invoke(app, ["score", str(world), "--as-of", "someday", *uri])
    assert r.exit_code == 2 and "--as-of" in r.output
    r = runner.invoke(app, ["score", str(world), "--model", "models:/pql-account-scorer@nobody", *uri])
    assert r.exit_code == 2 and "not found" in r.output
    from mlflow import MlflowClient

    # both URIs explicit: a registry URI left in the environment by an earlier test must not win
    MlflowClient(tracking_uri=registry["tracking_uri"], registry_uri=registry["tracking_uri"]).set_registered_model_alias(
        "pql-account-scorer", "challenger", registry["version"])
    r = runner.invoke(app, ["score", str(world), "--model", "models:/pql-account-scorer@challenger",
                            "--no-log-mlflow", "--out", str(tmp_path / "c.parquet"), *uri])
    assert r.exit_code == 0, r.output
    assert "MLflow" not in r.output
    challenger = pd.read_parquet(tmp_path / "c.parquet")
    assert (challenger["model_version"] == f"pql-account-scorer/{registry['version']}").all()
    assert str(challenger["scored_at"].dtype).startswith("datetime64")
    assert set(challenger["account_id"]) == {"a1", "a2", "a3", "a4", "a5", "late"}

    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    store = EventStore(store_url)
    store.add_feedback("a1", "good", note="demo booked")
    store.add_feedback("a4", "good")
    store.add_feedback("a4", "bad", note="changed my mind")
    r = runner.invoke(app, ["feedback-report", "--store-url", store_url, "--scores", str(out),
                            "--data-dir", str(world), "--out", str(tmp_path / "report.csv")])
    assert r.exit_code == 0, r.output
    report = pd.read_csv(tmp_path / "report.csv").set_index("tier")
    tiers = hs.set_index("pql_account_id")["pql_tier"]
    assert report["accounts"].sum() == 5
    # a2 converted after the cutoff: counted in its tier; conv converted before and is not scored.
    assert report.loc[tiers["a2"], "converted"] == 1 and report["converted"].sum() == 1
    # which conversions counted is said, so a column of zeros cannot read like a bug
    n_conv = len(pd.read_parquet(world / "conversions.parquet"))
    assert f"conversions counted: the 1 of {n_conv:,} " in r.output and "as_of 2024-06-01" in r.output
    assert report.loc[tiers["a4"], "bad"] == 1 and report["good"].sum() == 1
