"""Point-in-time feature pipeline: one Ibis definition, executed by DuckDB, Spark or in-process online.

For every account ``a`` and cutoff ``T`` the pipeline computes features from events with
``timestamp < T`` only. The same :func:`build_feature_table` expression is used for training
snapshots (``compute_features``), for Spark at scale (``engine="pyspark"``) and by serving for a
few accounts (``online_features``), so training and serving cannot drift apart.

How it stays cheap (and leak-free)
----------------------------------
* Events are cut into *buckets* by the cutoffs: bucket ``b`` holds events with
  ``T[b-1] <= timestamp < T[b]``; events after the last cutoff are dropped up front, which is
  what makes the features blind to the future. Two narrow group-bys read the events, each
  keyed by no more than its features need: per (account, user, bucket) for activity, raw
  counts and demand gen, and per (account, user, milestone, bucket) over milestone events
  only (plus the n-th-event window of ``min_count`` rules). Every per-cutoff count is then a
  cumulative sum over buckets ``<= k``: per-(account, bucket) rows are pivoted wide first and
  then joined on equality to a tiny ``(bucket, k, factor)`` table, never a cross or inequality
  join of big tables.
* DuckDB-specific costs shape the SQL (see docs/performance.md): conditional aggregates are
  ``agg(CASE WHEN ...)`` rather than ``FILTER (WHERE ...)``, counts are summed as DOUBLE, and
  each wide source is accumulated on its own rather than through a null-padded union.
* Decay is cumulative too: ``sum exp(-ln2 (T_k - t) / h) = sum_b exp(-ln2 (T_k - T_b) / h) S_b``
  with ``S_b`` the decayed sum of bucket ``b`` measured at its own end ``T_b`` (no overflow).
* A milestone's ``reached_at`` (when its ``min_count``-th qualifying event happened and
  ``min_users`` distinct users had done it) depends only on history before it, so it is computed
  once per account and compared with each cutoff.

Example
-------
>>> import pandas as pd
>>> from features.spec import MilestoneSpec
>>> spec = MilestoneSpec.model_validate({"milestones": [
...     {"name": "invited", "category": "collaboration", "label": "invited a teammate",
...      "event": "teammate_invited"}]})
>>> events = pd.DataFrame({"user_id": ["u1"], "account_id": ["a1"], "event": ["teammate_invited"],
...     "timestamp": pd.to_datetime(["2024-01-02"]), "message_id": [None], "source": ["product"],
...     "properties": [None]})
>>> row = online_features(events, spec, pd.Timestamp("2024-01-05"))
>>> int(row["ms__invited__count"].iloc[0]), float(row["ms__invited__days_since_first"].iloc[0])
(1, 3.0)
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from features.schema import (
    ACCOUNT_RESERVED,
    CONVERSION_COLUMNS,
    EVENT_COLUMNS,
    LABEL_COLUMN,
    SNAPSHOT_KEYS,
)
from features.schema import fit_columns as _schema_fit_columns
from features.spec import CATEGORIES, MilestoneSpec

__all__ = [
    "FeatureSet",
    "MILESTONE_STATS",
    "WARNING_STATS",
    "build_feature_table",
    "compute_features",
    "compute_features_from_files",
    "online_features",
    "feature_manifest",
    "feature_columns",
    "resolve_cutoffs",
]

#: Per-milestone statistics, in column order.
MILESTONE_STATS = ("reached", "count", "users", "days_since_first", "days_since_last", "decayed")
#: Per-warning-sign statistics, in column order (``ws__<name>__<stat>``).
WARNING_STATS = ("reached", "count", "days_since_last", "decayed")
_LN2 = math.log(2.0)
_DAY = 86400.0
Materialize = Callable[[ir.Table], ir.Table]


@dataclass(frozen=True)
class FeatureSet:
    """Snapshot features and the manifest describing their columns.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per (account_id, cutoff), sorted by cutoff then account_id: keys, ``label``, features.
    manifest : pandas.DataFrame
        Columns ``name, family, milestone, description, dtype``, one row per feature column, in order.
    """

    frame: pd.DataFrame
    manifest: pd.DataFrame

    def rows_per_cutoff(self) -> pd.DataFrame:
        """Rows and positives per cutoff (what the CLI prints)."""
        g = self.frame.groupby("cutoff", sort=True)[LABEL_COLUMN]
        return pd.DataFrame({"rows": g.size(), "positives": g.sum().astype("int64")}).reset_index()


# --------------------------------------------------------------------------------------------
# Column naming and the manifest (pure Python, shared by batch, online and explanations)
# --------------------------------------------------------------------------------------------

def _activity_families(spec: MilestoneSpec) -> list[str]:
    return list(spec.settings.activity_events)


def _dg_name(event: str) -> str:
    # Marketing event names come from data; keep column names identifier-like and stable.
    safe = "".join(ch if ch.isalnum() else "_" for ch in str(event).strip().lower()).strip("_")
    return f"dg__{safe or 'event'}__decayed"


#: Description and dtype of each per-rule statistic (``{what}`` is the rule's label).
_STAT_WORDS = {
    "reached": ("has {what}", "bool"),
    "count": ("number of times the account {what}", "int64"),
    "users": ("number of users who {what}", "int64"),
    "days_since_first": ("days since the account first {what}", "float64"),
    "days_since_last": ("days since a user last {what}", "float64"),
    "decayed": ("recent activity: {what} (weighted, half-life {hl:g} days)", "float64"),
}
#: Where a warning sign's wording differs from a milestone's.
_WARNING_WORDS = {"reached": "warning sign: {what}",
                  "decayed": "recent warning sign: {what} (weighted, half-life {hl:g} days)"}


def _rule_rows(prefix: str, family: str, name: str, label: str, stats: Sequence[str], hl: float,
               words: dict[str, str] | None = None) -> list[tuple[str, str, str, str, str]]:
    """Manifest rows ``<prefix>__<name>__<stat>`` of one milestone or warning sign."""
    words = words or {}
    return [(f"{prefix}__{name}__{stat}", family, name,
             words.get(stat, _STAT_WORDS[stat][0]).format(what=label, hl=hl), _STAT_WORDS[stat][1])
            for stat in stats]


def feature_columns(spec: MilestoneSpec, fit_columns: Sequence[str] = (),
                    marketing_events: Iterable[str] = ()) -> list[str]:
    """Feature column names in their stable order (keys and label not included)."""
    return list(feature_manifest(spec, fit_columns, marketing_events)["name"])


def feature_manifest(spec: MilestoneSpec, fit_columns: Sequence[str] | None = None,
                     marketing_events: Iterable[str] | None = None,
                     fit_dtypes: dict[str, str] | None = None) -> pd.DataFrame:
    """Describe every feature column: name, family, milestone, description, dtype.

    Descriptions are plain words built from the milestone labels, so explanations can reuse them.

    Parameters
    ----------
    spec : MilestoneSpec
        The milestone file.
    fit_columns : list of str
        Fit attributes of the accounts table (without the ``fit__`` prefix).
    marketing_events : iterable of str
        Marketing event names that get a ``dg__<event>__decayed`` column.
    fit_dtypes : dict, optional
        pandas dtype per fit attribute (default ``category``).

    Examples
    --------
    >>> from features.spec import MilestoneSpec
    >>> spec = MilestoneSpec.model_validate({"milestones": [{"name": "invited",
    ...     "category": "collaboration", "label": "invited a teammate", "event": "invite"}]})
    >>> m = feature_manifest(spec, ["industry"], ["email_click"])
    >>> m.loc[m.name == "ms__invited__count", "description"].item()
    'number of times the account invited a teammate'
    >>> sorted(set(m.family))  # no sequences in this spec
    ['account', 'activity', 'demand_gen', 'fit', 'milestone']
    """
    fit_columns = list(fit_columns or [])
    fit_dtypes = fit_dtypes or {}
    hl = spec.settings.half_life_days
    rows: list[tuple[str, str, str | None, str, str]] = []
    for m in spec.milestones:
        rows += _rule_rows("ms", "milestone", m.name, m.label, MILESTONE_STATS, hl)
    for s in spec.sequences:
        rows += [
            (f"seq__{s.name}__completed", "sequence", s.name, f"completed in order: {s.wording}", "bool"),
            (f"seq__{s.name}__days_since", "sequence", s.name, f"days since completing: {s.wording}", "float64"),
        ]
    for w in spec.warning_signs:
        rows += _rule_rows("ws", "warning", w.name, w.label, WARNING_STATS, hl, _WARNING_WORDS)
    rows += [
        ("acct__active_users_7d", "account", None, "users active in the last 7 days", "int64"),
        ("acct__active_users_30d", "account", None, "users active in the last 30 days", "int64"),
        ("acct__share_users_activated", "account", None,
         "share of the account's users who reached an activation milestone", "float64"),
    ]
    rows += [(f"acct__users_{c}", "account", None, f"users who reached a {c} milestone", "int64")
              for c in CATEGORIES]
    rows += [(f"fit__{c}", "fit", None, f"account {c.replace('_', ' ')}", fit_dtypes.get(c, "category"))
             for c in fit_columns]
    rows += [(_dg_name(e), "demand_gen", None, f"recent marketing touches: {e} (weighted, half-life {hl:g} days)",
              "float64") for e in sorted(set(marketing_events or []))]
    rows += [(f"raw__{f}", "activity", None, f"raw count of {f.replace('_', ' ')} events (baseline only)", "int64")
             for f in _activity_families(spec)]
    rows.append(("raw__all_events", "activity", None, "raw count of all product events (baseline only)", "int64"))
    return pd.DataFrame(rows, columns=["name", "family", "milestone", "description", "dtype"])


# --------------------------------------------------------------------------------------------
# Expression building blocks
# --------------------------------------------------------------------------------------------

def _where_predicate(properties: ir.StringColumn, where: dict[str, Any]) -> ir.BooleanValue:
    """``{key: value or [values]}`` on JSON-object text, portable across DuckDB and Spark.

    DuckDB renders a JSON string value as ``"pro"`` and Spark's ``get_json_object`` as ``pro``;
    stripping one pair of surrounding quotes makes both compare equal to the plain value.
    """
    doc = properties.cast("json")
    conds = []
    for key, wanted in where.items():
        options = wanted if isinstance(wanted, list) else [wanted]
        text = doc[str(key)].cast("string").re_replace(r'^"(.*)"$', r"\1")
        conds.append(text.isin([_json_text(v) for v in options]).fill_null(False))
    return ibis.and_(*conds)


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # True -> 'true', 3 -> '3', 2.5 -> '2.5', None -> 'null'


def _cases(pairs: list[tuple[ir.BooleanValue, Any]], else_=None):
    return ibis.cases(*pairs, else_=else_)


def _epoch(ts) -> ir.FloatingValue:
    return ts.epoch_seconds().cast("float64")


class _Plan:
    """Everything that depends only on the cutoffs and the spec (bucket bounds, decay factors)."""

    def __init__(self, cutoffs: Sequence[pd.Timestamp], half_life_days: float):
        cuts = sorted({pd.Timestamp(c) for c in cutoffs})
        if not cuts:
            raise ValueError("at least one cutoff is needed")
        self.cutoffs = cuts
        self.epochs = [c.timestamp() if c.tz else (c - pd.Timestamp(0)).total_seconds() for c in cuts]
        self.rate = _LN2 / half_life_days / _DAY  # per second
        # serving/online.py recognises this table by its columns (k, cutoff, t_epoch): keep them.
        self.table = ibis.memtable(pd.DataFrame({
            "k": pd.Series(range(len(cuts)), dtype="int64"),
            "cutoff": pd.Series(cuts, dtype="datetime64[us]"),
            "t_epoch": pd.Series(self.epochs, dtype="float64"),
        }))
        # One row per (bucket b, cutoff k) with b <= k and the decay from T_b to T_k. An equality
        # join with it turns per-bucket rows into cumulative per-cutoff rows; an inequality join
        # (bucket <= k) makes DuckDB fall back to a nested-loop join.
        pairs = [(b, k, math.exp(-self.rate * (self.epochs[k] - self.epochs[b])))
                 for k in range(len(cuts)) for b in range(k + 1)]
        self.pairs = ibis.memtable(pd.DataFrame({
            "bucket": pd.Series([p[0] for p in pairs], dtype="int64"),
            "k": pd.Series([p[1] for p in pairs], dtype="int64"),
            "factor": pd.Series([p[2] for p in pairs], dtype="float64"),
        }))

    def bucket(self, ts):
        """Index of the first cutoff strictly after ``ts`` (null when after the last cutoff)."""
        return _cases([(ts < ibis.literal(c.to_pydatetime(), type="timestamp"), i)
                       for i, c in enumerate(self.cutoffs)]).cast("int64")

    def bucket_epoch(self, bucket):
        return _cases([(bucket == i, ibis.literal(e, type="float64")) for i, e in enumerate(self.epochs)])

    def decay(self, t: ir.Table) -> ir.FloatingValue:
        """Decay of each event of ``t`` measured at the end of its own bucket (never overflows);
        the pairs table's factor carries it on to later cutoffs:
        exp(-r (T_k - t)) = exp(-r (T_k - T_b)) exp(-r (T_b - t)). Used inside aggregates, so an
        engine computes it only for the rows an aggregate's condition keeps."""
        return ((self.bucket_epoch(t.bucket) - _epoch(t.timestamp)) * (-self.rate)).exp()

    def cutoff_literal(self, k: int) -> ir.TimestampValue:
        return ibis.literal(self.cutoffs[k].to_pydatetime(), type="timestamp")

    def epoch_literal(self, k: int) -> ir.FloatingValue:
        return ibis.literal(self.epochs[k], type="float64")

    def cumulate(self, t: ir.Table, keys: list[str], aggregates: Callable[[ir.Table], dict]) -> ir.Table:
        """Per cutoff ``k``: aggregate the rows of buckets ``<= k``; ``factor`` decays bucket sums to T_k."""
        j = t.join(self.pairs, "bucket")
        return j.group_by([*keys, "k"]).aggregate(**aggregates(j))


def _left(left: ir.Table, right: ir.Table, keys: list[str]) -> ir.Table:
    """Left join keeping the left keys and the right's other columns (no ``_right`` duplicates)."""
    left, right = left.view(), right.view()
    j = left.left_join(right, keys)
    return j.select(*[left[c] for c in left.columns], *[right[c] for c in right.columns if c not in keys])


def _identity(t: ir.Table) -> ir.Table:
    return t


def _only(condition: ir.BooleanValue, value: ir.Value) -> ir.Value:
    """``value`` where ``condition`` holds, else null (for conditional aggregates)."""
    return ibis.ifelse(condition, value, ibis.null().cast(value.type()))


def _union(parts: list[ir.Table]) -> ir.Table:
    """UNION ALL with the first part's column types (a table read back from an engine's cache
    may type a literal differently, e.g. Spark's int32 for an int64 literal)."""
    if len(parts) == 1:
        return parts[0]
    schema = parts[0].schema()
    return ibis.union(*[p if p.schema() == schema else p.cast(schema) for p in parts])


#: Offset of the category keys in the long per-bucket table (milestones use their index).
_CAT_KEY = 1_000_000


def build_feature_table(events: ir.Table, accounts: ir.Table, conversions: ir.Table,
                        spec: MilestoneSpec, cutoffs: Sequence[pd.Timestamp], *,
                        fit_columns: list[str] | None = None,
                        marketing_events: list[str] | None = None,
                        only_unconverted: bool = True, with_label: bool = True,
                        materialize: Materialize | None = None) -> ir.Table:
    """Build the point-in-time feature expression (nothing is executed unless noted).

    Parameters
    ----------
    events : ibis.Table
        Canonical events with a resolved ``account_id``; rows with a null ``account_id`` are ignored.
    accounts : ibis.Table
        Canonical accounts (``account_id``, ``created_at`` and fit attributes).
    conversions : ibis.Table
        ``account_id, converted_at``.
    spec : MilestoneSpec
        The milestone file.
    cutoffs : list of pandas.Timestamp
        Snapshot times T (naive UTC).
    fit_columns : list of str, optional
        Fit attributes to carry (default: every non-reserved accounts column).
    marketing_events : list of str, optional
        Marketing events with a demand-gen column. ``None`` runs one small ``DISTINCT`` query to
        find them (the only execution this function may do); pass them to keep it purely lazy.
    only_unconverted : bool
        Training snapshots (True): only accounts that had not converted before T and whose
        ``accounts.ended_at`` (when the table has it) is null or after T. Scoring (False): every
        account that had started.
    with_label : bool
        Compute ``label`` = converted in (T, T + horizon]; otherwise ``label`` is null.
    materialize : callable, optional
        Hook applied to the intermediate tables that are used more than once (e.g. a DuckDB
        temp table) so an engine does not recompute them for each use. Default: leave them lazy.

    Returns
    -------
    ibis.Table
        ``account_id, cutoff, label`` then the feature columns of :func:`feature_manifest`,
        in no particular row order.
    """
    mat = materialize or _identity
    plan = _Plan(cutoffs, spec.settings.half_life_days)
    n_cuts = len(plan.cutoffs)
    horizon = pd.Timedelta(days=spec.settings.horizon_days)
    if fit_columns is None:
        fit_columns = _schema_fit_columns(accounts.columns)
    if marketing_events is None:
        marketing_events = _marketing_events(events)
    marketing_events = sorted(set(marketing_events))
    milestones = list(spec.milestones)
    warning_signs = list(spec.warning_signs)
    # Warning signs have the same rule fields, so they ride along every milestone step (indices
    # after the milestones'); only the per-user and per-category counts leave them out.
    tracked = [*milestones, *warning_signs]
    index = {m.name: i for i, m in enumerate(tracked)}
    cat_index = {c: i for i, c in enumerate(CATEGORIES)}
    # Milestone parameters as a small table: one join/window serves every milestone, so the plan
    # does not grow with the number of milestones.
    params = ibis.memtable(pd.DataFrame({
        "mi": pd.Series(range(len(tracked)), dtype="int64"),
        "cat_key": pd.Series([_CAT_KEY + cat_index.get(getattr(m, "category", None), len(CATEGORIES))
                              for m in tracked], dtype="int64"),
        "min_count": pd.Series([m.min_count for m in tracked], dtype="int64"),
        "min_users": pd.Series([m.min_users for m in tracked], dtype="int64")}))
    counted = [index[m.name] for m in tracked if m.min_count > 1]
    crowd = [index[m.name] for m in tracked if m.min_users > 1]

    # --- events before the last cutoff: the only place the future is cut away. Bucket b holds
    # the events in [T_{b-1}, T_b); per-cutoff values are sums over buckets <= k. Two narrow
    # passes read the events (per user and bucket; milestone events only), each grouping by no
    # more keys than its features need: one wide (account, user, event, bucket) pass would make
    # a table nearly as long as the events that every later step then re-reads.
    last_cut = ibis.literal(plan.cutoffs[-1].to_pydatetime(), type="timestamp")
    ev = events.filter(events.account_id.notnull() & (events.timestamp < last_cut))
    ev = ev.mutate(is_mkt=ev.source.fill_null("product") == "marketing", bucket=plan.bucket(ev.timestamp))
    product = ev.filter(~ev.is_mkt)

    # --- pass 1, per (account, user, bucket): first and last product event, and the raw
    # activity-family counts and demand-gen touches, added up per (account, bucket) further down
    # (one scan for both: a second hash pass over all events cost more than the wider groups)
    one = ibis.literal(1.0, type="float64")
    fam = spec.settings.activity_events
    prod_row, mkt_row = ~ev.is_mkt, ev.is_mkt
    ub = mat(ev.group_by("account_id", "user_id", "bucket").aggregate(
        first_ts=_only(prod_row, ev.timestamp).min(), last_ts=_only(prod_row, ev.timestamp).max(),
        **{f"raw__{f}": _only(prod_row & ev.event.isin(list(evs)), one).sum() for f, evs in fam.items()},
        **{_dg_name(e): _only(mkt_row & (ev.event == e), plan.decay(ev)).sum() for e in marketing_events},
        raw__all_events=_only(prod_row, one).sum()))
    # per (account, user): first product event and the last one before each cutoff
    pu = ub.filter(ub.first_ts.notnull())
    users = pu.group_by("account_id", "user_id").aggregate(
        first_ts=pu.first_ts.min(),
        **{f"last_{k}": _only(pu.bucket <= k, pu.last_ts).max() for k in range(n_cuts)})
    activity_aggs: dict[str, ir.Value] = {"first_product": users.first_ts.min()}
    for k in range(n_cuts):
        last = users[f"last_{k}"]
        age = (plan.epoch_literal(k) - _epoch(last)) / _DAY
        activity_aggs[f"a7_{k}"] = (age <= 7).sum()  # last event in [T - 7d, T)
        activity_aggs[f"a30_{k}"] = (age <= 30).sum()
        activity_aggs[f"seen_{k}"] = last.count()
    activity = mat(users.group_by("account_id").aggregate(**activity_aggs))

    # --- account start: CRM created_at, else first product event (min < T iff any event < T)
    acct_cols = ["account_id", "created_at", *fit_columns]
    acc = accounts.select(*[c for c in acct_cols if c in accounts.columns])
    first_product = activity.select("account_id", "first_product")
    universe = acc.select("account_id").union(first_product.select("account_id"), distinct=True)
    started = _left(_left(universe, acc.select("account_id", "created_at"), ["account_id"]),
                    first_product, ["account_id"])
    started = started.select("account_id",
                             start=ibis.coalesce(started.created_at.cast("timestamp"), started.first_product))
    started = mat(started.filter(started.start.notnull()))

    # --- pass 2, milestone events: qualifying rows reduced per (account, user, milestone, bucket)
    q = _qualifying(product, tracked, index, started)
    mlong = mat(q.group_by("account_id", "user_id", "mi", "bucket").aggregate(
        n=q.count(), first_ts=q.timestamp.min(), last_ts=q.timestamp.max(), s=plan.decay(q).sum()))
    per_user = mat(mlong.group_by("account_id", "mi", "user_id").aggregate(
        user_first=mlong.first_ts.min(), user_bucket=mlong.bucket.min()))
    # the n-th qualifying event of a min_count rule needs event-level rows again, only its own
    qev = _qualifying(product, [m for m in tracked if index[m.name] in counted], index, started) \
        if counted else None

    # --- reached_at per (account, milestone): cutoff-independent (depends on history before it)
    # materialised, so the final query reads no events at all: when it did read them twice,
    # DuckDB spooled the whole event scan as a CTE (1.5 s, docs/performance.md)
    reached = mat(_reached_at(per_user, qev, params, counted, crowd))
    reached_wide = reached.group_by("account_id").aggregate(**{
        f"ra_{i}": _only(reached.mi == i, reached.reached_at).max() for i in range(len(tracked))})

    # --- every per-(account, bucket) quantity, pivoted to one wide row per (account, bucket) from
    # each source, then accumulated over buckets <= k by ONE join with the pairs table. Pivoting
    # before the join keeps the rows x columns the aggregates touch small; CASE inside plain
    # aggregates, not FILTER clauses: DuckDB runs dozens of FILTERed aggregates in one large
    # GROUP BY an order of magnitude slower.
    n_ms = range(len(milestones))
    n_tracked = range(len(tracked))
    raw_cols = [f"raw__{f}" for f in fam] + ["raw__all_events"]
    dg_cols = [_dg_name(e) for e in marketing_events]
    cat_cols = [f"acct__users_{c}" for c in CATEGORIES]
    # counts are summed as DOUBLE (exact below 2**53): DuckDB's BIGINT sum keeps a slow HUGEINT state
    n_float, s_float = mlong.n.cast("float64"), mlong.s
    by_milestone = mlong.group_by("account_id", "bucket").aggregate(**{
        name: expr for i in n_tracked for name, expr in (
            (f"c_{i}", _only(mlong.mi == i, n_float).sum()),
            (f"l_{i}", _only(mlong.mi == i, mlong.last_ts).max()),
            (f"d_{i}", _only(mlong.mi == i, s_float).sum()))})
    # per-user and per-category counts are about milestones (a warning sign has no category)
    ms_users, ms_long = per_user, mlong
    if warning_signs:
        ms_users = per_user.filter(per_user.mi < len(milestones))
        ms_long = mlong.filter(mlong.mi < len(milestones))
    # a user counts from the bucket of their first qualifying event on
    new_users = ms_users.group_by("account_id", bucket=ms_users.user_bucket).aggregate(**{
        f"u_{i}": _only(ms_users.mi == i, one).sum() for i in n_ms})
    user_cat = _user_category_bucket(ms_users, ms_long, params, [i for i in counted if i < len(milestones)], plan)
    cat_users = user_cat.group_by("account_id", "bucket").aggregate(**{
        f"acct__users_{c}": _only(user_cat.cat_key == _CAT_KEY + i, one).sum() for c, i in cat_index.items()})
    # --- per (account, bucket): raw activity families, demand gen and all product events
    raw_dg = ub.group_by("account_id", "bucket").aggregate(
        **{c: ub[c].sum() for c in [*raw_cols, *dg_cols]})

    # each part accumulated on its own: a union would make every row carry every column
    parts = [
        plan.cumulate(by_milestone, ["account_id"], lambda j: {
            **{f"c_{i}": j[f"c_{i}"].sum() for i in n_tracked}, **{f"l_{i}": j[f"l_{i}"].max() for i in n_tracked},
            **{f"d_{i}": (j[f"d_{i}"] * j.factor).sum() for i in n_tracked}}),
        plan.cumulate(new_users, ["account_id"], lambda j: {f"u_{i}": j[f"u_{i}"].sum() for i in n_ms}),
        plan.cumulate(cat_users, ["account_id"], lambda j: {c: j[c].sum() for c in cat_cols}),
        plan.cumulate(raw_dg, ["account_id"], lambda j: {
            **{c: j[c].sum() for c in raw_cols}, **{c: (j[c] * j.factor).sum() for c in dg_cols}}),
    ]

    # --- snapshot rows: accounts started before T (and, for training, not converted before T
    # and not ended by T: an expired trial or a churned account is no longer a candidate, and
    # keeping it as a label-0 row forever inflates AUC and shifts the base rate)
    conv = conversions.group_by("account_id").aggregate(first_conv=conversions.converted_at.min())
    snap = _left(started, conv, ["account_id"])
    ends = only_unconverted and "ended_at" in accounts.columns
    if ends:
        ended = accounts.filter(accounts.ended_at.notnull())
        ended = ended.group_by("account_id").aggregate(ended_at=ended.ended_at.cast("timestamp").min())
        snap = _left(snap, ended, ["account_id"])
    snap, cuts = snap.view(), plan.table.view()
    snap = snap.join(cuts, snap.start < cuts.cutoff)
    snap = snap.select("account_id", "k", "cutoff", "t_epoch", "first_conv",
                       *(["ended_at"] if ends else []))
    if only_unconverted:
        snap = snap.filter(snap.first_conv.isnull() | (snap.first_conv >= snap.cutoff))
    if ends:
        snap = snap.filter(snap.ended_at.isnull() | (snap.ended_at > snap.cutoff))
    if with_label:
        label = (snap.first_conv.notnull() & (snap.first_conv > snap.cutoff)
                 & (snap.first_conv <= snap.cutoff + ibis.interval(seconds=int(horizon.total_seconds()))))
        if not only_unconverted:
            # Scoring rows may have converted before T; the label is then undefined.
            label = ibis.ifelse(snap.first_conv < snap.cutoff, ibis.null(), label)
        snap = snap.mutate(label=label.cast("int64"))
    else:
        snap = snap.mutate(label=ibis.null().cast("int64"))

    # one join chain (a single flat SELECT): nesting a select per join made the SQL, and the
    # time to compile it, grow with every part
    rights = [(part, ["account_id", "k"]) for part in parts]
    rights += [(reached_wide, ["account_id"]), (activity.drop("first_product"), ["account_id"])]
    if fit_columns:
        # prefixed here: a fit attribute named like an internal column ("k", "label") must not
        # be silently renamed by the join
        rights.append((acc.select("account_id", **{f"fit__{c}": acc[c] for c in fit_columns}), ["account_id"]))
    x = snap
    for i, (right, keys) in enumerate(rights):
        x = x.left_join(right, keys, rname=f"{{name}}_r{i}")

    cols: dict[str, ir.Value] = {"account_id": x.account_id, "cutoff": x.cutoff, LABEL_COLUMN: x.label}

    def days_to_t(ts):
        return (x.t_epoch - _epoch(ts)) / _DAY

    def at_k(prefix: str):
        # per-account columns computed for every cutoff: pick this row's
        return _cases([(x.k == k, x[f"{prefix}_{k}"]) for k in range(n_cuts)])

    for m in milestones:
        i = index[m.name]
        ra = x[f"ra_{i}"]
        hit = ra.notnull() & (ra < x.cutoff)
        cols[f"ms__{m.name}__reached"] = hit.fill_null(False)
        cols[f"ms__{m.name}__count"] = x[f"c_{i}"].fill_null(0).cast("int64")
        cols[f"ms__{m.name}__users"] = x[f"u_{i}"].fill_null(0).cast("int64")
        cols[f"ms__{m.name}__days_since_first"] = ibis.ifelse(hit, days_to_t(ra), ibis.null()).cast("float64")
        cols[f"ms__{m.name}__days_since_last"] = days_to_t(x[f"l_{i}"]).cast("float64")
        cols[f"ms__{m.name}__decayed"] = x[f"d_{i}"].fill_null(0.0).cast("float64")
    for s in spec.sequences:
        done_at = _sequence_completed_at([x[f"ra_{index[st]}"] for st in s.steps], s.within_days)
        done = done_at.notnull() & (done_at < x.cutoff)
        cols[f"seq__{s.name}__completed"] = done.fill_null(False)
        cols[f"seq__{s.name}__days_since"] = ibis.ifelse(done, days_to_t(done_at), ibis.null()).cast("float64")
    for w in warning_signs:
        i = index[w.name]
        ra = x[f"ra_{i}"]
        cols[f"ws__{w.name}__reached"] = (ra.notnull() & (ra < x.cutoff)).fill_null(False)
        cols[f"ws__{w.name}__count"] = x[f"c_{i}"].fill_null(0).cast("int64")
        cols[f"ws__{w.name}__days_since_last"] = days_to_t(x[f"l_{i}"]).cast("float64")
        cols[f"ws__{w.name}__decayed"] = x[f"d_{i}"].fill_null(0.0).cast("float64")
    cols["acct__active_users_7d"] = at_k("a7").fill_null(0).cast("int64")
    cols["acct__active_users_30d"] = at_k("a30").fill_null(0).cast("int64")
    seen = at_k("seen").fill_null(0)
    activated = x.acct__users_activation.fill_null(0)
    cols["acct__share_users_activated"] = ibis.ifelse(
        seen > 0, activated.cast("float64") / seen.cast("float64"), 0.0)
    for c in CATEGORIES:
        cols[f"acct__users_{c}"] = x[f"acct__users_{c}"].fill_null(0).cast("int64")
    for c in fit_columns:
        cols[f"fit__{c}"] = x[f"fit__{c}"]
    for c in dg_cols:
        cols[c] = x[c].fill_null(0.0).cast("float64")
    for c in raw_cols:
        cols[c] = x[c].fill_null(0).cast("int64")
    # Unordered: sorting 300k wide rows in the engine costs more than in pandas, and every
    # caller goes through _finish, which sorts by (cutoff, account_id).
    return x.select(**cols)


def _qualifying(product: ir.Table, milestones: list, index: dict[str, int], started: ir.Table) -> ir.Table:
    """Event-level rows ``(account_id, user_id, mi, timestamp, bucket)``: one per product
    event and milestone whose rule (event list, ``where``, ``within_days``) it meets.

    One scan and one join with an (event, milestone) table serve every milestone; an event can
    count for several. Rule conditions are a CASE on the milestone, so each row evaluates only
    its own milestone's condition (the JSON ``where`` parse runs on that milestone's events only).
    """
    mapping = ibis.memtable(pd.DataFrame({
        "event": pd.Series([e for m in milestones for e in m.events], dtype="object"),
        "mi": pd.Series([index[m.name] for m in milestones for _ in m.events], dtype="int64")}))
    sub = product.filter(product.event.isin(sorted({e for m in milestones for e in m.events})))
    sub = sub.join(mapping, "event")
    if any(m.within_days for m in milestones):
        sub = _left(sub, started, ["account_id"])
    rules = []
    for m in milestones:
        cond = None
        if m.where:
            cond = _where_predicate(sub.properties, m.where)
        if m.within_days:
            near = sub.timestamp <= sub.start + ibis.interval(days=m.within_days)
            cond = near if cond is None else cond & near
        if cond is not None:
            rules.append((sub.mi == index[m.name], cond.fill_null(False)))
    if rules:
        sub = sub.filter(_cases(rules, else_=True))
    return sub.select("account_id", "user_id", "mi", "timestamp", "bucket")


def _nth(t: ir.Table, partition: list[str], order: list[str], n_col: str, value: str, out: str) -> ir.Table:
    """Rows holding the ``n_col``-th smallest ``value`` per partition (1-based; n varies per row)."""
    rn = ibis.row_number().over(group_by=[t[c] for c in partition], order_by=[t[c] for c in order])
    t = t.mutate(_rn=rn)
    return t.filter(t._rn + 1 == t[n_col]).select(*partition, **{out: t[value]})


def _reached_at(per_user: ir.Table, qev: ir.Table | None, params: ir.Table, counted: list[int],
                crowd: list[int]) -> ir.Table:
    """(account_id, mi, reached_at): when the min_count-th qualifying event had happened AND
    min_users distinct users had done it -- a property of the history before that moment."""
    # the min_users-th distinct user: a plain MIN unless the rule asks for several users
    alone = per_user.filter(~per_user.mi.isin(crowd)) if crowd else per_user
    parts = [alone.group_by("account_id", "mi").aggregate(users_t=alone.user_first.min())]
    if crowd:
        pu = per_user.filter(per_user.mi.isin(crowd)).join(params, "mi")
        parts.append(_nth(pu, ["account_id", "mi"], ["user_first", "user_id"], "min_users", "user_first",
                          "users_t"))
    users_t = _union([p.select("account_id", "mi", users_t=p.users_t.cast("timestamp")) for p in parts])
    if not counted:
        return users_t.select("account_id", "mi", reached_at=users_t.users_t)
    q = qev.filter(qev.mi.isin(counted)).join(params, "mi")
    count_t = _nth(q, ["account_id", "mi"], ["timestamp"], "min_count", "timestamp", "count_t")
    both = _left(users_t, count_t, ["account_id", "mi"])
    # GREATEST skips nulls on DuckDB and Spark: a rule whose min_count is not met must stay null
    later = ibis.ifelse(both.count_t.isnull(), ibis.null().cast("timestamp"),
                        ibis.greatest(both.users_t, both.count_t.cast("timestamp")))
    at = ibis.ifelse(both.mi.isin(counted), later, both.users_t)
    out = both.select("account_id", "mi", reached_at=at.cast("timestamp"))
    return out.filter(out.reached_at.notnull())


def _user_category_bucket(per_user: ir.Table, mlong: ir.Table, params: ir.Table,
                          counted: list[int], plan: _Plan) -> ir.Table:
    """(account_id, user_id, cat_key, bucket): the bucket in which a user alone first met a rule
    (its min_count) of that category. Buckets are monotone in time, so the earliest bucket is the
    bucket of the earliest time; for a min_count rule it is the first cutoff k at which the user's
    cumulative count over buckets <= k reaches min_count (no per-event window needed)."""
    once = per_user.filter(~per_user.mi.isin(counted)) if counted else per_user
    parts = [once.select("account_id", "user_id", "mi", bucket=once.user_bucket)]
    if counted:
        m = mlong.filter(mlong.mi.isin(counted))
        cum = plan.cumulate(m, ["account_id", "user_id", "mi"], lambda j: {"n": j.n.sum()}).join(params, "mi")
        met = cum.filter(cum.n >= cum.min_count)
        parts.append(met.group_by("account_id", "user_id", "mi").aggregate(bucket=met.k.min()))
    ur = _union(parts).join(params, "mi")
    return ur.group_by("account_id", "user_id", "cat_key").aggregate(bucket=ur.bucket.min())


def _sequence_completed_at(step_times: list[ir.TimestampValue], within_days: int) -> ir.TimestampValue:
    """Time the last step was reached, if every step came no earlier than the one before and
    the whole sequence took at most ``within_days``; else null."""
    ok = ibis.and_(*[t.notnull() for t in step_times])
    for a, b in zip(step_times, step_times[1:]):
        ok = ok & (a <= b)
    span = (_epoch(step_times[-1]) - _epoch(step_times[0])) <= within_days * _DAY
    ok = ok & span
    return ibis.ifelse(ok.fill_null(False), step_times[-1], ibis.null().cast("timestamp"))


def _marketing_events(events: ir.Table) -> list[str]:
    mk = events.filter(events.source == "marketing").select("event").distinct()
    return sorted(str(e) for e in mk.execute()["event"].dropna())


# --------------------------------------------------------------------------------------------
# Engines, inputs and outputs
# --------------------------------------------------------------------------------------------

def resolve_cutoffs(spec: MilestoneSpec, first_event, last_event) -> list[pd.Timestamp]:
    """The spec's cutoff schedule for data spanning ``first_event``..``last_event``."""
    return [pd.Timestamp(c) for c in spec.settings.cutoffs.resolve(
        pd.Timestamp(first_event), pd.Timestamp(last_event), spec.settings.horizon_days)]


#: What DuckDB accepts as a memory size, and nothing that could end the SET statement.
_MEMORY_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B|bytes)\s*$", re.IGNORECASE)


def _duckdb_connect(memory_limit: str | None = None, temp_directory: str | os.PathLike | None = None):
    """A DuckDB connection for one batch computation (the caller disconnects it).

    ``block_allocator_memory`` lets DuckDB keep the blocks it frees for reuse instead of handing
    them back to the operating system, up to a quarter of RAM or 2 GiB. Where memory touched
    again after being returned costs a page fault per page (VMs with free page reporting, see
    docs/performance.md) that saved ~0.45 s of 6.9 s on the 10M-event benchmark. The memory goes
    back when the connection closes. With a ``memory_limit`` it is left alone: memory kept back
    for reuse is what a limit is meant to cap (and DuckDB cannot lower it once a process set it).
    """
    if memory_limit is not None and not _MEMORY_SIZE.match(str(memory_limit)):
        raise ValueError(f"memory_limit: expected a size such as '512MB' or '4GB', got {memory_limit!r}")
    con = ibis.duckdb.connect()
    con.raw_sql("SET enable_progress_bar = false")  # rich shows progress instead
    if temp_directory is not None:
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        con.raw_sql(f"SET temp_directory = '{str(temp_directory).replace(chr(39), chr(39) * 2)}'")
    if memory_limit is not None:
        con.raw_sql(f"SET memory_limit = '{str(memory_limit).strip()}'")
        return con
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform says
        total = 8 << 30
    keep = min(2 << 30, total // 4)
    import duckdb

    try:
        con.raw_sql(f"SET block_allocator_memory = '{keep >> 20}MB'")
    except duckdb.Error as e:  # a speed knob only: a DuckDB build without it must still compute
        warnings.warn(f"DuckDB block_allocator_memory not set ({e}); features are computed anyway",
                      RuntimeWarning, stacklevel=2)
    return con


def _connect(engine: str, con=None):
    if con is not None:
        return con
    if engine == "duckdb":
        return _duckdb_connect()
    if engine == "pyspark":
        from pyspark.sql import SparkSession

        spark = (SparkSession.builder.master("local[2]").appName("pql-features")
                 .config("spark.ui.enabled", "false")
                 .config("spark.sql.shuffle.partitions", "8")
                 .config("spark.sql.session.timeZone", "UTC").getOrCreate())
        return ibis.pyspark.connect(spark)
    raise ValueError(f"unknown engine {engine!r}; expected 'duckdb' or 'pyspark'")


def _canonical(df: pd.DataFrame | None, columns: dict[str, str]) -> pd.DataFrame:
    """A frame with at least the canonical columns (missing ones null, typed)."""
    df = pd.DataFrame(columns=list(columns)) if df is None else df.copy()
    for c, dtype in columns.items():
        if c not in df.columns:
            df[c] = pd.Series([None] * len(df), index=df.index, dtype="object")
        try:
            df[c] = df[c].astype(dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"column '{c}' cannot be read as {dtype}: {e}") from None
    return df


def _plain_nulls(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.StringDtype) or out[c].dtype == object:
            out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


def _fill_accounts(events: pd.DataFrame, user_accounts: pd.DataFrame | None) -> pd.DataFrame:
    """Fill null event account_ids from identity resolution (explicit ids on the event win)."""
    if user_accounts is None or user_accounts.empty:
        return events
    try:
        from features.identity import attach_accounts  # the identity room's own join, when present
    except ImportError:  # pragma: no cover - identity not written yet
        attach_accounts = None
    if attach_accounts is not None:
        return attach_accounts(events, user_accounts)
    mapping = user_accounts.drop_duplicates("user_id").set_index("user_id")["account_id"]
    out = events.copy()
    out["account_id"] = out["account_id"].fillna(out["user_id"].map(mapping))
    return out


def _fit_dtypes(accounts: pd.DataFrame, fit_columns: list[str]) -> dict[str, str]:
    out = {}
    for c in fit_columns:
        s = accounts[c]
        out[c] = str(s.dtype) if (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)) \
            else "category"
    return out


def _arrow_frame(table) -> pd.DataFrame:
    """An engine's Arrow result as pandas, sorted by (cutoff, account_id), in one copy.

    Numeric, boolean and timestamp columns are gathered chunk by chunk straight into one new
    numpy array each (a chunk's values are read in place); only text columns go through Arrow's
    ``take``. Fresh memory dominates this step (first-touch page faults: see
    docs/performance.md), and Arrow's ``take`` over a chunked table, pandas' sort and its block
    consolidation each copied the 313k x 101 result once more: 1.8 s against 0.45 s.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table.to_pandas()
    order = pc.sort_indices(table, sort_keys=[("cutoff", "ascending"), ("account_id", "ascending")])
    order_np = order.to_numpy().astype(np.int64)
    layouts: dict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray]]] = {}

    def gather_plan(lengths: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
        # per chunk: the output rows it fills and their rows inside it (columns share a layout)
        if lengths not in layouts:
            bounds = np.cumsum([0, *lengths])
            which = np.searchsorted(bounds, order_np, side="right") - 1
            layouts[lengths] = [(rows, order_np[rows] - bounds[c])
                                for c, rows in enumerate(np.flatnonzero(which == c) for c in range(len(lengths)))]
        return layouts[lengths]

    columns: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name)
        kind = col.type
        plain = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) \
            or pa.types.is_timestamp(kind) and kind.tz is None
        if not plain:
            columns[name] = col.take(order).to_pandas()
            continue
        parts = [c.to_numpy(zero_copy_only=False) for c in col.chunks]
        out = np.empty(len(order_np), dtype=np.result_type(*(p.dtype for p in parts)))
        for part, (rows, inside) in zip(parts, gather_plan(tuple(len(p) for p in parts))):
            out[rows] = part[inside]
        columns[name] = out
    return pd.DataFrame(columns, copy=False)


def _finish(frame: pd.DataFrame, manifest: pd.DataFrame, *, presorted: bool = False) -> pd.DataFrame:
    """Deterministic dtypes (bools, int64 counts, float days, pandas categories for fit) and row
    order (cutoff, then account_id; ``presorted`` says the frame already has it).

    Only columns whose dtype differs are converted, in place of the old column, so a frame
    from :func:`_arrow_frame` is neither copied nor consolidated.
    """
    frame = frame.copy(deep=False)
    frame["account_id"] = frame["account_id"].astype("string")
    if frame["cutoff"].dtype != "datetime64[us]":
        frame["cutoff"] = frame["cutoff"].astype("datetime64[us]")
    for name, dtype in zip(manifest["name"], manifest["dtype"]):
        if name in frame.columns:
            original = col = frame[name]
        else:
            original, col = None, pd.Series(pd.NA if dtype != "float64" else float("nan"), index=frame.index,
                                            dtype="object")
        if dtype == "category":
            col = col.astype("string").astype("category")
        elif dtype == "bool":
            col = col if col.dtype == "bool" else col.fillna(False).astype("bool")
        elif col.dtype != dtype:
            col = col.astype(dtype)
        if col is not original:  # pandas hands out a new Series per frame[name]: compare with ours
            frame[name] = col
    out = frame[[*SNAPSHOT_KEYS, LABEL_COLUMN, *manifest["name"]]]
    if presorted:
        return out.reset_index(drop=True)
    # a stable sort on (cutoff, account code): what sort_values does, without comparing strings
    codes, _ = pd.factorize(out["account_id"], sort=True)
    order = np.lexsort((codes, out["cutoff"].to_numpy().view("int64")))
    return out.take(order).reset_index(drop=True)


def _warn_unused(spec: MilestoneSpec, event_names: Iterable[str]) -> None:
    unused = spec.unused_milestones(event_names)
    if unused:
        warnings.warn(f"milestones whose events never occur in the data: {unused}", UserWarning, stacklevel=3)


def compute_features(dataset, spec: MilestoneSpec, cutoffs: Sequence[pd.Timestamp] | None = None, *,
                     engine: str = "duckdb", user_accounts: pd.DataFrame | None = None, con=None,
                     progress: bool = False) -> FeatureSet:
    """Compute training snapshots for a loaded dataset.

    Parameters
    ----------
    dataset : features.contract.Dataset-like
        Has pandas frames ``events``, ``accounts``, ``conversions`` (canonical columns).
    spec : MilestoneSpec
        The milestone file.
    cutoffs : list of pandas.Timestamp, optional
        Default: the spec's schedule resolved on the events' time span.
    engine : {"duckdb", "pyspark"}
        Backend executing the one Ibis expression.
    user_accounts : pandas.DataFrame, optional
        Identity resolution (``user_id, account_id, ...``); fills events' null account_ids.
    con : ibis backend, optional
        An existing connection (e.g. a Spark session wrapped by ``ibis.pyspark.connect``).
    progress : bool
        Show a rich progress line while the engine works.

    Returns
    -------
    FeatureSet
    """
    events = _canonical(dataset.events, EVENT_COLUMNS)
    events = _fill_accounts(events, user_accounts)
    accounts = _canonical(getattr(dataset, "accounts", None), ACCOUNT_RESERVED)
    conversions = _canonical(getattr(dataset, "conversions", None), CONVERSION_COLUMNS)
    if events.empty:
        raise ValueError("events: no rows; cannot compute features")
    if cutoffs is None:
        cutoffs = resolve_cutoffs(spec, events["timestamp"].min(), events["timestamp"].max())
    fit_cols = _schema_fit_columns(accounts.columns)
    _warn_unused(spec, events["event"].dropna().unique())
    marketing = sorted(events.loc[events["source"] == "marketing", "event"].dropna().unique())
    own = con is None and engine == "duckdb"
    con = _connect(engine, con)
    if con.name != "duckdb":
        # Spark's pandas conversion turns pd.NA in string columns into the text "<NA>"
        events, accounts, conversions = (_plain_nulls(d) for d in (events, accounts, conversions))
    tables = {name: ibis.memtable(df) for name, df in
              (("events", events), ("accounts", accounts), ("conversions", conversions))}
    try:
        # Materialising intermediates pays off on big data; on small frames compiling them costs more.
        return _run(con, tables["events"], tables["accounts"], tables["conversions"], spec, cutoffs,
                    fit_cols, _fit_dtypes(accounts, fit_cols), marketing, progress, cache=len(events) > 200_000)
    finally:
        if own:
            con.disconnect()


def compute_features_from_files(events_path, accounts_path, conversions_path, spec: MilestoneSpec,
                                cutoffs: Sequence[pd.Timestamp], *, con=None, progress: bool = False,
                                cache: bool = True, memory_limit: str | None = None,
                                temp_directory: str | os.PathLike | None = None) -> FeatureSet:
    """Same as :func:`compute_features` but reads parquet lazily in DuckDB (larger than memory).

    Events must already be valid and carry their ``account_id`` (no data-contract checks and no
    identity resolution on this path); ``cache`` materialises the reused intermediate tables
    once instead of letting DuckDB recompute them for every use.

    Parameters
    ----------
    memory_limit : str, optional
        DuckDB's ``memory_limit`` for this computation (e.g. ``"1GB"``); beyond it DuckDB spills
        to ``temp_directory``. 10M events computed at 256 MB, not at 128 MB (docs/architecture.md).
        Ignored with ``con``.
    temp_directory : path, optional
        Where DuckDB spills (default: DuckDB's own, next to its database or in ``.tmp``).
    """
    import duckdb

    own = con is None
    if own:
        con = _duckdb_connect(memory_limit=memory_limit, temp_directory=temp_directory)
    try:
        return _features_from_files(con, events_path, accounts_path, conversions_path, spec, cutoffs,
                                    progress, cache)
    except duckdb.OutOfMemoryException as e:
        limit = f" under memory_limit={memory_limit!r}" if own and memory_limit else ""
        raise MemoryError(f"DuckDB ran out of memory{limit} computing features from {events_path}: "
                          f"{str(e).splitlines()[0]} Raise memory_limit, or point temp_directory at a disk "
                          "with room to spill.") from e
    finally:
        if own:
            con.disconnect()


def _features_from_files(con, events_path, accounts_path, conversions_path, spec, cutoffs, progress,
                         cache) -> FeatureSet:
    events = con.read_parquet(str(events_path))
    accounts = con.read_parquet(str(accounts_path))
    conversions = con.read_parquet(str(conversions_path))
    fit_cols = _schema_fit_columns(accounts.columns)
    schema = accounts.schema()
    fit_dtypes = {c: ("category" if schema[c].is_string() else schema[c].to_pandas().name) for c in fit_cols}
    present = events.select("event", "source").distinct().execute()
    _warn_unused(spec, present["event"].dropna().unique())
    marketing = sorted(present.loc[present["source"] == "marketing", "event"].dropna().unique())
    return _run(con, events, accounts, conversions, spec, cutoffs, fit_cols, fit_dtypes, marketing,
                progress, cache=cache)


class _Materializer:
    """Store intermediate tables once in the engine (DuckDB temp tables, Spark cache); drop them after."""

    def __init__(self, con):
        self.con = con
        self.names: list[str] = []

    def __call__(self, t: ir.Table) -> ir.Table:
        name = f"_pql_features_{uuid.uuid4().hex}"
        self.names.append(name)
        if self.con.name == "pyspark":
            # Table.cache() would go to the default backend (DuckDB) for memtable-built
            # expressions; a cached temp view stays in this Spark session and cuts the plan short.
            view = self.con.create_view(name, t)
            self.con._session.catalog.cacheTable(name)
            return view
        # Table.cache() and create_table(overwrite=True) emit a DROP that DuckDB 2.0's parser
        # rejects; unique names and a raw DROP afterwards avoid both.
        return self.con.create_table(name, t, temp=True)

    def close(self) -> None:
        for name in self.names:
            if self.con.name == "pyspark":
                self.con._session.catalog.uncacheTable(name)
                self.con._session.catalog.dropTempView(name)
            else:
                self.con.raw_sql(f'DROP TABLE IF EXISTS "{name}"')
        self.names.clear()


def _run(con, events, accounts, conversions, spec, cutoffs, fit_cols, fit_dtypes, marketing, progress,
         cache: bool = True) -> FeatureSet:
    materialize = _Materializer(con) if cache else None
    manifest = feature_manifest(spec, fit_cols, marketing, fit_dtypes)

    def work() -> pd.DataFrame:
        expr = build_feature_table(events, accounts, conversions, spec, list(cutoffs), fit_columns=fit_cols,
                                   marketing_events=marketing, materialize=materialize)
        try:
            # Arrow, then one plain conversion: Ibis's own to_pandas re-types every column in
            # Python (~2.5 s on 313k x 101); _finish sets the manifest's dtypes anyway.
            return _arrow_frame(con.to_pyarrow(expr))
        finally:
            if materialize is not None:
                materialize.close()

    if progress:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      transient=True) as bar:
            bar.add_task(f"computing features: {len(spec.milestones)} milestones, {len(cutoffs)} cutoffs", total=None)
            frame = work()
    else:
        frame = work()
    return FeatureSet(_finish(frame, manifest, presorted=True), manifest)


def online_features(events: pd.DataFrame, spec: MilestoneSpec, cutoff, *, accounts: pd.DataFrame | None = None,
                    conversions: pd.DataFrame | None = None, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Features at ``cutoff`` for the few accounts in ``events`` (serving's path), same expression as batch.

    Every account that started before ``cutoff`` gets a row, converted or not (scoring), and no label.
    With ``manifest``, the result has exactly the manifest's feature columns in order (after the keys);
    columns the data cannot produce (an unseen marketing event or fit attribute) are null.
    """
    events = _canonical(events, EVENT_COLUMNS)
    accounts = _canonical(accounts, ACCOUNT_RESERVED)
    conversions = _canonical(conversions, CONVERSION_COLUMNS)
    if manifest is not None:
        fit_cols = [n[len("fit__"):] for n in manifest.loc[manifest["family"] == "fit", "name"]]
        for c in fit_cols:
            if c not in accounts.columns:
                accounts[c] = pd.Series([None] * len(accounts), index=accounts.index, dtype="string")
        dg = set(manifest.loc[manifest["family"] == "demand_gen", "name"])
        present = events.loc[events["source"] == "marketing", "event"].dropna().unique()
        marketing = sorted(e for e in present if _dg_name(e) in dg)
        fit_dtypes = dict(zip([n[len("fit__"):] for n in manifest.loc[manifest["family"] == "fit", "name"]],
                              manifest.loc[manifest["family"] == "fit", "dtype"]))
    else:
        fit_cols = _schema_fit_columns(accounts.columns)
        marketing = sorted(events.loc[events["source"] == "marketing", "event"].dropna().unique())
        fit_dtypes = _fit_dtypes(accounts, fit_cols)
    expr = build_feature_table(ibis.memtable(events), ibis.memtable(accounts), ibis.memtable(conversions), spec,
                               [pd.Timestamp(cutoff)], fit_columns=fit_cols, marketing_events=marketing,
                               only_unconverted=False, with_label=False)
    frame = ibis.duckdb.connect().to_pandas(expr)
    own = feature_manifest(spec, fit_cols, marketing, fit_dtypes)
    if manifest is not None:
        own = manifest[["name", "family", "milestone", "description", "dtype"]]
    absent_dg = [n for n in own.loc[own["family"] == "demand_gen", "name"] if n not in frame.columns]
    out = _finish(frame, own)
    out[absent_dg] = 0.0  # no touches of that marketing event (the model saw 0 for such accounts too)
    return out.drop(columns=[LABEL_COLUMN])
