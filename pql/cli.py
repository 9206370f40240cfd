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
# (command: demo)


if __name__ == "__main__":  # pragma: no cover
    app()
