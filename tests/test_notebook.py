"""The discovery walkthrough notebook runs top to bottom on a small generated world."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "milestone_discovery.ipynb"


@pytest.mark.slow
def test_notebook_executes(small_world, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PQL_DATA_DIR", str(small_world))
    monkeypatch.setenv("PQL_OUT_DIR", str(tmp_path / "out"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    root = NOTEBOOK.parents[1]
    monkeypatch.setenv("PYTHONPATH", f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    out = tmp_path / "out"
    assert (out / "report.html").exists() and (out / "milestones.yaml").exists()
    assert (out / "revalidation" / "revalidation.html").exists()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
