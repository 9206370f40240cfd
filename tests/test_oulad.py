"""OULAD (real, public data; Kuzilek et al. 2017, Scientific Data 4, 170171) through the data contract.

Two course runs are mapped by notebooks/oulad_to_contract.py, loaded by the contract and fed to
discovery: valid rows are never quarantined, every source row becomes exactly one event, and
discovery finds candidates on real data.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "oulad"
RUNS = "AAA-2013J,BBB-2013B"

pytestmark = pytest.mark.skipif(not (SOURCE / "student.csv").is_file(),
                                reason=f"OULAD data not found at {SOURCE} (a read-only shared folder "
                                       "outside the repository; see docs/real-data-oulad.md)")


def _mapper():
    spec = importlib.util.spec_from_file_location("oulad_to_contract", REPO / "notebooks" / "oulad_to_contract.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def oulad():
    return _mapper()


@pytest.fixture(scope="module")
def source_slice(oulad):
    return oulad.read_oulad(SOURCE, RUNS)


@pytest.fixture(scope="module")
def mapped_dir(oulad, tmp_path_factory):
    out = tmp_path_factory.mktemp("oulad")
    summary = oulad.oulad_to_contract(out, SOURCE, RUNS)
    return out, summary


@pytest.fixture(scope="module")
def dataset(mapped_dir):
    from features.contract import load_dataset

    return load_dataset(mapped_dir[0])


def test_run_start_is_first_of_february_or_october(oulad):
    assert oulad.run_start("2013B") == pd.Timestamp("2013-02-01")
    assert oulad.run_start("2014J") == pd.Timestamp("2014-10-01")
    with pytest.raises(oulad.OuladError, match="2013X"):
        oulad.run_start("2013X")


def test_unknown_run_is_named(oulad):
    with pytest.raises(oulad.OuladError, match="ZZZ-2013J"):
        oulad.read_oulad(SOURCE, "AAA-2013J,ZZZ-2013J")


def test_refuses_to_write_into_shared(oulad, source_slice):
    tables = oulad.map_oulad(source_slice)
    with pytest.raises(oulad.OuladError, match="read-only"):
        oulad.write_contract(tables, SOURCE / "mapped", source=SOURCE)
    assert not (SOURCE / "mapped").exists()


def test_contract_keeps_every_valid_row(mapped_dir, dataset, source_slice):
    """Only registrations without a date are quarantined; nothing else is lost or deduplicated."""
    out, _ = mapped_dir
    rep = dataset.report.tables
    n_dateless = int(source_slice.registration["date_registration"].isna().sum())
    ev = rep["events"]
    assert ev.quarantined_total == n_dateless
    assert ev.duplicates == 0
    if n_dateless:
        q = pd.read_csv(out / "quarantine" / "events.csv")
        assert set(q["reason"]) == {"empty timestamp"}
        assert set(q["event"]) == {"registered"}
    for table in ("accounts", "conversions"):
        assert rep[table].quarantined_total == 0 and rep[table].duplicates == 0
    assert len(dataset.accounts) == len(source_slice.student)
    assert dataset.report.level == "sequences"


def test_counts_conserve(dataset, source_slice, mapped_dir):
    """Every registration, unregistration date and submission is exactly one event (or one quarantined row)."""
    _, summary = mapped_dir
    reg, sub = source_slice.registration, source_slice.submissions
    ev = dataset.events
    quarantined = dataset.report.tables["events"].quarantined_total
    by_name = ev["event"].value_counts()
    assert by_name.get("registered", 0) + quarantined == len(reg)
    assert by_name.get("unregistered", 0) == int(reg["date_unregistration"].notna().sum())
    n_sub = sum(by_name.get(e, 0) for e in ("tma_submitted", "cma_submitted", "exam_submitted"))
    assert n_sub == len(sub)
    assert len(ev) + quarantined == summary["events"] == len(reg) + reg["date_unregistration"].notna().sum() + len(sub)
    # One event per source row: message ids are unique and name the source row.
    expected = {f"sub:{a}:{s}" for a, s in zip(sub["id_assessment"], sub["id_student"])}
    assert set(ev.loc[ev["message_id"].str.startswith("sub:"), "message_id"]) == expected
    # Conversions are exactly the Pass/Distinction enrolments.
    passing = source_slice.student["final_result"].isin(["Pass", "Distinction"]).sum()
    assert len(dataset.conversions) == passing == dataset.conversions["account_id"].nunique()


def test_timestamps_and_properties(dataset, source_slice, oulad):
    """Submissions land on run start + date_submitted; lateness is against the assessment's due day."""
    ev = dataset.events
    sub = source_slice.submissions.merge(source_slice.assessment, on="id_assessment")
    row = sub[~sub["is_banked"] & sub["date"].notna()].iloc[0]
    mid = f"sub:{row['id_assessment']}:{row['id_student']}"
    e = ev[ev["message_id"] == mid].iloc[0]
    assert e["timestamp"] == oulad.run_start(row["code_presentation"]) + pd.Timedelta(days=int(row["date_submitted"]))
    props = json.loads(e["properties"])
    assert props["assessment_type"] == row["assessment_type"]
    assert props["days_late"] == int(row["date_submitted"] - row["date"])
    assert props["on_time"] == bool(row["date_submitted"] <= row["date"])
    assert e["account_id"] == f"{row['code_module']}-{row['code_presentation']}-{row['id_student']}"
    # Conversion happens at the end of the run, after every event of a passing enrolment.
    conv = dataset.conversions.set_index("account_id")["converted_at"]
    last = ev[ev["account_id"].isin(conv.index)].groupby("account_id")["timestamp"].max()
    assert (last < conv.reindex(last.index)).all()


def test_enrolments_end_at_unregistration_or_run_end(dataset):
    """Finished enrolments leave the snapshots: ended_at = unregistration (never before the start), else run end."""
    acc = dataset.accounts.set_index("account_id")
    assert acc["ended_at"].notna().all() and (acc["ended_at"] >= acc["created_at"]).all()
    assert dataset.report.tables["accounts"].quarantined_total == 0
    unreg = dataset.events[dataset.events["event"] == "unregistered"].groupby("account_id")["timestamp"].min()
    ends = acc.loc[unreg.index, "ended_at"]
    starts = acc.loc[unreg.index, "created_at"]
    # the run's end = when its passing enrolments convert; a later unregistration ends at the run end
    run = pd.Series(acc.index.str.rsplit("-", n=1).str[0], index=acc.index)
    conv_at = dataset.conversions.set_index("account_id")["converted_at"]
    run_end = conv_at.groupby(run.reindex(conv_at.index)).max()
    expected = unreg.where(unreg >= starts, starts)
    expected = expected.where(expected <= run.reindex(expected.index).map(run_end), run.reindex(expected.index).map(run_end))
    assert (ends == expected).all()
    # everyone else ends with the run, which is also when passing enrolments convert
    conv = dataset.conversions.set_index("account_id")["converted_at"]
    assert (acc.loc[conv.index, "ended_at"] == conv).all()


def test_fit_attributes_keep_their_types(dataset):
    from features.schema import fit_columns

    acc = dataset.accounts
    fit = fit_columns(acc.columns)
    assert {"gender", "region", "imd_band", "age_band", "studied_credits", "disability", "code_module"} <= set(fit)
    assert pd.api.types.is_numeric_dtype(acc["studied_credits"])
    assert not pd.api.types.is_numeric_dtype(acc["disability"])


def test_discovery_runs_on_real_data(dataset):
    from training.discover import discover

    disc = discover(dataset, horizon_days=30)
    assert disc.summary["S"] > 0 and disc.summary["F"] > 0
    assert len(disc.candidates) > 0
    assert disc.candidates["eligible"].any()
    # Submissions separate passers from the rest; registering (everyone does) cannot.
    rec = disc.candidates[disc.candidates["recommended"]]
    assert rec["event"].isin(["tma_submitted", "cma_submitted", "exam_submitted"]).any()
    assert "registered" not in set(rec["event"])
