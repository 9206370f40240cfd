"""The same pipeline expression on Spark local mode gives DuckDB's features (issue 3)."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

from features.pipeline import compute_features
from tests.test_pipeline import SPEC, assert_frames_match, random_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark_con():
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs a Java runtime")
    import ibis
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[1]").appName("pql-test-features")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.default.parallelism", "1")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.driver.memory", "1g")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    yield ibis.pyspark.connect(spark)
    spark.stop()


def test_spark_features_equal_duckdb(spark_con):
    events, accounts, conversions = random_world(5, n_accounts=15, n_events=400)
    ds = SimpleNamespace(events=events, accounts=accounts, conversions=conversions)
    cutoffs = [pd.Timestamp("2024-02-01"), pd.Timestamp("2024-03-01")]
    duck = compute_features(ds, SPEC, cutoffs)
    spark = compute_features(ds, SPEC, cutoffs, engine="pyspark", con=spark_con)
    # the where rule (JSON properties) and min_count/min_users windows ran on Spark too
    assert duck.frame["ms__pro_reports__count"].sum() > 0
    assert list(spark.frame.columns) == list(duck.frame.columns)
    assert_frames_match(spark.frame, duck.frame)
