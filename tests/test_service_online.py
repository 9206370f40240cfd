"""Serving's compiled feature query equals the pipeline's own online features; manifest guard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving_fixtures import MILESTONES, manifest_frame, shared_scorer


def _events(n=300, seed=1):
    rng = np.random.default_rng(seed)
    events = ["project_created", "teammate_invited", "integration_connected", "seats_added", "login"]
    return pd.DataFrame({
        "user_id": [f"u{i % 11}" for i in range(n)],
        "account_id": [f"a{i % 4}" for i in range(n)],
        "event": rng.choice(events, n),
        "timestamp": pd.Timestamp("2024-05-01") + pd.to_timedelta(rng.integers(0, 86400 * 40, n), unit="s"),
        "message_id": [f"m{i}" for i in range(n)], "source": "product", "properties": None})


@pytest.fixture(scope="module")
def query():
    from serving.online import OnlineFeatureQuery

    return OnlineFeatureQuery(shared_scorer().bundle.spec, shared_scorer().bundle.manifest)


@pytest.mark.parametrize("cutoff", ["2024-05-20 08:00:00", "2024-06-01 10:11:12.345678"])
def test_compiled_query_equals_online_features(query, cutoff):
    from features.pipeline import online_features

    bundle = shared_scorer().bundle
    events = _events()
    accounts = pd.DataFrame({"account_id": ["a0", "a1", "a3"], "industry": ["software", "retail", None],
                             "employees": [40, None, 3]})
    expected = online_features(events, bundle.spec, pd.Timestamp(cutoff), accounts=accounts,
                               manifest=bundle.manifest)
    got = query(events, accounts, pd.Timestamp(cutoff))
    pd.testing.assert_frame_equal(got, expected)
    assert len(got) == 4 and got["ms__created_project__reached"].any()
    # Events after the cutoff are invisible (the cutoff really is substituted, not baked in).
    early = query(events, accounts, pd.Timestamp("2024-05-02"))
    assert (early["ms__created_project__count"] <= got["ms__created_project__count"]).all()
    assert early["ms__created_project__count"].sum() < got["ms__created_project__count"].sum()


def test_query_with_no_rows_returns_no_rows(query):
    out = query(_events().iloc[0:0], None, pd.Timestamp("2024-06-01"))
    assert len(out) == 0 and list(out.columns[:2]) == ["account_id", "cutoff"]


def test_manifest_the_feature_code_does_not_produce_is_refused():
    from features.spec import parse_milestones
    from serving.model import ModelError, check_manifest
    from serving_fixtures import MILESTONES_YAML

    bundle = shared_scorer().bundle
    check_manifest(bundle)  # the real one passes
    lines = [x for x in MILESTONES_YAML.splitlines() if "added_seats" not in x]
    broken = type(bundle)(**{**bundle.__dict__, "spec": parse_milestones("\n".join(lines))})
    with pytest.raises(ModelError, match=r"ms__added_seats__reached.*retrain"):
        check_manifest(broken)
    assert MILESTONES[-1] == "added_seats" and "ms__added_seats__count" in set(manifest_frame()["name"])
