"""The pipeline's feature query, compiled once per model and run per request batch.

``features.pipeline.online_features`` builds the Ibis expression of
``features.pipeline.build_feature_table`` and compiles it to SQL on every call: ~1 s of pure
Python before DuckDB sees a row, far beyond a 50 ms latency budget. The expression only
depends on the milestone file, the model's fit / demand-gen columns and the cutoff, so
:class:`OnlineFeatureQuery` compiles it once, against named input tables, for a *sentinel*
cutoff and keeps the SQL text as a template. Per batch it only

1. swaps the sentinel cutoff's two literal spellings (timestamp and epoch seconds) for the
   batch's cutoff, and inlines the one-row cutoff table;
2. registers the batch's events and accounts frames on one DuckDB connection;
3. runs the SQL and finishes dtypes exactly like ``online_features``.

It is still the pipeline's own expression (no re-implementation, no training/serving skew):
at construction the template, rendered for a probe cutoff, must equal the SQL that Ibis
compiles directly for that cutoff (memtable names aside), or construction fails. Tests
compare the result with ``online_features`` row for row.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import ibis
import ibis.expr.operations as ops
import numpy as np
import pandas as pd

from features.pipeline import (ACCOUNT_RESERVED, CONVERSION_COLUMNS, EVENT_COLUMNS, LABEL_COLUMN,
                               _canonical, _finish, build_feature_table)
from features.spec import MilestoneSpec

#: Far from any real data, with microseconds so every digit of the literal is exercised.
SENTINEL = pd.Timestamp("2222-02-02 02:02:02.123456")
PROBE = pd.Timestamp("2031-07-15 13:45:07")
_MEMTABLE = re.compile(r'"(ibis_pandas_memtable_\w+)"')
_PLAN_COLUMNS = ("k", "cutoff", "t_epoch")
_TABLES = {"events": "pql_online_events", "accounts": "pql_online_accounts",
           "conversions": "pql_online_conversions"}


class OnlineFeatureError(RuntimeError):
    """The feature query cannot be compiled into a reusable template."""


def _epoch(ts: pd.Timestamp) -> float:
    # The same arithmetic as features.pipeline._Plan, so the float (and its text) is identical.
    return (ts - pd.Timestamp(0)).total_seconds()


@functools.lru_cache(maxsize=256)
def _literals(ts: pd.Timestamp) -> tuple[str, str]:
    """How Ibis spells ``ts`` as a DuckDB timestamp literal and as epoch seconds."""
    def sql_of(value, type_):
        text = ibis.to_sql(ibis.literal(value, type=type_).name("x"), dialect="duckdb", pretty=False)
        return text.strip().removeprefix("SELECT").strip().removesuffix('AS "x"').strip()
    return sql_of(ts.to_pydatetime(), "timestamp"), sql_of(_epoch(ts), "float64")


def _normalise_memtables(sql: str) -> str:
    names: dict[str, str] = {}
    return _MEMTABLE.sub(lambda m: f'"mt{names.setdefault(m.group(1), str(len(names)))}"', sql)


class OnlineFeatureQuery:
    """Features at one cutoff for a batch of accounts, with the SQL compiled once.

    Parameters
    ----------
    spec : MilestoneSpec
        The model's milestone file.
    manifest : DataFrame
        The model's feature manifest (``name, family, dtype, ...``); fixes the fit and
        demand-gen columns and the output columns and dtypes.

    Examples
    --------
    >>> q = OnlineFeatureQuery(bundle.spec, bundle.manifest)       # doctest: +SKIP
    >>> q(events, accounts, pd.Timestamp("2024-06-01"))            # doctest: +SKIP
    """

    def __init__(self, spec: MilestoneSpec, manifest: pd.DataFrame):
        self.spec = spec
        self.manifest = manifest[["name", "family", "milestone", "description", "dtype"]].reset_index(drop=True)
        fit = self.manifest.loc[self.manifest["family"] == "fit"]
        self.fit_columns = [n[len("fit__"):] for n in fit["name"]]
        self.fit_dtypes = dict(zip(self.fit_columns, fit["dtype"]))
        dg = self.manifest.loc[self.manifest["family"] == "demand_gen", "name"]
        self.marketing_events = sorted(n[len("dg__"):-len("__decayed")] for n in dg)
        self._dg_names = set(dg)
        self.schemas = {"events": dict(EVENT_COLUMNS), "conversions": dict(CONVERSION_COLUMNS),
                        "accounts": dict(ACCOUNT_RESERVED, **{c: self._account_dtype(c)
                                                              for c in self.fit_columns})}
        self.sql, plan_name, constants = self._compile(SENTINEL)
        self._plan_ref = f'"{plan_name}"'
        self._check_template()
        self._con = duckdb.connect()
        self._con.execute("SET threads TO 1")  # one batch is small; leave the cores to LightGBM
        for name, frame in constants.items():
            self._con.register(name, frame)
        # Fixed input tables and a prepared statement: DuckDB binds and plans the ~200-operator
        # query once instead of per batch; per batch only rows and the two parameters change.
        for key, cols in self.schemas.items():
            self._con.register("_pql_empty", _canonical(None, cols)[list(cols)])
            self._con.execute(f'CREATE TEMP TABLE "{_TABLES[key]}" AS SELECT * FROM _pql_empty')
            self._con.unregister("_pql_empty")
        self._con.execute(f"PREPARE pql_features AS {self._parametrised()}")
        self._lock = threading.Lock()

    def _account_dtype(self, column: str) -> str:
        dtype = self.fit_dtypes[column]
        if dtype in ("category", "string", "object", "str"):
            return "string"
        return "boolean" if dtype == "bool" else "float64"

    def _expr(self, cutoff: pd.Timestamp):
        tables = {key: ibis.table(ibis.memtable(_canonical(None, cols)).schema(), name=_TABLES[key])
                  for key, cols in self.schemas.items()}
        return build_feature_table(tables["events"], tables["accounts"], tables["conversions"], self.spec,
                                   [cutoff], fit_columns=self.fit_columns,
                                   marketing_events=self.marketing_events,
                                   only_unconverted=False, with_label=False)

    def _compile(self, cutoff: pd.Timestamp) -> tuple[str, str, dict[str, pd.DataFrame]]:
        expr = self._expr(cutoff)
        sql = ibis.to_sql(expr, dialect="duckdb", pretty=False)
        plan, constants = None, {}
        for op in expr.op().find(ops.InMemoryTable):
            if tuple(op.schema.names) == _PLAN_COLUMNS:
                plan = op
            else:
                constants[op.name] = op.data.to_frame()
        if plan is None:
            raise OnlineFeatureError("feature expression has no cutoff table (k, cutoff, t_epoch); "
                                     "features.pipeline changed: update serving/online.py")
        expected = pd.DataFrame({"k": [0], "cutoff": [cutoff], "t_epoch": [_epoch(cutoff)]})
        got = plan.data.to_frame()
        if not (len(got) == 1 and got["cutoff"].iloc[0] == cutoff
                and got["t_epoch"].iloc[0] == expected["t_epoch"].iloc[0] and got["k"].iloc[0] == 0):
            raise OnlineFeatureError(f"cutoff table is {got.to_dict('records')}, expected "
                                     f"{expected.to_dict('records')}; update serving/online.py")
        return sql, plan.name, constants

    def _render_literals(self, cutoff: pd.Timestamp) -> str:
        (ts_s, ep_s), (ts_t, ep_t) = _literals(SENTINEL), _literals(cutoff)
        return self.sql.replace(ts_s, ts_t).replace(ep_s, ep_t)

    def _check_template(self) -> None:
        # The sentinel must appear (else the cutoff would be baked in) and substitution must
        # reproduce exactly what Ibis compiles for another cutoff.
        ts_s, ep_s = _literals(SENTINEL)
        if ts_s not in self.sql or ep_s not in self.sql:
            raise OnlineFeatureError("cutoff literals not found in the compiled feature SQL")
        direct, _, _ = self._compile(PROBE)
        if _normalise_memtables(self._render_literals(PROBE)) != _normalise_memtables(direct):
            raise OnlineFeatureError("feature SQL does not depend on the cutoff only through its "
                                     "literals; serving/online.py cannot template it")

    def _parametrised(self) -> str:
        ts_s, ep_s = _literals(SENTINEL)
        ts, ep = "CAST($ts AS TIMESTAMP)", "CAST($ep AS DOUBLE)"
        inline = f"(SELECT CAST(0 AS BIGINT) AS k, {ts} AS cutoff, {ep} AS t_epoch)"
        return self.sql.replace(ts_s, ts).replace(ep_s, ep).replace(self._plan_ref, inline)

    def render(self, cutoff: pd.Timestamp) -> str:
        """The feature SQL for ``cutoff`` (input tables ``pql_online_events|accounts|conversions``)."""
        ts, ep = _literals(cutoff)
        inline = f"(SELECT CAST(0 AS BIGINT) AS k, {ts} AS cutoff, CAST({ep} AS DOUBLE) AS t_epoch)"
        return self._render_literals(cutoff).replace(self._plan_ref, inline)

    def _accounts(self, accounts: pd.DataFrame | None) -> pd.DataFrame:
        acc = _canonical(accounts, ACCOUNT_RESERVED)
        for c in self.fit_columns:
            kind = self.schemas["accounts"][c]
            s = acc[c] if c in acc.columns else pd.Series([None] * len(acc), index=acc.index, dtype="object")
            if kind == "float64":
                s = pd.to_numeric(s, errors="coerce").astype("float64")
            elif kind == "boolean":
                s = s.astype("boolean")
            else:
                s = s.astype("string")
            acc[c] = s
        return acc[list(self.schemas["accounts"])]

    def __call__(self, events: pd.DataFrame, accounts: pd.DataFrame | None, cutoff) -> pd.DataFrame:
        """Feature rows at ``cutoff`` (one per account started before it), manifest columns in order.

        Same contract as ``features.pipeline.online_features(events, spec, cutoff,
        accounts=accounts, manifest=manifest)``.
        """
        cutoff = pd.Timestamp(cutoff)
        ev = _canonical(events, EVENT_COLUMNS)[list(EVENT_COLUMNS)]
        acc = self._accounts(accounts)
        with self._lock:
            for key, frame in (("events", ev), ("accounts", acc)):
                table = _TABLES[key]
                self._con.register("_pql_in", frame)
                try:
                    self._con.execute(f'DELETE FROM "{table}"')
                    self._con.execute(f'INSERT INTO "{table}" SELECT * FROM _pql_in')
                finally:
                    self._con.unregister("_pql_in")
            ts, ep = _literals(cutoff)
            frame = self._con.execute(f"EXECUTE pql_features(ts := {ts}, ep := {ep})").df()
        out = _finish(frame, self._finishing_manifest(frame))
        return out.drop(columns=[LABEL_COLUMN])

    def _finishing_manifest(self, frame: pd.DataFrame) -> pd.DataFrame:
        # An integer fit attribute (employees) that some account lacks cannot be int64; it
        # becomes float64 with NaN, which LightGBM reads as missing like in training.
        ints = [f"fit__{c}" for c, d in self.fit_dtypes.items()
                if d.startswith(("int", "uint")) and frame[f"fit__{c}"].isna().any()]
        if not ints:
            return self.manifest
        out = self.manifest.copy()
        out.loc[out["name"].isin(ints), "dtype"] = "float64"
        return out

    def close(self) -> None:
        """Close the DuckDB connection."""
        self._con.close()


# --- pre-serialised answers ------------------------------------------------------------------
def _plain(obj):
    """``obj`` with numpy scalars as Python numbers and non-finite floats as None (JSON null)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def dump_json(obj) -> bytes:
    """Compact UTF-8 JSON of a JSON-ready answer (the bytes /score sends for it).

    numpy scalars become numbers, NaN and infinities ``null`` (as pydantic, which serialised
    /score answers before, writes them), keys starting with ``_`` are left out.
    """
    # Fast: the C encoder with numpy scalars converted on the way. Answers rarely hold a
    # non-finite float (the C encoder would write NaN, which is not JSON) or a private key;
    # when the text shows either might be there, the exact but slower walk decides.
    out = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    if "NaN" in out or "Infinity" in out or '"_' in out:
        out = json.dumps(_plain(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                         default=_json_default)
    return out.encode()


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):  # float32 and the like (float64 is a float already)
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "isoformat"):  # datetime, date, Timestamp: ISO 8601 like pydantic
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class Answer(Mapping):
    """One /score answer held as its serialised JSON; a read-only mapping parsed on first access.

    The per-worker cache keeps every account's answer as these bytes: a cache hit is then
    answered by concatenating bytes (no ``model_dump`` / ``json.dumps`` of a ~2 KB nested dict
    per account), unpickling a warm-up chunk from the warm-up process is a bytes copy instead
    of thousands of small dicts (the GIL time that made /score's tail), and the cyclic GC has
    nothing to walk. Direct Python callers still read it like the dict it encodes (``a["score"]``,
    ``a == other``, ``dict(a)``).

    Examples
    --------
    >>> a = Answer.of({"account_id": "a1", "score": 40, "probability": float("nan")})
    >>> a.json
    b'{"account_id":"a1","score":40,"probability":null}'
    >>> a["score"], a == {"account_id": "a1", "score": 40, "probability": None}
    (40, True)
    """

    __slots__ = ("json", "_data")

    def __init__(self, json_bytes: bytes):
        self.json = bytes(json_bytes)
        self._data = None

    @classmethod
    def of(cls, obj) -> "Answer":
        """The answer of a JSON-ready dict (see :func:`dump_json`)."""
        return obj if isinstance(obj, Answer) else cls(dump_json(obj))

    def data(self) -> dict:
        """The answer as a plain (new) dict."""
        return json.loads(self.json)

    def _parsed(self) -> dict:
        if self._data is None:
            self._data = json.loads(self.json)
        return self._data

    def __getitem__(self, key):
        return self._parsed()[key]

    def __iter__(self):
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __eq__(self, other) -> bool:
        if isinstance(other, Answer):
            return self.json == other.json or self._parsed() == other._parsed()
        if isinstance(other, Mapping):
            return self._parsed() == dict(other)
        return NotImplemented

    __hash__ = None

    def __reduce__(self):
        # Only the bytes cross a process boundary (the warm-up process), never the parsed dict.
        return (Answer, (self.json,))

    def __repr__(self) -> str:
        return f"Answer({self.json[:80]!r}{'...' if len(self.json) > 80 else ''})"


def answers_json(answers) -> bytes:
    """The JSON array of ``answers`` (:class:`Answer` or JSON-ready dicts), by concatenation."""
    return b"[" + b",".join(Answer.of(a).json for a in answers) + b"]"


# --- the per-worker cache of features and answers ------------------------------------------
@dataclass
class CachedScore:
    """What one account's features and /score answer were at one cutoff and store watermark.

    Attributes
    ----------
    watermark : tuple of int
        :meth:`serving.store.EventStore.watermarks` of the account when its events were read.
    frame : DataFrame or None
        The feature batch holding the account's row (``None`` when it could not be scored).
    position : int
        The row's position in ``frame``.
    result : Answer
        The /score answer (or ``{"account_id", "error"}``), pre-serialised; a JSON-ready dict
        given here is serialised once.
    """

    watermark: tuple[int, int]
    frame: pd.DataFrame | None
    position: int
    result: Answer

    def __post_init__(self):
        if not isinstance(self.result, Answer):
            self.result = Answer.of(self.result)


class FeatureCache:
    """Per-worker cache keyed by (cutoff, account_id, the account's event-store watermark).

    A lookup hits only when the account's watermark equals the one its features were computed
    at, so a committed event, group call or trait change for the account makes the next lookup
    miss and the account is recomputed by the pipeline's query: the cache can be stale in
    nothing but the time since the cutoff, which callers bound by rounding "now" up to a
    granularity (see ``serving.service``). Thread-safe; at most ``max_cutoffs`` cutoffs are kept,
    least recently used dropped first.

    Examples
    --------
    >>> cache = FeatureCache()
    >>> t = pd.Timestamp("2024-06-01")
    >>> cache.put(t, {"a1": CachedScore((3, 17), None, 0, {"account_id": "a1", "score": 40})})
    >>> cache.get(t, "a1", (3, 17)).result["score"], cache.get(t, "a1", (4, 18))
    (40, None)
    >>> cache.stats()
    {'hits': 1, 'misses': 1, 'cutoffs': 1, 'entries': 1}
    """

    def __init__(self, max_cutoffs: int = 4):
        self.max_cutoffs = max_cutoffs
        self._by_cutoff: OrderedDict[pd.Timestamp, dict[str, CachedScore]] = OrderedDict()
        self._warmed: set[pd.Timestamp] = set()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, cutoff: pd.Timestamp, account_id: str, watermark) -> CachedScore | None:
        """The entry for ``account_id`` at ``cutoff`` if computed at ``watermark``, else None."""
        with self._lock:
            entries = self._by_cutoff.get(cutoff)
            entry = entries.get(account_id) if entries is not None else None
            if entry is None or watermark is None or entry.watermark != tuple(watermark):
                self.misses += 1
                return None
            self._by_cutoff.move_to_end(cutoff)
            self.hits += 1
            return entry

    def peek(self, cutoff: pd.Timestamp, account_id: str, watermark) -> CachedScore | None:
        """Like :meth:`get` but counts nothing (the caller counts with :meth:`count`)."""
        with self._lock:
            entries = self._by_cutoff.get(cutoff)
            entry = entries.get(account_id) if entries is not None else None
            if entry is None or watermark is None or entry.watermark != tuple(watermark):
                return None
            self._by_cutoff.move_to_end(cutoff)
            return entry

    def stale(self, cutoff: pd.Timestamp, watermarks: dict) -> list[str]:
        """Accounts of ``watermarks`` whose entry at ``cutoff`` is missing or older than their watermark."""
        with self._lock:
            entries = dict(self._by_cutoff.get(cutoff, {}))
        return [aid for aid, wm in watermarks.items()
                if (e := entries.get(aid)) is None or e.watermark != tuple(wm)]

    def count(self, hits: int = 0, misses: int = 0) -> None:
        """Add to the hit and miss counters (for look-ups made with :meth:`peek`)."""
        with self._lock:
            self.hits += hits
            self.misses += misses

    def put(self, cutoff: pd.Timestamp, entries: dict[str, CachedScore], warmed: bool = False) -> None:
        """Store ``entries`` at ``cutoff``; ``warmed`` marks the cutoff as covering the whole store.

        An entry never replaces one computed at a newer watermark (a slow warm-up that read the
        store before a request's recomputation must not undo it).
        """
        with self._lock:
            current = self._by_cutoff.setdefault(cutoff, {})
            for aid, entry in entries.items():
                old = current.get(aid)
                if old is None or old.watermark <= entry.watermark:
                    current[aid] = entry
            if warmed:
                self._warmed.add(cutoff)
            self._by_cutoff.move_to_end(cutoff)
            while len(self._by_cutoff) > self.max_cutoffs:
                dropped, _ = self._by_cutoff.popitem(last=False)
                self._warmed.discard(dropped)

    def warmed(self, cutoff: pd.Timestamp) -> bool:
        """True when a warm-up has filled ``cutoff`` for every account of the store."""
        with self._lock:
            return cutoff in self._warmed

    def stats(self) -> dict:
        """Hits, misses, cutoffs and entries held (for logs and the benchmark)."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "cutoffs": len(self._by_cutoff),
                    "entries": sum(len(e) for e in self._by_cutoff.values())}
