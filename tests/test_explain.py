"""Explanations: add up exactly, speak the account's values, next-best raises the score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.explain import Explainer, feature_groups, render_html
from serving.model import ModelError, check_manifest
from serving_fixtures import manifest_frame, shared_bundle, shared_scorer


@pytest.fixture(scope="module")
def scorer():
    return shared_scorer()


@pytest.fixture(scope="module")
def frame():
    return shared_bundle()["frame"].head(120).reset_index(drop=True)


def test_contributions_add_up_to_raw_score(scorer, frame):
    X, problems = scorer.prepare(frame)
    assert not any(problems)
    contrib = scorer.contributions(X)
    assert contrib.shape == (len(frame), len(scorer.feature_names) + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), scorer.raw_score(X), rtol=0, atol=1e-9)
    # Grouped by milestone the sum is unchanged.
    ex = Explainer(scorer)
    gc, base = ex.group_contributions(contrib)
    np.testing.assert_allclose(gc.sum(axis=1) + base, scorer.raw_score(X), atol=1e-9)
    exps, bad = ex.explain(frame, with_all=True)
    assert not bad
    for e in exps[:20]:
        total = e.base_value + sum(c["contribution"] for c in e.contributions)
        assert total == pytest.approx(e.raw_score, abs=1e-9)


def test_groups_follow_milestones():
    g = feature_groups(manifest_frame())
    assert "milestone:invited_teammate" in g.keys and "fit:industry" in g.keys
    # All six statistics of a milestone land in one group.
    k = g.keys.index("milestone:invited_teammate")
    assert g.membership[:, k].sum() == 6


def test_wording_uses_the_accounts_own_values(scorer, frame):
    row = frame.iloc[[0]].copy()
    row["ms__invited_teammate__reached"] = 1.0
    row["ms__invited_teammate__users"] = 3.0
    row["ms__invited_teammate__count"] = 5.0
    row["ms__invited_teammate__days_since_last"] = 2.0
    row["ms__connected_integration__reached"] = 0.0
    row["ms__connected_integration__count"] = 0.0
    row["fit__industry"] = pd.Categorical(["health"], categories=row["fit__industry"].cat.categories)
    ex = Explainer(scorer, top_k=50)
    (e,), _ = ex.explain(row, with_all=True)
    texts = {c["group"]: c["text"] for c in e.contributions}
    assert texts["milestone:invited_teammate"] == "3 users invited teammates; the last 2 days ago"
    assert texts["milestone:connected_integration"] == "not yet reached: connected an integration"
    assert texts["fit:industry"] == "industry is health"
    # Changing the values changes the words.
    row["ms__invited_teammate__users"] = 7.0
    (e2,), _ = ex.explain(row, with_all=True)
    assert {c["group"]: c["text"] for c in e2.contributions}["milestone:invited_teammate"].startswith("7 users")
    # Up reasons are positive and ordered, down reasons negative.
    ups = [r["contribution"] for r in e.reasons_up]
    assert ups == sorted(ups, reverse=True) and all(u > 0 for u in ups)
    assert all(r["contribution"] < 0 for r in e.reasons_down)


def test_next_best_milestone_raises_the_score(scorer, frame):
    ex = Explainer(scorer)
    exps, _ = ex.explain(frame)
    checked = 0
    for e, (_, row) in zip(exps, frame.iterrows()):
        if not e.next_best:
            continue
        best = e.next_best[0]
        assert best["name"] not in {m["name"] for m in e.milestones_reached}
        # Re-score independently: set the milestone reached by hand.
        cf = frame.loc[[row.name]].copy()
        m = best["name"]
        cf[f"ms__{m}__reached"] = 1.0
        cf[f"ms__{m}__count"] = max(cf[f"ms__{m}__count"].iloc[0], scorer.bundle.spec.milestone(m).min_count)
        cf[f"ms__{m}__users"] = max(cf[f"ms__{m}__users"].iloc[0], 1)
        cf[f"ms__{m}__days_since_first"] = cf[f"ms__{m}__days_since_first"].fillna(0)
        cf[f"ms__{m}__days_since_last"] = 0.0
        cf[f"ms__{m}__decayed"] = cf[f"ms__{m}__decayed"].fillna(0) + scorer.bundle.spec.milestone(m).min_count
        seq_done = all(frame.loc[row.name, f"ms__{s}__reached"] == 1 for s in ("created_project", "invited_teammate") if s != m)
        if m in ("created_project", "invited_teammate") and seq_done:
            cf["seq__project_then_invite__completed"] = 1.0
            cf["seq__project_then_invite__days_since"] = 0.0
        X, _ = scorer.prepare(cf)
        p_new = scorer.predict_proba(X)[0]
        assert p_new > e.probability
        assert p_new == pytest.approx(best["probability_if_reached"], abs=1e-12)
        checked += 1
    assert checked >= 5


def test_unknown_fit_category_is_reported_not_dropped(scorer, frame):
    rows = frame.head(3).copy()
    rows["fit__industry"] = rows["fit__industry"].astype(object)
    rows.loc[1, "fit__industry"] = "mining"
    exps, bad = Explainer(scorer).explain(rows)
    assert [e.account_id for e in exps] == [rows.loc[0, "account_id"], rows.loc[2, "account_id"]]
    assert "fit__industry='mining'" in bad[1]


def test_tiers_follow_cut_points(scorer):
    assert list(scorer.tier([10, 30, 59, 60, 99])) == ["cold", "warm", "warm", "hot", "hot"]


def test_manifest_mismatch_refuses_with_a_clear_message(scorer):
    expected = manifest_frame()
    check_manifest(scorer.bundle, expected)  # matching: no error
    with pytest.raises(ModelError, match="ms__added_seats__users"):
        check_manifest(scorer.bundle, expected[expected["name"] != "ms__added_seats__users"])


def test_html_page_carries_every_contribution(scorer, frame):
    (e,), _ = Explainer(scorer).explain(frame.head(1), with_all=True)
    page = render_html(e)
    assert page.count("<tr><td>") == len(e.contributions)
    assert f"score <span id=\"score\">{e.score}</span>" in page


def test_batch_summary_words_exactly_like_the_per_account_explanations(scorer, frame):
    """summarize() words each distinct value combination once; the texts must not differ."""
    rows = frame.copy()
    rows.loc[::7, "ms__invited_teammate__days_since_last"] = np.nan  # missing values too
    ex = Explainer(scorer, top_k=3, next_best_k=1)
    table, bad = ex.summarize(rows)
    exps, _ = ex.explain(rows)
    assert not bad and len(table) == len(exps) == len(rows)
    for e, (_, row) in zip(exps, table.iterrows()):
        strongest = sorted(e.reasons_up + e.reasons_down, key=lambda r: -abs(r["contribution"]))[:3]
        assert row["top_reasons"] == " | ".join(r["text"] for r in strongest)
        assert row["next_best_milestone"] == (e.next_best[0]["label"] if e.next_best else "")
        assert row["milestones_reached"] == ";".join(m["name"] for m in e.milestones_reached)
        assert (row["score"], row["tier"]) == (e.score, e.tier)
    # Grouping really happened: fewer wording calls than (rows x reasons).
    calls = []
    original = ex.wording.word
    ex.wording.word = lambda *a: calls.append(a) or original(*a)
    ex.summarize(rows)
    assert 0 < len(calls) < 3 * len(rows)
