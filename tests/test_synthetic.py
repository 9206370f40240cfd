"""The synthetic world: reproducible, canonical, and with the planted answer actually in the data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.schema import CONVERSION_COLUMNS, EVENT_COLUMNS, EVENT_SOURCES, USER_COLUMNS
from features.spec import load_milestones
from features.synthetic import generate_world
from features.synthetic_names import FREE_MAIL_DOMAINS

DATA_FILES = ("events.parquet", "users.parquet", "accounts.parquet", "conversions.parquet",
              "truth_user_accounts.parquet", "truth.json", "milestones.yaml", "README.md")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _frame_hash(df: pd.DataFrame) -> int:
    return int(pd.util.hash_pandas_object(df, index=False).sum())


@pytest.fixture(scope="module")
def world(small_world):
    """The session world read once: frames, truth and the true user -> account map."""
    d = small_world
    return {
        "dir": d,
        "events": pd.read_parquet(d / "events.parquet"),
        "users": pd.read_parquet(d / "users.parquet"),
        "accounts": pd.read_parquet(d / "accounts.parquet"),
        "conversions": pd.read_parquet(d / "conversions.parquet"),
        "truth": json.loads((d / "truth.json").read_text()),
        "truth_users": pd.read_parquet(d / "truth_user_accounts.parquet"),
    }


@pytest.fixture(scope="module")
def true_events(world):
    """Product events with the *true* account of their user, and each account's conversion time."""
    ev = world["events"]
    ev = ev[ev["source"] == "product"].drop(columns="account_id").merge(world["truth_users"], on="user_id")
    conv = world["conversions"].set_index("account_id")["converted_at"]
    ev["converted_at"] = ev["account_id"].map(conv)
    return ev


def test_same_seed_writes_identical_files_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(a, n_accounts=120, seed=11)
    generate_world(b, n_accounts=120, seed=11)
    generate_world(c, n_accounts=120, seed=12)
    for name in DATA_FILES:
        assert _digest(a / name) == _digest(b / name), name
    for name in ("events.parquet", "users.parquet", "accounts.parquet"):
        fa, fc = pd.read_parquet(a / name), pd.read_parquet(c / name)
        assert _frame_hash(fa) == _frame_hash(pd.read_parquet(b / name))
        assert len(fa) != len(fc) or _frame_hash(fa) != _frame_hash(fc), name


def test_tables_have_canonical_columns_and_dtypes(world):
    ev, users, conv, acc = world["events"], world["users"], world["conversions"], world["accounts"]
    assert list(ev.columns) == list(EVENT_COLUMNS)
    assert {c: str(t) for c, t in ev.dtypes.items()} == EVENT_COLUMNS
    assert {c: str(t) for c, t in users.dtypes.items()} == USER_COLUMNS
    assert {c: str(t) for c, t in conv.dtypes.items()} == CONVERSION_COLUMNS
    assert str(acc["created_at"].dtype) == "datetime64[us]"
    assert {"employees", "industry", "country", "icp_segment"} <= set(acc.columns)
    assert set(ev["source"].unique()) <= set(EVENT_SOURCES)
    assert ev["message_id"].is_unique and acc["domain"].is_unique and users["user_id"].is_unique
    assert ev["timestamp"].is_monotonic_increasing
    props = [json.loads(p) for p in ev["properties"].sample(2000, random_state=0)]
    assert all(isinstance(p, dict) for p in props)
    product = ev[ev["source"] == "product"]
    assert product["properties"].str.contains('"workspace_id"').mean() > 0.9


def test_planted_drivers_are_more_frequent_among_converters_than_noise(world, true_events):
    """Per-account reach before conversion: drivers lift clearly, noise and decoys do not."""
    truth, ev = world["truth"], true_events
    pre = ev[ev["converted_at"].isna() | (ev["timestamp"] < ev["converted_at"])]
    accounts = world["accounts"]["account_id"]
    converter = accounts.isin(world["conversions"]["account_id"]).to_numpy()

    def ratio(reached: pd.Series) -> float:
        r = reached.reindex(accounts).fillna(False).to_numpy(bool)
        return r[converter].mean() / max(r[~converter].mean(), 1e-9)

    driver_ratio = {}
    for d in truth["drivers"]:
        sub = pre[pre["event"] == d["event"]].groupby("account_id")
        reached = sub["user_id"].nunique() >= d["min_users"] if d["min_users"] > 1 else sub.size() >= d["min_count"]
        driver_ratio[d["name"]] = ratio(reached)
    noise_ratio = {e: ratio(pre[pre["event"] == e].groupby("account_id").size() >= 1)
                   for e in truth["noise_events"] + truth["decoy_events"]}
    top5 = [driver_ratio[d["name"]] for d in truth["drivers"][:5]]
    assert min(top5) > max(noise_ratio.values()), (driver_ratio, noise_ratio)
    assert np.mean(top5) > 1.8
    assert max(noise_ratio.values()) < 1.3


def test_identity_shares_are_as_designed(world):
    users = world["users"]
    domain = users["email"].str.split("@").str[1]
    free = domain.isin(FREE_MAIL_DOMAINS)
    assert 0.12 < free.mean() < 0.3
    assert 0.3 < users["account_id"].isna().mean() < 0.5
    variants = users["company"].dropna()
    assert len(variants) > 0.2 * len(users)
    orphan = users["account_id"].isna() & users["invited_by"].isna() & users["company"].isna() & free
    assert orphan.any()  # some users carry no link at all
    sub = domain.str.match(r"^(eu|us|uk|mail)\.")
    assert sub.any()


def test_truth_map_covers_every_user_and_agrees_with_known_links(world):
    users, truth_users, ev = world["users"], world["truth_users"], world["events"]
    assert truth_users["user_id"].is_unique
    assert set(truth_users["user_id"]) == set(users["user_id"])
    true_acct = truth_users.set_index("user_id")["account_id"]
    known = users.dropna(subset=["account_id"])
    assert (known["account_id"].to_numpy() == true_acct.loc[known["user_id"]].to_numpy()).all()
    with_acct = ev.dropna(subset=["account_id"])
    assert (with_acct["account_id"].to_numpy() == true_acct.loc[with_acct["user_id"]].to_numpy()).all()
    inv = users.dropna(subset=["invited_by"])
    assert len(inv) > 0
    assert (true_acct.loc[inv["invited_by"]].to_numpy() == true_acct.loc[inv["user_id"]].to_numpy()).all()
    assert set(ev["user_id"]) <= set(users["user_id"])


def test_nobody_acts_before_signing_up(world):
    """No event (product or marketing) precedes its user's sign-up: nothing hints at a future user."""
    ev, users = world["events"], world["users"]
    signed_up = users.set_index("user_id")["created_at"]
    assert (ev["timestamp"].to_numpy() >= signed_up.loc[ev["user_id"]].to_numpy()).all()


def test_invites_link_teammates_of_the_same_account(world):
    """Each invite names a user of the inviter's account or a fresh address at its domain;
    every user with ``invited_by`` was named by an invite from that inviter."""
    ev, users, accounts = world["events"], world["users"], world["accounts"]
    true_acct = world["truth_users"].set_index("user_id")["account_id"]
    invites = ev[ev["event"] == "teammate_invited"].copy()
    invites["invitee"] = [json.loads(p)["invitee_email"] for p in invites["properties"]]
    invites["acct"] = true_acct.loc[invites["user_id"]].to_numpy()
    by_email = users.set_index("email")["user_id"]
    known = invites["invitee"].isin(by_email.index)
    assert known.any() and (~known).any()
    named = invites[known]
    assert (true_acct.loc[by_email.loc[named["invitee"]]].to_numpy() == named["acct"].to_numpy()).all()
    fresh = invites[~known]
    domain = accounts.set_index("account_id")["domain"]
    assert (fresh["invitee"].str.split("@").str[1].to_numpy() == domain.loc[fresh["acct"]].to_numpy()).all()
    invited = users.dropna(subset=["invited_by"])
    pairs = set(zip(invites["user_id"], invites["invitee"]))
    assert all((i, e) in pairs for i, e in zip(invited["invited_by"], invited["email"]))


def test_conversions_follow_creation_and_usage_continues(world):
    acc = world["accounts"].set_index("account_id")
    conv = world["conversions"]
    assert conv["account_id"].is_unique and conv["account_id"].isin(acc.index).all()
    assert (conv["converted_at"].to_numpy() > acc.loc[conv["account_id"], "created_at"].to_numpy()).all()
    rate = len(conv) / len(acc)
    assert 0.12 <= rate <= 0.3
    truth = world["truth"]
    end = pd.Timestamp(truth["end"])
    ev = world["events"].drop(columns="account_id").merge(world["truth_users"], on="user_id")
    last = ev.groupby("account_id")["timestamp"].max()
    early = conv[conv["converted_at"] < end - pd.Timedelta(days=30)]
    after = last.reindex(early["account_id"]).to_numpy() > early["converted_at"].to_numpy()
    assert after.mean() > 0.9
    assert (ev["timestamp"] < end).all() and (ev["timestamp"] >= pd.Timestamp(truth["start"])).all()


def test_product_change_fades_one_driver_and_renames_one_event(world):
    truth, ev = world["truth"], world["events"]
    change = pd.Timestamp(truth["product_change_date"])
    old, new = next(iter(truth["renamed"].items()))
    assert not ((ev["event"] == old) & (ev["timestamp"] >= change + pd.Timedelta(days=1))).any()
    assert ((ev["event"] == new) & (ev["timestamp"] >= change)).any()
    assert not ((ev["event"] == new) & (ev["timestamp"] < change - pd.Timedelta(days=1))).any()
    fading = [d for d in truth["drivers"] if d["fading"]]
    assert [d["name"] for d in fading] == truth["fading"]


def test_truth_and_milestone_files_are_consistent(world):
    truth, d = world["truth"], world["dir"]
    strengths = [x["strength"] for x in truth["drivers"]]
    assert strengths == sorted(strengths, reverse=True)
    assert [x["rank"] for x in truth["drivers"]] == list(range(1, len(strengths) + 1))
    assert not set(truth["non_drivers"]) & set(truth["driver_events"])
    rules = load_milestones(d / "milestones.yaml")
    rule_events = {e for m in rules.milestones for e in m.events}
    assert "login" in rule_events  # a plausible-but-wrong rule
    assert set(truth["driver_events"]) - rule_events  # and some real drivers missing
    assert all(m.points > 0 for m in rules.milestones)
    planted = load_milestones(d / "truth_milestones.yaml")
    assert {m.event for m in planted.milestones} >= set(truth["driver_events"])
    assert [s.name for s in planted.sequences] == [s["name"] for s in truth["sequences"]]


def test_world_passes_the_data_contract_without_quarantine(small_world, tmp_path):
    contract = pytest.importorskip("features.contract")
    copy = tmp_path / "w"
    shutil.copytree(small_world, copy)
    ds = contract.load_dataset(copy)
    for name, table in ds.report.tables.items():
        assert table.quarantined_total == 0, (name, table.quarantined)
        assert table.duplicates == 0, name
    assert len(ds.events) == len(pd.read_parquet(small_world / "events.parquet"))


def test_segment_export_round_trips_through_the_segment_reader(tmp_path):
    segment = pytest.importorskip("features.segment")
    out = tmp_path / "seg"
    generate_world(out, n_accounts=40, seed=3, segment_export=True)
    lines = (out / "events_segment.jsonl").read_text().splitlines()
    messages = [json.loads(line) for line in lines]
    tables = segment.split_messages(segment.messages_to_frame(messages))
    ev = pd.read_parquet(out / "events.parquet")
    users = pd.read_parquet(out / "users.parquet")
    assert len(tables.events) == (ev["source"] == "product").sum()
    assert set(tables.users["user_id"]) == set(users["user_id"])
    linked = tables.users.dropna(subset=["account_id"]).set_index("user_id")["account_id"]
    known = users.dropna(subset=["account_id"]).set_index("user_id")["account_id"]
    assert linked.reindex(known.index).equals(known)
    assert len(tables.rejected) == 0


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="n_accounts"):
        generate_world(tmp_path, n_accounts=0)
    with pytest.raises(ValueError, match="months"):
        generate_world(tmp_path, n_accounts=5, months=2)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_cli_generate_writes_a_world(tmp_path):
    from typer.testing import CliRunner

    from pql.cli import app

    result = CliRunner().invoke(app, ["generate", "--out", str(tmp_path / "w"), "--accounts", "30",
                                      "--seed", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "30 accounts" in result.output
    assert (tmp_path / "w" / "truth.json").is_file()
    bad = CliRunner().invoke(app, ["generate", "--out", str(tmp_path / "x"), "--accounts", "0"])
    assert bad.exit_code != 0 and "accounts" in bad.output


def test_world_without_product_change_has_no_fading_or_renamed(tmp_path):
    generate_world(tmp_path, n_accounts=80, seed=2, product_change=False)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["fading"] == [] and truth["renamed"] == {} and truth["product_change_date"] is None
    events = pd.read_parquet(tmp_path / "events.parquet", columns=["event"])
    assert "report_opened" not in set(events["event"]) and "report_viewed" in set(events["event"])


def test_planted_warning_sign_is_rare_among_converters_and_never_after_buying(world, true_events):
    """The cancel-trial click marks accounts about to go quiet: converters (before converting)
    do it far less often than the rest, and nobody does it after buying."""
    truth, ev = world["truth"], true_events
    sign = truth["warning_signs"][0]
    clicks = ev[ev["event"] == sign["event"]]
    assert len(clicks) > 20
    assert not (clicks["timestamp"] >= clicks["converted_at"]).any()
    accounts = world["accounts"]["account_id"]
    converter = accounts.isin(world["conversions"]["account_id"]).to_numpy()
    did = accounts.isin(clicks["account_id"]).to_numpy()
    assert did[converter].mean() < 0.5 * did[~converter].mean(), (did[converter].mean(), did[~converter].mean())
    assert truth["reach_rates"][sign["name"]]["ratio"] < 0.5
    planted = load_milestones(world["dir"] / "truth_milestones.yaml")
    assert [w.event for w in planted.warning_signs] == [sign["event"]]


def test_warning_sign_moves_no_other_draw(tmp_path, monkeypatch):
    """The sign has its own random stream: without it, every other row is the same."""
    import features.synthetic as synthetic

    generate_world(tmp_path / "with", n_accounts=120, seed=11)
    monkeypatch.setattr(synthetic, "WARNING_SIGN", {**synthetic.WARNING_SIGN, "before_quiet_share": 0.0,
                                                     "background_share": 0.0})
    generate_world(tmp_path / "without", n_accounts=120, seed=11)
    a = pd.read_parquet(tmp_path / "with" / "events.parquet")
    b = pd.read_parquet(tmp_path / "without" / "events.parquet")
    signs = a["event"] == synthetic.WARNING_SIGN["event"]
    assert signs.sum() > 0 and not (b["event"] == synthetic.WARNING_SIGN["event"]).any()
    rest = a[~signs].drop(columns="message_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(rest, b.drop(columns="message_id"))
    for name in ("users.parquet", "accounts.parquet", "conversions.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "with" / name),
                                      pd.read_parquet(tmp_path / "without" / name))
