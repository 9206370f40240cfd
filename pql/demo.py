"""`pql demo`: the whole system end to end on a generated world, on the embedded default engine.

generate → validate → resolve users to accounts → discover milestones → train and register →
score every account → print the top accounts with their reasons. Each stage calls the same public
function its own command uses, so the demo exercises the real code paths.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table


def run_demo(out: Path, *, accounts: int = 3000, seed: int = 42, top: int = 10,
             console: Console | None = None) -> dict:
    """Run every stage on a fresh synthetic world under ``out`` and return a summary.

    Parameters
    ----------
    out:
        Working folder: ``out/world`` (data), ``out/discovery``, ``out/scores.csv``; the MLflow
        store is ``sqlite:///<out>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` is set.
    accounts, seed:
        Size and seed of the synthetic world.
    top:
        How many of the highest-scoring accounts to print.
    """
    from features.contract import load_dataset, validate
    from features.synthetic import generate_world
    from serving.backfill import backfill
    from serving.batch import score_accounts
    from training.discover import discover, write_discovery
    from training.report import discovery_summary_lines
    from training.train import train_from_data_dir

    # Wide enough that tables stay readable when the output is piped to a log (CI, make).
    console = console or Console(width=None if Console().is_terminal else 140)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    world = out / "world"
    timings: dict[str, float] = {}

    def stage(name: str):
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    t = stage(f"1/6 Generate a product-led world ({accounts:,} accounts, seed {seed})")
    summary = generate_world(world, n_accounts=accounts, seed=seed, progress=True)
    console.print(summary)
    timings["generate"] = time.perf_counter() - t

    t = stage("2/6 Validate the data against the contract; resolve users to accounts")
    console.print(validate(world, resolve=True).to_text())
    dataset = load_dataset(world)
    timings["validate"] = time.perf_counter() - t

    t = stage("3/6 Discover the milestones that separate converters from non-converters")
    discovery = discover(dataset, progress=True)
    disc_dir = write_discovery(discovery, out / "discovery")
    for line in discovery_summary_lines(discovery):
        console.print(line, markup=False, highlight=False)  # "[adoption]" is text, not a rich style
    console.print(f"recommended milestones written to {out / 'discovery' / 'milestones.yaml'}")
    timings["discover"] = time.perf_counter() - t

    t = stage("4/6 Train, calibrate, compare with baselines, register in MLflow")
    result = train_from_data_dir(world, out / "discovery" / "milestones.yaml", tracking_uri=tracking_uri)
    timings["train"] = time.perf_counter() - t

    t = stage("5/6 Score every account with the champion model")
    batch = score_accounts(world, tracking_uri=tracking_uri)
    scores, unscored = batch.scores, batch.unscored
    scores_path = out / "scores.csv"
    scores.to_csv(scores_path, index=False)
    timings["score"] = time.perf_counter() - t

    scored = scores[scores["probability"].notna()].sort_values("score", ascending=False).head(top)
    table = Table(title=f"Top {len(scored)} accounts ready to buy", show_lines=True)
    for col in ("account", "score", "tier", "top reasons"):
        table.add_column(col)
    for _, row in scored.iterrows():
        table.add_row(str(row["account_id"]), f"{row['score']:.0f}", str(row["tier"]), str(row["top_reasons"]))
    console.print(table)
    console.print(f"all scores: {scores_path}")
    if len(unscored):
        console.print(f"{len(unscored)} accounts could not be scored (listed with reasons in {out / 'unscored.csv'})")
        unscored.to_csv(out / "unscored.csv", index=False)
    t = stage("6/6 Load the events into the service's event store (what the webhooks would have sent)")
    store_url = f"sqlite:///{out / 'events.db'}"
    loaded = backfill(world, store_url)
    console.print(f"{loaded.stored:,} new rows in {store_url} ({loaded.track_calls:,} events, "
                  f"{loaded.group_calls:,} user-account links)")
    timings["event store"] = time.perf_counter() - t
    console.print(f"timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    console.rule("[bold]Next")
    console.print(f"MLflow UI:     .venv/bin/mlflow ui --backend-store-uri {tracking_uri}")
    console.print(f"Start service: PQL_API_TOKEN=secret PQL_WRITE_KEY=wk .venv/bin/pql serve "
                  f"--tracking-uri {tracking_uri} --store-url {store_url}")
    best = scored["account_id"].iloc[0] if len(scored) else "ACCOUNT_ID"
    # The generated world ends in the past; without as_of the service scores "now", when every
    # account has long gone quiet. Ask for the same cutoff the batch scores used.
    as_of = pd.Timestamp(batch.cutoff).strftime("%Y-%m-%dT%H:%M:%S")
    console.print("Score one:     curl -s -H 'Authorization: Bearer secret' -H 'content-type: application/json' "
                  f"-d '{{\"accounts\": [{{\"account_id\": \"{best}\", \"as_of\": \"{as_of}\"}}]}}' "
                  "http://127.0.0.1:3000/score")
    console.print(f"               (as_of = the batch cutoff: the generated world's events end there; "
                  "leave it out to score as of now)")
    console.print(f"Explain one:   .venv/bin/pql explain {world} {best} --tracking-uri {tracking_uri} "
                  f"--html {out / 'explain.html'}")
    return {"timings": timings, "scores": str(scores_path), "disc_dir": str(disc_dir), "result": result}
