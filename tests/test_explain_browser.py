"""The reviewer page rendered in real headless Chromium: the waterfall adds up."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from serving.explain import Explainer, render_html
from serving_fixtures import shared_bundle, shared_scorer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium missing: run `make browser`")
def test_waterfall_renders_and_ends_at_the_model_output(tmp_path):
    scorer = shared_scorer()
    (e,), _ = Explainer(scorer).explain(shared_bundle()["frame"].head(1), with_all=True)
    page = tmp_path / "explain.html"
    page.write_text(render_html(e), encoding="utf-8")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="true"' in dom, "the chart script did not run"
    bars = re.findall(r'<rect[^>]*class="bar (\w+)"[^>]*>', dom)
    # base + one bar per contribution + the total
    assert len(bars) == len(e.contributions) + 2
    assert bars[0] == "base" and bars[-1] == "total"
    ups = sum(c["contribution"] > 0 for c in e.contributions)
    assert bars.count("up") == ups
    final = float(re.search(r'data-final="([-0-9.e]+)"', dom).group(1))
    assert final == pytest.approx(e.raw_score, abs=1e-9)
    assert f">{e.score}<" in dom
