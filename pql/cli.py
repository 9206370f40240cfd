"""`pql`: one command line for the whole system.

Every command is a thin wrapper over a public function that tests call directly. Heavy
libraries (mlflow, bentoml, lightgbm, spark) are imported inside the commands so that
``pql --help`` answers instantly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="pql",
    help="PQL Milestones: find the product milestones that predict conversion, score accounts, explain why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no traceback) and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# --- features/ ------------------------------------------------------------------------------
# (commands: generate, validate, features) — see features/


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Directory to write the world into (created if missing).")],
    accounts: Annotated[int, typer.Option(help="Number of accounts (about 3.5 users and ~150 events each).")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes identical files.")] = 0,
    start: Annotated[str, typer.Option(help="First day of the simulated period (UTC).")] = "2025-01-01",
    months: Annotated[int, typer.Option(help="Length of the period in months (at least 4).")] = 18,
    segment: Annotated[bool, typer.Option(help="Also write events_segment.jsonl (Segment-spec messages).")] = False,
    quiet: Annotated[bool, typer.Option(help="Do not print progress.")] = False,
) -> None:
    """Generate a synthetic product-led SaaS world with a known hidden conversion mechanism."""
    from features.synthetic import generate_world

    if accounts < 1:
        fail(f"--accounts must be at least 1, got {accounts}")
    try:
        summary = generate_world(out, n_accounts=accounts, seed=seed, start=start, months=months,
                                 progress=not quiet, segment_export=segment)
    except (ValueError, OSError) as e:
        fail(f"cannot generate the world in {out}: {e}")
    typer.echo(f"wrote {summary['accounts']} accounts, {summary['users']} users, {summary['events']} events, "
               f"{summary['conversions']} conversions ({summary['conversion_rate']:.1%}) to {out} "
               f"in {summary['seconds']}s; the hidden mechanism is in {Path(out) / 'truth.json'}")


@app.command()
def validate(
    data_dir: Annotated[Path, typer.Argument(help="Directory holding events/users/accounts/conversions "
                                                  "(.parquet, .csv or .jsonl).")],
    quarantine: Annotated[bool, typer.Option(help="Write bad rows to DATA_DIR/quarantine/<table>.csv.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Check a data directory against the data contract and print a summary."""
    import json

    from features.contract import ContractError
    from features.contract import validate as validate_data

    try:
        report = validate_data(data_dir, quarantine=quarantine)
    except ContractError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{data_dir}: {e}")
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())


# --- training/ ------------------------------------------------------------------------------
# (commands: discover, revalidate, train) — see training/


# --- serving/ -------------------------------------------------------------------------------
# (commands: serve, score, explain, feedback-report) — see serving/


# --- end to end -----------------------------------------------------------------------------
@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder for the world, discovery, MLflow store and scores.")] = Path("demo"),
    accounts: Annotated[int, typer.Option(min=100, help="Accounts in the generated world.")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed of the generated world (same seed, same world).")] = 42,
    top: Annotated[int, typer.Option(min=1, help="How many top accounts to print.")] = 10,
) -> None:
    """Run the whole system end to end on a generated world (embedded DuckDB engine, local MLflow)."""
    from pql.demo import run_demo

    run_demo(out, accounts=accounts, seed=seed, top=top)


if __name__ == "__main__":  # pragma: no cover
    app()
