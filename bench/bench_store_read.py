"""Benchmark of the event store's whole-store read, the first step of every cache warm-up.

Run: ``.venv/bin/python bench/bench_store_read.py --store-url sqlite:////tmp/store.db [--world DIR]``.
With ``--world`` the store is first filled from that data directory with ``pql ingest``'s own
function (``serving.backfill.backfill``; idempotent, so a filled store is reused). Prints the
best of ``--repeat`` reads of every event before ``--before`` and the events per second.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> dict:
    import pandas as pd

    from serving.store import EventStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store-url", required=True)
    ap.add_argument("--world", type=Path, default=None, help="fill the store from this data directory first")
    ap.add_argument("--before", default="2100-01-01", help="read events before this time (default: all)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.world is not None:
        from serving.backfill import backfill

        t0 = time.perf_counter()
        result = backfill(args.world, args.store_url)
        print(f"filled the store: {result.stored:,} new of {result.messages:,} messages "
              f"in {time.perf_counter() - t0:.1f} s")
    store = EventStore(args.store_url)
    before = pd.Timestamp(args.before).to_pydatetime()
    best, n = float("inf"), 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        n = len(store.events(None, before=before))
        best = min(best, time.perf_counter() - t0)
    print(f"EventStore.events(all accounts): {n:,} events in {best:.2f} s (best of {args.repeat}), "
          f"{n / best:,.0f} events/s; load average {os.getloadavg()[0]:.2f}")
    return {"events": n, "seconds": best}


if __name__ == "__main__":
    main()
