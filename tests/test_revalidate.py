"""Re-validation flags a fading milestone, a renamed event, and drives the CLI exit code."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.spec import MilestoneSpec, save_milestones
from test_discover import _with_events, make_world
from training.revalidate import revalidate, write_revalidation

SPEC = MilestoneSpec.model_validate({"milestones": [
    {"name": "invited", "category": "collaboration", "label": "invited a teammate", "event": "teammate_invited"},
    {"name": "integrated", "category": "activation", "label": "connected an integration",
     "event": "integration_connected"},
    {"name": "reports", "category": "adoption", "label": "viewed reports 3 times", "event": "report_viewed",
     "min_count": 3},
]})
FADE = pd.Timestamp("2024-10-01")


@pytest.fixture(scope="module")
def faded():
    return make_world(1500, seed=1, fade_from=FADE)


def test_fading_driver_is_flagged_in_latest_quarter_only(faded):
    r = revalidate(faded, SPEC)
    flagged = r.flags[r.flags["flag"] == "lift_below_threshold"]
    assert ("2024Q4", "invited") in set(zip(flagged["period"], flagged["milestone"]))
    # the drivers that keep working are not flagged
    assert not set(flagged["milestone"]) & {"integrated"}
    assert r.flagged
    latest = r.table[(r.table["period"] == "2024Q4") & (r.table["milestone"] == "invited")].iloc[0]
    assert "lift_below_threshold" in latest["flags"]


def test_stable_world_has_no_lift_flags():
    r = revalidate(make_world(1500, seed=2), SPEC)
    assert not (r.flags["flag"] == "lift_below_threshold").any()


def _with_cancellations(world, seed: int, fade_from=None):
    """Non-converters cancel their trial 40% of the time, converters 3%; from ``fade_from`` on,
    both 25% (the warning sign stops warning)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    acc = world.accounts
    conv = acc["account_id"].isin(set(world.conversions["account_id"])).to_numpy()
    late = (acc["created_at"] >= fade_from).to_numpy() if fade_from is not None else np.zeros(len(acc), bool)
    p = np.where(late, 0.25, np.where(conv, 0.03, 0.40))
    who = acc[rng.random(len(acc)) < p]
    extra = pd.DataFrame({"user_id": who["account_id"] + "_u0", "account_id": who["account_id"],
                          "event": "trial_cancelled", "timestamp": who["created_at"] + pd.Timedelta(hours=12),
                          "properties": None})
    return _with_events(world, extra)


WARN_SPEC = MilestoneSpec.model_validate({**SPEC.model_dump(), "warning_signs": [
    {"name": "cancelled", "label": "cancelled the trial", "event": "trial_cancelled"}]})


def test_warning_sign_that_stops_warning_is_flagged_and_a_steady_one_is_not():
    steady = revalidate(_with_cancellations(make_world(1500, seed=2), seed=5), WARN_SPEC)
    rows = steady.table[steady.table["milestone"] == "cancelled"]
    assert (rows["category"] == "warning").all() and (rows.loc[rows["judged"], "lift"] < 0.5).all()
    assert not (steady.flags["flag"] == "warning_sign_faded").any()
    faded = revalidate(_with_cancellations(make_world(1500, seed=2), seed=5, fade_from=FADE), WARN_SPEC)
    flagged = faded.flags[faded.flags["flag"] == "warning_sign_faded"]
    assert set(zip(flagged["period"], flagged["milestone"])) == {("2024Q4", "cancelled")}
    assert "no longer a warning sign" in flagged["detail"].iloc[0]


def test_renamed_event_collapses_and_new_event_is_reported():
    w = make_world(1500, seed=3)
    ev = w.events.copy()
    late = (ev["event"] == "integration_connected") & (ev["timestamp"] >= pd.Timestamp("2024-10-01"))
    ev.loc[late, "event"] = "integration_added"
    w.events = ev
    r = revalidate(w, SPEC)
    flags = set(zip(r.flags["milestone"], r.flags["flag"]))
    assert ("integrated", "prevalence_collapse") in flags
    assert ("integration_added", "new_event") in flags
    assert "integration_added" in set(r.new_events["event"])
    row = r.new_events.set_index("event").loc["integration_added"]
    assert row["share_latest"] > 0.3 and row["share_earlier_same_age"] < 0.05


def test_an_event_every_account_does_late_in_life_is_not_new():
    """A 'final exam' at day 60 of every account first occurs two months into the data, yet
    earlier cohorts did it at the same ages as the latest one: not a new (renamed) event."""
    w = make_world(1500, seed=3)
    acc = w.accounts
    exams = pd.DataFrame({"user_id": acc["account_id"] + "_u0", "account_id": acc["account_id"],
                          "event": "exam_taken", "timestamp": acc["created_at"] + pd.Timedelta(days=60),
                          "properties": None})
    r = revalidate(_with_events(w, exams), SPEC)
    assert "exam_taken" not in set(r.new_events["event"])
    assert not ((r.flags["milestone"] == "exam_taken") & (r.flags["flag"] == "new_event")).any()


def test_writers_and_cli_fail_on_flags(faded, tmp_path):
    from pql.cli import app

    paths = write_revalidation(revalidate(faded, SPEC), tmp_path / "rv")
    assert pd.read_csv(paths["flags"]).shape[0] > 0
    assert "lift-by-period" in paths["report"].read_text()
    # the CLI reads a data directory: write the frames as parquet
    data = tmp_path / "data"
    data.mkdir()
    for name in ("events", "accounts", "conversions"):
        getattr(faded, name).to_parquet(data / f"{name}.parquet")
    save_milestones(SPEC, tmp_path / "milestones.yaml")
    runner = CliRunner()
    args = ["revalidate", str(data), "--milestones", str(tmp_path / "milestones.yaml"), "--out", str(tmp_path / "o")]
    res = runner.invoke(app, args + ["--fail-on-flags"])
    assert res.exit_code == 1, res.output
    assert runner.invoke(app, args).exit_code == 0
    bad = runner.invoke(app, ["revalidate", str(data), "--milestones", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 2 and "not found" in bad.output
