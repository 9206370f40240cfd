"""Discovery on small generated worlds: planted drivers found, noise and raw activity not."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from features.spec import load_milestones
from training.discover import (DiscoveryError, account_events, build_cohort, categorize, discover,
                               plain_label, reach_times, write_discovery)


def make_world(n_accounts: int = 800, seed: int = 0, fade_from=None):
    """A tiny world: teammate_invited, integration_connected and report_viewed drive conversion;
    noise_clicked does not; logins follow engagement (the activity trap). With ``fade_from``,
    inviting stops mattering for accounts starting on or after that date."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.uniform(0, 330, n_accounts), unit="D")
    v = rng.normal(0, 1, n_accounts)
    rows, conv = [], []
    for a in range(n_accounts):
        aid = f"a{a:04d}"
        users = [f"{aid}_u{k}" for k in range(rng.integers(1, 4))]
        s = start[a]

        def emit(event, k, span, props=None):
            for _ in range(int(k)):
                rows.append((rng.choice(users), aid, event, s + pd.Timedelta(days=float(rng.uniform(0, span))), props))

        inv = rng.random() < 1 / (1 + np.exp(-(v[a] - 0.3)))
        integ = rng.random() < 0.45
        rep = rng.random() < 0.5
        if inv:
            emit("teammate_invited", 2 + rng.integers(0, 3), 10)
        if integ:
            emit("integration_connected", 1, 5, '{"provider": "%s"}' % rng.choice(["slack", "github"]))
        if rep:
            emit("report_viewed", 3 + rng.integers(0, 3), 20)
        if rng.random() < 0.5:
            emit("noise_clicked", rng.integers(1, 4), 40)
        emit("login", int(rng.poisson(3 + 4 * (v[a] > 0))) + 1, 40)
        effect_inv = inv if fade_from is None or s < fade_from else rng.random() < 0.5
        logit = -2.2 + 1.8 * effect_inv + 1.4 * integ + 1.0 * rep
        if rng.random() < 1 / (1 + np.exp(-logit)):
            conv.append((aid, s + pd.Timedelta(days=float(rng.uniform(12, 45)))))
    ev = pd.DataFrame(rows, columns=["user_id", "account_id", "event", "timestamp", "properties"])
    ev["timestamp"] = ev["timestamp"].astype("datetime64[us]")
    ev["source"] = "product"
    accounts = pd.DataFrame({"account_id": [f"a{a:04d}" for a in range(n_accounts)],
                             "created_at": start.astype("datetime64[us]")})
    conversions = pd.DataFrame(conv, columns=["account_id", "converted_at"])
    conversions["converted_at"] = conversions["converted_at"].astype("datetime64[us]")
    return SimpleNamespace(events=ev, users=None, accounts=accounts, conversions=conversions)


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def disc(world):
    return discover(world)


def test_planted_drivers_recommended_noise_and_activity_not(disc):
    rec = disc.candidates[disc.candidates["recommended"]]
    assert {"teammate_invited", "integration_connected", "report_viewed"} <= set(rec["event"])
    assert "noise_clicked" not in set(rec["event"])
    assert "login" not in set(rec["event"])
    assert rec["q_value"].lt(0.05).all()
    # login is measured (activity trap) but flagged as raw activity
    assert disc.candidates.loc[disc.candidates["event"] == "login", "is_activity"].all()


def test_candidate_columns_and_statistics_are_consistent(disc):
    c = disc.candidates
    for col in ["name", "event", "min_count", "within_days", "min_users", "category", "s", "f", "S", "F",
                "converter_rate", "non_converter_rate", "lift", "odds_ratio", "phi", "p_value", "q_value",
                "recommended"]:
        assert col in c.columns
    np.testing.assert_allclose(c["converter_rate"], c["s"] / c["S"])
    assert ((c["s"] + c["f"]) >= disc.summary["min_support"]).all()
    assert c["name"].is_unique


def test_reach_of_written_rules_matches_candidate_counts(world, disc):
    events, _ = account_events(world)
    times = reach_times(events, disc.cohort, disc.spec.milestones)
    conv = disc.cohort["converted"].to_numpy()
    c = disc.candidates.set_index("name")
    for m in disc.spec.milestones:
        r = np.isfinite(times[m.name])
        assert (int((r & conv).sum()), int((r & ~conv).sum())) == (c.loc[m.name, "s"], c.loc[m.name, "f"])


def test_post_conversion_behaviour_never_counts(world):
    w = SimpleNamespace(**vars(world))
    conv = w.conversions.set_index("account_id")["converted_at"]
    # Every converter does "paid_feature_used" right after converting, and only then.
    extra = pd.DataFrame({"user_id": [f"{a}_u0" for a in conv.index], "account_id": conv.index,
                          "event": "paid_feature_used",
                          "timestamp": (conv + pd.Timedelta(hours=1)).astype("datetime64[us]").to_numpy(),
                          "properties": None, "source": "product"})
    w.events = pd.concat([w.events, extra], ignore_index=True)
    d = discover(w)
    assert "paid_feature_used" not in set(d.candidates["event"])


def test_non_converter_observation_is_deterministic_and_capped(world):
    events, _ = account_events(world)
    c1, _, _ = build_cohort(events, world.accounts, world.conversions, 30)
    c2, _, _ = build_cohort(events.sample(frac=1.0, random_state=1), world.accounts, world.conversions, 30)
    pd.testing.assert_frame_equal(c1.sort_values("account_id").reset_index(drop=True),
                                  c2.sort_values("account_id").reset_index(drop=True))
    non = c1[~c1["converted"]]
    assert (non["obs_end"] <= events["timestamp"].max() + pd.Timedelta(microseconds=1)).all()
    conv_days = c1.loc[c1["converted"], "days_observed"]
    # drawn from the converters' distribution: medians agree loosely
    assert abs(non["days_observed"].median() - conv_days.median()) < 8


def test_refuses_when_a_group_is_empty(world):
    w = SimpleNamespace(**vars(world))
    w.conversions = world.conversions.iloc[:0]
    with pytest.raises(DiscoveryError, match="no converters"):
        discover(w)
    w.conversions = pd.DataFrame({"account_id": world.accounts["account_id"],
                                  "converted_at": world.accounts["created_at"] + pd.Timedelta(days=3)})
    with pytest.raises(DiscoveryError, match="no non-converters"):
        discover(w)


def test_warns_on_imbalance(world):
    w = SimpleNamespace(**vars(world))
    w.conversions = world.conversions.head(40)
    d = discover(w, min_support_accounts=5)
    assert any("10:1" in x for x in d.warnings)


def test_write_discovery_outputs_loadable_files(disc, tmp_path):
    paths = write_discovery(disc, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"candidates.csv", "sequences.csv",
                                                              "milestones.yaml", "report.html"}
    spec = load_milestones(paths["milestones"])
    assert [m.name for m in spec.milestones] == [m.name for m in disc.spec.milestones]
    cands = pd.read_csv(paths["candidates"])
    assert cands["recommended"].sum() == len(spec.milestones)
    seqs = pd.read_csv(paths["sequences"])
    assert {"steps", "within_days", "lift", "q_value", "beats_members"} <= set(seqs.columns)


def test_sequences_flag_those_beating_members(disc):
    s = disc.sequences
    assert len(s)
    beats = s[s["beats_members"]]
    assert (beats["lift"] > beats["max_member_lift"]).all()
    for seq in disc.spec.sequences:
        assert set(seq.steps) <= {m.name for m in disc.spec.milestones}


def test_categories_and_labels():
    assert categorize("teammate_invited") == "collaboration"
    assert categorize("usage_limit_hit") == "expansion"
    assert categorize("integration_connected") == "activation"
    assert categorize("report_viewed") == "adoption"
    assert categorize("report_viewed", {"expansion": ["report"]}) == "expansion"
    assert plain_label("event", "teammate_invited", 2, 14, 1) == \
        "teammate invited at least twice within 14 days of sign-up"


def test_synthetic_world_drivers_found_and_noise_never(small_world):
    from features.contract import load_dataset

    truth = json.loads((small_world / "truth.json").read_text())
    d = discover(load_dataset(small_world))
    rec = set(d.candidates.loc[d.candidates["recommended"], "event"])
    assert not rec & set(truth["noise_events"])
    assert len(rec & set(truth["driver_events"])) >= 5
