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
