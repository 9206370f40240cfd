"""Leakage (issue 3, property-based): events and conversions after T never change the features at T."""

from __future__ import annotations

from types import SimpleNamespace

import duckdb
import ibis
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.pipeline import build_feature_table, compute_features
from tests.test_pipeline import ACCOUNTS, CONVERSIONS, EVENTS, SPEC, make_events

CUTOFF = pd.Timestamp("2024-01-10")
EVENT_NAMES = ["project_created", "invite_sent", "report_run", "login", "email_click", "brand_new_event"]
PROPS = [None, '{"plan": "pro"}', '{"plan": "team"}', '{"plan": "free"}']


class CompiledPipeline:
    """build_feature_table compiled ONCE against DuckDB tables whose rows each example replaces.

    Compiling the Ibis expression dominates a tiny run; reusing the SQL keeps 25 examples fast
    while still executing exactly the pipeline's expression.
    """

    def __init__(self):
        self.raw = duckdb.connect()
        self.raw.execute("SET enable_progress_bar = false")
        for name, df in (("events", EVENTS), ("accounts", ACCOUNTS), ("conversions", CONVERSIONS)):
            self.raw.register("src", df)
            self.raw.execute(f"CREATE TABLE {name} AS SELECT * FROM src")
            self.raw.unregister("src")
        con = ibis.duckdb.from_connection(self.raw)
        expr = build_feature_table(con.table("events"), con.table("accounts"), con.table("conversions"), SPEC,
                                   [CUTOFF], fit_columns=["industry", "employees"], marketing_events=["email_click"])
        con.execute(expr)  # registers the expression's small memtables (cutoffs, rule parameters)
        self.expr = expr  # keep them alive
        self.sql = str(con.compile(expr))

    def features(self, events: pd.DataFrame, conversions: pd.DataFrame) -> pd.DataFrame:
        for name, df in (("events", events), ("conversions", conversions)):
            self.raw.register("src", df)
            self.raw.execute(f"DELETE FROM {name}; INSERT INTO {name} SELECT * FROM src")
            self.raw.unregister("src")
        out = self.raw.execute(self.sql).df().drop(columns="label")  # the label looks ahead by design
        return out.sort_values(["cutoff", "account_id"]).reset_index(drop=True)  # the SQL is unordered


PIPELINE = None


def pipeline() -> CompiledPipeline:
    global PIPELINE
    if PIPELINE is None:
        PIPELINE = CompiledPipeline()
        PIPELINE.baseline = PIPELINE.features(EVENTS, CONVERSIONS)
    return PIPELINE


def test_compiled_pipeline_equals_compute_features():
    # guards the shortcut above: same numbers as the public entry point
    fs = compute_features(SimpleNamespace(events=EVENTS, accounts=ACCOUNTS, conversions=CONVERSIONS),
                          SPEC, [CUTOFF])
    base = pipeline().baseline
    assert list(base.account_id) == list(fs.frame.account_id)
    for c in base.columns:
        if c.startswith(("ms__", "seq__", "acct__", "raw__", "dg__")):
            np.testing.assert_allclose(base[c].astype(float), fs.frame[c].astype(float), equal_nan=True, err_msg=c)


later = st.integers(min_value=0, max_value=60 * 86400)  # seconds at or after the cutoff
future_event = st.tuples(st.sampled_from(["u1", "u2", "u3", "u7"]), st.sampled_from(["a1", "a2", "a3"]),
                         st.sampled_from(EVENT_NAMES), later, st.sampled_from(["product", "marketing"]),
                         st.sampled_from(PROPS))
future_conversion = st.tuples(st.sampled_from(["a1", "a2", "a3"]), st.integers(min_value=1, max_value=60 * 86400))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(future_event, min_size=1, max_size=15), st.lists(future_conversion, max_size=3))
def test_future_events_and_conversions_leave_features_unchanged(extra_events, extra_conversions):
    # marketing names never seen before T would add a (zero) demand-gen column; only product
    # events and known marketing touches are compared column for column
    extra = make_events([(u, a, e if s == "product" else "email_click", str(CUTOFF + pd.Timedelta(seconds=dt)), s, p)
                         for u, a, e, dt, s, p in extra_events])
    events = pd.concat([EVENTS, extra], ignore_index=True)
    conv = pd.DataFrame({"account_id": pd.array([a for a, _ in extra_conversions], dtype="string"),
                         "converted_at": pd.Series([CUTOFF + pd.Timedelta(seconds=s) for _, s in extra_conversions],
                                                   dtype="datetime64[us]")})
    conversions = pd.concat([CONVERSIONS, conv], ignore_index=True)
    assert len(events) > len(EVENTS)
    pipe = pipeline()
    after = pipe.features(events, conversions)
    pd.testing.assert_frame_equal(after, pipe.baseline)
