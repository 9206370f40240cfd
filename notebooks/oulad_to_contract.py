"""Map the Open University Learning Analytics Dataset (OULAD) onto the PQL data contract.

OULAD (Kuzilek et al., "Open University Learning Analytics dataset", Scientific Data 4, 170171,
2017; CC BY 4.0) is real data no one here wrote. It stands in for a product's event log:

============================  ===================================================================
OULAD                          data contract (docs/data-contract.md)
============================  ===================================================================
enrolment (code_module,        one account *and* its only user: ``account_id = user_id =
code_presentation, id_student) "<module>-<presentation>-<id_student>"`` (e.g. ``AAA-2013J-11391``)
date_registration              event ``registered``
date_unregistration            event ``unregistered`` (only when present)
student_assessment row         event ``tma_submitted`` / ``cma_submitted`` / ``exam_submitted``
                               with properties (type, score, lateness, banked, ...)
student.csv demographics       accounts fit attributes (+ ``code_module``)
run start (1st of Feb / Oct)   accounts ``created_at`` (so ``within_days`` = days into the course)
unregistration, else run end   accounts ``ended_at`` (no snapshots of a finished enrolment)
final_result Pass/Distinction  conversions, ``converted_at`` = run start + module_presentation_length
============================  ===================================================================

Days in OULAD are offsets from the start of the course run; the dataset only says that runs
"B" start in February and runs "J" in October. We pick **the 1st of that month, 00:00 UTC**.
Every event therefore falls on a midnight (the data has day resolution only).

Nothing is dropped here: every registration, unregistration date and submission becomes exactly
one event row. Registrations without a date get a null timestamp, so the contract quarantines
them (``empty timestamp``) and ``pql validate`` shows them, instead of this script hiding them.

Run it as a script::

    .venv/bin/python notebooks/oulad_to_contract.py --out /tmp/oulad_contract
    .venv/bin/python notebooks/oulad_to_contract.py --out /tmp/oulad_small --runs AAA-2013J,AAA-2014J

then ``pql validate /tmp/oulad_contract`` and ``pql discover /tmp/oulad_contract``.
See docs/real-data-oulad.md for what happens next and the caveats of the label.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

#: Where the data lives relative to the repository (``/work/main`` -> ``/work/shared``).
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "oulad"

#: Month in which a run starts, by the letter of its code_presentation ("2013J" -> October).
RUN_START_MONTH = {"B": 2, "J": 10}

#: Student columns used as fit attributes (code_module too: pass rates differ a lot by course).
FIT_COLUMNS = ("code_module", "gender", "region", "highest_education", "imd_band", "age_band",
               "num_of_prev_attempts", "studied_credits", "disability")

#: Score bands (OU pass mark for an assessment is 40).
SCORE_BANDS = ((0, 40, "0-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 101, "80-100"))

SUBMISSION_EVENT = {"TMA": "tma_submitted", "CMA": "cma_submitted", "Exam": "exam_submitted"}
SOURCE_FILES = ("student.csv", "student_registration.csv", "student_assessment.csv", "assessment.csv",
                "course.csv")
PASSING_RESULTS = ("Pass", "Distinction")
_KEYS = ["code_module", "code_presentation"]


class OuladError(ValueError):
    """The OULAD source folder or the requested slice cannot be mapped; the message says why."""


@dataclass
class OuladTables:
    """The five OULAD files as pandas frames (possibly a slice of the course runs)."""

    student: pd.DataFrame
    registration: pd.DataFrame
    submissions: pd.DataFrame
    assessment: pd.DataFrame
    course: pd.DataFrame


@dataclass
class ContractTables:
    """OULAD mapped onto the data contract, plus the counts that must conserve."""

    events: pd.DataFrame
    accounts: pd.DataFrame
    conversions: pd.DataFrame
    counts: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def run_start(code_presentation: str) -> pd.Timestamp:
    """Start of a course run: the 1st of February ("B") or October ("J") of its year, UTC.

    >>> run_start("2013J"), run_start("2014B")
    (Timestamp('2013-10-01 00:00:00'), Timestamp('2014-02-01 00:00:00'))
    """
    code = str(code_presentation).strip()
    if len(code) != 5 or not code[:4].isdigit() or code[4] not in RUN_START_MONTH:
        raise OuladError(f"code_presentation {code_presentation!r}: expected a year and B or J, e.g. '2013J'")
    return pd.Timestamp(year=int(code[:4]), month=RUN_START_MONTH[code[4]], day=1)


def parse_runs(runs: str | Iterable[str] | None) -> list[tuple[str, str]] | None:
    """``"AAA-2013J,BBB-2014B"`` (or a list of such) -> ``[("AAA", "2013J"), ("BBB", "2014B")]``."""
    if runs is None:
        return None
    items = [r for r in (runs.split(",") if isinstance(runs, str) else runs) if str(r).strip()]
    out = []
    for r in items:
        parts = str(r).strip().split("-")
        if len(parts) != 2:
            raise OuladError(f"run {r!r}: expected MODULE-PRESENTATION, e.g. AAA-2013J")
        run_start(parts[1])  # validates the presentation code
        out.append((parts[0], parts[1]))
    return out


def read_oulad(source: str | Path = DEFAULT_SOURCE, runs: str | Iterable[str] | None = None) -> OuladTables:
    """Read the OULAD CSV files, optionally only some course runs.

    Parameters
    ----------
    source : path
        Folder with student.csv, student_registration.csv, student_assessment.csv,
        assessment.csv and course.csv.
    runs : str or list of str, optional
        Course runs to keep, e.g. ``"AAA-2013J,AAA-2014J"``; default all 22.

    Raises
    ------
    OuladError
        A file is missing, or a requested run is not in course.csv.
    """
    source = Path(source)
    missing = [f for f in SOURCE_FILES if not (source / f).is_file()]
    if missing:
        raise OuladError(f"{source}: OULAD files missing: {', '.join(missing)}")
    id_types = {"id_student": "int64", "id_assessment": "int64"}
    course = pd.read_csv(source / "course.csv")
    assessment = pd.read_csv(source / "assessment.csv", dtype={"id_assessment": "int64"})
    student = pd.read_csv(source / "student.csv", dtype={"id_student": "int64"})
    registration = pd.read_csv(source / "student_registration.csv", dtype={"id_student": "int64"})
    submissions = pd.read_csv(source / "student_assessment.csv", dtype=id_types)
    wanted = parse_runs(runs)
    if wanted is not None:
        known = set(zip(course["code_module"], course["code_presentation"]))
        unknown = [f"{m}-{p}" for m, p in wanted if (m, p) not in known]
        if unknown:
            raise OuladError(f"{source / 'course.csv'}: unknown course runs {unknown}")
        keep = pd.DataFrame(wanted, columns=_KEYS)
        course = course.merge(keep, on=_KEYS)
        assessment = assessment.merge(keep, on=_KEYS)
        student = student.merge(keep, on=_KEYS)
        registration = registration.merge(keep, on=_KEYS)
        submissions = submissions[submissions["id_assessment"].isin(assessment["id_assessment"])]
    return OuladTables(student=student, registration=registration, submissions=submissions.reset_index(drop=True),
                       assessment=assessment, course=course)


# --------------------------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------------------------

def enrolment_id(module: pd.Series, presentation: pd.Series, student: pd.Series) -> pd.Series:
    """``AAA-2013J-11391``: the account id (and user id) of an enrolment."""
    return module.astype(str) + "-" + presentation.astype(str) + "-" + student.astype("int64").astype(str)


def _days(start: pd.Series, offset: pd.Series) -> pd.Series:
    """Absolute naive-UTC timestamps ``start + offset days`` (null offset -> null timestamp)."""
    return (start + pd.to_timedelta(offset.astype("float64"), unit="D")).astype("datetime64[us]")


def _runs(course: pd.DataFrame) -> pd.DataFrame:
    runs = course[[*_KEYS, "module_presentation_length"]].copy()
    runs["run_start"] = runs["code_presentation"].map(run_start).astype("datetime64[us]")
    runs["run_end"] = _days(runs["run_start"], runs["module_presentation_length"])
    return runs


def _score_band(score: pd.Series) -> pd.Series:
    out = pd.Series("missing", index=score.index, dtype=object)
    for lo, hi, name in SCORE_BANDS:
        out[(score >= lo) & (score < hi)] = name
    return out


def _json_objects(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row; NaN/NA become null, numpy scalars plain JSON numbers/bools."""
    def clean(v):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            return None
        if isinstance(v, (np.bool_, bool)):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, (np.floating, float)):
            return int(v) if float(v).is_integer() else float(v)
        return v

    cols = list(frame.columns)
    return [json.dumps({c: clean(v) for c, v in zip(cols, row)}, separators=(",", ":"))
            for row in frame.itertuples(index=False, name=None)]


def _assessment_table(assessment: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Assessments with their due day (Exam without a date: the last day of the run, as the OULAD
    documentation says) and their order within run and type (1 = first TMA of the run, ...)."""
    a = assessment.merge(runs[[*_KEYS, "module_presentation_length"]], on=_KEYS, how="left")
    a["due_day"] = a["date"].fillna(a["module_presentation_length"].where(a["assessment_type"] == "Exam"))
    a = a.sort_values([*_KEYS, "assessment_type", "due_day", "id_assessment"])
    a["assessment_number"] = a.groupby([*_KEYS, "assessment_type"]).cumcount() + 1
    return a


def _events_frame(account_id, event, timestamp, message_id, properties) -> pd.DataFrame:
    return pd.DataFrame({"user_id": account_id, "account_id": account_id, "event": event,
                         "timestamp": timestamp, "message_id": message_id, "source": "product",
                         "properties": properties})


def map_oulad(tables: OuladTables) -> ContractTables:
    """Map OULAD tables onto the contract's events, accounts and conversions.

    Returns
    -------
    ContractTables
        ``counts`` holds the source counts (registrations, unregistrations, submissions,
        enrolments, passes) and the emitted event counts per event name, so a caller can check
        that every source row became exactly one event.

    Raises
    ------
    OuladError
        A registration or submission whose course run is not in course.csv.
    """
    runs = _runs(tables.course)
    reg = tables.registration.merge(runs, on=_KEYS, how="left")
    if reg["run_start"].isna().any():
        row = reg[reg["run_start"].isna()].iloc[0]
        raise OuladError(f"student_registration.csv: run {row['code_module']}-{row['code_presentation']} "
                         "is not in course.csv")
    reg["account_id"] = enrolment_id(reg["code_module"], reg["code_presentation"], reg["id_student"])

    # Registration: one event per enrolment; a missing date stays a null timestamp (quarantined).
    registered = _events_frame(
        reg["account_id"], "registered", _days(reg["run_start"], reg["date_registration"]),
        "reg:" + reg["account_id"],
        _json_objects(pd.DataFrame({"day": reg["date_registration"],
                                    "before_start": reg["date_registration"].lt(0).where(
                                        reg["date_registration"].notna())})))
    unreg = reg[reg["date_unregistration"].notna()]
    unregistered = _events_frame(
        unreg["account_id"], "unregistered", _days(unreg["run_start"], unreg["date_unregistration"]),
        "unreg:" + unreg["account_id"], _json_objects(pd.DataFrame({"day": unreg["date_unregistration"]})))

    assess = _assessment_table(tables.assessment, runs)
    sub = tables.submissions.merge(assess, on="id_assessment", how="left", validate="many_to_one")
    if sub["code_module"].isna().any():
        bad = sub[sub["code_module"].isna()].index[0]
        raise OuladError(f"student_assessment.csv row {bad + 2}: id_assessment "
                         f"{tables.submissions.loc[bad, 'id_assessment']} is not in assessment.csv")
    sub = sub.merge(runs[[*_KEYS, "run_start"]], on=_KEYS, how="left")
    sub["account_id"] = enrolment_id(sub["code_module"], sub["code_presentation"], sub["id_student"])
    # Banked results carry date_submitted = -1 (a placeholder): lateness is meaningless for them.
    late = (sub["date_submitted"] - sub["due_day"]).where(~sub["is_banked"].astype(bool))
    # Only properties that mean the same in every course: the assessment id, its weight and its
    # due day are course-specific, and discovery picked them up as proxies of "which course".
    props = pd.DataFrame({
        "assessment_type": sub["assessment_type"],
        "assessment_number": sub["assessment_number"],
        "days_late": late,
        "on_time": late.le(0).where(late.notna()),
        "score": sub["score"],
        "score_band": _score_band(sub["score"]),
        "is_banked": sub["is_banked"].astype(bool),
    })
    submitted = _events_frame(
        sub["account_id"], sub["assessment_type"].map(SUBMISSION_EVENT),
        _days(sub["run_start"], sub["date_submitted"]),
        "sub:" + sub["id_assessment"].astype(str) + ":" + sub["id_student"].astype(str), _json_objects(props))
    if submitted["event"].isna().any():
        kinds = sorted(set(sub.loc[submitted["event"].isna(), "assessment_type"].astype(str)))
        raise OuladError(f"assessment.csv: unknown assessment_type {kinds} (expected TMA, CMA, Exam)")

    events = pd.concat([registered, unregistered, submitted], ignore_index=True)
    events = events.sort_values(["timestamp", "account_id", "message_id"], ignore_index=True, na_position="last")
    for col in ("user_id", "account_id", "event", "message_id", "source", "properties"):
        events[col] = events[col].astype("string")

    st = tables.student.merge(runs, on=_KEYS, how="left")
    st["account_id"] = enrolment_id(st["code_module"], st["code_presentation"], st["id_student"])
    # An enrolment stops being a candidate when the student unregisters, or when the run ends;
    # without an end, finished enrolments stay label-0 snapshots forever (AUC 0.774 -> 0.851 and a
    # shifted base rate in our first trial). Unregistering before the start ends it at the start.
    unreg_at = st["account_id"].map(unreg.groupby("account_id")["date_unregistration"].min())
    # clipped to the run: OULAD has unregistrations dated after the run ended (day 444 of a 268-day run)
    run_end = st["run_end"].astype("datetime64[us]")
    ended = _days(st["run_start"], unreg_at.clip(lower=0)).fillna(run_end).clip(upper=run_end)
    accounts = pd.DataFrame({"account_id": st["account_id"].astype("string"),
                             "created_at": st["run_start"].astype("datetime64[us]"),
                             "ended_at": ended.astype("datetime64[us]")})
    for col in FIT_COLUMNS:
        s = st[col]
        # Text stays categorical, numbers stay numeric (the contract keeps each column's type);
        # disability as text so it is a category, not a 0/1 number.
        accounts[col] = s.map({True: "Y", False: "N"}).astype("string") if col == "disability" else (
            s.astype("string") if s.dtype == object or pd.api.types.is_string_dtype(s) else s)
    passed = st["final_result"].isin(PASSING_RESULTS)
    conversions = pd.DataFrame({"account_id": st.loc[passed, "account_id"].astype("string"),
                                "converted_at": st.loc[passed, "run_end"].astype("datetime64[us]")}
                               ).reset_index(drop=True)

    counts = {
        "enrolments": int(len(st)),
        "registrations": int(len(reg)),
        "registrations_without_date": int(reg["date_registration"].isna().sum()),
        "unregistrations": int(len(unreg)),
        "submissions": int(len(sub)),
        "passes": int(passed.sum()),
        "final_result": {str(k): int(v) for k, v in st["final_result"].value_counts().items()},
        "events": int(len(events)),
        "events_by_name": {str(k): int(v) for k, v in events["event"].value_counts().items()},
        "runs": int(len(runs)),
    }
    return ContractTables(events=events, accounts=accounts.reset_index(drop=True), conversions=conversions,
                          counts=counts)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _refuse_shared(out_dir: Path, source: Path) -> None:
    out, src = out_dir.resolve(), source.resolve()
    shared = DEFAULT_SOURCE.resolve().parents[1]  # .../shared
    for protected in (src, shared):
        if out == protected or protected in out.parents:
            raise OuladError(f"{out_dir}: refusing to write into {protected} (the shared data is read-only); "
                             "choose another --out")


def write_contract(tables: ContractTables, out_dir: str | Path, *, source: str | Path = DEFAULT_SOURCE) -> dict:
    """Write events/accounts/conversions.parquet and mapping.json into ``out_dir``.

    The files are written into a temporary folder beside ``out_dir`` and moved in only when all
    are complete, so a crash never leaves a half-written data directory. Files of other tables
    already in ``out_dir`` (e.g. a stale ``users.csv``) are left alone; a stale ``events.csv``
    would make two formats of one table, which the contract refuses, so it is an error here.

    Returns
    -------
    dict
        The counts (also written to ``mapping.json``) with the output paths.
    """
    out = Path(out_dir)
    _refuse_shared(out, Path(source))
    out.mkdir(parents=True, exist_ok=True)
    for table in ("events", "accounts", "conversions"):
        for suffix in (".csv", ".jsonl"):
            if (out / f"{table}{suffix}").exists():
                raise OuladError(f"{out / (table + suffix)}: another format of {table} is already there; "
                                 "remove it or choose an empty --out")
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".oulad-"))
    try:
        paths = {}
        for name in ("events", "accounts", "conversions"):
            getattr(tables, name).to_parquet(tmp / f"{name}.parquet", index=False)
            paths[name] = out / f"{name}.parquet"
        summary = dict(tables.counts, files={k: str(v) for k, v in paths.items()})
        (tmp / "mapping.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def oulad_to_contract(out_dir: str | Path, source: str | Path = DEFAULT_SOURCE,
                      runs: str | Iterable[str] | None = None) -> dict:
    """Read OULAD from ``source``, map it and write a contract data directory to ``out_dir``.

    >>> summary = oulad_to_contract("/tmp/x", runs="AAA-2013J")  # doctest: +SKIP
    """
    tables = map_oulad(read_oulad(source, runs))
    return write_contract(tables, out_dir, source=source)


def early_cutoffs(accounts: pd.DataFrame, days: Iterable[int] = (14, 28, 56, 84)) -> list[pd.Timestamp]:
    """Cutoffs ``days`` into every course run (run starts are the accounts' ``created_at``).

    With ``converted_at`` at the end of the run, a snapshot only has a positive label when the
    run ends within the horizon after T. Taking snapshots early in each run and a horizon that
    reaches past the run's end (e.g. 300 days) asks the useful question instead: "will this
    enrolment pass, as seen N days into the course?"
    """
    starts = sorted(pd.to_datetime(accounts["created_at"]).dropna().unique())
    return sorted({pd.Timestamp(s) + pd.Timedelta(days=int(d)) for s in starts for d in days})


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python notebooks/oulad_to_contract.py --out DIR [--source DIR] [--runs ...]``."""
    p = argparse.ArgumentParser(description="Map OULAD onto the PQL data contract (parquet files).")
    p.add_argument("--out", required=True, type=Path, help="output data directory (never inside shared/)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"OULAD folder (default {DEFAULT_SOURCE})")
    p.add_argument("--runs", default=None, help="comma-separated MODULE-PRESENTATION runs, e.g. AAA-2013J,AAA-2014J")
    args = p.parse_args(argv)
    try:
        summary = oulad_to_contract(args.out, args.source, args.runs)
    except (OuladError, OSError) as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {summary['events']:,} events, {summary['enrolments']:,} accounts, "
          f"{summary['passes']:,} conversions from {summary['runs']} course runs to {args.out}")
    print(f"  events: {summary['events_by_name']}")
    if summary["registrations_without_date"]:
        print(f"  {summary['registrations_without_date']} registrations have no date: their events have no "
              "timestamp and will be quarantined by `pql validate`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
