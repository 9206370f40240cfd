"""Small hand-built snapshot tables for the training tests (no generator, no pipeline needed).

The label is drawn from a known logistic model of the milestone flags, so tests can check
that training recovers the planted order; raw activity is mostly noise (the activity trap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.spec import MilestoneSpec

#: Planted log-odds effect of each milestone (strongest first).
PLANTED = {"invited_teammate": 1.8, "connected_integration": 1.4, "created_dashboard": 1.0,
           "shared_report": 0.6, "viewed_docs": 0.0, "changed_theme": 0.0}


@dataclass
class FakeFeatureSet:
    frame: pd.DataFrame
    manifest: pd.DataFrame


def fake_spec(points: dict[str, float] | None = None, horizon_days: int = 30,
              warning_sign: bool = False) -> MilestoneSpec:
    """Milestone file for :data:`PLANTED`; default points are deliberately naive (all equal).
    ``warning_sign`` adds the ``cancelled`` warning sign that ``fake_feature_set`` can plant."""
    points = points or {m: 10.0 for m in PLANTED}
    warnings = [{"name": "cancelled", "label": "cancelled the trial", "event": "trial_cancelled"}]
    return MilestoneSpec.model_validate({
        "warning_signs": warnings if warning_sign else [],
        "settings": {"horizon_days": horizon_days},
        "milestones": [{"name": m, "category": "adoption", "label": m.replace("_", " "), "event": m,
                        "points": points[m]} for m in PLANTED],
        "sequences": [{"name": "invite_then_dashboard", "steps": ["invited_teammate", "created_dashboard"],
                       "within_days": 14, "points": 5.0}],
    })


def fake_feature_set(n_accounts: int = 800, n_cutoffs: int = 12, seed: int = 0, base_logit: float = -3.2,
                     every_days: int = 7, warning_effect: float | None = None) -> FakeFeatureSet:
    """A FeatureSet-like object: ``frame`` (keys, label, features) and ``manifest``.

    ``warning_effect`` plants a ``cancelled`` warning sign (``ws__cancelled__*``, seen by ~20% of
    rows) with that log-odds effect; its draws come after every other one, so the rest of the
    table is the same as without it.
    """
    rng = np.random.default_rng(seed)
    cutoffs = pd.date_range("2024-01-07", periods=n_cutoffs, freq=f"{every_days}D")
    n = n_accounts * n_cutoffs
    acct = np.repeat(np.arange(n_accounts), n_cutoffs)
    step = np.tile(np.arange(n_cutoffs), n_accounts)
    engagement = rng.normal(size=n_accounts)[acct]
    busy = rng.gamma(2.0, 10.0, size=n_accounts)[acct]
    cols: dict[str, np.ndarray] = {}
    logit = np.full(n, base_logit)
    for i, (m, effect) in enumerate(PLANTED.items()):
        p = 1 / (1 + np.exp(-(engagement + 0.08 * step - 0.4 * i)))
        reached = (rng.random(n) < p).astype(float)
        cols[f"ms__{m}__reached"] = reached
        cols[f"ms__{m}__count"] = reached * rng.poisson(3, n)
        cols[f"ms__{m}__days_since_last"] = np.where(reached > 0, rng.integers(0, 60, n), np.nan)
        logit += effect * reached
    seq = cols["ms__invited_teammate__reached"] * cols["ms__created_dashboard__reached"] * (rng.random(n) < 0.6)
    cols["seq__invite_then_dashboard__completed"] = seq.astype(float)
    employees = rng.lognormal(4, 1, size=n_accounts)[acct]
    industry = rng.choice(["saas", "retail", "finance"], size=n_accounts)[acct]
    logit += 0.3 * (np.log(employees) - 4) + np.where(industry == "finance", 0.3, 0.0)
    cols["acct__active_users_30d"] = rng.poisson(1 + 2 * (engagement > 0), n).astype(float)
    cols["fit__employees"] = employees
    cols["dg__webinar_attended__decayed"] = rng.exponential(0.2, n)
    cols["raw__logins"] = rng.poisson(busy).astype(float)
    cols["raw__all_events"] = cols["raw__logins"] + rng.poisson(busy * 3)
    if warning_effect is not None:
        warn = np.random.default_rng(seed + 7919)  # its own stream: the label draws stay the same
        seen = (warn.random(n) < 0.2).astype(float)
        cols["ws__cancelled__reached"] = seen
        cols["ws__cancelled__count"] = seen * (1 + warn.poisson(0.5, n))
        cols["ws__cancelled__days_since_last"] = np.where(seen > 0, warn.integers(0, 30, n), np.nan)
        logit += warning_effect * seen
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"account_id": [f"a{a:05d}" for a in acct], "cutoff": cutoffs[step], "label": label, **cols})
    frame.insert(len(frame.columns) - 3, "fit__industry", pd.Categorical(industry))
    manifest = pd.DataFrame({"name": [c for c in frame.columns if c not in ("account_id", "cutoff", "label")]})
    manifest["family"] = manifest["name"].map(_family)
    manifest["milestone"] = manifest["name"].map(
        lambda c: c.split("__")[1] if c.startswith(("ms__", "seq__", "ws__")) else None)
    manifest["description"] = manifest["name"]
    manifest["dtype"] = [str(frame[c].dtype) for c in manifest["name"]]
    return FakeFeatureSet(frame, manifest)


def _family(c: str) -> str:
    return {"ms": "milestone", "seq": "sequence", "ws": "warning", "acct": "account", "fit": "fit",
            "dg": "demand_gen", "raw": "activity"}[c.split("__")[0]]
