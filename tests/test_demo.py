"""`make demo`'s job end to end on a small world: every stage real, every promised output there."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from rich.console import Console


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_the_top_accounts(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from pql.demo import run_demo
    from serving.store import EventStore

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    buf = io.StringIO()
    summary = run_demo(tmp_path / "demo", accounts=700, seed=3, top=5,
                       console=Console(file=buf, width=160, force_terminal=False))
    out = buf.getvalue()
    assert "Top 5 accounts ready to buy" in out
    # discovery says what it found, not only where it wrote it
    from features.spec import load_milestones

    found = load_milestones(tmp_path / "demo" / "discovery" / "milestones.yaml")
    assert found.milestones and all(f"[{m.category}] {m.name}: {m.label}" in out for m in found.milestones)
    assert all(f"[warning sign] {w.name}" in out for w in found.warning_signs)
    # training shows the weights it learned beside the file's points (its tables go to stderr)
    printed = capsys.readouterr().err
    assert "Learned weights" in printed and found.milestones[0].name[:20] in printed
    assert "mlflow ui --backend-store-uri" in out and "pql serve" in out
    scores = pd.read_csv(summary["scores"])
    assert scores["probability"].between(0, 1).all() and scores["tier"].isin(["hot", "warm", "cold"]).all()
    assert scores["top_reasons"].str.len().gt(0).all()
    uri = f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}"
    champion = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("pql-account-scorer", "champion")
    assert str(champion.version) == "1"
    assert EventStore(f"sqlite:///{tmp_path / 'demo' / 'events.db'}").count() > 0
    assert (tmp_path / "demo" / "discovery" / "report.html").is_file()
