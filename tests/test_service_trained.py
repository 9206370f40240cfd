"""Serving a model trained by the real trainer (training.train) on the `small_world` fixture.

Covers the bundle format training actually writes: registry download, Bento import, manifest
check against the feature code, compiled feature query == pipeline, reasons that add up.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    from training.train import TrainConfig, train_from_data_dir

    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = train_from_data_dir(small_world, small_world / "milestones.yaml", tracking_uri=uri,
                                 config=TrainConfig(progress=False, baselines=False, shap_rows=300,
                                                    min_converters=5))
    assert result.registration["alias"] == "champion"
    return {"tracking_uri": uri, "root": root}


def test_trained_champion_serves_with_reasons_that_add_up(trained, small_world):
    import numpy as np
    import pandas as pd

    from features.contract import load_dataset
    from features.identity import attach_accounts, resolve_accounts
    from features.pipeline import online_features
    from serving.explain import Explainer
    from serving.model import Scorer, check_manifest, load_from_registry
    from serving.online import OnlineFeatureQuery

    bundle = load_from_registry(None, trained["tracking_uri"])  # the champion
    check_manifest(bundle)
    ds = load_dataset(small_world, quarantine=False)
    events = attach_accounts(ds.events, resolve_accounts(ds.users, ds.events, ds.accounts).user_accounts)
    some = sorted(events["account_id"].dropna().unique())[:40]
    events = events[events["account_id"].isin(some)]
    accounts = ds.accounts[ds.accounts["account_id"].isin(some)]
    cutoff = events["timestamp"].max() + pd.Timedelta(seconds=1)

    expected = online_features(events, bundle.spec, cutoff, accounts=accounts, manifest=bundle.manifest)
    got = OnlineFeatureQuery(bundle.spec, bundle.manifest)(events, accounts, cutoff)
    pd.testing.assert_frame_equal(got, expected)

    scorer = Scorer(bundle)
    exps, bad = Explainer(scorer).explain(got, with_all=True)
    assert len(exps) + len(bad) == len(got) and len(exps) > 0
    for e in exps:
        total = e.base_value + sum(c["contribution"] for c in e.contributions)
        assert total == pytest.approx(e.raw_score, abs=1e-9)
        assert 0 <= e.score <= 100 and e.tier in {*bundle.tiers, "cold"}
    assert len({e.score for e in exps}) > 1  # the trained model tells accounts apart
    assert np.isfinite([e.probability for e in exps]).all()


def test_trained_champion_imports_into_the_bento_store(trained, monkeypatch):
    import subprocess
    import sys

    # A fresh BENTOML_HOME in a subprocess: the test process's BentoML has its store fixed.
    code = ("from serving.model import import_to_bentoml, check_bento_model\n"
            f"tag = import_to_bentoml(None, {trained['tracking_uri']!r})\n"
            "b = check_bento_model(tag)\n"
            "again = import_to_bentoml(None, " + repr(trained["tracking_uri"]) + ")\n"
            "print(tag, again, b.version)\n")
    env = {**__import__("os").environ, "BENTOML_HOME": str(trained["root"] / "bentoml")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    tag, again, version = out.stdout.split()[-3:]
    assert tag == again  # importing the same version twice reuses it
    assert version == "pql-account-scorer/1"
