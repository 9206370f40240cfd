"""Benchmark the data contract: ``load_dataset`` on N synthetic events.

Run: ``.venv/bin/python bench/bench_contract.py --events 10000000 [--format parquet|csv|jsonl]``

The events are made here with numpy (no generator needed): 1 event in 10 per user has an account
id, a third carry JSON properties, every row has a message id and 0.1 % are exact duplicates.
Prints the seconds spent writing the file and loading it, and the rows kept per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_events(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` events of ``n // 50`` users over 180 days, with properties and duplicates."""
    rng = np.random.default_rng(seed)
    n_users = max(n // 50, 1)
    users = rng.integers(0, n_users, n)
    names = np.array(["login", "page_view", "report_created", "teammate_invited", "api_call",
                      "integration_connected", "usage_limit_hit", "dashboard_shared"])
    start = np.datetime64("2024-01-01T00:00:00", "us")
    ts = start + rng.integers(0, 180 * 86_400, n).astype("timedelta64[s]")
    message_id = np.arange(n)
    dup = rng.random(n) < 0.001
    message_id[dup] = np.maximum(message_id[dup] - 1, 0)  # re-sent messages
    user_ids = pd.Series(users).map("u{}".format) if n <= 200_000 else pd.Series(
        np.char.add("u", users.astype(str)))
    frame = pd.DataFrame({
        "user_id": user_ids.astype("string"),
        "account_id": pd.Series(np.char.add("a", (users // 5).astype(str))).astype("string").where(
            rng.random(n) < 0.1),
        "event": pd.Series(names[rng.integers(0, len(names), n)]).astype("string"),
        "timestamp": ts,
        "message_id": pd.Series(np.char.add("m", message_id.astype(str))).astype("string"),
        "source": "product",
        "properties": pd.Series(np.where(rng.random(n) < 0.33, '{"plan": "pro", "n": 3}', None)
                                ).astype("string"),
    })
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--format", choices=("parquet", "csv", "jsonl"), default="parquet")
    args = parser.parse_args()

    from features.contract import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        t0 = time.perf_counter()
        events = make_events(args.events)
        path = data_dir / f"events.{args.format}"
        if args.format == "parquet":
            events.to_parquet(path, index=False)
        elif args.format == "csv":
            events.to_csv(path, index=False)
        else:
            events.assign(timestamp=events["timestamp"].astype(str)).to_json(path, orient="records", lines=True)
        made = time.perf_counter() - t0
        del events

        t0 = time.perf_counter()
        ds = load_dataset(data_dir)
        took = time.perf_counter() - t0
        rep = ds.report.tables["events"]
        print(f"events={args.events:,} format={args.format} make+write={made:.1f}s "
              f"load_dataset={took:.1f}s ({rep.rows_read / took:,.0f} rows/s) "
              f"kept={rep.rows_kept:,} duplicates={rep.duplicates:,} "
              f"quarantined={rep.quarantined_total:,} level={ds.report.level}")


if __name__ == "__main__":
    main()
