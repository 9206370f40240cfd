"""The event store behind real-time ingestion and scoring by account id.

SQLite in WAL mode is the default because it needs no server and several worker processes
can share one file: WAL lets readers run while one writer commits, and ``busy_timeout`` makes
concurrent writers wait for the lock instead of failing. Any SQLAlchemy URL is accepted, so the
same code runs on PostgreSQL when one file is no longer enough.

The store is an append-only log of Segment messages (track, identify, group, page, screen)
keyed by ``messageId``. Deduplication is a UNIQUE constraint plus ``ON CONFLICT DO NOTHING``,
so a retried batch (Segment libraries retry on any error) is stored once, even when two workers
receive the retry at the same time. A batch is inserted in one transaction and the caller
acknowledges only after :meth:`EventStore.append` returned, i.e. after COMMIT.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from features.schema import EVENT_COLUMNS, TIMESTAMP_DTYPE

DEFAULT_URL = "sqlite:///pql_events.db"

metadata = sa.MetaData()

#: Every accepted Segment message, one row each. ``seq`` keeps arrival order.
messages = sa.Table(
    "messages", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(255), nullable=False, unique=True),
    sa.Column("type", sa.String(16), nullable=False),  # track | identify | group | page | screen
    sa.Column("user_id", sa.String(255)),
    sa.Column("account_id", sa.String(255)),  # groupId of a group call, or the event's account
    sa.Column("event", sa.String(255)),
    sa.Column("timestamp", sa.DateTime, nullable=False),  # naive UTC
    sa.Column("source", sa.String(16), nullable=False, server_default="product"),
    sa.Column("properties", sa.Text),  # JSON object text (track properties)
    sa.Column("traits", sa.Text),  # JSON object text (identify / group traits)
    sa.Column("received_at", sa.DateTime, nullable=False),
)
sa.Index("ix_messages_account", messages.c.account_id)
sa.Index("ix_messages_user", messages.c.user_id)

#: What sales thinks of a lead: the check on milestone-based scores.
feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(255), nullable=False),
    sa.Column("verdict", sa.String(8), nullable=False),  # good | bad
    sa.Column("note", sa.Text),
    sa.Column("rep", sa.String(255)),
    sa.Column("score", sa.Float),
    sa.Column("tier", sa.String(16)),
    sa.Column("model_version", sa.String(64)),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
sa.Index("ix_feedback_account", feedback.c.account_id)

MESSAGE_FIELDS = ("message_id", "type", "user_id", "account_id", "event", "timestamp", "source",
                  "properties", "traits")


@dataclass(frozen=True)
class AppendResult:
    """Outcome of one committed batch."""

    received: int
    stored: int

    @property
    def duplicates(self) -> int:
        """Messages already stored before (or repeated inside the batch)."""
        return self.received - self.stored


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL: readers never block the writer. synchronous=FULL: a commit is on disk before we
    # acknowledge it (NORMAL could lose the last commits on power loss). busy_timeout: other
    # processes wait for the write lock instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str = DEFAULT_URL) -> Engine:
    """Create an engine for ``url``; SQLite files get WAL mode and a busy timeout."""
    engine = sa.create_engine(url, future=True, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _insert(engine: Engine, table: sa.Table):
    # ON CONFLICT DO NOTHING exists in both dialects we support; other databases fall back to
    # a plain insert guarded by the unique constraint (a duplicate then fails the batch).
    name = engine.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - not a supported production database
        return sa.insert(table)
    return insert(table).on_conflict_do_nothing(index_elements=["message_id"])


class EventStore:
    """Append-only Segment message log plus the feedback table.

    Parameters
    ----------
    url : str
        SQLAlchemy URL; default ``sqlite:///pql_events.db`` (WAL mode).

    Examples
    --------
    >>> store = EventStore("sqlite://")
    >>> r = store.append([{"message_id": "m1", "type": "track", "user_id": "u1",
    ...                    "account_id": "a1", "event": "login",
    ...                    "timestamp": dt.datetime(2024, 1, 1)}] * 2)
    >>> (r.received, r.stored, r.duplicates)
    (2, 1, 1)
    """

    def __init__(self, url: str = DEFAULT_URL):
        self.url = url
        self.engine = make_engine(url)
        metadata.create_all(self.engine)

    # --- writing ---------------------------------------------------------------------------
    def append(self, rows: Sequence[dict]) -> AppendResult:
        """Insert ``rows`` (dicts with :data:`MESSAGE_FIELDS`) in one transaction.

        Rows whose ``message_id`` is already stored are skipped. Either every new row is
        committed or none is (an exception rolls the whole batch back), so a caller that
        acknowledges after this returns never acknowledges a half-stored batch.
        """
        received = len(rows)
        seen: set[str] = set()
        unique_rows = []
        now = _utcnow()
        for r in rows:
            if r["message_id"] in seen:
                continue
            seen.add(r["message_id"])
            row = {k: r.get(k) for k in MESSAGE_FIELDS}
            row["source"] = row["source"] or "product"
            row["received_at"] = now
            unique_rows.append(row)
        if not unique_rows:
            return AppendResult(received, 0)
        # RETURNING reports exactly the rows this transaction inserted; a count before and
        # after would need a read snapshot, which in WAL mode turns a concurrent writer's
        # commit into SQLITE_BUSY_SNAPSHOT instead of a wait.
        stmt = _insert(self.engine, messages).returning(messages.c.message_id)
        with self.engine.begin() as conn:
            stored = len(conn.execute(stmt, unique_rows).all())
        return AppendResult(received, stored)

    def add_feedback(self, account_id: str, verdict: str, note: str | None = None,
                     rep: str | None = None, score: float | None = None,
                     tier: str | None = None, model_version: str | None = None) -> int:
        """Store one sales verdict (``good`` or ``bad``) and return its id."""
        if verdict not in ("good", "bad"):
            raise ValueError(f"verdict: must be 'good' or 'bad', got {verdict!r}")
        with self.engine.begin() as conn:
            res = conn.execute(sa.insert(feedback).values(
                account_id=account_id, verdict=verdict, note=note, rep=rep, score=score,
                tier=tier, model_version=model_version, created_at=_utcnow()))
            return int(res.inserted_primary_key[0])

    # --- reading ---------------------------------------------------------------------------
    def count(self) -> int:
        """Number of stored messages."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one()

    def user_accounts(self) -> dict[str, str]:
        """user_id -> account_id from the latest group call of each user."""
        q = (sa.select(messages.c.user_id, messages.c.account_id)
             .where(messages.c.type == "group", messages.c.user_id.is_not(None))
             .order_by(messages.c.timestamp, messages.c.seq))
        with self.engine.connect() as conn:
            return {u: a for u, a in conn.execute(q)}

    def _links_to(self, account_ids: Iterable[str]) -> dict[str, str]:
        """user_id -> account_id (latest group call) for users who ever joined ``account_ids``.

        Two indexed lookups instead of :meth:`user_accounts`' scan of every group call, so
        scoring one account costs the same in a store of ten or ten million messages.
        """
        ids = list(dict.fromkeys(account_ids))
        joined = (sa.select(messages.c.user_id).distinct()
                  .where(messages.c.type == "group", messages.c.account_id.in_(ids),
                         messages.c.user_id.is_not(None)))
        q = (sa.select(messages.c.user_id, messages.c.account_id)
             .where(messages.c.type == "group", messages.c.user_id.in_(joined))
             .order_by(messages.c.timestamp, messages.c.seq))
        with self.engine.connect() as conn:
            return {u: a for u, a in conn.execute(q)}

    def events(self, account_ids: Iterable[str] | None = None,
               before: dt.datetime | None = None) -> pd.DataFrame:
        """Track/page/screen events as a canonical events frame (``features.schema``).

        An event belongs to an account when it names the account itself or when its user
        joined the account with a group call (the latest group call wins).
        """
        links = self.user_accounts() if account_ids is None else self._links_to(account_ids)
        q = sa.select(messages.c.user_id, messages.c.account_id, messages.c.event,
                      messages.c.timestamp, messages.c.message_id, messages.c.source,
                      messages.c.properties).where(messages.c.type.in_(("track", "page", "screen")))
        if account_ids is not None:
            ids = list(dict.fromkeys(account_ids))
            users = [u for u, a in links.items() if a in set(ids)]
            q = q.where(sa.or_(messages.c.account_id.in_(ids), messages.c.user_id.in_(users)))
        if before is not None:
            q = q.where(messages.c.timestamp < before)
        with self.engine.connect() as conn:
            df = pd.DataFrame(conn.execute(q.order_by(messages.c.timestamp)).all(),
                              columns=list(EVENT_COLUMNS))
        linked = df["user_id"].map(links)
        df["account_id"] = df["account_id"].where(df["account_id"].notna(), linked)
        if account_ids is not None:
            df = df[df["account_id"].isin(list(account_ids))]
        out = df.astype({c: t for c, t in EVENT_COLUMNS.items() if t != TIMESTAMP_DTYPE})
        out["timestamp"] = pd.to_datetime(out["timestamp"]).astype(TIMESTAMP_DTYPE)
        return out.reset_index(drop=True)

    def watermarks(self, account_ids: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        """account_id -> ``(messages, newest seq)`` of everything that can change its features.

        That is every message naming the account (its events, its group calls and traits) and
        every message of a user who ever joined it with a group call (their events, and a later
        group call moving them elsewhere). The store is append-only, so any commit touching the
        account changes the pair; the count also catches a PostgreSQL transaction that commits a
        smaller ``seq`` after a larger one. Over-inclusive on purpose (a user's event explicitly
        naming another account still moves it): a watermark may change needlessly, never stay
        put when the account's features changed.

        Two grouped queries on the ``account_id`` and ``user_id`` indexes; accounts without any
        message are absent from the result. ``None`` covers every account in the store.
        """
        m, g = messages, messages.alias("g")
        by_account = sa.select(m.c.account_id, sa.func.count(), sa.func.max(m.c.seq)).where(
            m.c.account_id.is_not(None)).group_by(m.c.account_id)
        by_member = (sa.select(g.c.account_id, sa.func.count(), sa.func.max(m.c.seq))
                     .select_from(g.join(m, m.c.user_id == g.c.user_id))
                     .where(g.c.type == "group", g.c.account_id.is_not(None))
                     .group_by(g.c.account_id))
        if account_ids is not None:
            ids = list(dict.fromkeys(account_ids))
            if not ids:
                return {}
            by_account = by_account.where(m.c.account_id.in_(ids))
            by_member = by_member.where(g.c.account_id.in_(ids))
        out: dict[str, tuple[int, int]] = {}
        # One connection, one read transaction: both counts come from the same snapshot.
        with self.engine.connect() as conn:
            for acc, n, top in conn.execute(by_account):
                out[acc] = (int(n), int(top))
            for acc, n, top in conn.execute(by_member):
                n0, top0 = out.get(acc, (0, 0))
                out[acc] = (n0 + int(n), max(top0, int(top)))
        return out

    def account_traits(self, account_ids: Iterable[str] | None = None) -> dict[str, dict]:
        """account_id -> merged traits of its group calls (later calls override earlier)."""
        q = (sa.select(messages.c.account_id, messages.c.traits)
             .where(messages.c.type == "group", messages.c.account_id.is_not(None))
             .order_by(messages.c.timestamp, messages.c.seq))
        if account_ids is not None:
            q = q.where(messages.c.account_id.in_(list(account_ids)))
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for acc, traits in conn.execute(q):
                out.setdefault(acc, {}).update(json.loads(traits) if traits else {})
        return out

    def feedback_frame(self) -> pd.DataFrame:
        """Every feedback row, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(feedback).order_by(feedback.c.id)).mappings().all()
        return pd.DataFrame(rows, columns=[c.name for c in feedback.columns])

    def dispose(self) -> None:
        """Close pooled connections (call before forking or at shutdown)."""
        self.engine.dispose()
