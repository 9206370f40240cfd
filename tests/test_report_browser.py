"""The discovery and re-validation reports render in a real headless Chromium (no network)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_discover import make_world
from test_revalidate import SPEC
from training.discover import discover, write_discovery
from training.revalidate import revalidate, write_revalidation

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: run `make browser`")]


def _chromium(args: list[str], tmp_path: Path) -> str:
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_discovery_report_renders_sections_and_charts(tmp_path):
    d = discover(make_world(600, seed=5))
    paths = write_discovery(d, tmp_path / "out")
    dom = _chromium(["--dump-dom", paths["report"].resolve().as_uri()], tmp_path)
    for section in ("summary", "recommended", "heatmaps", "sequences", "activity-trap", "warning-signs",
                    "candidates", "milestone-file"):
        assert f'id="{section}"' in dom
    assert 'data-chart="rates"' in dom and 'data-chart="activity-trap"' in dom
    n_heat = len(re.findall(r'data-chart="heatmap-', dom))
    assert n_heat == len(d.spec.milestones)
    # one converter bar per recommended milestone, drawn by the browser's SVG parser
    assert len(re.findall(r'class="bar converter_rate"', dom)) == len(d.spec.milestones)
    assert "login" in dom  # raw activity shown in the activity-trap section
    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", "--window-size=1100,2400", paths["report"].resolve().as_uri()], tmp_path)
    assert shot.stat().st_size > 10_000


def test_revalidation_report_renders(tmp_path):
    import pandas as pd

    r = revalidate(make_world(1200, seed=1, fade_from=pd.Timestamp("2024-10-01")), SPEC)
    paths = write_revalidation(r, tmp_path / "rv")
    dom = _chromium(["--dump-dom", paths["report"].resolve().as_uri()], tmp_path)
    assert 'data-chart="lift-by-period"' in dom
    assert "lift_below_threshold" in dom
    assert len(re.findall(r'class="series"', dom)) == len(SPEC.milestones)
