"""Leakage (issue 3, property-based): events and conversions after T never change the features at T."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.pipeline import compute_features
from tests.test_pipeline import ACCOUNTS, CONVERSIONS, EVENTS, SPEC, make_events

CUTOFF = pd.Timestamp("2024-01-10")
EVENT_NAMES = ["project_created", "invite_sent", "report_run", "login", "email_click", "brand_new_event"]
PROPS = [None, '{"plan": "pro"}', '{"plan": "team"}', '{"plan": "free"}']


def features_at_cutoff(events, conversions) -> pd.DataFrame:
    ds = SimpleNamespace(events=events, accounts=ACCOUNTS, conversions=conversions)
    fs = compute_features(ds, SPEC, [CUTOFF])
    return fs.frame.drop(columns="label")  # the label looks ahead by design


BASELINE = None


def baseline() -> pd.DataFrame:
    global BASELINE
    if BASELINE is None:
        BASELINE = features_at_cutoff(EVENTS, CONVERSIONS)
    return BASELINE


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
    after = features_at_cutoff(events, conversions)
    pd.testing.assert_frame_equal(after, baseline())
