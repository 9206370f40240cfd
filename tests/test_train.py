"""Training: time split, calibrated LightGBM, baselines, bad input (pure; no MLflow here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from train_fixtures import PLANTED, FakeFeatureSet, fake_feature_set, fake_spec
from training.models import IsotonicCalibrator, PlattCalibrator, calibrator_from_json, monotone_constraints
from training.split import GAP_PART, USED_PARTS, SplitError, time_split, training_cutoffs
from training.train import TrainConfig, TrainingDataError, make_tiers, train, with_cutoff_schedule

FAST = dict(progress=False, min_converters=20)


@pytest.fixture(scope="module")
def trained():
    fs = fake_feature_set(n_accounts=800, n_cutoffs=12, seed=3)
    return fs, train(fs, fake_spec(), config=TrainConfig(**FAST))


def test_split_keeps_a_horizon_gap_and_evaluation_is_newest():
    cutoffs = pd.date_range("2024-01-07", periods=12, freq="7D").repeat(3)
    s = time_split(cutoffs, horizon_days=30)
    assert s.calibration_cutoffs[0] - s.train_cutoffs[-1] >= pd.Timedelta(days=30)
    assert max(s.calibration_cutoffs) < min(s.evaluation_cutoffs)
    assert max(s.evaluation_cutoffs) == cutoffs.max()
    # the three parts are disjoint and the gap rows are the only rows left out
    assert not (s.train & s.calibration).any() and not (s.calibration & s.evaluation).any()
    used = s.train | s.calibration | s.evaluation
    assert set(pd.DatetimeIndex(cutoffs[~used]).unique()) == set(s.dropped_cutoffs)
    # the summary accounts for every row: the dropped cutoffs are a part of their own, in time order
    summary = s.summary(np.zeros(len(cutoffs)))
    assert summary["part"].tolist() == ["train", GAP_PART, "calibration", "evaluation"]
    gap = summary.set_index("part").loc[GAP_PART]
    assert gap["cutoffs"] == len(s.dropped_cutoffs) > 0 and gap["rows"] == 3 * len(s.dropped_cutoffs)
    assert summary["rows"].sum() == len(cutoffs)


def test_split_refuses_a_history_shorter_than_the_horizon():
    with pytest.raises(SplitError, match="horizon"):
        time_split(pd.date_range("2024-01-01", periods=5, freq="7D"), horizon_days=60)


def test_model_beats_activity_and_rules_and_is_calibrated(trained):
    _, r = trained
    m = r.metrics
    assert set(m.index) >= {"model", "rules_points", "activity_lightgbm", "logistic_milestones",
                            "ablation_product", "ablation_fit", "ablation_product_fit_dg"}
    assert m.loc["model", "roc_auc"] > m.loc["activity_lightgbm", "roc_auc"] + 0.15
    # equal points for every milestone (including two useless ones) rank worse than learned weights
    assert m.loc["model", "roc_auc"] > m.loc["rules_points", "roc_auc"]
    assert m.loc["model", "ece"] < 0.06
    # calibration: mean predicted probability close to the evaluation conversion rate
    pred = r.predictions
    assert pred["model"].mean() == pytest.approx(pred["label"].mean(), abs=0.05)


def test_learned_weights_recover_the_planted_order(trained):
    _, r = trained
    strongest = [m for m, e in PLANTED.items() if e > 0]
    learned = r.weights.loc[r.weights["kind"] == "milestone", "group"].head(len(strongest)).tolist()
    assert set(learned) == set(strongest)
    w = r.weights.set_index("group")
    assert w.loc["invited_teammate", "points_equivalent"] > w.loc["changed_theme", "points_equivalent"]
    total_points = sum(m.points for m in fake_spec().milestones) + 5.0
    assert w.loc[w["kind"].isin(["milestone", "sequence"]), "points_equivalent"].sum() == pytest.approx(total_points, abs=1)


def test_monotone_flags_never_lower_the_score(trained):
    fs, r = trained
    frame = fs.frame.sample(300, random_state=0).copy()
    model = r.fitted["model"]
    for col in [c for c in r.feature_columns if c.endswith(("__reached", "__completed"))]:
        off, on = frame.copy(), frame.copy()
        off[col], on[col] = 0.0, 1.0
        assert np.all(model.predict_raw(on) >= model.predict_raw(off) - 1e-9), col


def test_model_does_not_use_raw_activity_and_keeps_manifest_order(trained):
    _, r = trained
    assert not any(c.startswith("raw__") for c in r.feature_columns)
    assert r.manifest["name"].tolist() == r.feature_columns == r.booster.feature_name()
    assert r.fit_categories == {"fit__industry": ["finance", "retail", "saas"]}


def test_split_summary_has_converters_in_every_part(trained):
    _, r = trained
    s = r.split_summary.set_index("part")
    used = s.loc[list(USED_PARTS)]
    assert (used["converters"] > 0).all() and (used["rows"] > used["converters"]).all()
    assert s["rows"].sum() == len(r.frame)  # with the gap row, every snapshot is in the table


def test_training_cutoffs_end_where_labels_are_observable():
    spec = with_cutoff_schedule(fake_spec(horizon_days=30), every_days=7, count=200)
    events = pd.to_datetime(["2024-01-03 00:00", "2024-06-30 18:00"])
    cuts = training_cutoffs(spec, events)
    # weekly over the whole span: ends one horizon before the newest event, starts a step after the first
    assert cuts[-1] == pd.Timestamp("2024-05-31") and cuts[0] >= pd.Timestamp("2024-01-10")
    assert cuts[0] - pd.Timedelta(days=7) < pd.Timestamp("2024-01-10")
    assert set(np.diff(cuts)) == {pd.Timedelta(days=7)}
    # conversions recorded only until April: no cutoff whose label window reaches past them
    early = training_cutoffs(spec, events, pd.to_datetime(["2024-02-01", "2024-04-15"]))
    assert early[-1] == pd.Timestamp("2024-03-16")  # newest conversion (Apr 15) - 30 days
    assert pd.Timestamp("2024-01-10") <= early[0] < pd.Timestamp("2024-01-17")  # still back to the start
    # explicit dates are used as written
    dated = with_cutoff_schedule(spec, dates=[pd.Timestamp("2024-06-20"), pd.Timestamp("2024-02-01")])
    assert training_cutoffs(dated, events, pd.to_datetime(["2024-02-01"])) == [pd.Timestamp("2024-02-01"),
                                                                               pd.Timestamp("2024-06-20")]
    # a regular schedule asked for replaces the file's dates; bad values are refused
    assert with_cutoff_schedule(dated, count=5).settings.cutoffs.dates is None
    with pytest.raises(ValueError, match="count"):
        with_cutoff_schedule(spec, count=0)


def test_default_schedule_spans_the_history_weekly():
    from features.spec import CutoffSchedule

    cuts = CutoffSchedule().resolve(pd.Timestamp("2025-01-01"), pd.Timestamp("2026-07-01"), 30)
    assert len(cuts) > 60 and set(np.diff(cuts)) == {pd.Timedelta(days=7)}
    assert cuts[0] - pd.Timestamp("2025-01-01") < pd.Timedelta(days=14)


def test_isotonic_calibrator_keeps_order_and_calibrates():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(2 * raw - 3)))).astype(int)
    cal = IsotonicCalibrator().fit(raw, y)
    grid = np.linspace(cal.x_[0], cal.x_[-1], 500)
    assert np.all(np.diff(cal.predict(grid)) > 0)  # strictly increasing between the outer knots
    high = raw > 1.5
    assert cal.predict(raw[high]).mean() == pytest.approx(y[high].mean(), abs=0.02)
    again = calibrator_from_json(json.loads(json.dumps(cal.to_json())))
    np.testing.assert_allclose(again.predict(raw), cal.predict(raw))


def test_platt_calibrator_recovers_slope_and_round_trips():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(2 * raw - 1)))).astype(int)
    cal = PlattCalibrator().fit(raw, y)
    assert cal.a_ == pytest.approx(2, abs=0.15) and cal.b_ == pytest.approx(-1, abs=0.1)
    np.testing.assert_allclose(calibrator_from_json(cal.to_json()).predict(raw), cal.predict(raw))


def test_monotone_constraints_only_on_flags():
    cols = ["ms__a__reached", "ms__a__count", "seq__s__completed", "seq__s__days_since", "fit__x"]
    assert monotone_constraints(cols) == [1, 0, 1, 0, 0]
    assert monotone_constraints(cols, enabled=False) == [0] * 5


def test_tiers_are_descending_cut_points_on_the_0_100_score():
    t = make_tiers(np.linspace(0, 1, 1001))
    assert t["cuts"]["hot"] == pytest.approx(90, abs=0.2) and t["cuts"]["warm"] == pytest.approx(70, abs=0.2)


def _with(fs: FakeFeatureSet, **changes) -> FakeFeatureSet:
    frame = fs.frame.copy()
    for k, v in changes.items():
        frame[k] = v(frame) if callable(v) else v
    return FakeFeatureSet(frame, fs.manifest)


def test_bad_input_says_what_data_is_needed():
    fs = fake_feature_set(n_accounts=200, n_cutoffs=10, seed=5)
    spec = fake_spec()
    with pytest.raises(TrainingDataError, match="no converters"):
        train(_with(fs, label=0), spec, config=TrainConfig(**FAST))
    few = fs.frame["label"].where(fs.frame.index < 30, 0)  # a handful of converters
    with pytest.raises(TrainingDataError, match="floor of 50"):
        train(_with(fs, label=few), spec, config=TrainConfig(progress=False))
    newest = fs.frame["cutoff"] >= fs.frame["cutoff"].max() - pd.Timedelta(days=14)
    with pytest.raises(TrainingDataError) as err:
        train(_with(fs, label=fs.frame["label"].where(~newest, 0)), spec, config=TrainConfig(**FAST))
    # names the part, its cutoffs, where the converters are and how to fix it
    last_with = fs.frame.loc[~newest, "cutoff"].max()
    assert "evaluation part of the time split" in str(err.value) and "has no converters" in str(err.value)
    assert f"..{fs.frame['cutoff'].max():%Y-%m-%d}" in str(err.value)
    n_with = fs.frame.loc[~newest, "cutoff"].nunique()
    assert f"exist at {n_with} of 10 cutoffs, {fs.frame['cutoff'].min():%Y-%m-%d}..{last_with:%Y-%m-%d}" in str(err.value)
    assert "--cutoffs" in str(err.value)
    flags = {c: 0.0 for c in fs.frame.columns if c.startswith("ms__") and c.endswith("__reached")}
    with pytest.raises(TrainingDataError, match="does not match the data"):
        train(_with(fs, **flags), spec, config=TrainConfig(**FAST))
    other = fake_spec().model_copy(update={"milestones": [fake_spec().milestones[0].model_copy(update={"name": "other"})],
                                           "sequences": []})
    with pytest.raises(TrainingDataError, match="not built with this milestone file"):
        train(fs, other, config=TrainConfig(**FAST))


@pytest.mark.slow
def test_train_from_a_generated_world_end_to_end(small_world, tmp_path, monkeypatch):
    """Generator -> contract -> identity -> pipeline -> train -> MLflow run and registry."""
    from typer.testing import CliRunner

    from pql.cli import app

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    world = tmp_path / "world"
    shutil.copytree(small_world, world)
    # a milestone whose event never occurs: warned about once, in plain words
    ms = world / "milestones.yaml"
    ms.write_text(ms.read_text().replace("milestones:\n", "milestones:\n- {name: bought_coffee, category: "
                                         "adoption, label: bought coffee, event: coffee_bought}\n", 1))
    res = CliRunner().invoke(app, ["train", str(world), "--milestones", str(ms), "--min-converters", "20",
                                   "--count", "30", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "registered pql-account-scorer v1 as champion" in res.output
    assert res.output.count("bought_coffee") == 1 and "warning: milestones whose events never occur" in res.output
    assert "interpreted in multiple ways" not in res.output and "Inferred schema" not in res.output

    from mlflow import MlflowClient

    mv = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("pql-account-scorer", "champion")
    files = {Path(f.path).name for f in MlflowClient(uri, registry_uri=uri).list_artifacts(mv.run_id, "scorer")}
    assert files == {"calibrator.json", "feature_manifest.csv", "milestones.yaml", "fit_categories.json", "tiers.json"}
    top = {Path(f.path).name for f in MlflowClient(uri, registry_uri=uri).list_artifacts(mv.run_id)}
    assert "identity_report.json" in top  # how users were tied to accounts travels with the run
    params = MlflowClient(uri, registry_uri=uri).get_run(mv.run_id).data.params
    assert params["n_cutoffs"] == "30" and json.loads(params["cutoff_schedule"])["count"] == 30


def test_cli_refuses_bad_cutoff_options_before_any_work(small_world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pql.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = lambda *extra: CliRunner().invoke(app, ["train", str(small_world), "--quiet", *extra])  # noqa: E731
    res = run("--cutoffs", "2025-03-01,someday,2025-05-01")
    assert res.exit_code == 2 and "--cutoffs: 'someday' is not a date" in res.output
    res = run("--cutoffs", "2025-03-01,2025-04-01")
    assert res.exit_code == 2 and "at least 3 distinct dates, got 2" in res.output
    res = run("--cutoffs", "2025-03-01,2025-04-01,2025-05-01", "--count", "20")
    assert res.exit_code == 2 and "leave out --every-days and --count" in res.output
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlproject_train_entry_point_registers_a_version(small_world, tmp_path):
    """`mlflow run . -e train --env-manager local -P data=...` as a user types it (issue 6)."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    root = Path(__file__).resolve().parents[1]
    venv_bin = Path(sys.executable).parent
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # no MLFLOW_* from this process: mlflow.set_experiment in earlier tests exports MLFLOW_EXPERIMENT_ID
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": uri}
    # cwd outside the repo: the run's artifacts land in tmp_path/mlruns, not in the working tree
    proc = subprocess.run([str(venv_bin / "mlflow"), "run", str(root), "-e", "train", "--env-manager", "local",
                           "-P", f"data={small_world}", "-P", "min_converters=20"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'pql-account-scorer'")
    assert len(versions) == 1
    run = client.get_run(versions[0].run_id)
    assert run.data.tags.get("mlflow.project.entryPoint") == "train"  # logged into the project's own run
    assert run.data.metrics["model.roc_auc"] > 0.6


def test_cli_refuses_a_milestone_file_that_does_not_match_and_registers_nothing(small_world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pql.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ms = tmp_path / "milestones.yaml"
    ms.write_text("milestones:\n- {name: bought_coffee, category: activation, label: bought coffee, event: coffee}\n")
    res = CliRunner().invoke(app, ["train", str(small_world), "--milestones", str(ms), "--quiet"])
    assert res.exit_code != 0
    assert "does not match the data" in res.output
    assert not (tmp_path / "mlflow.db").exists()  # nothing logged, nothing registered


def test_warning_signs_enter_the_model_and_may_only_lower_the_score():
    from training.baselines import MODEL_FAMILIES, columns_of, family_of
    from training.models import monotone_constraints

    cols = ["ms__invited__reached", "ws__trial_cancelled__reached", "ws__trial_cancelled__count", "raw__logins"]
    assert family_of("ws__trial_cancelled__count") == "warning" and "warning" in MODEL_FAMILIES
    assert columns_of(cols, MODEL_FAMILIES) == cols[:3]
    assert monotone_constraints(cols) == [1, -1, 0, 0]
    assert monotone_constraints(cols, enabled=False) == [0, 0, 0, 0]


def test_a_planted_warning_sign_is_learned_lowers_scores_and_beats_the_model_without_it():
    fs = fake_feature_set(n_accounts=800, n_cutoffs=12, seed=3, warning_effect=-2.0)
    with_ws = train(fs, fake_spec(warning_sign=True), config=TrainConfig(**FAST))
    assert {"ws__cancelled__reached", "ws__cancelled__count"} <= set(with_ws.feature_columns)
    model = with_ws.fitted["model"]
    frame = fs.frame.sample(400, random_state=0)
    off, on = frame.copy(), frame.copy()
    off["ws__cancelled__reached"], on["ws__cancelled__reached"] = 0.0, 1.0
    assert np.all(model.predict_raw(on) <= model.predict_raw(off) + 1e-9)  # monotone decreasing
    assert (model.predict_raw(on) < model.predict_raw(off) - 1e-6).mean() > 0.5  # and it is used
    weights = with_ws.weights.set_index("group")
    assert weights.loc["cancelled", "kind"] == "warning" and weights.loc["cancelled", "label"] == "cancelled the trial"
    # the same rows without the warning-sign columns: the model that sees them ranks better
    blind = FakeFeatureSet(fs.frame.drop(columns=[c for c in fs.frame if c.startswith("ws__")]),
                           fs.manifest[~fs.manifest["name"].str.startswith("ws__")].reset_index(drop=True))
    without = train(blind, fake_spec(), config=TrainConfig(**FAST))
    assert with_ws.metrics.loc["model", "roc_auc"] > without.metrics.loc["model", "roc_auc"] + 0.02
