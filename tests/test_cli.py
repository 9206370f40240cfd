"""The one CLI: every command answers --help, and `pql features` writes what travels with features."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from pql.cli import app

COMMANDS = ["generate", "validate", "features", "discover", "revalidate", "train", "serve", "score",
            "explain", "feedback-report", "demo"]


def test_every_command_is_listed_and_has_help():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in top.output, cmd
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0, (cmd, res.output)
        assert "Usage" in res.output and "--help" in res.output


def test_features_writes_manifest_and_identity_report_next_to_features(small_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(small_world, world)
    out = tmp_path / "out" / "features.parquet"
    res = CliRunner().invoke(app, ["features", str(world), "--milestones", str(world / "milestones.yaml"),
                                   "--cutoffs", "2026-01-05,2026-02-02", "--out", str(out)])
    assert res.exit_code == 0, res.output
    frame = pd.read_parquet(out)
    manifest = pd.read_csv(out.parent / "features.manifest.csv")
    assert sorted(frame["cutoff"].astype(str).str[:10].unique()) == ["2026-01-05", "2026-02-02"]
    assert set(manifest["name"]) <= set(frame.columns)
    assert {"milestone", "activity", "fit"} <= set(manifest["family"])
    report = json.loads((out.parent / "identity_report.json").read_text())
    user_accounts = pd.read_parquet(out.parent / "user_accounts.parquet")
    users = pd.read_parquet(world / "users.parquet")
    assert set(users["user_id"]) <= set(user_accounts["user_id"])
    assert report  # the resolution report is not empty
    # rows and positives per cutoff are printed for the user
    assert "2026-01-05" in res.output and "positives" in res.output


def test_features_refuses_a_missing_milestone_file_without_traceback(small_world, tmp_path):
    res = CliRunner().invoke(app, ["features", str(small_world), "--milestones", str(tmp_path / "nope.yaml"),
                                   "--out", str(tmp_path / "f.parquet")])
    assert res.exit_code == 2
    assert "not found" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "f.parquet").exists()
