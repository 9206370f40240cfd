"""Benchmark: generating synthetic worlds (target: 10 million events in under 2 minutes on 2 cores).

Each size runs in a fresh child process, so the peak resident memory reported is that of one
generation (``ru_maxrss`` of the child), not of the benchmark script.

    .venv/bin/python bench/bench_generate.py [--accounts 5000 30000 100000] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from features.synthetic import generate_world
t0 = time.perf_counter()
summary = generate_world(Path(sys.argv[1]), n_accounts=int(sys.argv[2]), seed=int(sys.argv[3]))
summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
summary["events_mb"] = round((Path(sys.argv[1]) / "events.parquet").stat().st_size / 2**20, 1)
print(json.dumps(summary))
"""


def run_one(out: Path, n_accounts: int, seed: int) -> dict:
    """Generate one world in a child process; return its summary with time and peak memory."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(out), str(n_accounts), str(seed)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"generation of {n_accounts} accounts failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, nargs="+", default=[5000, 30000, 100000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Keep worlds here (default: a temp dir).")
    args = parser.parse_args(argv)
    base = args.out or Path(tempfile.mkdtemp(prefix="bench_generate_"))
    print("| accounts | users | events | conversions | wall time | events/s | peak RSS | events.parquet |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.accounts:
        s = run_one(base / f"world_{n}", n, args.seed)
        rate = s["events"] / s["wall_seconds"]
        print(f"| {s['accounts']:,} | {s['users']:,} | {s['events']:,} | {s['conversions']:,} "
              f"({s['conversion_rate']:.1%}) | {s['wall_seconds']:.1f} s | {rate / 1e3:,.0f}k | "
              f"{s['peak_rss_mb'] / 1024:.2f} GB | {s['events_mb']:,.0f} MB |", flush=True)
    print(f"(worlds in {base})")


if __name__ == "__main__":
    main()
