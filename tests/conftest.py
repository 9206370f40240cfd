"""Shared fixtures: small generated worlds, made once per test session (tests never download)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """A small synthetic world (events, users, accounts, conversions, truth.json, milestones.yaml).

    Read-only for tests: copy it (``shutil.copytree``) before writing into it.
    """
    from features.synthetic import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_accounts=600, seed=7)
    return out
