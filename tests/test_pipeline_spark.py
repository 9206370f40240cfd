"""The same pipeline expression on Spark local mode gives DuckDB's features (issue 3).

Kept small on purpose: Spark's cost here is JVM start-up and per-stage scheduling of the large
plan, not data, so the hand-made world of ``tests/test_pipeline.py`` (3 accounts, every feature
family: a ``where`` rule with ``min_count`` and ``within_days``, ``min_users``, a sequence,
demand gen, fit, raw activity) runs once, on one session, at two cutoffs.
"""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

from features.pipeline import compute_features
from tests.test_pipeline import ACCOUNTS, CONVERSIONS, EVENTS, SPEC, assert_frames_match

pytestmark = pytest.mark.slow

CUTOFFS = [pd.Timestamp("2024-01-10"), pd.Timestamp("2024-01-16")]


@pytest.fixture(scope="module")
def spark_con():
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs a Java runtime")
    import ibis
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[1]").appName("pql-test-features")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "1")
             .config("spark.default.parallelism", "1")
             # adaptive re-planning only adds jobs on a few rows
             .config("spark.sql.adaptive.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.driver.memory", "1g")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    yield ibis.pyspark.connect(spark)
    spark.stop()


@pytest.fixture(scope="module")
def both(spark_con):
    # a1's trial ends between the two cutoffs: Spark must drop its second snapshot too
    accounts = ACCOUNTS.assign(ended_at=pd.to_datetime(["2024-01-12", None, None]).astype("datetime64[us]"))
    ds = SimpleNamespace(events=EVENTS, accounts=accounts, conversions=CONVERSIONS)
    duck = compute_features(ds, SPEC, CUTOFFS)
    spark = compute_features(ds, SPEC, CUTOFFS, engine="pyspark", con=spark_con)
    return duck, spark


def test_spark_features_equal_duckdb(both):
    duck, spark = both
    assert list(spark.frame.columns) == list(duck.frame.columns)
    assert_frames_match(spark.frame, duck.frame)  # every key, label and feature column
    assert spark.frame.loc[spark.frame.account_id == "a1", "cutoff"].tolist() == [CUTOFFS[0]]


def test_spark_run_exercised_every_feature_family(both):
    # guards the equality above against comparing columns that are all zero / null
    f = both[1].frame
    assert f["ms__pro_reports__reached"].any()  # where + min_count + within_days on JSON
    assert f["ms__invited__reached"].any()  # min_users
    assert f["seq__create_then_invite__completed"].any()
    assert (f["acct__users_collaboration"] > 0).any() and (f["acct__active_users_7d"] > 0).any()
    assert (f["dg__email_click__decayed"] > 0).any() and (f["raw__all_events"] > 0).any()
    assert f["fit__industry"].notna().any() and f["label"].sum() > 0
