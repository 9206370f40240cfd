"""Re-validation flags a fading milestone, a renamed event, and drives the CLI exit code."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.spec import MilestoneSpec, save_milestones
from test_discover import make_world
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
