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

#: Per-account change counter, bumped in the same transaction as every message that can change
#: the account's features (see :meth:`EventStore.watermarks`): reading it is one primary-key
#: lookup per account instead of a join over the account's members' messages.
account_watermarks = sa.Table(
    "account_watermarks", metadata,
    sa.Column("account_id", sa.String(255), primary_key=True),
    sa.Column("messages", sa.Integer, nullable=False),  # messages that touched the account
    sa.Column("top_seq", sa.Integer, nullable=False),  # newest such message's seq
)

#: Every (user, account) pair a group call ever linked: whose messages move whose watermark.
memberships = sa.Table(
    "memberships", metadata,
    sa.Column("user_id", sa.String(255), primary_key=True),
    sa.Column("account_id", sa.String(255), primary_key=True),
)

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


def _dialect_insert(engine: Engine):
    name = engine.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - not a supported production database
        return None
    return insert


def _insert(engine: Engine, table: sa.Table, key: Sequence[str] = ("message_id",)):
    # ON CONFLICT DO NOTHING exists in both dialects we support; other databases fall back to
    # a plain insert guarded by the unique constraint (a duplicate then fails the batch).
    insert = _dialect_insert(engine)
    if insert is None:  # pragma: no cover
        return sa.insert(table)
    return insert(table).on_conflict_do_nothing(index_elements=list(key))


def _bump(engine: Engine):
    """Upsert adding to an account's watermark (count added, newest seq kept)."""
    insert = _dialect_insert(engine)
    if insert is None:  # pragma: no cover - not a supported production database
        raise NotImplementedError(f"watermarks need SQLite or PostgreSQL, not {engine.dialect.name}")
    t = account_watermarks
    stmt = insert(t)
    return stmt.on_conflict_do_update(index_elements=["account_id"], set_={
        "messages": t.c.messages + stmt.excluded.messages,
        "top_seq": sa.case((stmt.excluded.top_seq > t.c.top_seq, stmt.excluded.top_seq),
                           else_=t.c.top_seq)})


def _chunks(items: list, size: int = 500):
    # SQLite limits bound parameters per statement.
    for i in range(0, len(items), size):
        yield items[i:i + size]


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
        self._backfill_watermarks()

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
        stmt = _insert(self.engine, messages).returning(messages.c.message_id, messages.c.seq)
        with self.engine.begin() as conn:
            inserted = {mid: seq for mid, seq in conn.execute(stmt, unique_rows)}
            if inserted:
                # Same transaction: a committed message always has moved its watermarks.
                self._bump_watermarks(conn, [r for r in unique_rows if r["message_id"] in inserted],
                                      inserted)
        return AppendResult(received, len(inserted))

    def _bump_watermarks(self, conn, rows: list[dict], seqs: dict[str, int]) -> None:
        links = sorted({(r["user_id"], r["account_id"]) for r in rows
                        if r["type"] == "group" and r["user_id"] and r["account_id"]})
        if links:
            conn.execute(_insert(self.engine, memberships, ("user_id", "account_id")),
                         [{"user_id": u, "account_id": a} for u, a in links])
        users = sorted({r["user_id"] for r in rows if r["user_id"]})
        joined: dict[str, set[str]] = {}
        for chunk in _chunks(users):
            q = sa.select(memberships.c.user_id, memberships.c.account_id).where(
                memberships.c.user_id.in_(chunk))
            for u, a in conn.execute(q):
                joined.setdefault(u, set()).add(a)
        bumps: dict[str, list[int]] = {}
        for r in rows:
            seq = seqs[r["message_id"]]
            targets = set(joined.get(r["user_id"], ()))
            if r["account_id"]:
                targets.add(r["account_id"])
            for acc in targets:
                b = bumps.setdefault(acc, [0, 0])
                b[0] += 1
                b[1] = max(b[1], seq)
        if bumps:
            # Sorted keys: concurrent PostgreSQL writers lock rows in one order (no deadlock).
            conn.execute(_bump(self.engine), [{"account_id": a, "messages": n, "top_seq": top}
                                              for a, (n, top) in sorted(bumps.items())])

    def _backfill_watermarks(self) -> None:
        """Fill the watermark and membership tables of a store written before they existed."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(account_watermarks.c.account_id).limit(1)).first() is not None:
                return
            if conn.execute(sa.select(messages.c.seq).limit(1)).first() is None:
                return
            g = messages
            conn.execute(_insert(self.engine, memberships, ("user_id", "account_id")).from_select(
                ["user_id", "account_id"],
                sa.select(g.c.user_id, g.c.account_id).distinct().where(
                    g.c.type == "group", g.c.user_id.is_not(None), g.c.account_id.is_not(None))))
            rows = [{"account_id": a, "messages": n, "top_seq": top}
                    for a, (n, top) in sorted(self._scan_watermarks(conn).items())]
            for chunk in _chunks(rows, 5000):
                conn.execute(_bump(self.engine), chunk)

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
        # The timestamp comes back as the driver gives it (SQLite: ISO text) and is parsed once,
        # vectorised, below: SQLAlchemy's per-value datetime processing was most of a warm-up.
        q = sa.select(messages.c.user_id, messages.c.account_id, messages.c.event,
                      sa.type_coerce(messages.c.timestamp, sa.String).label("timestamp"),
                      messages.c.message_id, messages.c.source,
                      messages.c.properties).where(messages.c.type.in_(("track", "page", "screen")))
        if account_ids is not None:
            ids = list(dict.fromkeys(account_ids))
            users = [u for u, a in links.items() if a in set(ids)]
            q = q.where(sa.or_(messages.c.account_id.in_(ids), messages.c.user_id.in_(users)))
        if before is not None:
            q = q.where(messages.c.timestamp < before)
        with self.engine.connect() as conn:
            # Columns, not Row objects: pandas probes every Row for namedtuple fields, and each
            # probe goes through SQLAlchemy's missing-key fallback (8 s for 1.2M rows).
            rows = conn.execute(q.order_by(messages.c.timestamp)).all()
        values = list(zip(*rows)) or [()] * len(EVENT_COLUMNS)
        df = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in zip(EVENT_COLUMNS, values)})
        linked = df["user_id"].map(links)
        df["account_id"] = df["account_id"].where(df["account_id"].notna(), linked)
        if account_ids is not None:
            df = df[df["account_id"].isin(list(account_ids))]
        out = df.astype({c: t for c, t in EVENT_COLUMNS.items() if t != TIMESTAMP_DTYPE})
        out["timestamp"] = pd.to_datetime(out["timestamp"], format="ISO8601").astype(TIMESTAMP_DTYPE)
        return out.reset_index(drop=True)

    def watermarks(self, account_ids: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        """account_id -> ``(messages, newest seq)`` of everything that can change its features.

        That is every message naming the account (its events, its group calls and traits) and
        every message of a user who ever joined it with a group call (their events, and a later
        group call moving them elsewhere). The pair is kept in ``account_watermarks`` and bumped
        by :meth:`append` in the same transaction as the messages, so any commit touching the
        account changes it; the count also catches a PostgreSQL transaction that commits a
        smaller ``seq`` after a larger one. Over-inclusive on purpose (a user's event explicitly
        naming another account still moves it): a watermark may change needlessly, never stay
        put when the account's features changed.

        One primary-key lookup per account; accounts without any message are absent from the
        result. ``None`` covers every account in the store.
        """
        t = account_watermarks
        q = sa.select(t.c.account_id, t.c.messages, t.c.top_seq)
        with self.engine.connect() as conn:
            if account_ids is None:
                return {a: (int(n), int(top)) for a, n, top in conn.execute(q)}
            out: dict[str, tuple[int, int]] = {}
            for chunk in _chunks(list(dict.fromkeys(account_ids))):
                out.update({a: (int(n), int(top))
                            for a, n, top in conn.execute(q.where(t.c.account_id.in_(chunk)))})
            return out

    @staticmethod
    def _scan_watermarks(conn) -> dict[str, tuple[int, int]]:
        # The definition of a watermark computed from the messages themselves (backfill).
        m, ms = messages, memberships
        by_account = sa.select(m.c.account_id, sa.func.count(), sa.func.max(m.c.seq)).where(
            m.c.account_id.is_not(None)).group_by(m.c.account_id)
        by_member = (sa.select(ms.c.account_id, sa.func.count(), sa.func.max(m.c.seq))
                     .select_from(ms.join(m, m.c.user_id == ms.c.user_id))
                     .where(sa.or_(m.c.account_id.is_(None), m.c.account_id != ms.c.account_id))
                     .group_by(ms.c.account_id))
        out: dict[str, tuple[int, int]] = {}
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
