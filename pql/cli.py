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
    accounts: Annotated[int, typer.Option(help="Number of accounts (about 2.6 users and 110 events each).")] = 5000,
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


@app.command(epilog="Exit codes: 0 the data loads (warnings may be printed); 2 a file breaks the "
                     "contract (the error names the file and the column). Full contract: "
                     "docs/data-contract.md.")
def validate(
    data_dir: Annotated[Path, typer.Argument(help="Data directory: events.* (required), users.*, "
                                                  "accounts.*, conversions.* (each .parquet, .csv "
                                                  "or .jsonl).")],
    quarantine: Annotated[bool, typer.Option(help="Write bad rows to DATA_DIR/quarantine/<table>.csv "
                                                  "(with row_number and reason); --no-quarantine "
                                                  "only counts them.")] = True,
    identity: Annotated[bool, typer.Option(help="Also resolve users to accounts and show the "
                                                "identity-resolution report (--no-identity: faster).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of text.")] = False,
) -> None:
    """Check a data directory against the data contract and print a summary.

    DATA_DIR holds one file per table: <table>.parquet, .csv or .jsonl.
    Columns (+ optional):

    * events: user_id, event, timestamp; +account_id, message_id, source, properties
    * users: user_id, email, created_at; +account_id, company, invited_by
    * accounts: account_id; +domain, domain_aliases, name, created_at, fit attributes
    * conversions: account_id, converted_at (needed to train a model)

    Only events is required. events.jsonl may instead be a Segment/RudderStack export (track, page, screen, identify, group). Timestamps: ISO-8601 (naive means UTC) or epoch seconds/milliseconds.

    Bad rows are written to DATA_DIR/quarantine/<table>.csv with row_number and reason, and the rest loads; duplicates are dropped. Everything is counted in the summary: rows read/kept/quarantined per table with reasons, data level, converting accounts, users not linkable to an account (with the identity-resolution report), and warnings.
    """
    import json

    from features.contract import ContractError
    from features.contract import validate as validate_data

    try:
        report = validate_data(data_dir, quarantine=quarantine, resolve=identity)
    except ContractError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{data_dir}: {e}")
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())


@app.command()
def features(
    data_dir: Annotated[Path, typer.Argument(help="Data directory (events.*, accounts.*, conversions.*, users.*).")],
    milestones: Annotated[Path, typer.Option(help="Milestone file (milestones.yaml).")] = Path("milestones.yaml"),
    cutoffs: Annotated[Optional[str], typer.Option(
        help="Comma-separated cutoff dates (e.g. 2024-03-01,2024-04-01); default: the milestone file's schedule.")] = None,
    out: Annotated[Path, typer.Option(help="Output parquet; the manifest is written next to it "
                                           "(<name>.manifest.csv).")] = Path("features.parquet"),
    engine: Annotated[str, typer.Option(help="duckdb (default) or pyspark.")] = "duckdb",
    identity: Annotated[bool, typer.Option(help="Resolve users to accounts first (fills events' missing "
                                                "account_id).")] = True,
) -> None:
    """Compute point-in-time snapshot features (one row per account and cutoff) with labels."""
    import warnings

    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from features.contract import ContractError, load_dataset
    from features.manifest import write_feature_set
    from features.pipeline import compute_features
    from features.spec import SpecError, load_milestones

    console = Console(stderr=True)
    try:
        spec = load_milestones(milestones)
    except SpecError as e:
        fail(str(e))
    try:
        cut_list = [pd.Timestamp(c.strip()) for c in cutoffs.split(",") if c.strip()] if cutoffs else None
    except ValueError as e:
        fail(f"--cutoffs: {e}")
    with console.status("loading data"):
        try:
            ds = load_dataset(data_dir)
        except ContractError as e:
            fail(str(e))
        except OSError as e:
            fail(f"{data_dir}: {e}")
    user_accounts = resolution = None
    if identity and ds.users is not None and len(ds.users):
        from features.identity import resolve_accounts

        with console.status("resolving users to accounts"):
            resolution = resolve_accounts(ds.users, ds.events, ds.accounts)
            user_accounts = resolution.user_accounts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            fs = compute_features(ds, spec, cut_list, engine=engine, user_accounts=user_accounts, progress=True)
        except ValueError as e:
            fail(str(e))
    for w in caught:
        if "milestones whose events never occur" in str(w.message):
            console.print(f"[yellow]warning:[/] {w.message}")
    path, man = write_feature_set(fs, out)
    if resolution is not None:
        # The user -> account table and its report travel with the features they shaped (issue 4).
        from features.identity import write_resolution

        ua_path, report_path = write_resolution(resolution, Path(out).resolve().parent)
        typer.echo(f"identity resolution: {report_path} ({ua_path.name})")
    table = Table(title="snapshots per cutoff")
    for col in ("cutoff", "rows", "positives"):
        table.add_column(col, justify="right")
    for r in fs.rows_per_cutoff().itertuples():
        table.add_row(str(r.cutoff.date()), f"{r.rows:,}", f"{r.positives:,}")
    Console().print(table)
    typer.echo(f"wrote {len(fs.frame):,} rows x {len(fs.manifest)} features to {path} (manifest: {man})")


# --- training/ ------------------------------------------------------------------------------
# (commands: discover, revalidate, train) — see training/

@app.command(epilog="Examples:\n\n"
             "  pql discover data --out discovery\n\n"
             "  pql discover data --horizon-days 270 --windows 14,28,56,84 --ignore-properties '*_id' "
             "--categories categories.yaml\n\n"
             "Lists take repeated options or commas (--windows 7,14,30,any). categories.yaml maps name "
             "patterns to categories, first match wins, before the built-in SaaS patterns: "
             "'tma_submitted: activation', '\"cma_*\": adoption' (end with '\"*\": adoption' to switch "
             "the built-in patterns off).")
def discover(
    data_dir: Annotated[Path, typer.Argument(help="Data directory (events, users, accounts, conversions).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for candidates.csv, sequences.csv, "
                                      "milestones.yaml and report.html.")] = Path("discovery"),
    horizon_days: Annotated[int, typer.Option(help="Non-converters must be observed this many days to count; "
                                              "also written as settings.horizon_days.")] = 30,
    min_counts: Annotated[Optional[list[str]], typer.Option(
        "--min-counts", metavar="N,...", show_default="1,2,3,5,10",
        help="Candidate thresholds 'at least N times' (1-100).")] = None,
    windows: Annotated[Optional[list[str]], typer.Option(
        "--windows", metavar="D,...", show_default="7,14,30,any",
        help="Candidate windows 'within D days of the account's start'; 'any' = any time. Keep them no "
        "longer than your earliest snapshot if milestones must be reachable by then.")] = None,
    min_users: Annotated[Optional[list[str]], typer.Option(
        "--min-users", metavar="U,...", show_default="1,2,3",
        help="Candidate thresholds 'by at least U users' (1-10).")] = None,
    prior_k: Annotated[float, typer.Option(help="Pseudo-count of the smoothed odds ratio.")] = 1.0,
    max_milestones: Annotated[int, typer.Option(help="Recommend at most this many milestones.")] = 10,
    min_lift: Annotated[float, typer.Option(help="A milestone needs at least this lift (converter rate / "
                                            "non-converter rate) and q < 0.05.")] = 1.25,
    properties: Annotated[Optional[list[str]], typer.Option(
        "--properties", metavar="KEY,...", show_default="any key with few values",
        help="Only these property keys yield candidates (globs; 'key' or 'event.key').")] = None,
    ignore_properties: Annotated[Optional[list[str]], typer.Option(
        "--ignore-properties", metavar="KEY,...", help="Property keys that never yield candidates, e.g. ids that stand for "
        "something else ('*_id', 'cma_submitted.due_day').")] = None,
    ignore_events: Annotated[Optional[list[str]], typer.Option(
        "--ignore-events", metavar="EVENT,...", help="Events never tested as candidates (globs); they still count for team size "
        "and active days.")] = None,
    categories: Annotated[Optional[Path], typer.Option(
        "--categories", metavar="FILE", help="YAML file of name pattern -> category (activation, adoption, collaboration, "
        "expansion); tried before the built-in patterns.")] = None,
    max_property_values: Annotated[int, typer.Option(
        help="A property key with more distinct values yields no candidates.")] = 20,
    start_label: Annotated[Optional[str], typer.Option(
        show_default="sign-up when accounts start at their first user's sign-up, else the account's start",
        help="What 'within D days' counts from, in labels (e.g. 'course start').")] = None,
) -> None:
    """Find the milestones that separate converters from non-converters; write milestones.yaml.

    Also says how many candidates qualified, why those left out were, and warning signs.
    """
    from training.discover import (DiscoveryError, discover as run_discover, load_category_patterns,
                                   load_data_dir, parse_grid, parse_names, write_discovery)

    try:
        grid = {k: v for k, v in (("min_counts", parse_grid(min_counts, "--min-counts")),
                                  ("windows", parse_grid(windows, "--windows", allow_any=True)),
                                  ("min_users", parse_grid(min_users, "--min-users"))) if v is not None}
        patterns = load_category_patterns(categories) if categories is not None else None
        ds = load_data_dir(data_dir)
        disc = run_discover(ds, horizon_days=horizon_days, prior_k=prior_k, max_milestones=max_milestones,
                            min_lift=min_lift, category_patterns=patterns,
                            properties=parse_names(properties) if properties else None,
                            ignore_properties=parse_names(ignore_properties),
                            ignore_events=parse_names(ignore_events), max_property_values=max_property_values,
                            start_label=start_label, **grid)
        paths = write_discovery(disc, out)
    except (DiscoveryError, ValueError) as e:
        fail(str(e))
    for w in disc.warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    from training.report import discovery_summary_lines

    for line in discovery_summary_lines(disc):
        typer.echo(line)
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command()
def revalidate(
    data_dir: Annotated[Path, typer.Argument(help="Data directory (events, users, accounts, conversions).")],
    milestones: Annotated[Path, typer.Option("--milestones", help="The milestone file to check.")],
    by: Annotated[str, typer.Option(help="Cohort period of account start: quarter, month, half or year.")] = "quarter",
    out: Annotated[Path, typer.Option("--out", help="Output directory for revalidation.csv, flags.csv "
                                      "and revalidation.html.")] = Path("revalidation"),
    lift_threshold: Annotated[float, typer.Option(help="Flag a milestone whose lift falls below this.")] = 1.5,
    fail_on_flags: Annotated[bool, typer.Option("--fail-on-flags",
                                                help="Exit with code 1 when anything is flagged.")] = False,
) -> None:
    """Each milestone's rates and lift per cohort period, with flags for fading or broken ones."""
    from features.spec import SpecError, load_milestones
    from training.discover import DiscoveryError, load_data_dir
    from training.revalidate import revalidate as run_revalidate, write_revalidation

    try:
        spec = load_milestones(milestones)
        ds = load_data_dir(data_dir)
        reval = run_revalidate(ds, spec, by=by, lift_threshold=lift_threshold)
        paths = write_revalidation(reval, out)
    except (SpecError, DiscoveryError, ValueError) as e:
        fail(str(e))
    for w in reval.warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    for f in reval.flags.itertuples():
        typer.secho(f"FLAG {f.period} {f.milestone}: {f.flag} — {f.detail}", fg=typer.colors.RED)
    typer.echo(f"{len(reval.flags)} flag(s); wrote {', '.join(str(p) for p in paths.values())}")
    if fail_on_flags and reval.flagged:
        raise typer.Exit(1)



def _parse_cutoff_dates(text: str) -> list:
    """``2024-03-01,2024-04-01`` -> sorted distinct naive UTC datetimes (ValueError names the bad item)."""
    import pandas as pd

    out = set()
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            ts = pd.Timestamp(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a date (use ISO 8601, e.g. 2024-03-01)") from None
        out.add((ts.tz_convert("UTC").tz_localize(None) if ts.tz else ts).to_pydatetime())
    if len(out) < 3:
        raise ValueError(f"the time split needs at least 3 distinct dates, got {len(out)}")
    return sorted(out)


def _echo_warnings(caught) -> None:
    """Print recorded warnings once each, as `warning: ...` lines (no file:line noise)."""
    seen = set()
    for w in caught:
        text = str(w.message)
        if text not in seen:
            seen.add(text)
            typer.secho(f"warning: {text}", fg=typer.colors.YELLOW, err=True)


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Directory holding events/users/accounts/conversions.")],
    milestones: Annotated[Optional[Path], typer.Option(
        help="Milestone file, or a directory holding milestones.yaml (default: DATA_DIR/milestones.yaml).")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")] = None,
    calibration: Annotated[str, typer.Option(help="Calibrator fit on held-out data: isotonic or platt.")] = "isotonic",
    monotone: Annotated[bool, typer.Option(help="Milestone-reached / sequence-completed flags may only raise the score.")] = True,
    top_k: Annotated[int, typer.Option(min=1, help="Accounts sales can call per cutoff (precision/recall at k).")] = 50,
    min_converters: Annotated[int, typer.Option(min=1, help="Refuse to train with fewer converting snapshots.")] = 50,
    baselines: Annotated[bool, typer.Option(help="Also fit the baselines and ablations for the comparison table.")] = True,
    register: Annotated[bool, typer.Option(help="Log to MLflow and register pql-account-scorer.")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bars or tables.")] = False,
    cutoffs: Annotated[Optional[str], typer.Option(
        help="Comma-separated snapshot dates (e.g. 2024-03-01,2024-04-01) instead of the milestone file's "
             "settings.cutoffs schedule.")] = None,
    every_days: Annotated[Optional[int], typer.Option(
        min=1, help="Days between cutoffs (overrides settings.cutoffs.every_days).")] = None,
    count: Annotated[Optional[int], typer.Option(
        min=3, help="Number of cutoffs, newest first, ending one horizon before the newest event or "
                    "conversion (overrides settings.cutoffs.count).")] = None,
) -> None:
    """Train the calibrated milestone scorer beside its baselines; log it to MLflow and register it.

    Snapshots are taken at the milestone file's settings.cutoffs (default: weekly over the whole
    history, at most 104); --cutoffs, --every-days and --count override it for this run. The
    split table shows every cutoff: train, gap (unused: within one horizon of the held-out
    part), calibration and evaluation (newest).
    """
    import warnings

    from training.train import TrainConfig, train_from_data_dir

    # "" (the MLproject default) arrives as Path("."): fall back to the data directory's file.
    milestones_path = data_dir if milestones is None or str(milestones) in ("", ".") else milestones
    if milestones_path.is_dir():
        milestones_path = milestones_path / "milestones.yaml"
    if calibration not in ("isotonic", "platt"):
        fail(f"--calibration must be isotonic or platt, got {calibration!r}")
    if not data_dir.is_dir():
        fail(f"{data_dir}: data directory not found")
    if not milestones_path.is_file():
        fail(f"{milestones_path}: milestone file not found (pass --milestones, or run `pql discover` first)")
    schedule: dict = {"every_days": every_days, "count": count}
    if cutoffs is not None and cutoffs.strip():  # "" is the MLproject default: the file's schedule
        if every_days is not None or count is not None:
            fail("--cutoffs lists the dates itself; leave out --every-days and --count")
        try:
            schedule = {"dates": _parse_cutoff_dates(cutoffs)}
        except ValueError as e:
            fail(f"--cutoffs: {e}")
    config = TrainConfig(calibration=calibration, monotone=monotone, top_k=top_k, min_converters=min_converters,
                         baselines=baselines, register=register, progress=not quiet)
    # Record (keeping the usual filters, so deprecations stay hidden) and print each warning once
    # as a plain line; training.quiet already dropped the known-harmless MLflow / SHAP ones.
    with warnings.catch_warnings(record=True) as caught:
        try:
            result = train_from_data_dir(data_dir, milestones_path, tracking_uri=tracking_uri, config=config,
                                         cutoffs=schedule)
        except ValueError as e:  # TrainingDataError, SpecError, ContractError: bad input, nothing registered
            _echo_warnings(caught)
            fail(str(e))
        except OSError as e:
            _echo_warnings(caught)
            fail(f"{data_dir}: {e}")
    _echo_warnings(caught)
    m = result.model_metrics
    typer.echo(f"model: ROC AUC {m['roc_auc']:.3f}, PR AUC {m['pr_auc']:.3f}, ECE {m['ece']:.3f}, "
               f"top-decile lift {m['top_decile_lift']:.2f}")
    if result.registration:
        r = result.registration
        typer.echo(f"registered {r['model_name']} v{r['version']} as {r['alias']} ({r['reason']}); run {r['run_id']}")


# --- serving/ -------------------------------------------------------------------------------
# (commands: serve, score, explain, feedback-report) — see serving/

@app.command()
def serve(
    model: Annotated[Optional[str], typer.Option(help="models:/NAME@ALIAS, models:/NAME/VERSION or a version; default the champion")] = None,
    port: Annotated[int, typer.Option(help="HTTP port")] = 3000,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow tracking URI")] = None,
    store_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL of the event store")] = None,
) -> None:
    """Import the model into the Bento store and run `bentoml serve serving.service:PQLScorer`."""
    import os
    import subprocess
    import sys

    from serving.model import ModelError, check_bento_model, import_to_bentoml

    try:
        tag = import_to_bentoml(model, tracking_uri)
        # Refuse before starting workers when the feature code cannot feed this model.
        check_bento_model(tag)
    except ModelError as e:
        fail(str(e))
    env = dict(os.environ, PQL_BENTO_MODEL=str(tag))
    if store_url:
        env["PQL_STORE_URL"] = store_url
    for name in ("PQL_API_TOKEN", "PQL_WRITE_KEY"):
        if not env.get(name):
            fail(f"{name} is not set; export it before `pql serve`")
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:PQLScorer",
           "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command()
def score(
    data_dir: Annotated[Path, typer.Argument(help="Data directory (events, users, accounts, conversions).")],
    out: Annotated[Path, typer.Option(help="Output file, .csv or .parquet (written atomically); unscorable "
                                           "accounts go to <name>_unscored.csv beside it.")] = Path("scores.csv"),
    as_of: Annotated[Optional[str], typer.Option(
        help="Cutoff T, ISO 8601 (2025-06-01 or 2025-06-01T06:00:00Z); only events before T count. "
             "Default: just after the newest event.")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="models:/pql-account-scorer@challenger, models:/pql-account-scorer/3, an alias or a version; "
             "default the champion.")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="default, hubspot (company import) or salesforce (Data Loader upsert on "
                         "PQL_Account_Id__c).")] = "default",
    include_converted: Annotated[bool, typer.Option(
        help="Also score accounts that converted before T (listed as unscored otherwise).")] = False,
    log_mlflow: Annotated[bool, typer.Option(
        help="Log the score histogram and share per tier to MLflow (experiment pql-batch-scoring).")] = True,
    tracking_uri: Annotated[Optional[str], typer.Option(
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")] = None,
) -> None:
    """Score every account as of a date, with reasons, in a file a CRM imports."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from serving.batch import score_accounts, write_scores
    from serving.model import ModelError

    if out.suffix not in (".csv", ".parquet"):
        fail(f"--out {out}: expected a .csv or .parquet file name")
    try:
        result = score_accounts(data_dir, as_of, model, format, tracking_uri, log_to_mlflow=log_mlflow,
                                include_converted=include_converted)
    except (ModelError, ValueError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{data_dir}: {e}")
    unscored_path = out.with_name(out.stem + "_unscored.csv")
    try:
        write_scores(result.scores, out)
        if len(result.unscored):
            write_scores(result.unscored, unscored_path)
    except OSError as e:
        fail(f"cannot write {out}: {e}")
    tier_col = {"hubspot": "pql_tier", "salesforce": "PQL_Tier__c"}.get(format, "tier")
    shares = result.scores[tier_col].value_counts() if len(result.scores) else {}
    typer.echo(f"scored {len(result.scores):,} accounts as of {result.cutoff.isoformat()} with "
               f"{result.model_version} -> {out}")
    if len(result.scores):
        typer.echo("  " + ", ".join(f"{t} {n:,}" for t, n in shares.items()))
    if len(result.unscored):
        counts = result.unscored["reason_code"].value_counts()
        typer.echo(f"{len(result.unscored):,} accounts could not be scored "
                   f"({', '.join(f'{c} {n:,}' for c, n in counts.items())}); reasons in {unscored_path}")
    if result.mlflow_run_id:
        typer.echo(f"distribution logged to MLflow run {result.mlflow_run_id}")


@app.command()
def explain(
    data_dir: Annotated[Path, typer.Argument(help="Data directory (events, users, accounts).")],
    account_id: Annotated[str, typer.Argument(help="The account to explain.")],
    html: Annotated[Optional[Path], typer.Option("--html", help="Write the reviewer page (waterfall chart) here.")] = None,
    as_of: Annotated[Optional[str], typer.Option(help="Cutoff T (ISO 8601); default just after the newest event.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model URI, alias or version; default the champion.")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Explain one account's score: every reason, next-best milestones, optional HTML page."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from serving.batch import explain_account
    from serving.explain import render_html
    from serving.model import ModelError

    try:
        e = explain_account(data_dir, account_id, as_of, model, tracking_uri)
    except (ModelError, ValueError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"{data_dir}: {err}")
    typer.echo(f"{e.account_id}: score {e.score} ({e.tier}), probability {e.probability:.1%}, "
               f"as of {e.cutoff}, model {e.model_version}")
    typer.echo(f"  {e.base_value:+.3f}  base value (log-odds)")
    for c in e.contributions:
        typer.echo(f"  {c['contribution']:+.3f}  {c['text']}")
    typer.echo(f"  = {e.raw_score:+.3f}  model output (log-odds)")
    for n in e.next_best:
        typer.echo(f"  next: {n['label']} (+{100 * n['probability_gain']:.1f} points)")
    if html:
        from serving.batch import write_text_atomic

        try:
            write_text_atomic(render_html(e), html)
        except OSError as err:
            fail(f"cannot write {html}: {err}")
        typer.echo(f"page -> {html}")


@app.command("feedback-report")
def feedback_report_cmd(
    store_url: Annotated[str, typer.Option(help="SQLAlchemy URL of the event store holding the feedback.")] = "sqlite:///pql_events.db",
    scores: Annotated[Optional[Path], typer.Option(help="A scores file from `pql score` (any format): the tier of each account.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Data directory whose conversions to count per tier.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the report as .csv.")] = None,
) -> None:
    """Conversions and sales feedback by tier."""
    from serving.feedback import conversions_counted, feedback_report, read_scores
    from serving.store import EventStore

    db = store_url[len("sqlite:///"):] if store_url.startswith("sqlite:///") else None
    if db and not Path(db).is_file():
        fail(f"--store-url {store_url}: no event store there (the service's PQL_STORE_URL)")
    try:
        sc = read_scores(scores) if scores else None
        conv = None
        if data_dir:
            from features.contract import load_dataset

            conv = load_dataset(data_dir, quarantine=False).conversions
        report = feedback_report(EventStore(store_url), sc, conv)
    except (ValueError, OSError) as e:
        fail(str(e))
    typer.echo(report.to_string(index=False))
    if sc is not None and conv is not None and "as_of" in sc and len(conv):
        # only conversions after the scoring count: say so, or an all-zero column reads like a bug
        later = len(conversions_counted(sc, conv))
        typer.echo(f"conversions counted: the {later:,} of {len(conv):,} in {data_dir} on or after the scores' "
                   f"as_of {sc['as_of'].min():%Y-%m-%d %H:%M}" + ("" if later else " (none yet: score an earlier "
                                                                    "as_of, or wait for conversions to arrive)"))
    if out:
        from serving.batch import write_scores

        write_scores(report, out)
        typer.echo(f"report -> {out}")


# --- end to end -----------------------------------------------------------------------------
@app.command()
def ingest(
    data_dir: Annotated[Path, typer.Argument(help="Data directory to load (validated by the data contract first).")],
    store_url: Annotated[str, typer.Option(help="SQLAlchemy URL of the service's event store (PQL_STORE_URL).")]
    = "sqlite:///pql_events.db",
) -> None:
    """Backfill the service's event store from a data directory (history before live webhooks).

    Users are resolved to accounts as in training; each gets a group call carrying its account's
    traits, each event a track row. Re-running it stores nothing new (ids are deterministic).
    """
    from rich.progress import Progress

    from features.contract import ContractError
    from serving.backfill import backfill

    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("storing events", total=None)
            result = backfill(data_dir, store_url, progress=lambda done, total: bar.update(task, completed=done,
                                                                                         total=total))
    except ContractError as e:
        fail(str(e))
    typer.echo(f"{result.stored:,} of {result.messages:,} rows stored in {store_url} "
               f"({result.group_calls:,} group calls, {result.track_calls:,} events; "
               f"{result.duplicates:,} already there)")


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
