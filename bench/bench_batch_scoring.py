"""Benchmark batch scoring (issue 8): 100,000 accounts scored with reasons and next-best milestones.

``serving.batch.score_accounts`` exactly as ``pql score`` calls it, end to end and repeated in one
process (best of ``--repeat``; the machine has 2 shared cores, so the load average is printed):
load the model from the registry, load and validate the data directory, identity resolution,
eligible accounts, point-in-time features with the serving pipeline, scoring with reasons
(probability, tier, grouped ``pred_contrib``, three worded reasons, next-best milestone by
re-scoring, milestones reached), MLflow distribution log, HubSpot format, then the atomic CSV
write. Per-stage wall times come from ``BatchScores.timings``. Target: 100,000 accounts scored
with reasons in at most 60 s on 2 cores.

Usage::

    .venv/bin/pql generate --out /tmp/w100k --accounts 100000 --seed 5 --quiet
    PYTHONPATH=. .venv/bin/python bench/bench_batch_scoring.py --world /tmp/w100k \\
        --tracking-uri sqlite:////tmp/pqlrun/mlflow.db

The world is generated (``features.synthetic.generate_world``) when ``--world`` does not exist.
The registry must hold ``pql-account-scorer@champion``; with ``--train-accounts N`` a model is
first trained on a small world of N accounts (``training.train.train_from_data_dir``).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("/tmp/pql-bench-world"))
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    ap.add_argument("--model", default=None, help="model URI; default the champion")
    ap.add_argument("--train-accounts", type=int, default=0,
                    help="first train and register a model on a world of this many accounts")
    ap.add_argument("--repeat", type=int, default=2, help="end-to-end runs in this process")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from features.synthetic import generate_world

    if not (args.world / "events.parquet").is_file():
        t = time.perf_counter()
        generate_world(args.world, n_accounts=args.accounts, seed=args.seed)
        print(f"generated {args.accounts:,} accounts in {time.perf_counter() - t:.1f}s")
    if args.train_accounts:
        from training.train import TrainConfig, train_from_data_dir

        small = Path(tempfile.mkdtemp(prefix="pql-bench-train-"))
        generate_world(small, n_accounts=args.train_accounts, seed=3)
        t = time.perf_counter()
        train_from_data_dir(small, small / "milestones.yaml", tracking_uri=args.tracking_uri,
                            config=TrainConfig(progress=False, baselines=False))
        print(f"trained on {args.train_accounts:,} accounts in {time.perf_counter() - t:.1f}s")

    from serving.batch import score_accounts, write_scores

    print(f"world {args.world}; cpu count {os.cpu_count()}; load avg {_load()}", flush=True)
    runs = []
    for i in range(args.repeat):
        load_before = _load()
        t = time.perf_counter()
        result = score_accounts(args.world, model_uri=args.model, tracking_uri=args.tracking_uri,
                                fmt="hubspot", include_converted=True)
        with tempfile.TemporaryDirectory() as tmp:
            t_write = time.perf_counter()
            write_scores(result.scores, Path(tmp) / "scores.csv")
            result.timings["write CSV"] = time.perf_counter() - t_write
        total = time.perf_counter() - t
        runs.append((total, result.timings))
        print(f"run {i + 1}: end to end {total:.1f} s for {len(result.scores):,} scored + "
              f"{len(result.unscored):,} unscorable accounts; load avg {load_before} -> {_load()}; "
              f"peak RSS {_rss_gb():.1f} GB", flush=True)
        for name, sec in result.timings.items():
            print(f"    {name:<24} {sec:7.1f} s")
        n_scored = len(result.scores)
        del result
    best, stages = min(runs, key=lambda r: r[0])
    print(f"best of {len(runs)}: {best:.1f} s end to end ({', '.join(f'{r[0]:.1f}' for r in runs)} s)")
    scoring = min(r[1]["scoring with reasons"] for r in runs)
    ok = best <= 60 * max(n_scored, 1) / 100_000
    print(f"target: 100,000 accounts scored with reasons <= 60 s on 2 cores -> end to end {best:.1f} s "
          f"(scoring with reasons alone {scoring:.1f} s) for {n_scored:,} accounts: "
          f"{'met' if ok else 'NOT met'}")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
