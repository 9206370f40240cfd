"""Feature pipeline (issue 3): hand-computed features, pandas oracle, online == batch, spec validation."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from features.pipeline import (
    WARNING_STATS,
    FeatureSet,
    compute_features,
    feature_columns,
    feature_manifest,
    online_features,
)
from features.spec import MilestoneSpec, SpecError, parse_milestones

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.pandas_reference import reference_features  # noqa: E402

T = pd.Timestamp
EVENT_COLS = ["user_id", "account_id", "event", "timestamp", "message_id", "source", "properties"]


def make_events(rows) -> pd.DataFrame:
    df = pd.DataFrame([(u, a, e, T(t), None, s, p) for u, a, e, t, s, p in rows], columns=EVENT_COLS)
    df["timestamp"] = df["timestamp"].astype("datetime64[us]")
    for c in EVENT_COLS:
        if c != "timestamp":
            df[c] = df[c].astype("string")
    return df


SPEC = MilestoneSpec.model_validate({
    "settings": {"half_life_days": 7, "horizon_days": 30},
    "milestones": [
        {"name": "created_project", "category": "activation", "label": "created a project",
         "event": "project_created"},
        {"name": "invited", "category": "collaboration", "label": "invited a teammate",
         "event": ["invite_sent"], "min_users": 2},
        {"name": "pro_reports", "category": "adoption", "label": "ran two pro reports early",
         "event": "report_run", "where": {"plan": ["pro", "team"]}, "min_count": 2, "within_days": 30},
    ],
    "sequences": [{"name": "create_then_invite", "steps": ["created_project", "invited"], "within_days": 10}],
    # shares report_run with pro_reports: one event can count for a milestone and a warning sign
    "warning_signs": [{"name": "free_reports", "label": "ran two reports on the free plan",
                       "event": "report_run", "where": {"plan": "free"}, "min_count": 2}],
})

EVENTS = make_events([
    ("u1", "a1", "project_created", "2024-01-02", "product", None),
    ("u1", "a1", "invite_sent", "2024-01-03", "product", None),
    ("u2", "a1", "invite_sent", "2024-01-05", "product", None),
    ("u1", "a1", "report_run", "2024-01-04", "product", '{"plan": "pro"}'),
    ("u1", "a1", "report_run", "2024-01-06", "product", '{"plan": "free"}'),
    ("u2", "a1", "report_run", "2024-01-07", "product", '{"plan": "team", "seats": 3}'),
    ("u1", "a1", "login", "2024-01-09", "product", None),
    ("u1", "a1", "email_click", "2024-01-08", "marketing", None),
    ("u3", "a2", "login", "2024-01-03", "product", None),
    ("u3", "a2", "project_created", "2024-01-20", "product", None),
    ("u9", None, "project_created", "2024-01-02", "product", None),  # unresolved: ignored
])
ACCOUNTS = pd.DataFrame({
    "account_id": pd.array(["a1", "a2", "a3"], dtype="string"),
    "created_at": pd.to_datetime(["2024-01-01", None, "2024-01-12"]).astype("datetime64[us]"),
    "industry": pd.array(["saas", "retail", None], dtype="string"),
    "employees": [10, 200, 5],
})
CONVERSIONS = pd.DataFrame({"account_id": pd.array(["a2"], dtype="string"),
                            "converted_at": pd.to_datetime(["2024-01-15"]).astype("datetime64[us]")})
CUTOFFS = [T("2024-01-06"), T("2024-01-10"), T("2024-01-16")]


def dataset(events=EVENTS, accounts=ACCOUNTS, conversions=CONVERSIONS):
    return SimpleNamespace(events=events, users=None, accounts=accounts, conversions=conversions)


@pytest.fixture(scope="module")
def tiny() -> FeatureSet:
    return compute_features(dataset(), SPEC, CUTOFFS)


def row(fs: FeatureSet, account: str, cutoff: str) -> pd.Series:
    f = fs.frame
    hit = f[(f.account_id == account) & (f.cutoff == T(cutoff))]
    assert len(hit) == 1, (account, cutoff)
    return hit.iloc[0]


def test_snapshot_rows_follow_start_and_conversion(tiny):
    keys = set(zip(tiny.frame.account_id, tiny.frame.cutoff.astype(str)))
    # a2 has no created_at: it starts with its first event (Jan 3); it converted Jan 15, so it is
    # a positive at Jan 6 and Jan 10 and gone at Jan 16. a3 starts Jan 12.
    assert keys == {("a1", "2024-01-06"), ("a2", "2024-01-06"), ("a1", "2024-01-10"), ("a2", "2024-01-10"),
                    ("a1", "2024-01-16"), ("a3", "2024-01-16")}
    assert row(tiny, "a2", "2024-01-06")["label"] == 1
    assert row(tiny, "a1", "2024-01-16")["label"] == 0
    assert list(tiny.frame.columns[:3]) == ["account_id", "cutoff", "label"]
    assert list(tiny.frame.columns[3:]) == list(tiny.manifest.name)
    assert tiny.frame.equals(tiny.frame.sort_values(["cutoff", "account_id"]).reset_index(drop=True))


def test_milestone_features_by_hand(tiny):
    r = row(tiny, "a1", "2024-01-06")
    assert r["ms__created_project__reached"] and r["ms__created_project__count"] == 1
    assert r["ms__created_project__days_since_first"] == pytest.approx(4.0)
    # min_users=2: reached when the second user invited (Jan 5), not at the first invite
    assert r["ms__invited__reached"] and r["ms__invited__users"] == 2
    assert r["ms__invited__days_since_first"] == pytest.approx(1.0)
    assert r["ms__invited__decayed"] == pytest.approx(2 ** (-3 / 7) + 2 ** (-1 / 7))
    # where + min_count=2: only one pro report before Jan 6 -> not reached, but counted
    assert not r["ms__pro_reports__reached"] and r["ms__pro_reports__count"] == 1
    assert math.isnan(r["ms__pro_reports__days_since_first"])
    assert r["ms__pro_reports__days_since_last"] == pytest.approx(2.0)
    r = row(tiny, "a1", "2024-01-10")
    # the free-plan report does not qualify; the team report on Jan 7 is the second -> reached Jan 7
    assert r["ms__pro_reports__reached"] and r["ms__pro_reports__count"] == 2
    assert r["ms__pro_reports__days_since_first"] == pytest.approx(3.0)
    assert r["ms__pro_reports__users"] == 2
    r = row(tiny, "a2", "2024-01-10")
    assert not r["ms__created_project__reached"] and r["ms__created_project__count"] == 0
    assert math.isnan(r["ms__created_project__days_since_last"])


def test_sequence_account_fit_dg_raw_by_hand(tiny):
    r = row(tiny, "a1", "2024-01-16")
    assert r["seq__create_then_invite__completed"]
    assert r["seq__create_then_invite__days_since"] == pytest.approx(11.0)  # invited reached Jan 5
    # last events: u1 Jan 9 (exactly 7 days before T: inside [T-7d, T)), u2 Jan 7
    assert r["acct__active_users_7d"] == 1 and r["acct__active_users_30d"] == 2
    assert r["acct__users_activation"] == 1 and r["acct__users_collaboration"] == 2
    # pro_reports needs 2 qualifying reports from the same user for a *user* to reach it
    assert r["acct__users_adoption"] == 0
    assert r["acct__share_users_activated"] == pytest.approx(0.5)
    assert r["fit__industry"] == "saas" and r["fit__employees"] == 10
    assert r["dg__email_click__decayed"] == pytest.approx(2 ** (-8 / 7))
    assert r["raw__logins"] == 1 and r["raw__all_events"] == 7  # marketing touch not counted
    assert row(tiny, "a1", "2024-01-06")["raw__all_events"] == 4
    assert tiny.frame["fit__industry"].dtype == "category"
    assert tiny.frame["ms__invited__reached"].dtype == bool


def test_sequence_out_of_order_or_too_slow_is_not_completed():
    spec = MilestoneSpec.model_validate({"milestones": [
        {"name": "a", "category": "activation", "label": "did a", "event": "a"},
        {"name": "b", "category": "adoption", "label": "did b", "event": "b"}],
        "sequences": [{"name": "a_then_b", "steps": ["a", "b"], "within_days": 3}]})
    ev = make_events([
        ("u1", "x1", "a", "2024-01-01", "product", None), ("u1", "x1", "b", "2024-01-02", "product", None),
        ("u2", "x2", "b", "2024-01-01", "product", None), ("u2", "x2", "a", "2024-01-02", "product", None),
        ("u3", "x3", "a", "2024-01-01", "product", None), ("u3", "x3", "b", "2024-01-08", "product", None)])
    acc = pd.DataFrame({"account_id": pd.array([], dtype="string")})
    fs = compute_features(dataset(ev, acc, None), spec, [T("2024-01-20")])
    done = dict(zip(fs.frame.account_id, fs.frame.seq__a_then_b__completed))
    assert done == {"x1": True, "x2": False, "x3": False}


def test_column_names_and_manifest_families():
    m = feature_manifest(SPEC, ["industry"], ["email_click"])
    assert set(m.family) == {"milestone", "sequence", "warning", "account", "fit", "demand_gen", "activity"}
    ms = m[m.family == "milestone"]
    assert not ms.name.str.startswith("raw__").any()
    ws = m[m.family == "warning"]
    assert list(ws.name) == [f"ws__free_reports__{s}" for s in WARNING_STATS]
    assert (ws.milestone == "free_reports").all() and not ms.name.str.startswith("ws__").any()
    assert set(m.loc[m.family == "activity", "name"]) == {"raw__logins", "raw__page_views", "raw__api_calls",
                                                          "raw__all_events"}
    assert "ms__invited__days_since_last" in set(ms.name)
    assert m.loc[m.name == "ms__invited__users", "description"].item() == "number of users who invited a teammate"
    assert feature_columns(SPEC, ["industry"], ["email_click"]) == list(m.name)


def random_world(seed: int, n_accounts: int = 25, n_events: int = 700):
    rng = np.random.default_rng(seed)
    names = ["project_created", "invite_sent", "report_run", "login", "page_view", "email_click", "ad_click"]
    acc = rng.integers(0, n_accounts, n_events)
    user = acc * 10 + rng.integers(0, 4, n_events)
    ev = rng.choice(names, n_events, p=[0.1, 0.1, 0.2, 0.25, 0.2, 0.1, 0.05])
    ts = T("2024-01-01") + pd.to_timedelta(rng.integers(0, 90 * 86400, n_events), unit="s")
    plans = np.array(['{"plan": "pro"}', '{"plan": "free"}', '{"plan": "team"}', None], dtype=object)
    rows = [(f"u{u}", f"a{a}" if rng.random() > 0.03 else None, e, t,
             "marketing" if e in ("email_click", "ad_click") else "product",
             plans[rng.integers(0, 4)] if e == "report_run" else None)
            for u, a, e, t in zip(user, acc, ev, ts)]
    events = make_events(rows)
    ids = [f"a{i}" for i in range(n_accounts)]
    created = [T("2024-01-01") + pd.Timedelta(days=int(d)) if rng.random() > 0.3 else pd.NaT
               for d in rng.integers(0, 60, n_accounts)]
    accounts = pd.DataFrame({"account_id": pd.array(ids, dtype="string"),
                             "created_at": pd.Series(created, dtype="datetime64[us]"),
                             "tier": pd.array(rng.choice(["smb", "mid", "ent"], n_accounts), dtype="string")})
    # a third of the accounts ended (trial expired / churned) somewhere around the cutoffs; own
    # generator, so the draws above stay what they were
    ends = np.random.default_rng(seed + 1000)
    accounts["ended_at"] = pd.Series([T("2024-01-25") + pd.Timedelta(days=int(d)) if ends.random() < 0.35 else pd.NaT
                                      for d in ends.integers(0, 60, n_accounts)], dtype="datetime64[us]")
    conv_ids = rng.choice(ids, n_accounts // 3, replace=False)
    conversions = pd.DataFrame({"account_id": pd.array(conv_ids, dtype="string"),
                                "converted_at": (T("2024-01-20") + pd.to_timedelta(
                                    rng.integers(0, 80 * 86400, len(conv_ids)), unit="s")).astype("datetime64[us]")})
    return events, accounts, conversions


def assert_frames_match(ours: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert len(ours) == len(ref)
    ref = ref[ours.columns].reset_index(drop=True)
    for c in ours.columns:
        a, b = ours[c], ref[c]
        if c.startswith("fit__") or c == "account_id":
            assert a.astype("string").fillna("<na>").tolist() == b.astype("string").fillna("<na>").tolist(), c
        elif c == "cutoff":
            assert (a.values == pd.to_datetime(b).values).all()
        else:
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-9, atol=1e-9, equal_nan=True,
                                       err_msg=c)


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_independent_pandas_reference(seed):
    events, accounts, conversions = random_world(seed)
    cutoffs = [T("2024-02-01"), T("2024-02-15"), T("2024-03-10")]
    fs = compute_features(dataset(events, accounts, conversions), SPEC, cutoffs)
    ref = reference_features(events, accounts, conversions, SPEC, cutoffs)
    assert fs.frame["label"].sum() > 0 and fs.frame["ms__pro_reports__reached"].any()
    assert fs.frame["ws__free_reports__reached"].any() and not fs.frame["ws__free_reports__reached"].all()
    assert_frames_match(fs.frame, ref)


def test_ended_accounts_leave_training_snapshots_but_are_still_scored():
    events, accounts, conversions = random_world(1)
    cutoffs = [T("2024-02-01"), T("2024-02-15"), T("2024-03-10")]
    fs = compute_features(dataset(events, accounts, conversions), SPEC, cutoffs)
    ended = accounts.dropna(subset=["ended_at"]).set_index("account_id")["ended_at"]
    assert len(ended) >= 3
    rows = fs.frame.merge(ended.rename("ended_at"), left_on="account_id", right_index=True)
    assert not (rows["cutoff"] >= rows["ended_at"]).any()  # no snapshot at or after the end
    assert (rows["cutoff"] < rows["ended_at"]).any()  # ...but the earlier ones are kept
    without = compute_features(dataset(events, accounts.drop(columns="ended_at"), conversions), SPEC, cutoffs)
    assert len(without.frame) > len(fs.frame)
    assert "fit__ended_at" not in fs.manifest.name.values  # a reserved column, not a fit attribute
    # scoring asks about every started account, ended or not
    late = ended.idxmin()
    online = online_features(events[events.account_id == late], SPEC, T("2024-03-20"),
                             accounts=accounts[accounts.account_id == late], manifest=fs.manifest)
    assert list(online.account_id) == [late]


def test_online_features_equal_batch_row():
    events, accounts, conversions = random_world(3)
    cutoff = T("2024-02-15")
    batch = compute_features(dataset(events, accounts, conversions), SPEC, [cutoff])
    busiest = batch.frame.sort_values("raw__all_events").account_id.iloc[-1]
    mine = events[events.account_id == busiest]
    online = online_features(mine, SPEC, cutoff, accounts=accounts[accounts.account_id == busiest],
                             manifest=batch.manifest)
    assert list(online.columns) == ["account_id", "cutoff", *batch.manifest.name]
    expected = batch.frame[batch.frame.account_id == busiest].drop(columns="label").reset_index(drop=True)
    # online sees only this account's marketing events: columns from the manifest, zero where absent
    assert_frames_match(online, expected)


def test_online_scores_converted_accounts_and_fills_unknown_manifest_columns():
    manifest = feature_manifest(SPEC, ["industry", "region"], ["email_click", "webinar"])
    online = online_features(EVENTS, SPEC, T("2024-01-20"), accounts=ACCOUNTS, conversions=CONVERSIONS,
                             manifest=manifest)
    assert "a2" in set(online.account_id)  # converted Jan 15, still scored
    assert list(online.columns[2:]) == list(manifest.name)
    assert online["fit__region"].isna().all() and online["fit__region"].dtype == "category"
    assert (online["dg__webinar__decayed"].fillna(0) == 0).all()


def test_identity_fills_missing_account_ids():
    ua = pd.DataFrame({"user_id": ["u9"], "account_id": ["a1"], "method": ["domain"], "confidence": [0.9]})
    without = compute_features(dataset(), SPEC, [T("2024-01-06")])
    with_ids = compute_features(dataset(), SPEC, [T("2024-01-06")], user_accounts=ua)
    assert row(without, "a1", "2024-01-06")["ms__created_project__users"] == 1
    assert row(with_ids, "a1", "2024-01-06")["ms__created_project__users"] == 2


def test_unused_milestone_warning_names_it():
    spec = MilestoneSpec.model_validate({"milestones": [
        {"name": "created_project", "category": "activation", "label": "created a project",
         "event": "project_created"},
        {"name": "sso", "category": "expansion", "label": "set up SSO", "event": "sso_configured"}]})
    with pytest.warns(UserWarning, match="sso"):
        compute_features(dataset(), spec, [T("2024-01-06")])


@pytest.mark.parametrize("text, needle", [
    ("milestones:\n- {name: ok, category: activation, label: x, event: e}\n"
     "- {name: bad_cat, category: delight, label: x, event: e}\n", "bad_cat"),
    ("milestones:\n- {name: no_event, category: adoption, label: x}\n", "no_event"),
    ("milestones:\n- {name: neg, category: adoption, label: x, event: e, min_count: 0}\n", "neg"),
])
def test_malformed_milestone_file_names_the_entry(text, needle):
    with pytest.raises(SpecError, match=needle):
        parse_milestones(text)


def test_warning_signs_are_their_own_family_with_hand_checked_values():
    spec = MilestoneSpec.model_validate({
        "settings": {"half_life_days": 14},
        "milestones": [
            {"name": "invited", "category": "collaboration", "label": "invited a teammate", "event": "invite"},
            {"name": "reports", "category": "adoption", "label": "ran 2 reports", "event": "report", "min_count": 2}],
        "warning_signs": [
            {"name": "unsubscribed", "label": "unsubscribed", "event": "unsubscribe"},
            {"name": "cancels", "label": "cancelled twice", "event": ["cancel", "downgrade"], "min_count": 2}]})
    ev = make_events([
        ("u1", "a1", "invite", "2024-01-02", "product", None),
        ("u1", "a1", "unsubscribe", "2024-01-03", "product", None),
        ("u2", "a1", "cancel", "2024-01-04", "product", None),
        ("u2", "a1", "downgrade", "2024-01-06", "product", None),
        ("u2", "a1", "report", "2024-01-06", "product", None),
        ("u1", "a1", "unsubscribe", "2024-01-20", "product", None),  # after T: invisible
        ("u3", "a2", "cancel", "2024-01-05", "product", None),  # once only: not reached
    ])
    row = online_features(ev, spec, T("2024-01-10")).set_index("account_id")
    a1, a2 = row.loc["a1"], row.loc["a2"]
    assert a1["ws__unsubscribed__reached"] and a1["ws__unsubscribed__count"] == 1
    assert a1["ws__unsubscribed__days_since_last"] == pytest.approx(7.0)
    assert a1["ws__unsubscribed__decayed"] == pytest.approx(2 ** (-7 / 14))
    assert a1["ws__cancels__reached"] and a1["ws__cancels__count"] == 2  # two events of the list
    assert a1["ws__cancels__decayed"] == pytest.approx(2 ** (-6 / 14) + 2 ** (-4 / 14))
    assert not a2["ws__cancels__reached"] and a2["ws__cancels__count"] == 1
    assert not a2["ws__unsubscribed__reached"] and np.isnan(a2["ws__unsubscribed__days_since_last"])
    # a warning sign is not value realised: no category, no per-milestone user counts
    assert a1["acct__users_collaboration"] == 1 and a1["acct__users_adoption"] == 0
    assert a1["acct__users_activation"] == 0 and a1["acct__users_expansion"] == 0
    assert not any(c.startswith("ms__unsubscribed") or c.startswith("ms__cancels") for c in row.columns)
    fam = feature_manifest(spec).set_index("name")["family"]
    assert fam["ws__cancels__reached"] == "warning" and fam["ms__reports__reached"] == "milestone"


@pytest.mark.parametrize("doc, message", [
    ({"warning_signs": [{"name": "invited", "label": "x", "event": "y"}]}, "differ from milestone names"),
    ({"warning_signs": [{"name": "w", "label": "x", "event": "y"}, {"name": "w", "label": "z", "event": "v"}]},
     "repeated: ['w']"),
    ({"warning_signs": [{"name": "w", "label": "x", "event": "y"}],
      "sequences": [{"name": "s", "steps": ["invited", "w"], "within_days": 3}]}, "cannot be sequence steps"),
    ({"warning_signs": [{"name": "w", "label": "x", "event": "y", "category": "activation"}]},
     "warning_signs.0.category (entry: 'w'): Extra inputs"),
])
def test_warning_sign_file_errors_name_the_entry(doc, message):
    text = yaml.safe_dump({"milestones": [{"name": "invited", "category": "collaboration", "label": "invited",
                                           "event": "invite"}], **doc})
    with pytest.raises(SpecError) as err:
        parse_milestones(text)
    assert message in str(err.value)


def test_arrow_result_is_sorted_and_converted_like_arrow_itself_across_chunks():
    """The one-copy gather of engine results: chunks with and without nulls, bools with nulls,
    text, and an empty result give what Arrow's own conversion gives after sorting."""
    import pyarrow as pa

    from features.pipeline import _arrow_frame

    b1 = pa.record_batch({"account_id": ["b", "a"], "cutoff": pa.array([2, 1], pa.timestamp("us")),
                          "n": pa.array([1, 2], pa.int64()), "f": pa.array([1.5, None]),
                          "flag": pa.array([True, False]), "cat": ["x", None]})
    b2 = pa.record_batch({"account_id": ["c", "a"], "cutoff": pa.array([1, 2], pa.timestamp("us")),
                          "n": pa.array([None, 4], pa.int64()), "f": pa.array([0.5, 2.5]),
                          "flag": pa.array([None, True]), "cat": ["y", "z"]})
    table = pa.Table.from_batches([b1, b2])
    got = _arrow_frame(table)
    expected = table.to_pandas().sort_values(["cutoff", "account_id"]).reset_index(drop=True)
    assert list(got["account_id"]) == ["a", "c", "a", "b"]
    for c in expected.columns:
        assert got[c].dtype == expected[c].dtype, c
        assert got[c].astype(object).where(got[c].notna(), None).tolist() == \
            expected[c].astype(object).where(expected[c].notna(), None).tolist(), c
    assert _arrow_frame(table.slice(0, 0)).shape == (0, 6)


def test_fit_attributes_named_like_internal_columns_keep_their_values():
    events, accounts, conversions = random_world(1)
    accounts = accounts.assign(k=range(len(accounts)), label=[f"L{i}" for i in range(len(accounts))])
    fs = compute_features(dataset(events, accounts, conversions), SPEC, [T("2024-02-01"), T("2024-03-10")])
    got = fs.frame.merge(accounts[["account_id", "k", "label"]], on="account_id", suffixes=("", "_crm"))
    assert (got["fit__k"].astype(int) == got["k"]).all()
    assert (got["fit__label"].astype(str) == got["label_crm"]).all()
    assert set(got["label"].unique()) <= {0, 1}  # the snapshot label is still the label


def test_lazy_parquet_path_equals_the_in_memory_one_under_a_memory_limit(tmp_path):
    """compute_features_from_files (DuckDB reading parquet, what the benchmark times) gives the
    same frame and manifest as compute_features; a memory limit and spill folder change nothing."""
    from features.pipeline import compute_features_from_files

    events, accounts, conversions = random_world(3, n_accounts=40, n_events=3000)
    cutoffs = [T("2024-02-01"), T("2024-02-15"), T("2024-03-10")]
    paths = {}
    for name, frame in (("events", events), ("accounts", accounts), ("conversions", conversions)):
        paths[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    expected = compute_features(dataset(events, accounts, conversions), SPEC, cutoffs)
    for kwargs in ({}, {"memory_limit": "64MB", "temp_directory": tmp_path / "spill"}):
        fs = compute_features_from_files(paths["events"], paths["accounts"], paths["conversions"], SPEC, cutoffs,
                                         **kwargs)
        pd.testing.assert_frame_equal(fs.manifest, expected.manifest)
        pd.testing.assert_frame_equal(fs.frame, expected.frame)
    assert (tmp_path / "spill").is_dir()


@pytest.mark.parametrize("limit", ["lots", "1GB'; DROP TABLE x; --", ""])
def test_memory_limit_must_be_a_size(tmp_path, limit):
    from features.pipeline import compute_features_from_files

    with pytest.raises(ValueError, match="memory_limit: expected a size"):
        compute_features_from_files(tmp_path / "e.parquet", tmp_path / "a.parquet", tmp_path / "c.parquet", SPEC,
                                    [T("2024-02-01")], memory_limit=limit)


def test_too_small_a_memory_limit_is_a_clear_error(tmp_path):
    from features.pipeline import compute_features_from_files

    events, accounts, conversions = random_world(3, n_accounts=40, n_events=3000)
    for name, frame in (("events", events), ("accounts", accounts), ("conversions", conversions)):
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
    with pytest.raises(MemoryError, match=r"memory_limit='1MB'.*events\.parquet.*Raise memory_limit"):
        compute_features_from_files(tmp_path / "events.parquet", tmp_path / "accounts.parquet",
                                    tmp_path / "conversions.parquet", SPEC, [T("2024-02-01")], memory_limit="1MB")
