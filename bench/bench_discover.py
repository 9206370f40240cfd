"""Benchmark: milestone discovery on 10 million events with 200 event types (target <= 60 s).

The data are built in memory with numpy/pyarrow (no files): 20,000 accounts, ~3 users each,
200 event types with Zipf-like popularity, one low-cardinality property on a fifth of them,
and 5 planted drivers. Only ``discover()`` is timed.

    .venv/bin/python bench/bench_discover.py [--events 10000000] [--accounts 20000]

With ``--world DIR`` (one or more generated worlds, ``pql generate``) it measures the acceptance
of issue 5 instead: share of ``truth.json`` drivers recommended, non-drivers and noise
recommended, and whether re-validation flags the fading driver.

    .venv/bin/python bench/bench_discover.py --world /tmp/w11 /tmp/w0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa

from training.discover import discover


def build(n_events: int, n_accounts: int, n_types: int = 200, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    day_us = 86_400_000_000
    t0 = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
    start = t0 + (rng.uniform(0, 360, n_accounts) * day_us).astype(np.int64)
    n_users = rng.integers(1, 6, n_accounts)
    # Drivers: the rare event types 150..154; accounts with high value do them more and convert more.
    value = rng.normal(0, 1, n_accounts)
    popularity = 1.0 / np.arange(1, n_types + 1) ** 0.8
    popularity /= popularity.sum()
    acct = rng.integers(0, n_accounts, n_events)
    etype = rng.choice(n_types, n_events, p=popularity)
    is_driver = (etype >= 150) & (etype < 155)
    keep_driver = rng.random(n_events) < 1 / (1 + np.exp(-(value[acct] * 1.5)))
    etype = np.where(is_driver & ~keep_driver, etype + 5, etype)
    offset = (rng.exponential(25, n_events) * day_us).astype(np.int64)
    ts = start[acct] + offset
    user = (rng.random(n_events) * n_users[acct]).astype(np.int64)
    did = np.zeros((n_accounts, 5), bool)
    drv = (etype >= 150) & (etype < 155)
    did[acct[drv], etype[drv] - 150] = True
    logit = -2.0 + did.sum(1) * 0.8
    converts = rng.random(n_accounts) < 1 / (1 + np.exp(-logit))
    conv_at = start + (rng.uniform(5, 60, n_accounts) * day_us).astype(np.int64)

    names = np.array([f"event_{i:03d}" for i in range(n_types)], dtype=object)
    acc_names = np.array([f"acct_{i:06d}" for i in range(n_accounts)], dtype=object)
    # Properties: every 5th event type has a "plan" property with 4 values.
    values = np.array(['{"plan": "free"}', '{"plan": "team"}', '{"plan": "business"}', '{"plan": "enterprise"}'],
                      dtype=object)
    has_prop = etype % 5 == 0
    prop_idx = np.where(has_prop, rng.integers(0, 4, n_events), -1)
    user_codes = acct * 8 + user
    table = pa.table({
        "user_id": pa.DictionaryArray.from_arrays(pa.array(user_codes.astype(np.int32)),
                                                  pa.array([f"u{i}" for i in range(n_accounts * 8)])).cast(pa.string()),
        "account_id": pa.DictionaryArray.from_arrays(pa.array(acct.astype(np.int32)), pa.array(acc_names)).cast(pa.string()),
        "event": pa.DictionaryArray.from_arrays(pa.array(etype.astype(np.int32)), pa.array(names)).cast(pa.string()),
        "timestamp": pa.array(ts.astype("datetime64[us]")),
        "message_id": pa.nulls(n_events, pa.string()),
        "source": pa.array(np.full(n_events, "product", dtype=object), pa.string()),
        "properties": pa.DictionaryArray.from_arrays(
            pa.array(prop_idx.astype(np.int32), mask=prop_idx < 0), pa.array(values)).cast(pa.string()),
    })
    events = table.to_pandas()
    accounts = pd.DataFrame({"account_id": acc_names, "created_at": start.astype("datetime64[us]")})
    conversions = pd.DataFrame({"account_id": acc_names[converts],
                                "converted_at": conv_at[converts].astype("datetime64[us]")})
    return SimpleNamespace(events=events, users=None, accounts=accounts, conversions=conversions)


def acceptance(world: Path) -> dict:
    """Discover (defaults) and re-validate one generated world; compare with its truth.json."""
    from features.contract import load_dataset
    from training.revalidate import revalidate

    truth = json.loads((world / "truth.json").read_text())
    ds = load_dataset(world)
    t = time.perf_counter()
    d = discover(ds)
    elapsed = time.perf_counter() - t
    rec = set(d.candidates.loc[d.candidates["recommended"], "event"])
    drivers, non, noise = (set(truth[k]) for k in ("driver_events", "non_drivers", "noise_events"))
    r = revalidate(ds, d.spec)
    lift_flags = r.flags[r.flags["flag"] == "lift_below_threshold"]
    fading = {m.name for m in d.spec.milestones if set(m.events) & set(truth["fading_events"])}
    return {"world": world.name, "drivers": f"{len(rec & drivers)}/{len(drivers)}",
            "driver_share": len(rec & drivers) / len(drivers),
            "non_driver_share": len(rec - drivers) / max(1, len(rec)), "non_drivers": sorted(rec & non),
            "noise": sorted(rec & noise), "fading_flagged": sorted(set(lift_flags["milestone"]) & fading),
            "other_lift_flags": sorted(set(lift_flags["milestone"]) - fading), "seconds": round(elapsed, 1),
            "selection": d.summary["selection"], "start_label": d.summary["start_label"],
            "warning_signs": d.summary["warning_sign_events"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--accounts", type=int, default=20_000)
    ap.add_argument("--world", type=Path, nargs="*", help="measure acceptance on generated worlds instead")
    args = ap.parse_args()
    if args.world:
        for w in args.world:
            print(acceptance(w))
        return
    t = time.perf_counter()
    ds = build(args.events, args.accounts)
    print(f"built {len(ds.events):,} events, {ds.events['event'].nunique()} event types, "
          f"{len(ds.accounts):,} accounts in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    d = discover(ds, progress=True)
    elapsed = time.perf_counter() - t
    s = d.summary
    print(f"discover: {elapsed:.1f}s  (target <= 60 s)  cohort {s['S']:,}+{s['F']:,} accounts, "
          f"{s['items']:,} items, {s['candidates_evaluated']:,} candidates evaluated, {s['candidates_tested']:,} tested")
    print("recommended:", [m.name for m in d.spec.milestones], "(planted: event_150..event_154)")


if __name__ == "__main__":
    main()
