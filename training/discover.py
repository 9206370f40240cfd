"""Milestone discovery: which actions separate accounts that convert from those that do not.

Method (issue 5)
----------------
1. **Cohort.** Accounts whose outcome is known: converted, or observed for at least
   ``horizon_days`` without converting. An account's *start* is its CRM ``created_at``, else its
   first product event — the very definition the feature pipeline uses for ``within_days``.
2. **No post-conversion behaviour.** A converter's behaviour counts up to its conversion. A
   non-converter gets an *observation end* at the same relative time: ``start + r`` where ``r``
   is a quantile of the converters' days-to-convert, the quantile chosen by a stable hash of the
   account id (deterministic, independent of which other accounts are in the data), capped at the
   account's observed span. Without this, non-converters would get more time to reach every
   "any time" milestone and lift would be biased towards 1.
3. **One aggregation.** DuckDB reduces the events once, per (account, event [, property value]),
   to the day offsets of the 1st, 2nd, 3rd, 5th and 10th occurrence and of the first action of
   the 1st, 2nd and 3rd distinct user. Candidate (N, D, U) is reached iff
   ``max(t_N, t_U) <= D`` (events after the observation end are cut before aggregating), which
   numpy evaluates for all candidates at once with ``bincount``.
4. **Statistics** (:mod:`training.stats`): rates with Wilson intervals, lift, smoothed odds
   ratio, phi, two-sided Fisher p, Benjamini–Hochberg q over all tested candidates.
5. **Selection:** among q < 0.05, lift >= ``min_lift`` and team-size-adjusted lift >=
   ``min_adjusted_lift`` (Mantel–Haenszel over 1, 2, 3, 4, 5+ active users: bigger teams do
   more of everything, which makes "done by 2 users" of any noise event look predictive),
   each event represented by its highest-phi rule, best lift first, at least one per
   category where one qualifies, at most one rule per event, skipping a candidate whose lift
   conditional on an already chosen milestone (Mantel–Haenszel) falls below
   ``min_conditional_lift``. Raw activity (``settings.activity_events``) and distinct active days
   are measured and reported, never recommended. Column ``selection`` of the candidates says why
   each one was or was not recommended (:data:`SELECTION_REASONS`), and the warning about too few
   milestones blames the data only when no qualifying candidate was left out by this policy.
6. **Sequences:** ordered pairs and triples of the recommended milestones, each step no earlier
   than the one before and the whole sequence within W days (the pipeline's definition).
7. **Warning signs:** candidates with lift <= ``warning_lift`` (converters do it far less often,
   e.g. "unregistered"), significant also within team-size strata, are flagged
   (``warning_sign``, ``direction``) and never recommended as milestones: a milestone marks value
   realised, and the milestone features, the points baseline and the category counts all assume
   that. The most confidently low rule of each such event (lowest upper end of the lift's
   interval; up to ``max_warning_signs``) goes into the
   milestone file's ``warning_signs:`` section instead, whose ``ws__`` features the model may
   only use to lower a score.

Property values in ``where:`` keep their JSON type (``on_time: true``, ``assessment_number: 4``)
when the value's JSON text is exactly what the data hold. The feature pipeline (and
:func:`reach_times`) compare ``where`` values as JSON *text* — ``json.dumps(value)`` against the
stored value with string quotes stripped — so ``4`` and ``'4'``, ``true`` and ``'true'`` select the
same events; the typed form only reads better.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from features.spec import CATEGORIES, Milestone, MilestoneSpec, Sequence as SeqRule, Settings, WarningSign
from training import stats

#: Name-pattern map: the first category whose pattern occurs in the event name wins.
DEFAULT_CATEGORY_PATTERNS: dict[str, list[str]] = {
    "collaboration": ["invite", "share", "user_added", "teammate", "comment", "mention", "collaborat"],
    "expansion": ["limit", "upgrade", "premium", "workspace", "billing", "seat", "plan"],
    "activation": ["onboarding", "first", "connect", "integration", "setup", "import", "install"],
}
COUNT_LEVELS = (1, 2, 3, 5, 10)
USER_LEVELS = (1, 2, 3)
ACTIVE_DAY_LEVELS = (2, 3, 5, 10)
#: Largest "at least N times" / "by at least U users" a candidate grid may ask for (the
#: aggregation keeps the first N occurrence times per account and item).
MAX_COUNT_LEVEL, MAX_USER_LEVEL = 100, 10
_ITEM_SEP = "\x1f"
#: What ``within_days`` counts from, in labels, unless the start is a sign-up (:func:`describe_start`).
START_LABEL = "the account's start"
#: JSON type of a typed property value, as written to candidates.csv (``value_type``).
_JSON_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean"}

CANDIDATE_COLUMNS = [
    "name", "kind", "event", "property", "value", "value_type", "min_count", "within_days", "min_users", "category",
    "label", "s", "f", "S", "F", "converter_rate", "converter_rate_low", "converter_rate_high",
    "non_converter_rate", "non_converter_rate_low", "non_converter_rate_high", "lift", "odds_ratio",
    "phi", "p_value", "q_value", "size_adjusted_lift", "size_adjusted_q", "direction", "is_activity",
    "warning_sign", "eligible", "recommended", "selection", "conditional_lift", "redundant_with", "rank"]

#: ``selection`` codes in candidates.csv: why a candidate was (not) recommended.
SELECTION_REASONS = {
    "recommended": "recommended",
    "one_rule_per_event": "qualified, but discovery keeps one rule per event (another rule of this event "
                          "represents it)",
    "event_best_rule_not_eligible": "qualified, but the event's most informative rule (highest phi) does not, "
                                    "so the event does not compete (one lucky variant cannot carry an event in)",
    "redundant": "qualified, but adds little beside an already chosen milestone",
    "list_full": "qualified, but the list was full",
    "warning_sign": "warning sign: converters do it far less often (never recommended as a milestone)",
    "raw_activity": "raw activity (measured for the activity trap, never recommended)",
    "team_size": "explained by team size (lift adjusted for active users too small or not significant)",
    "lift_too_small": "significant, but lift too small",
    "not_significant": "not significant",
}


class DiscoveryError(ValueError):
    """Discovery cannot run on this data; the message says why and what to check."""


@dataclass
class Discovery:
    """Result of :func:`discover`.

    Attributes
    ----------
    candidates : DataFrame
        One row per tested candidate (columns :data:`CANDIDATE_COLUMNS`).
    sequences : DataFrame
        Ordered pairs/triples of recommended milestones with the same statistics plus
        ``steps, within_days, beats_members``.
    spec : MilestoneSpec
        The recommended milestone file.
    warnings : list of str
        Things a data scientist should read (imbalance, few qualifying milestones, ...).
    cohort : DataFrame
        ``account_id, start, obs_end, converted, days_observed``.
    summary : dict
        Counts and timings for the report.
    """

    candidates: pd.DataFrame
    sequences: pd.DataFrame
    spec: MilestoneSpec
    warnings: list[str] = field(default_factory=list)
    cohort: pd.DataFrame | None = None
    summary: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

def load_data_dir(data_dir: str | Path):
    """Load a data directory through ``features.contract`` (the one loader of the project).

    Falls back to reading ``events/users/accounts/conversions.parquet`` directly while the
    contract module is not available.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DiscoveryError(f"{data_dir}: data directory not found")
    try:
        from features.contract import load_dataset
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        return load_dataset(data_dir)
    frames = {}
    for name in ("events", "users", "accounts", "conversions"):
        path = data_dir / f"{name}.parquet"
        if not path.is_file():
            if name == "events":
                raise DiscoveryError(f"{path}: events file not found")
            frames[name] = None
            continue
        frames[name] = pd.read_parquet(path)
    from types import SimpleNamespace

    return SimpleNamespace(**frames)


def account_events(dataset) -> tuple[pd.DataFrame, list[str]]:
    """Product events with an account: identity resolution fills null ``account_id`` when available.

    Returns the events (``account_id, user_id, event, timestamp, properties``) and warnings.
    """
    notes: list[str] = []
    events = dataset.events
    for col in ("user_id", "event", "timestamp"):
        if col not in events.columns:
            raise DiscoveryError(f"events: required column '{col}' is missing")
    events = events.copy()
    for col in ("account_id", "properties", "source"):
        if col not in events.columns:
            events[col] = pd.Series(pd.NA, index=events.index, dtype="string")
    if events["account_id"].isna().any():
        users = getattr(dataset, "users", None)
        accounts = getattr(dataset, "accounts", None)
        filled = False
        try:
            from features.identity import attach_accounts, resolve_accounts
        except ImportError:
            attach_accounts = resolve_accounts = None
        if resolve_accounts is not None and users is not None and accounts is not None:
            res = resolve_accounts(users, events, accounts)
            events = attach_accounts(events, res.user_accounts)
            filled = True
        elif users is not None and "account_id" in users.columns:
            # Explicit user -> account links only (identity resolution not available).
            link = users.dropna(subset=["account_id"]).drop_duplicates("user_id").set_index("user_id")["account_id"]
            events["account_id"] = events["account_id"].fillna(events["user_id"].map(link))
            filled = True
        missing = int(events["account_id"].isna().sum())
        if missing:
            notes.append(f"{missing:,} events have no account even after "
                         f"{'identity resolution' if filled else 'reading explicit ids'}; they are not counted")
    is_product = events["source"].fillna("product") != "marketing"
    events = events.loc[is_product & events["account_id"].notna(),
                        ["account_id", "user_id", "event", "timestamp", "properties"]]
    return events, notes


def _stable_uniform(ids: pd.Series) -> np.ndarray:
    """A number in [0, 1) per id, stable across runs and machines (pandas' keyed siphash)."""
    h = pd.util.hash_array(ids.astype(str).to_numpy(dtype=object))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def build_cohort(events: pd.DataFrame, accounts: pd.DataFrame | None, conversions: pd.DataFrame | None,
                 horizon_days: int = 30) -> tuple[pd.DataFrame, list[str], dict]:
    """Accounts whose outcome is known, with their start and observation end.

    Parameters
    ----------
    events : DataFrame
        Product events with ``account_id`` and ``timestamp`` (see :func:`account_events`).
    accounts, conversions : DataFrame or None
        Canonical CRM accounts and conversions.
    horizon_days : int
        A non-converter must be observed at least this long to count.

    Returns
    -------
    cohort : DataFrame
        ``account_id, start, obs_end, converted, days_observed`` (one row per cohort account).
    warnings : list of str
    counts : dict
        How many accounts were excluded and why.

    Raises
    ------
    DiscoveryError
        When converters or non-converters are missing entirely.
    """
    notes: list[str] = []
    if events.empty:
        raise DiscoveryError("events: no product events with an account; nothing to discover")
    data_end = events["timestamp"].max()
    first = events.groupby("account_id", sort=False)["timestamp"].min().rename("first_event")
    acc = first.to_frame()
    if accounts is not None and "created_at" in accounts.columns and len(accounts):
        created = accounts.dropna(subset=["account_id"]).drop_duplicates("account_id").set_index("account_id")["created_at"]
        acc = acc.join(created.rename("created_at"), how="left")
        acc["start"] = acc["created_at"].fillna(acc["first_event"])
    else:
        acc["start"] = acc["first_event"]
    acc["start"] = acc["start"].astype("datetime64[us]")
    conv_at = pd.Series(pd.NaT, index=acc.index, dtype="datetime64[us]")
    if conversions is not None and len(conversions):
        c = conversions.dropna(subset=["account_id", "converted_at"]).groupby("account_id")["converted_at"].min()
        conv_at = c.reindex(acc.index).astype("datetime64[us]")
    acc["converted_at"] = conv_at
    day = pd.Timedelta(days=1)
    converted = acc["converted_at"].notna()
    before_start = converted & (acc["converted_at"] <= acc["start"])
    observed_days = (data_end - acc["start"]) / day
    unknown = ~converted & (observed_days < horizon_days)
    counts = {"accounts_with_events": int(len(acc)), "converted_at_or_before_start": int(before_start.sum()),
              "outcome_unknown": int(unknown.sum())}
    if before_start.any():
        notes.append(f"{int(before_start.sum())} accounts converted at or before their start "
                     "(no product behaviour before conversion); left out of the cohort")
    acc = acc.loc[~before_start & ~unknown].copy()
    acc["converted"] = acc["converted_at"].notna()
    n_conv, n_non = int(acc["converted"].sum()), int((~acc["converted"]).sum())
    if n_conv == 0:
        raise DiscoveryError(
            "no converters in the cohort: conversions are missing, none match an account with events, "
            "or all happened before the accounts' start; check conversions.account_id and converted_at")
    if n_non == 0:
        raise DiscoveryError(
            f"no non-converters observed for at least {horizon_days} days: the data may be too recent "
            "for the horizon (lower --horizon-days) or the conversions table marks every account")
    ratio = max(n_conv, n_non) / min(n_conv, n_non)
    if ratio > 10:
        notes.append(f"converters and non-converters differ more than 10:1 ({n_conv:,} vs {n_non:,}); "
                     "rates of the smaller group are uncertain (see the Wilson intervals)")
    # Observation end: conversion for converters; the same relative time for non-converters.
    days_to_convert = ((acc.loc[acc["converted"], "converted_at"] - acc.loc[acc["converted"], "start"]) / day).to_numpy()
    non = ~acc["converted"]
    u = _stable_uniform(acc.index[non].to_series())
    drawn = np.quantile(days_to_convert, u)
    span = ((data_end - acc.loc[non, "start"]) / day).to_numpy()
    rel = np.minimum(drawn, span)
    # Whole microseconds (the canonical unit); capped accounts keep events up to data_end.
    rel_us = np.round(rel * 86_400e6).astype(np.int64)
    non_end = acc.loc[non, "start"].to_numpy().astype("datetime64[us]") + rel_us.astype("timedelta64[us]")
    capped = rel >= span
    non_end[capped] = np.datetime64(data_end, "us") + np.timedelta64(1, "us")
    obs_end = acc["converted_at"].to_numpy().astype("datetime64[us]").copy()
    obs_end[non.to_numpy()] = non_end
    acc["obs_end"] = obs_end
    acc["days_observed"] = (acc["obs_end"] - acc["start"]) / day
    cohort = acc.reset_index()[["account_id", "start", "obs_end", "converted", "days_observed"]]
    cohort["account_id"] = cohort["account_id"].astype(str)
    counts.update(converters=n_conv, non_converters=n_non, data_end=str(data_end),
                  median_days_to_convert=float(np.median(days_to_convert)))
    return cohort, notes, counts


# --------------------------------------------------------------------------------------------
# Aggregation in DuckDB
# --------------------------------------------------------------------------------------------

def _json_path(key: str) -> str:
    return '$."' + key.replace('"', '\\"') + '"'


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True when ``name`` matches one of the glob ``patterns`` (``*``, ``?``, ``[...]``; case-sensitive).

    >>> matches_any("assessment_id", ["*_id"]), matches_any("score", ["score_band"])
    (True, False)
    """
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _property_key_allowed(event: str, key: str, allow: Sequence[str] | None, ignore: Sequence[str]) -> bool:
    """Whether ``key`` of ``event`` may yield property candidates.

    A pattern matches the bare key (``score_band``) or the event-qualified key
    (``cma_submitted.score_band``), so a key can be allowed or ignored for one event only.
    """
    names = (key, f"{event}.{key}")
    if any(matches_any(n, ignore) for n in names):
        return False
    return allow is None or any(matches_any(n, allow) for n in names)


def _typed_value(text: str, json_type: str) -> Any:
    """A property value with its JSON type back (for ``where:``), or the text when in doubt.

    The feature pipeline compares ``where`` values as JSON text (``json.dumps(value)`` against
    the stored JSON), so a value is only typed when its JSON text is exactly ``text`` again:
    then the typed rule matches the very same events as the string one.

    >>> _typed_value("4", "BIGINT"), _typed_value("true", "BOOLEAN"), _typed_value("2.5", "DOUBLE")
    (4, True, 2.5)
    >>> _typed_value("4", "VARCHAR"), _typed_value("1e400", "DOUBLE")
    ('4', '1e400')
    """
    try:
        if json_type == "BOOLEAN" and text in ("true", "false"):
            return text == "true"
        if json_type in ("BIGINT", "UBIGINT", "HUGEINT") and json.dumps(int(text)) == text:
            return int(text)
        if json_type == "DOUBLE":
            value = float(text)
            if math.isfinite(value) and json.dumps(value) == text:
                return value
    except ValueError:
        pass
    return text


def _aggregate(events: pd.DataFrame, cohort: pd.DataFrame, *, count_levels: Sequence[int] = COUNT_LEVELS,
               user_levels: Sequence[int] = USER_LEVELS, max_values: int = 20, min_key_share: float = 0.05,
               property_keys: Sequence[str] | None = None, ignore_property_keys: Sequence[str] = (),
               ignore_events: Sequence[str] = (), threads: int | None = None):
    """Reduce events to per-(account, item) occurrence and user times (day offsets from start).

    ``ignore_events`` (globs) yield no candidate items, but still count for team size and active
    days: ignoring an event means "never recommend it", not "pretend it never happened".
    ``property_keys`` / ``ignore_property_keys`` (globs on ``key`` or ``event.key``) choose
    which property keys may yield candidates.

    Returns
    -------
    items : DataFrame
        ``item_id, kind ('event'|'property'|'active_days'), event, property, value, value_type``
        (``value`` is the JSON text; ``value_type`` its JSON type: string, integer, number, boolean).
    rows : dict
        ``acc`` (cohort row index), ``item``, ``occ`` (n, len(count_levels)) and ``usr``
        (n, len(user_levels)) day offsets, inf when never reached before the observation end;
        ``count_levels``, ``user_levels``; ``team_size`` per account; ``event_volume``
        (DataFrame ``event, n_rows, n_accounts``: event rows and accounts before the observation end).
    """
    import duckdb

    count_levels = tuple(sorted(set(int(n) for n in count_levels)))
    user_levels = tuple(sorted(set(int(u) for u in user_levels)))

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    coh = cohort[["account_id", "start", "obs_end"]].copy()
    coh["acc"] = np.arange(len(coh), dtype=np.int32)
    con.register("coh_df", coh)
    con.register("ev_df", events)
    con.execute("""
        CREATE TEMP TABLE ev AS
        SELECT c.acc, e.user_id::VARCHAR AS user_id, e.event::VARCHAR AS event, e.timestamp AS ts,
               e.properties::VARCHAR AS properties,
               (epoch_us(e.timestamp) - epoch_us(c.start)) / 86400e6 AS d
        FROM ev_df e JOIN coh_df c ON e.account_id::VARCHAR = c.account_id
        WHERE e.timestamp < c.obs_end AND e.event IS NOT NULL AND e.user_id IS NOT NULL
    """)
    con.unregister("ev_df")
    volume = con.execute("SELECT event, count(*) AS n_rows, count(DISTINCT acc) AS n_accounts FROM ev "
                         "GROUP BY event ORDER BY n_rows DESC, event").df()
    ignore_events = tuple(ignore_events)
    event_names = sorted(e for e in volume["event"] if not matches_any(e, ignore_events))
    con.execute("CREATE TEMP TABLE evd AS SELECT unnest($1::VARCHAR[]) AS event, "
                "generate_subscripts($1::VARCHAR[], 1) - 1 AS item", [event_names])

    # Low-cardinality properties: keys present in >= min_key_share of an event's rows with at
    # most max_values distinct scalar values.
    keys = con.execute(f"""
        WITH n_event AS (SELECT event, count(*) AS n FROM ev GROUP BY event),
        kv AS (
            SELECT event, key, json_extract_string(properties, '$."' || replace(key, '"', '\\"') || '"') AS val,
                   json_type(properties, '$."' || replace(key, '"', '\\"') || '"') AS typ
            FROM (SELECT event, properties, unnest(json_keys(properties)) AS key
                  FROM ev WHERE properties IS NOT NULL AND json_valid(properties)
                        AND json_type(properties) = 'OBJECT'))
        SELECT kv.event, kv.key, count(*) AS n_rows, count(DISTINCT val) AS n_vals,
               bool_and(typ IN ('VARCHAR', 'BIGINT', 'UBIGINT', 'BOOLEAN', 'DOUBLE')) AS scalar,
               any_value(n_event.n) AS n_event
        FROM kv JOIN n_event USING (event)
        GROUP BY kv.event, kv.key
        HAVING n_vals <= {int(max_values)} AND n_rows >= {float(min_key_share)} * any_value(n_event.n)
               AND bool_and(typ IN ('VARCHAR', 'BIGINT', 'UBIGINT', 'BOOLEAN', 'DOUBLE'))
        ORDER BY kv.event, kv.key
    """).df()
    allow = None if property_keys is None else tuple(property_keys)
    ignore_keys = tuple(ignore_property_keys)
    keys = keys[[e in set(event_names) and _property_key_allowed(e, k, allow, ignore_keys)
                 for e, k in zip(keys["event"], keys["key"])]] if len(keys) else keys
    n_events = len(event_names)
    item_frames = [pd.DataFrame({"item_id": np.arange(n_events), "kind": "event", "event": event_names,
                                 "property": None, "value": None, "value_type": None})]
    if len(keys):
        con.register("keys_df", keys[["event", "key"]])
        con.execute("""
            CREATE TEMP TABLE pev AS
            SELECT ev.acc, ev.user_id, ev.event, k.key,
                   json_extract_string(ev.properties, '$."' || replace(k.key, '"', '\\"') || '"') AS val,
                   json_type(ev.properties, '$."' || replace(k.key, '"', '\\"') || '"') AS typ, ev.d
            FROM ev JOIN keys_df k USING (event)
            WHERE ev.properties IS NOT NULL AND json_valid(ev.properties) AND json_type(ev.properties) = 'OBJECT'
        """)
        con.execute("DELETE FROM pev WHERE val IS NULL")
        # One item per value text (the pipeline matches text); typed only when every row agrees.
        pitems = con.execute("""
            SELECT event, key, val, CASE WHEN count(DISTINCT typ) = 1 THEN any_value(typ) ELSE 'VARCHAR' END AS typ
            FROM pev GROUP BY event, key, val ORDER BY event, key, val""").df()
        pitems["typed"] = [_typed_value(v, t) for v, t in zip(pitems["val"], pitems["typ"])]
        pitems["item_id"] = np.arange(n_events, n_events + len(pitems))
        con.register("pitems_df", pitems)
        item_frames.append(pd.DataFrame({"item_id": pitems["item_id"], "kind": "property",
                                         "event": pitems["event"], "property": pitems["key"],
                                         "value": pitems["val"],
                                         "value_type": [_JSON_TYPE_NAMES[type(v)] for v in pitems["typed"]]}))
        prop_src = """UNION ALL
            SELECT p.acc, p.user_id, i.item_id AS item, p.d FROM pev p
            JOIN pitems_df i ON p.event = i.event AND p.key = i.key AND p.val = i.val"""
    else:
        prop_src = ""
    n_items_so_far = sum(len(f) for f in item_frames)
    active_item = n_items_so_far
    item_frames.append(pd.DataFrame({"item_id": [active_item], "kind": "active_days", "event": ["(any product event)"],
                                     "property": None, "value": None, "value_type": None}))
    items = pd.concat(item_frames, ignore_index=True)

    occ_cols = ", ".join(f"coalesce(occ[{n}], 'inf'::DOUBLE) AS o{n}" for n in count_levels)
    usr_cols = ", ".join(f"coalesce(usr[{u}], 'inf'::DOUBLE) AS u{u}" for u in user_levels)
    other_users = ", ".join(f"'inf'::DOUBLE AS u{u}" for u in user_levels if u != 1)
    active_users = ("0.0 AS u1" if 1 in user_levels else "") + (", " if 1 in user_levels and other_users else "") + other_users
    res = con.execute(f"""
        WITH it AS (
            SELECT ev.acc, ev.user_id, evd.item, ev.d FROM ev JOIN evd USING (event)
            {prop_src}
        ),
        firsts AS (SELECT acc, item, user_id, min(d) AS d FROM it GROUP BY ALL),
        occ AS (SELECT acc, item, min(d, {max(count_levels)}) AS occ FROM it GROUP BY ALL),
        usr AS (SELECT acc, item, min(d, {max(user_levels)}) AS usr FROM firsts GROUP BY ALL)
        SELECT occ.acc, occ.item, {occ_cols}, {usr_cols}
        FROM occ JOIN usr USING (acc, item)
        UNION ALL
        SELECT acc, {active_item} AS item, {occ_cols}, {active_users}
        FROM (SELECT acc, min(d, {max(count_levels)}) AS occ
              FROM (SELECT acc, min(d) AS d FROM ev GROUP BY acc, CAST(ts AS DATE)) GROUP BY acc)
    """).fetchnumpy()
    team = con.execute("SELECT acc, count(DISTINCT user_id) AS n FROM ev GROUP BY acc").fetchnumpy()
    con.close()
    team_size = np.zeros(len(coh), dtype=np.int64)
    team_size[np.asarray(team["acc"], dtype=np.int64)] = np.asarray(team["n"], dtype=np.int64)
    rows = {
        "acc": np.asarray(res["acc"], dtype=np.int64),
        "item": np.asarray(res["item"], dtype=np.int64),
        "occ": np.column_stack([np.asarray(res[f"o{n}"], dtype=float) for n in count_levels]),
        "usr": np.column_stack([np.asarray(res[f"u{u}"], dtype=float) for u in user_levels]),
        "count_levels": count_levels, "user_levels": user_levels,
    }
    # The active-days item is met by "one user" as soon as a day is counted.
    if 1 in user_levels:
        rows["usr"][rows["item"] == active_item, user_levels.index(1)] = 0.0
    rows["team_size"] = team_size
    rows["event_volume"] = volume
    return items, rows


def _json_text(value: Any) -> str:
    """A ``where`` value as the text DuckDB's ``json_extract_string`` yields (the pipeline's rule)."""
    return value if isinstance(value, str) else json.dumps(value)


def reach_times(events: pd.DataFrame, cohort: pd.DataFrame, milestones: Sequence[Milestone]) -> dict[str, np.ndarray]:
    """Day offset (from start) at which each cohort account reached each milestone rule.

    Same semantics as the feature pipeline: the ``min_count``-th qualifying event and the first
    qualifying event of the ``min_users``-th distinct user, both no later than ``within_days``
    after start and before the account's observation end.

    Returns
    -------
    dict
        milestone name -> float array aligned with ``cohort`` rows (``inf``: not reached).
    """
    import duckdb

    con = duckdb.connect()
    coh = cohort[["account_id", "start", "obs_end"]].copy()
    coh["acc"] = np.arange(len(coh), dtype=np.int64)
    con.register("coh_df", coh)
    wanted = sorted({e for m in milestones for e in m.events})
    con.register("ev_df", events[events["event"].isin(wanted)])
    con.execute("""
        CREATE TEMP TABLE ev AS
        SELECT c.acc, e.user_id::VARCHAR AS user_id, e.event::VARCHAR AS event, e.properties::VARCHAR AS properties,
               (epoch_us(e.timestamp) - epoch_us(c.start)) / 86400e6 AS d
        FROM ev_df e JOIN coh_df c ON e.account_id::VARCHAR = c.account_id
        WHERE e.timestamp < c.obs_end AND e.user_id IS NOT NULL
    """)
    out = {}
    for m in milestones:
        conds = ["event IN (SELECT unnest($events::VARCHAR[]))"]
        params: dict[str, Any] = {"events": m.events}
        for i, (key, wanted_v) in enumerate((m.where or {}).items()):
            options = wanted_v if isinstance(wanted_v, list) else [wanted_v]
            params[f"k{i}"] = _json_path(str(key))
            params[f"v{i}"] = [_json_text(v) for v in options]
            conds.append(f"(json_valid(properties) AND json_extract_string(properties, $k{i}) "
                         f"IN (SELECT unnest($v{i}::VARCHAR[])))")
        if m.within_days is not None:
            conds.append(f"d <= {float(m.within_days)}")
        where = " AND ".join(conds)
        res = con.execute(f"""
            WITH q AS (SELECT acc, user_id, d FROM ev WHERE {where}),
            occ AS (SELECT acc, min(d, {m.min_count})[{m.min_count}] AS t_n FROM q GROUP BY acc),
            usr AS (SELECT acc, min(d, {m.min_users})[{m.min_users}] AS t_u
                    FROM (SELECT acc, user_id, min(d) AS d FROM q GROUP BY acc, user_id) GROUP BY acc)
            SELECT acc, greatest(t_n, t_u) AS t FROM occ JOIN usr USING (acc)
            WHERE t_n IS NOT NULL AND t_u IS NOT NULL
        """, params).fetchnumpy()
        t = np.full(len(coh), np.inf)
        t[np.asarray(res["acc"], dtype=np.int64)] = np.asarray(res["t"], dtype=float)
        out[m.name] = t
    con.close()
    return out


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------

CategoryPatterns = Mapping[str, Iterable[str]] | Sequence[tuple[str, str]]


def _pattern_pairs(patterns: CategoryPatterns | None) -> list[tuple[str, str]]:
    """Normalise a category map to ordered ``(pattern, category)`` pairs, checking categories."""
    if patterns is None:
        patterns = DEFAULT_CATEGORY_PATTERNS
    if isinstance(patterns, Mapping):
        pairs = [(p, category) for category, pats in patterns.items() for p in pats]
    else:
        pairs = [(p, category) for p, category in patterns]
    for p, category in pairs:
        if category not in CATEGORIES:
            raise DiscoveryError(f"category patterns: unknown category '{category}' for pattern '{p}' "
                                 f"(expected one of {', '.join(CATEGORIES)})")
    return pairs


def _name_matches(pattern: str, name: str) -> bool:
    """Case-insensitive: a glob when the pattern has ``*?[``, else a substring, else a regex."""
    pat, low = pattern.lower(), name.lower()
    if any(ch in pat for ch in "*?["):
        return fnmatch.fnmatchcase(low, pat)
    if pat in low:
        return True
    try:
        return re.search(pat, low) is not None
    except re.error:
        return False


def categorize(name: str, patterns: CategoryPatterns | None = None) -> str:
    """Category of an event by the first matching name pattern.

    Parameters
    ----------
    name : str
        Event name.
    patterns : mapping or sequence, optional
        Either category -> patterns (like :data:`DEFAULT_CATEGORY_PATTERNS`, the default) or an
        ordered sequence of ``(pattern, category)`` pairs (what :func:`load_category_patterns`
        returns). A pattern is a glob when it contains ``*``, ``?`` or ``[`` (matched against
        the whole name), otherwise a substring (or a regular expression); case-insensitive.

    Returns
    -------
    str
        The category of the first pattern that matches, else ``adoption``.

    >>> categorize("teammate_invited"), categorize("plan_upgraded"), categorize("report_created")
    ('collaboration', 'expansion', 'adoption')
    >>> categorize("tma_submitted", [("tma_*", "activation")])
    'activation'
    """
    for p, category in _pattern_pairs(patterns):
        if _name_matches(p, name):
            return category
    return "adoption"


def load_category_patterns(path: str | Path, *, with_defaults: bool = True) -> list[tuple[str, str]]:
    """Read a YAML category map: ``pattern: category`` entries, first match wins.

    The file's patterns are tried before the built-in SaaS patterns
    (:data:`DEFAULT_CATEGORY_PATTERNS`), so a file only needs the names it wants to change; end
    it with ``"*": adoption`` to switch the built-in patterns off. The grouped form
    ``category: [pattern, ...]`` is accepted too. Example::

        tma_submitted: activation
        "cma_*": adoption
        forum: collaboration

    Parameters
    ----------
    path : path
        The YAML file.
    with_defaults : bool
        Append the built-in patterns after the file's.

    Returns
    -------
    list of (pattern, category)

    Raises
    ------
    DiscoveryError
        Naming the file and entry when the file is missing, not YAML, not a mapping, or names an
        unknown category.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DiscoveryError(f"{path}: category file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DiscoveryError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise DiscoveryError(f"{path}: expected a mapping of name pattern -> category, "
                             "e.g. 'tma_submitted: activation'")
    pairs: list[tuple[str, str]] = []
    for key, value in raw.items():
        if isinstance(value, str):
            pairs.append((str(key), value))
        elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            pairs += [(str(v), str(key)) for v in value]
        else:
            raise DiscoveryError(f"{path}: entry '{key}': expected a category name (pattern: category) "
                                 f"or a list of patterns (category: [patterns]), got {value!r}")
    for p, category in pairs:
        if category not in CATEGORIES:
            raise DiscoveryError(f"{path}: entry '{p}': unknown category '{category}' "
                                 f"(expected one of {', '.join(CATEGORIES)})")
    return pairs + (_pattern_pairs(DEFAULT_CATEGORY_PATTERNS) if with_defaults else [])


def _words(event: str) -> str:
    return re.sub(r"[_.\-:/]+", " ", event).strip()


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def plain_label(kind: str, event: str, min_count: int, within_days: int | None, min_users: int,
                prop: str | None = None, value: str | None = None, start_label: str = START_LABEL) -> str:
    """A milestone in plain words.

    ``start_label`` names what ``within_days`` counts from (see :func:`describe_start`).

    >>> plain_label("event", "teammate_invited", 2, 14, 1)
    "teammate invited at least twice within 14 days of the account's start"
    >>> plain_label("event", "teammate_invited", 2, 14, 1, start_label="sign-up")
    'teammate invited at least twice within 14 days of sign-up'
    >>> plain_label("event", "report_exported", 1, None, 2, "format", "pdf")
    'report exported (format = pdf) by at least 2 users'
    """
    if kind == "active_days":
        text = f"active on at least {min_count} different days"
    else:
        text = _words(event)
        if prop is not None:
            text += f" ({prop} = {value})"
        if min_count > 1:
            text += f" at least {_times(min_count)}"
    if within_days is not None:
        text += f" within {within_days} days of {start_label}"
    if min_users > 1:
        text += f" by at least {min_users} users"
    return text


def describe_start(events: pd.DataFrame, users: pd.DataFrame | None, cohort: pd.DataFrame,
                   *, tolerance_days: float = 1.0, min_share: float = 0.9) -> str:
    """What an account's start is, in words for labels: ``sign-up`` or ``the account's start``.

    The start is a sign-up when it coincides (within ``tolerance_days``) with the earliest
    ``users.created_at`` of the account's users for at least ``min_share`` of the cohort — the
    account began when its first user signed up. Otherwise (no users file, or a start such as
    a course or contract start) the neutral wording is the right one.
    """
    if users is None or not {"user_id", "created_at"} <= set(users.columns) or users["created_at"].isna().all():
        return START_LABEL
    pairs = events[["account_id", "user_id"]].drop_duplicates()
    signed = users.dropna(subset=["created_at"]).drop_duplicates("user_id").set_index("user_id")["created_at"]
    first_signup = (pairs.assign(created_at=pairs["user_id"].map(signed)).dropna(subset=["created_at"])
                    .groupby("account_id")["created_at"].min())
    start = cohort.set_index("account_id")["start"]
    gap = (first_signup.reindex(start.index).astype("datetime64[us]") - start).abs() / pd.Timedelta(days=1)
    share = float((gap <= tolerance_days).mean()) if len(gap) else 0.0
    return "sign-up" if share >= min_share else START_LABEL


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    return s if s and s[0].isalpha() else f"e_{s}"


def candidate_name(kind: str, event: str, min_count: int, within_days: int | None, min_users: int,
                   prop: str | None = None, value: str | None = None) -> str:
    """A lower_snake_case milestone name (valid in ``milestones.yaml``).

    >>> candidate_name("event", "Teammate Invited", 2, 14, 1)
    'teammate_invited_2x_14d'
    """
    base = "active_days" if kind == "active_days" else _slug(event)
    if prop is not None:
        base += f"_{_slug(prop)}_{_slug(value).removeprefix('e_')}"
    if min_count > 1:
        base += f"_{min_count}x"
    if within_days is not None:
        base += f"_{within_days}d"
    if min_users > 1:
        base += f"_{min_users}users"
    return base


def _evaluate(items: pd.DataFrame, rows: dict, converted: np.ndarray, windows: Sequence[int | None],
              min_counts: Sequence[int], min_users: Sequence[int], strata: np.ndarray) -> pd.DataFrame:
    """s and f of every (item, N, D, U) candidate, vectorised with bincount.

    Also the candidate's lift *adjusted for team size*: the Mantel–Haenszel pooled rate ratio
    over strata of the account's number of active users (``strata``, one int per account).
    Bigger teams do more of everything, so an event done by "at least 2 users" looks
    predictive merely because converting accounts are bigger; the adjusted lift removes that.
    """
    n_items = len(items)
    n_strata = int(strata.max()) + 1
    S_k = np.bincount(strata[converted], minlength=n_strata).astype(float)
    F_k = np.bincount(strata[~converted], minlength=n_strata).astype(float)
    N_k = np.maximum(S_k + F_k, 1)
    row_stratum = strata[rows["acc"]]
    conv_row = converted[rows["acc"]]
    key_c = rows["item"][conv_row] * n_strata + row_stratum[conv_row]
    key_n = rows["item"][~conv_row] * n_strata + row_stratum[~conv_row]
    is_active_item = (items["kind"] == "active_days").to_numpy()
    count_levels, user_levels = rows["count_levels"], rows["user_levels"]
    out = []
    # Events are tested at ``min_counts``; distinct active days (the activity trap) always at
    # ACTIVE_DAY_LEVELS, whatever grid the user chose for events.
    for n in sorted(set(min_counts) | (set(ACTIVE_DAY_LEVELS) if 1 in min_users else set())):
        if n not in count_levels:
            raise DiscoveryError(f"min_counts: {n} is not one of the aggregated levels {count_levels}")
        o = rows["occ"][:, count_levels.index(n)]
        for u in min_users:
            if u not in user_levels:
                raise DiscoveryError(f"min_users: {u} is not one of the aggregated levels {user_levels}")
            t = np.maximum(o, rows["usr"][:, user_levels.index(u)])
            tc, tn = t[conv_row], t[~conv_row]
            for d in windows:
                lim = np.inf if d is None else float(d)
                rc = tc <= lim if d is not None else np.isfinite(tc)
                rn = tn <= lim if d is not None else np.isfinite(tn)
                s_k = np.bincount(key_c[rc], minlength=n_items * n_strata).reshape(n_items, n_strata)
                f_k = np.bincount(key_n[rn], minlength=n_items * n_strata).reshape(n_items, n_strata)
                s, f = s_k.sum(1), f_k.sum(1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    adjusted = (s_k * (F_k / N_k)).sum(1) / (f_k * (S_k / N_k)).sum(1)
                    adjusted_p = stats.cmh_pvalue(s_k, f_k, S_k, F_k)
                keep = np.where(is_active_item, (u == 1) and (n in ACTIVE_DAY_LEVELS), n in min_counts)
                out.append(pd.DataFrame({"item_id": np.arange(n_items)[keep], "min_count": n,
                                         "within_days": d, "min_users": u, "s": s[keep], "f": f[keep],
                                         "size_adjusted_lift": adjusted[keep],
                                         "size_adjusted_p": adjusted_p[keep]}))
    cand = pd.concat(out, ignore_index=True)
    cand["within_days"] = cand["within_days"].astype("Int64")
    return cand.merge(items, on="item_id", how="left")


class _Reacher:
    """Per-account reach vectors of candidates, from the aggregated rows (sorted once by item)."""

    def __init__(self, rows: dict, n_items: int, n_accounts: int):
        self.rows = rows
        self.order = np.argsort(rows["item"], kind="stable")
        self.bounds = np.searchsorted(rows["item"][self.order], np.arange(n_items + 1))
        self.n_accounts = n_accounts

    def times(self, cand) -> np.ndarray:
        """Day offset at which each cohort account reached the candidate (inf if never)."""
        item = int(cand["item_id"])
        idx = self.order[self.bounds[item]:self.bounds[item + 1]]
        t = np.maximum(self.rows["occ"][idx, self.rows["count_levels"].index(int(cand["min_count"]))],
                       self.rows["usr"][idx, self.rows["user_levels"].index(int(cand["min_users"]))])
        d = cand["within_days"]
        if not pd.isna(d):
            t = np.where(t <= float(d), t, np.inf)
        out = np.full(self.n_accounts, np.inf)
        out[self.rows["acc"][idx]] = t
        return out

    def reached(self, cand) -> np.ndarray:
        return np.isfinite(self.times(cand))


def _activity_event_set(settings: Settings) -> set[str]:
    return {e for evs in settings.activity_events.values() for e in evs}


def _select(cand: pd.DataFrame, reacher: _Reacher, converted: np.ndarray, *, min_conditional_lift: float,
            max_milestones: int) -> pd.DataFrame:
    """Mark recommended candidates (greedy by lift, categories first, redundancy measured)."""
    cand = cand.copy()
    cand["conditional_lift"] = np.nan
    cand["redundant_with"] = None
    cand["recommended"] = False
    cand["rank"] = pd.array([pd.NA] * len(cand), dtype="Int64")
    # Each event is represented by its most informative rule (highest phi over all its
    # thresholds, windows, user counts and property values: the rule that best separates the
    # groups, not the narrowest variant with an extreme lift on a few accounts). The event
    # competes only if that rule is eligible — so one lucky property value out of dozens of
    # variants cannot carry a noise event in. Events then compete by that rule's lift.
    reps = cand[~cand["is_activity"]].sort_values(["phi", "lift", "name"], ascending=[False, False, True]
                                                 ).groupby(["event"], sort=False).head(1)
    cand["representative"] = cand.index.isin(reps.index)
    reps = reps[reps["eligible"]]
    pool = reps.sort_values(["lift", "phi", "name"], ascending=[False, False, True])
    chosen: list[int] = []
    chosen_events: set[str] = set()
    vectors: dict[int, np.ndarray] = {}

    def acceptable(i) -> bool:
        row = cand.loc[i]
        if row["event"] in chosen_events:
            return False
        v = reacher.reached(row)
        worst, worst_with = np.inf, None
        for j in chosen:
            cl = stats.conditional_lift(v, converted, vectors[j])
            if np.isnan(cl):
                cl = 0.0
            if cl < worst:
                worst, worst_with = cl, cand.loc[j, "name"]
        if chosen:
            cand.loc[i, "conditional_lift"] = worst
        if worst < min_conditional_lift:
            cand.loc[i, "redundant_with"] = worst_with
            return False
        vectors[i] = v
        return True

    def take(i):
        chosen.append(i)
        chosen_events.add(cand.loc[i, "event"])
        cand.loc[i, "recommended"] = True
        cand.loc[i, "rank"] = len(chosen)

    # Pass 1: the best acceptable candidate of each category, strongest category first.
    by_cat = [(c, pool[pool["category"] == c]) for c in CATEGORIES]
    by_cat = sorted([x for x in by_cat if len(x[1])], key=lambda x: -x[1]["lift"].iloc[0])
    for _, sub in by_cat:
        if len(chosen) >= max_milestones:
            break
        for i in sub.index:
            if acceptable(i):
                take(i)
                break
    # Pass 2: fill by lift.
    for i in pool.index:
        if len(chosen) >= max_milestones:
            break
        if i in chosen:
            continue
        if acceptable(i):
            take(i)
    return cand


def _sequence_table(spec_ms: list[Milestone], times: dict[str, np.ndarray], converted: np.ndarray,
                    member_lift: dict[str, float], windows: Sequence[int], prior_k: float,
                    min_support: int, max_len: int = 3) -> pd.DataFrame:
    """Statistics of ordered pairs/triples of milestones completed in order within W days."""
    names = [m.name for m in spec_ms]
    recs = []
    for k in range(2, max_len + 1):
        for steps in itertools.permutations(names, k):
            ts = [times[s] for s in steps]
            ok = np.isfinite(ts[0])
            for a, b in zip(ts, ts[1:]):
                ok &= np.isfinite(b) & (a <= b)
            with np.errstate(invalid="ignore"):
                span = ts[-1] - ts[0]
            for w in windows:
                done = ok & (span <= w)
                recs.append((steps, w, int((done & converted).sum()), int((done & ~converted).sum())))
    if not recs:
        return pd.DataFrame(columns=["name", "steps", "within_days", "label", "s", "f", "beats_members"])
    S, F = int(converted.sum()), int((~converted).sum())
    table = stats.two_group_table([r[2] for r in recs], [r[3] for r in recs], S, F, prior_k)
    table.insert(0, "within_days", [r[1] for r in recs])
    table.insert(0, "steps", [" > ".join(r[0]) for r in recs])
    table.insert(0, "name", [_seq_name(r[0], r[1]) for r in recs])
    table["label"] = [" then ".join(_label_of(spec_ms, s) for s in r[0]) + f", all within {r[1]} days"
                      for r in recs]
    table["tested"] = (table["s"] + table["f"]) >= min_support
    table["q_value"] = np.nan
    if table["tested"].any():
        table.loc[table["tested"], "q_value"] = stats.bh_qvalues(table.loc[table["tested"], "p_value"])
    best_member = np.array([max(member_lift[s] for s in r[0]) for r in recs])
    table["max_member_lift"] = best_member
    table["beats_members"] = table["tested"] & (table["lift"] > best_member)
    return table.sort_values(["beats_members", "tested", "lift"], ascending=[False, False, False],
                             ignore_index=True)


def _label_of(spec_ms, name):
    for m in spec_ms:
        if m.name == name:
            return m.label
    return name


def _seq_name(steps, w) -> str:
    return "seq_" + "_then_".join(steps) + f"_{w}d"


def parse_grid(values: Iterable[str] | None, option: str, *, allow_any: bool = False) -> tuple | None:
    """Parse a command-line grid such as ``["7,14", "30", "any"]`` into ``(7, 14, 30, None)``.

    Values may be repeated options or comma-separated; ``any`` (only when ``allow_any``) means
    "any time" (None). Returns None when no value is given (use the default).

    >>> parse_grid(["14,28", "any"], "--windows", allow_any=True)
    (14, 28, None)

    Raises
    ------
    DiscoveryError
        Naming the option and the value that is not a whole number.
    """
    if not values:
        return None
    out: list[int | None] = []
    for chunk in values:
        for part in str(chunk).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if allow_any and part in ("any", "none", "all"):
                out.append(None)
                continue
            try:
                out.append(int(part))
            except ValueError:
                hint = " or 'any'" if allow_any else ""
                raise DiscoveryError(f"{option}: '{part}' is not a whole number{hint}") from None
    if not out:
        raise DiscoveryError(f"{option}: no value given")
    return tuple(out)


def parse_names(values: Iterable[str] | None) -> list[str]:
    """Split repeated and comma-separated name options into a list (``["a,b", "c"]`` -> a, b, c)."""
    return [part.strip() for chunk in values or () for part in str(chunk).split(",") if part.strip()]


def _check_grid(min_counts, windows, min_users) -> tuple[tuple[int, ...], tuple[int | None, ...], tuple[int, ...]]:
    """Validate the candidate grid; the message names the parameter and the bad value."""
    def ints(name, values, low, high):
        values = tuple(values)
        if not values:
            raise DiscoveryError(f"{name} (--{name.replace('_', '-')}): give at least one value")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
                raise DiscoveryError(f"{name} (--{name.replace('_', '-')}): {v!r} is not a whole number "
                                     f"from {low} to {high}")
        return tuple(sorted(set(int(v) for v in values)))

    counts = ints("min_counts", min_counts, 1, MAX_COUNT_LEVEL)
    users = ints("min_users", min_users, 1, MAX_USER_LEVEL)
    windows = tuple(windows)
    if not windows:
        raise DiscoveryError("windows: give at least one value (days, or None for 'any time')")
    days = ints("windows", [w for w in windows if w is not None], 1, 100_000) if any(
        w is not None for w in windows) else ()
    return counts, tuple(days) + ((None,) if None in windows else ()), users


def _selection_reasons(cand: pd.DataFrame, *, alpha: float, min_lift: float, min_adjusted_lift: float) -> pd.Series:
    """Why each candidate was or was not recommended (a code per row, see :data:`SELECTION_REASONS`)."""
    reason = pd.Series("not_significant", index=cand.index, dtype=object)
    significant = cand["q_value"] < alpha
    reason[significant & ~(cand["lift"] >= min_lift)] = "lift_too_small"
    reason[significant & (cand["lift"] >= min_lift) & ~((cand["size_adjusted_lift"] >= min_adjusted_lift)
                                                        & (cand["size_adjusted_q"] < alpha))] = "team_size"
    reason[cand["warning_sign"]] = "warning_sign"
    reason[cand["is_activity"]] = "raw_activity"
    elig = cand["eligible"]
    reason[elig] = "one_rule_per_event"
    # The event's representative (its highest-phi rule) did not qualify: the event does not compete.
    competing = set(cand.loc[cand["representative"] & elig, "event"])
    reason[elig & ~cand["event"].isin(competing)] = "event_best_rule_not_eligible"
    reason[elig & cand["representative"] & cand["redundant_with"].notna()] = "redundant"
    reason[elig & cand["representative"] & cand["redundant_with"].isna()] = "list_full"
    reason[cand["recommended"]] = "recommended"
    return reason


def _selection_note(cand: pd.DataFrame, n_rec: int, min_milestones: int, max_milestones: int,
                    alpha: float, min_lift: float) -> str | None:
    """A warning when fewer than ``min_milestones`` were recommended that blames the right cause."""
    if n_rec == 0:
        return (f"no candidate qualified (q < {alpha}, lift >= {min_lift}); the milestone file contains the "
                "best-lift candidate only so that it stays valid — do not train on it as is")
    if n_rec >= min_milestones:
        return None
    eligible = cand[cand["eligible"]]
    lost = eligible[~eligible["recommended"]]
    if lost.empty:
        return (f"only {n_rec} milestones qualified (wanted {min_milestones}-{max_milestones}); "
                "consider more data or a longer history")
    reasons = lost["selection"].value_counts()
    parts = []
    if reasons.get("one_rule_per_event", 0):
        parts.append(f"{reasons['one_rule_per_event']} collapsed because discovery keeps one rule per event")
    if reasons.get("event_best_rule_not_eligible", 0):
        parts.append(f"{reasons['event_best_rule_not_eligible']} left out because their event's most informative "
                     "rule does not qualify")
    if reasons.get("redundant", 0):
        parts.append(f"{reasons['redundant']} redundant beside a chosen milestone")
    text = (f"{n_rec} milestones recommended (wanted {min_milestones}-{max_milestones}) although "
            f"{len(eligible)} candidates qualified on {eligible['event'].nunique()} event name(s): "
            + "; ".join(parts) + ". The data are not the limit: ")
    if reasons.get("one_rule_per_event", 0):
        text += ("the product has few event names, so to get more milestones split events by a property in "
                 "the data mapping (e.g. one event name per assessment type) or edit milestones.yaml by hand "
                 "from candidates.csv (column 'selection')")
    else:
        text += "the qualifying rules overlap with the chosen ones (see 'redundant_with' in candidates.csv)"
    return text


def _raw_activity_suggestions(cand: pd.DataFrame, volume: pd.DataFrame, *, min_lift: float,
                              min_reach: float = 0.5, min_per_account: float = 3.0, top: int = 3) -> pd.DataFrame:
    """Events that look like raw activity: done by most accounts, many times each, with lift near 1.

    Judged on each event's simplest rule (its lowest count threshold, widest window, one user).
    Returns ``event, per_account, reach, lift`` of at most ``top`` events, most frequent first.
    """
    ev = cand[(cand["kind"] == "event") & (cand["min_users"] == cand["min_users"].min())]
    if ev.empty:
        return pd.DataFrame(columns=["event", "per_account", "reach", "lift"])
    ev = ev[ev["min_count"] == ev["min_count"].min()]
    widest = ev["within_days"].isna() if ev["within_days"].isna().any() else ev["within_days"] == ev["within_days"].max()
    ev = ev[widest].set_index("event")
    vol = volume.set_index("event")
    out = pd.DataFrame({"event": ev.index,
                        "per_account": (vol["n_rows"] / vol["n_accounts"]).reindex(ev.index).to_numpy(),
                        "reach": ((ev["s"] + ev["f"]) / (ev["S"] + ev["F"])).to_numpy(),
                        "lift": ev["lift"].to_numpy()})
    keep = (out["reach"] >= min_reach) & (out["per_account"] >= min_per_account) & (out["lift"] < min_lift)
    return out[keep].sort_values("per_account", ascending=False).head(top).reset_index(drop=True)


def _settle_activity_events(settings: Settings, present: set[str], explicit: bool) -> tuple[Settings, list[str]]:
    """Keep only raw-activity families that occur in the data, unless the user set them.

    Returns the settings to write and the names of families whose events never occur.
    """
    absent = [f for f, evs in settings.activity_events.items() if not present.intersection(evs)]
    if absent and not explicit:
        kept = {f: evs for f, evs in settings.activity_events.items() if f not in absent}
        settings = settings.model_copy(update={"activity_events": kept})
    return settings, absent


def discover(dataset, *, horizon_days: int = 30, min_counts: Sequence[int] = (1, 2, 3, 5, 10),
             windows: Sequence[int | None] = (7, 14, 30, None), min_users: Sequence[int] = (1, 2, 3),
             prior_k: float = 1.0, category_patterns: CategoryPatterns | None = None,
             max_milestones: int = 10, min_milestones: int = 5, alpha: float = 0.05, min_lift: float = 1.25,
             min_conditional_lift: float = 1.2, min_adjusted_lift: float = 1.25, min_support_accounts: int = 25,
             min_support_share: float = 0.02, sequence_windows: Sequence[int] = (7, 14, 30),
             max_sequences: int = 3, properties: Sequence[str] | None = None,
             ignore_properties: Sequence[str] = (), ignore_events: Sequence[str] = (),
             max_property_values: int = 20, warning_lift: float = 0.5, max_warning_signs: int = 5,
             start_label: str | None = None,
             settings: Settings | None = None, progress: bool = False) -> Discovery:
    """Find the milestones that separate converters from non-converters.

    Parameters
    ----------
    dataset : features.contract.Dataset-like
        Has pandas frames ``events`` (canonical columns), ``accounts``, ``conversions`` and
        optionally ``users`` (used to attach accounts to events that lack one).
    horizon_days : int
        Non-converters must be observed this long to be in the cohort.
    min_counts, windows, min_users : sequences
        The candidate grid: "at least N times" x "within D days of start" (None: any time) x
        "by at least U users". Counts up to 100, users up to 10.
    prior_k : float
        Pseudo-count of the smoothed odds ratio.
    category_patterns : mapping or sequence of (pattern, category), optional
        Name patterns -> category (default :data:`DEFAULT_CATEGORY_PATTERNS`; see
        :func:`categorize` and :func:`load_category_patterns`).
    max_milestones, min_milestones : int
        How many to recommend (a warning when fewer than ``min_milestones`` are recommended; it
        says whether the data or the one-rule-per-event policy is the limit).
    alpha, min_lift, min_adjusted_lift, min_conditional_lift : float
        Eligibility (q < alpha, lift >= min_lift, team-size-adjusted lift >= min_adjusted_lift)
        and the redundancy threshold (lift conditional on an already chosen milestone).
    min_support_accounts, min_support_share : number
        Candidates reached by fewer than ``max(min_support_accounts, share * cohort)`` accounts
        are dropped before testing.
    sequence_windows : sequence of int
        W for ordered sequences of recommended milestones.
    max_sequences : int
        How many sequences that beat their members go into the milestone file.
    properties, ignore_properties : sequences of glob patterns
        Property keys that may yield candidates (None: any key with at most
        ``max_property_values`` values) and keys that never do. A pattern matches ``key`` or
        ``event.key`` (e.g. ``"*_id"``, ``"cma_submitted.score_band"``).
    ignore_events : sequence of glob patterns
        Events never tested (they still count for team size and active days).
    max_property_values : int
        A property key with more distinct values than this yields no candidates.
    warning_lift : float
        Candidates with lift at most this (and q < alpha, also after team-size adjustment) are
        *warning signs*: reported (``warning_sign``, ``direction``), never recommended as
        milestones; the strongest per event go to the milestone file's ``warning_signs:``.
    max_warning_signs : int
        How many warning signs go into the milestone file: per event, the rule whose lift is most
        confidently low (lowest upper end of its interval), strongest first.
    start_label : str, optional
        What ``within_days`` counts from, in labels; default :func:`describe_start`
        (``sign-up`` when the start is the first user's sign-up, else "the account's start").
    settings : Settings, optional
        Settings for the written milestone file (its ``activity_events`` define raw activity).
        Raw-activity families left at their default are kept only when their events occur.
    progress : bool
        Print stage timings.

    Returns
    -------
    Discovery

    Raises
    ------
    DiscoveryError
        When either outcome group is empty, the inputs lack required columns, or the grid is invalid.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage):
        nonlocal t0
        now = time.perf_counter()
        timings[stage] = round(now - t0, 3)
        t0 = now
        if progress:
            print(f"  {stage}: {timings[stage]:.2f}s", flush=True)

    min_counts, windows, min_users = _check_grid(min_counts, windows, min_users)
    pattern_pairs = _pattern_pairs(category_patterns)  # fail early on an unknown category
    explicit_activity = settings is not None and "activity_events" in settings.model_fields_set
    settings = settings or Settings(horizon_days=horizon_days)
    events, notes = account_events(dataset)
    present = set(events["event"].dropna().unique())
    settings, absent_families = _settle_activity_events(settings, present, explicit_activity)
    cohort, cohort_notes, counts = build_cohort(events, getattr(dataset, "accounts", None),
                                                getattr(dataset, "conversions", None), horizon_days)
    notes += cohort_notes
    if start_label is None:
        start_label = describe_start(events, getattr(dataset, "users", None), cohort)
    lap("cohort")
    items, rows = _aggregate(events, cohort, count_levels=set(min_counts) | set(ACTIVE_DAY_LEVELS),
                             user_levels=min_users, max_values=max_property_values, property_keys=properties,
                             ignore_property_keys=ignore_properties, ignore_events=ignore_events)
    del events
    lap("aggregate")
    converted = cohort["converted"].to_numpy(bool)
    S, F = int(converted.sum()), int((~converted).sum())
    # Team-size strata: 1, 2, 3, 4, 5+ active users before the observation end (0: none).
    strata = np.minimum(rows["team_size"], 5)
    cand = _evaluate(items, rows, converted, windows, min_counts, min_users, strata)
    n_evaluated = len(cand)
    min_support = max(int(min_support_accounts), int(math.ceil(min_support_share * (S + F))))
    cand = cand[(cand["s"] + cand["f"]) >= min_support].reset_index(drop=True)
    lap("evaluate")
    table = stats.two_group_table(cand["s"].to_numpy(), cand["f"].to_numpy(), S, F, prior_k)
    cand = pd.concat([cand.drop(columns=["s", "f"]), table], axis=1)
    cand["q_value"] = stats.bh_qvalues(cand["p_value"].to_numpy())
    cand["size_adjusted_q"] = stats.bh_qvalues(cand["size_adjusted_p"].to_numpy())
    lap("statistics")

    activity = _activity_event_set(settings)
    wd = cand["within_days"]
    cand["name"] = [candidate_name(k, e, n, None if pd.isna(d) else int(d), u, p, v)
                    for k, e, n, d, u, p, v in zip(cand["kind"], cand["event"], cand["min_count"], wd,
                                                   cand["min_users"], cand["property"], cand["value"])]
    cand["label"] = [plain_label(k, e, n, None if pd.isna(d) else int(d), u, p, v, start_label=start_label)
                     for k, e, n, d, u, p, v in zip(cand["kind"], cand["event"], cand["min_count"], wd,
                                                    cand["min_users"], cand["property"], cand["value"])]
    cat_of = {e: categorize(e, pattern_pairs) for e in cand["event"].unique()}
    cand["category"] = cand["event"].map(cat_of)
    cand["is_activity"] = cand["event"].isin(activity) | (cand["kind"] == "active_days")
    cand["direction"] = np.select([cand["lift"] > 1, cand["lift"] < 1], ["positive", "negative"], "none")
    significant = (cand["q_value"] < alpha) & (cand["size_adjusted_q"] < alpha)
    cand["eligible"] = (significant & (cand["lift"] >= min_lift)
                        & (cand["size_adjusted_lift"] >= min_adjusted_lift) & ~cand["is_activity"])
    # Negative signals (e.g. "unregistered"): strong and significant, also within team-size strata.
    cand["warning_sign"] = (significant & (cand["lift"] <= warning_lift)
                            & (cand["size_adjusted_lift"] <= 1 / min_adjusted_lift) & ~cand["is_activity"])
    reacher = _Reacher(rows, len(items), len(cohort))
    cand = _select(cand, reacher, converted, min_conditional_lift=min_conditional_lift,
                   max_milestones=max_milestones)
    cand["selection"] = _selection_reasons(cand, alpha=alpha, min_lift=min_lift, min_adjusted_lift=min_adjusted_lift)
    n_rec = int(cand["recommended"].sum())
    note = _selection_note(cand, n_rec, min_milestones, max_milestones, alpha, min_lift)
    if note:
        notes.append(note)
    suggestions = _raw_activity_suggestions(cand, rows["event_volume"], min_lift=min_lift)
    notes += _activity_notes(settings, absent_families, explicit_activity, suggestions)
    lap("selection")

    chosen = cand[cand["recommended"]].sort_values("rank")
    if chosen.empty:
        fallback = cand[~cand["is_activity"]].sort_values("lift", ascending=False).head(1)
        chosen = fallback if len(fallback) else cand.sort_values("lift", ascending=False).head(1)
    milestones = [_to_milestone(r) for _, r in chosen.iterrows()]
    times = {m.name: reacher.times(r) for m, (_, r) in zip(milestones, chosen.iterrows())}
    member_lift = dict(zip(chosen["name"], chosen["lift"]))
    seqs = _sequence_table(milestones, times, converted, member_lift, sequence_windows, prior_k, min_support)
    lap("sequences")
    good = seqs[seqs["beats_members"] & (seqs["q_value"] < alpha)] if len(seqs) else seqs
    seq_rules, used = [], set()
    for _, r in good.iterrows():
        key = r["steps"]
        if key in used:
            continue
        used.add(key)
        seq_rules.append(SeqRule(name=r["name"], steps=r["steps"].split(" > "), within_days=int(r["within_days"]),
                                 label=r["label"]))
        if len(seq_rules) >= max_sequences:
            break
    seqs["in_milestone_file"] = seqs["name"].isin([s.name for s in seq_rules]) if len(seqs) else []
    warned = _confident_warning_signs(cand[cand["warning_sign"]]).drop_duplicates("event")
    warned = warned.head(max(0, int(max_warning_signs)))
    spec = MilestoneSpec(settings=settings, milestones=milestones, sequences=seq_rules,
                         warning_signs=[_to_warning_sign(r) for _, r in warned.iterrows()])

    cand = cand.sort_values(["recommended", "rank", "lift"], ascending=[False, True, False], ignore_index=True)
    cand = cand[CANDIDATE_COLUMNS + [c for c in cand.columns if c not in CANDIDATE_COLUMNS]]
    eligible = cand[cand["eligible"]]
    lost = eligible.loc[~eligible["recommended"], "selection"].value_counts()
    selection = {"qualified": len(eligible), "qualified_events": int(eligible["event"].nunique()),
                 "recommended": n_rec,
                 "one_rule_per_event": int(lost.get("one_rule_per_event", 0)),
                 "event_best_rule_not_eligible": int(lost.get("event_best_rule_not_eligible", 0)),
                 "redundant": int(lost.get("redundant", 0)), "list_full": int(lost.get("list_full", 0))}
    warn = cand[cand["warning_sign"]]
    summary = dict(counts, S=S, F=F, candidates_evaluated=n_evaluated, candidates_tested=len(cand),
                   min_support=min_support, items=len(items), timings=timings, alpha=alpha, min_lift=min_lift,
                   prior_k=prior_k, horizon_days=horizon_days, windows=list(windows),
                   min_counts=list(min_counts), min_users=list(min_users), max_milestones=max_milestones,
                   start_label=start_label, selection=selection, warning_lift=warning_lift,
                   warning_signs=len(warn), warning_sign_events=sorted(warn["event"].unique()),
                   raw_activity_suggestions=suggestions.to_dict("records"),
                   ignore_events=list(ignore_events), properties=None if properties is None else list(properties),
                   ignore_properties=list(ignore_properties))
    return Discovery(candidates=cand, sequences=seqs, spec=spec, warnings=notes, cohort=cohort, summary=summary)


def _activity_notes(settings: Settings, absent: list[str], explicit: bool, suggestions: pd.DataFrame) -> list[str]:
    """Warnings about raw-activity families (the activity trap needs them to measure anything).

    Default families whose events never occur were dropped (``absent``): warn when none is left.
    Families the user set are kept: warn about each one that measures nothing. Either way,
    suggest events that look like raw activity when no family measures anything.
    """
    notes = []
    if explicit:
        if not absent:
            return notes
        text = "settings.activity_events: no event of " + ", ".join(
            f"'{f}' ({', '.join(settings.activity_events[f])})" for f in absent) + " occurs in the data"
        if len(absent) < len(settings.activity_events):
            return [text]
    elif any(settings.activity_events.values()):
        return notes
    else:
        text = ("no raw-activity events: the data have none of the default login/page_view/api_call events, "
                "so milestones.yaml gets no activity_events and the activity baseline counts all events only")
    if len(suggestions):
        text += ("; events that look like raw activity (done by most accounts, many times each, lift near 1): "
                 + ", ".join(f"{r.event} ({r.per_account:.0f} per account, lift {r.lift:.2f})"
                             for r in suggestions.itertuples())
                 + " — list them under settings.activity_events in milestones.yaml to measure the activity trap")
    else:
        text += "; no event looks like raw activity (done by most accounts, many times each, lift near 1)"
    notes.append(text)
    return notes


def _to_milestone(row: pd.Series) -> Milestone:
    wd = row["within_days"]
    desc = (f"discovered: lift {row['lift']:.2f}, converters {row['converter_rate']:.0%} vs "
            f"non-converters {row['non_converter_rate']:.0%}, q = {row['q_value']:.2g}")
    return Milestone(
        name=row["name"], category=row["category"], label=row["label"], event=row["event"],
        where=({row["property"]: _where_value(row["value"], row["value_type"])} if row["kind"] == "property" else None),
        min_count=int(row["min_count"]), within_days=None if pd.isna(wd) else int(wd),
        min_users=int(row["min_users"]), points=_points(row["lift"]), description=desc)


def _confident_warning_signs(warned: pd.DataFrame) -> pd.DataFrame:
    """Warning-sign candidates, most confidently low first: by the upper end of the lift's
    interval (converter rate high / non-converter rate low), then by q-value.

    Ranking by the point lift would pick, among one event's variants, the rarest one (a
    ``where`` on one property value within 30 days, 5 converters against 77) whose lift is the
    most extreme partly by chance; the upper bound prefers the variant whose lift is *surely* low.
    """
    bound = warned["converter_rate_high"] / warned["non_converter_rate_low"].where(warned["non_converter_rate_low"] > 0)
    return warned.assign(_bound=bound.fillna(np.inf)).sort_values(["_bound", "q_value"], kind="stable") \
        .drop(columns="_bound")


def _to_warning_sign(row: pd.Series) -> WarningSign:
    wd = row["within_days"]
    desc = (f"discovered warning sign: lift {row['lift']:.2f}, converters {row['converter_rate']:.0%} vs "
            f"non-converters {row['non_converter_rate']:.0%}, q = {row['q_value']:.2g}")
    return WarningSign(
        name=row["name"], label=row["label"], event=row["event"],
        where=({row["property"]: _where_value(row["value"], row["value_type"])} if row["kind"] == "property" else None),
        min_count=int(row["min_count"]), within_days=None if pd.isna(wd) else int(wd),
        min_users=int(row["min_users"]), description=desc)


def _where_value(text: str, value_type: str | None) -> Any:
    """The ``where:`` value of a property candidate with its JSON type (see :func:`_typed_value`)."""
    if value_type == "boolean":
        return text == "true"
    if value_type == "integer":
        return int(text)
    if value_type == "number":
        return float(text)
    return text


def _points(lift: float) -> float:
    """Rule-baseline points: 10 per doubling of the odds of converting (rounded)."""
    if not np.isfinite(lift) or lift <= 1:
        return 10.0
    return float(max(5, round(10 * math.log2(lift))))


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------

def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_discovery(discovery: Discovery, out_dir: str | Path) -> dict[str, Path]:
    """Write ``candidates.csv``, ``sequences.csv``, ``milestones.yaml`` and ``report.html``.

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written
    result (all four are rendered before the first rename).
    """
    from training.report import render_discovery_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = render_discovery_report(discovery)
    yaml_text = discovery.spec.to_yaml()
    paths = {"candidates": out / "candidates.csv", "sequences": out / "sequences.csv",
             "milestones": out / "milestones.yaml", "report": out / "report.html"}
    _atomic_write(paths["candidates"], lambda p: discovery.candidates.to_csv(p, index=False))
    _atomic_write(paths["sequences"], lambda p: discovery.sequences.to_csv(p, index=False))
    _atomic_write(paths["milestones"], lambda p: p.write_text(yaml_text, encoding="utf-8"))
    _atomic_write(paths["report"], lambda p: p.write_text(html, encoding="utf-8"))
    return paths
