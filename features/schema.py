"""Canonical in-memory shapes of the four input tables, shared by every stage.

The data contract (``features.contract``) turns whatever a user hands us (parquet, csv, jsonl,
Segment exports) into exactly these shapes; everything downstream may rely on them.

Why naive UTC timestamps: DuckDB, Spark and pandas disagree on time-zone handling, and mixing
aware and naive values is the most common source of silent off-by-hours leakage. The contract
converts every timestamp to UTC once and drops the zone; nothing after it ever sees a zone.
"""

from __future__ import annotations

#: Timestamp dtype used everywhere after loading (naive, meaning UTC).
TIMESTAMP_DTYPE = "datetime64[us]"

#: Events: one row per thing a user (or marketing system) did.
EVENT_COLUMNS = {
    "user_id": "string",
    "account_id": "string",  # null when the event does not say
    "event": "string",
    "timestamp": TIMESTAMP_DTYPE,
    "message_id": "string",  # null when the source has none
    "source": "string",  # "product" | "marketing"
    "properties": "string",  # a JSON object as text, or null
}
EVENT_REQUIRED = ("user_id", "event", "timestamp")
EVENT_SOURCES = ("product", "marketing")

#: Users: who they are; account_id only when a system of record says so.
USER_COLUMNS = {
    "user_id": "string",
    "email": "string",
    "created_at": TIMESTAMP_DTYPE,
    "account_id": "string",
    "company": "string",  # a company name typed by the user (sign-up form, identify traits)
    "invited_by": "string",  # user_id of the inviter, when the product knows it
}
USER_REQUIRED = ("user_id",)

#: Accounts: CRM accounts; any column not listed here is a fit attribute.
ACCOUNT_RESERVED = {
    "account_id": "string",
    "domain": "string",
    "domain_aliases": "string",  # comma-separated extra domains of the same company
    "name": "string",
    "created_at": TIMESTAMP_DTYPE,
    # When the account stopped being a prospect (trial expired, churned, unregistered); it gets
    # no training snapshot at or after this time. Optional: null means "still open".
    "ended_at": TIMESTAMP_DTYPE,
}
ACCOUNT_REQUIRED = ("account_id",)

#: Conversions: when an account became a paying customer.
CONVERSION_COLUMNS = {"account_id": "string", "converted_at": TIMESTAMP_DTYPE}
CONVERSION_REQUIRED = ("account_id", "converted_at")

#: The user -> account table produced by identity resolution (features.identity).
USER_ACCOUNT_COLUMNS = {
    "user_id": "string",
    "account_id": "string",
    "method": "string",  # explicit | domain | link | name | provisional
    "confidence": "float64",
}

TABLES = ("events", "users", "accounts", "conversions")
FILE_SUFFIXES = (".parquet", ".csv", ".jsonl")

#: Snapshot key columns that lead every feature table.
SNAPSHOT_KEYS = ("account_id", "cutoff")
LABEL_COLUMN = "label"


def fit_columns(account_columns) -> list[str]:
    """Return the fit-attribute columns of an accounts table (every non-reserved column).

    >>> fit_columns(["account_id", "domain", "employees", "industry"])
    ['employees', 'industry']
    """
    return [c for c in account_columns if c not in ACCOUNT_RESERVED]
