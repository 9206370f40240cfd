"""The data contract: every format, every kind of bad row, errors, duplicates, report, CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.contract import (FUTURE_TOLERANCE, ContractError, TableReport, canonical_events,
                               detect_level, load_dataset, validate)
from features.schema import ACCOUNT_RESERVED, CONVERSION_COLUMNS, EVENT_COLUMNS, USER_COLUMNS
from features.timestamps import to_utc_naive

NOW = dt.datetime(2024, 6, 1)


def make_events(n_users: int = 6, per_user: int = 4) -> pd.DataFrame:
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            rows.append({"user_id": f"u{u}", "account_id": f"a{u % 3}" if k == 0 else None,
                         "event": ["login", "report_created", "teammate_invited", "page_view"][k % 4],
                         "timestamp": f"2024-03-{1 + k:02d}T10:00:00Z",
                         "message_id": f"m{u}-{k}", "source": "product",
                         "properties": json.dumps({"n": k}) if k % 2 else None})
    return pd.DataFrame(rows)


def write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        with open(path, "w") as fh:
            for rec in frame.to_dict(orient="records"):
                fh.write(json.dumps({k: v for k, v in rec.items() if v is not None and v == v}) + "\n")
    return path


def world(tmp_path: Path, fmt: str = "csv") -> Path:
    write(make_events(), tmp_path / f"events.{fmt}")
    write(pd.DataFrame({"user_id": [f"u{u}" for u in range(6)],
                        "email": ["a@acme.com", "b@gmail.com", "c@beta.io", "d@yahoo.com",
                                  "e@gamma.org", "f@hotmail.com"],
                        "created_at": ["2024-01-01"] * 6}), tmp_path / f"users.{fmt}")
    write(pd.DataFrame({"account_id": ["a0", "a1", "a2"], "domain": ["acme.com", "beta.io", "gamma.org"],
                        "employees": [10, 200, 3000], "industry": ["saas", "retail", "saas"]}),
          tmp_path / f"accounts.{fmt}")
    write(pd.DataFrame({"account_id": ["a0"], "converted_at": ["2024-04-01T00:00:00+00:00"]}),
          tmp_path / f"conversions.{fmt}")
    return tmp_path


def assert_balanced(report):
    for t in report.tables.values():
        assert t.rows_read == t.rows_kept + t.quarantined_total + t.duplicates + t.routed, t


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_every_format_loads_to_the_canonical_tables(tmp_path, fmt):
    ds = load_dataset(world(tmp_path, fmt), now=NOW)
    assert dict(ds.events.dtypes.astype(str)) == {c: str(pd.Series(dtype=d).dtype) for c, d in EVENT_COLUMNS.items()}
    assert list(ds.users.columns) == list(USER_COLUMNS)
    assert list(ds.conversions.columns) == list(CONVERSION_COLUMNS)
    assert list(ds.accounts.columns[:len(ACCOUNT_RESERVED)]) == list(ACCOUNT_RESERVED)
    assert set(ds.accounts.columns) - set(ACCOUNT_RESERVED) == {"employees", "industry"}
    assert pd.api.types.is_numeric_dtype(ds.accounts["employees"])
    assert len(ds.events) == 24 and len(ds.users) == 6 and len(ds.accounts) == 3
    assert ds.events["timestamp"].min() == pd.Timestamp("2024-03-01 10:00")
    assert ds.events["properties"].dropna().map(json.loads).map(type).eq(dict).all()
    assert ds.conversions["converted_at"].iloc[0] == pd.Timestamp("2024-04-01")
    assert not (tmp_path / "quarantine").exists()
    assert_balanced(ds.report)


def test_formats_give_identical_events(tmp_path):
    loaded = [load_dataset(world(tmp_path / fmt, fmt), now=NOW).events for fmt in ("parquet", "csv", "jsonl")]
    for other in loaded[1:]:
        pd.testing.assert_frame_equal(loaded[0], other)


def test_missing_optional_tables_are_empty_canonical_frames(tmp_path):
    write(make_events(), tmp_path / "events.parquet")
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.users.empty and list(ds.users.columns) == list(USER_COLUMNS)
    assert ds.conversions.empty and list(ds.conversions.columns) == list(CONVERSION_COLUMNS)
    assert any("no conversions" in w for w in ds.report.warnings)


def test_numeric_ids_stay_text_and_keep_leading_zeros(tmp_path):
    (tmp_path / "events.csv").write_text("user_id,event,timestamp\n007,login,2024-01-01\n8,login,2024-01-02\n")
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.events["user_id"].tolist() == ["007", "8"]


# --- timestamps -------------------------------------------------------------------------------


def test_all_timestamp_forms_parse_to_the_same_utc_instant(tmp_path):
    forms = ["2024-03-05T12:30:00+02:00", "2024-03-05T10:30:00Z", "2024-03-05 10:30:00",
             "1709634600", "1709634600000", "2024-03-05T05:30:00-05:00"]
    parsed = to_utc_naive(pd.Series(forms))
    assert parsed.nunique() == 1 and parsed.iloc[0] == pd.Timestamp("2024-03-05 10:30:00")
    assert str(parsed.dtype) == "datetime64[us]"
    # numbers, and typed zone-aware datetimes, too
    assert to_utc_naive(pd.Series([1709634600, 1709634600000])).eq(parsed.iloc[0]).all()
    aware = pd.Series(pd.to_datetime(["2024-03-05T12:30:00+02:00"], utc=True)).dt.tz_convert("Europe/Berlin")
    assert to_utc_naive(aware).iloc[0] == parsed.iloc[0]
    # and through files: the csv column mixes every form
    (tmp_path / "events.csv").write_text(
        "user_id,event,timestamp\n" + "".join(f"u{i},e,{f}\n" for i, f in enumerate(forms)))
    assert load_dataset(tmp_path, now=NOW).events["timestamp"].eq(parsed.iloc[0]).all()


def test_aware_parquet_timestamps_become_naive_utc(tmp_path):
    ev = make_events().assign(timestamp=pd.to_datetime(make_events()["timestamp"], utc=True)
                              .dt.tz_convert("America/New_York"))
    write(ev, tmp_path / "events.parquet")
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.events["timestamp"].dt.tz is None
    assert ds.events["timestamp"].min() == pd.Timestamp("2024-03-01 10:00")


# --- quarantine -------------------------------------------------------------------------------


def test_each_kind_of_bad_event_is_quarantined_with_reason_and_row(tmp_path):
    ev = make_events()
    bad = pd.DataFrame([
        {"user_id": "", "event": "login", "timestamp": "2024-03-01"},                 # empty id
        {"user_id": "x", "event": " ", "timestamp": "2024-03-01"},                    # empty event
        {"user_id": "x", "event": "login", "timestamp": "yesterday-ish"},             # unparseable
        {"user_id": "x", "event": "login", "timestamp": "2030-01-01"},                # far future
        {"user_id": "x", "event": "login", "timestamp": "2024-03-01", "properties": "[1, 2]"},
        {"user_id": "x", "event": "login", "timestamp": "2024-03-01", "properties": "{oops"},
        {"user_id": "x", "event": "login", "timestamp": "2024-03-01", "source": "crm"},
        {"user_id": "x", "event": "login", "timestamp": ""},                          # missing
    ])
    write(pd.concat([ev, bad], ignore_index=True), tmp_path / "events.csv")
    ds = load_dataset(tmp_path, now=NOW)
    rep = ds.report.tables["events"]
    assert rep.quarantined == {"empty user_id": 1, "empty event": 1, "unparseable timestamp": 1,
                               "future timestamp": 1, "properties not a JSON object": 2,
                               "unknown source": 1, "empty timestamp": 1}
    assert rep.rows_kept == len(ev) and len(ds.events) == len(ev)
    assert_balanced(ds.report)
    q = pd.read_csv(tmp_path / "quarantine" / "events.csv", dtype=str)
    assert {"reason", "row_number", "user_id", "timestamp"} <= set(q.columns)
    # row_number is the line in the csv (header = line 1): first bad row follows the good ones
    assert q["row_number"].astype(int).tolist() == list(range(len(ev) + 2, len(ev) + 2 + len(bad)))
    assert q.loc[q["reason"] == "unparseable timestamp", "timestamp"].item() == "yesterday-ish"
    assert str(tmp_path / "quarantine" / "events.csv") in ds.report.quarantine_files


def test_quarantine_false_counts_but_writes_nothing(tmp_path):
    write(pd.concat([make_events(), pd.DataFrame([{"user_id": "", "event": "e", "timestamp": "2024-01-01"}])]),
          tmp_path / "events.csv")
    rep = validate(tmp_path, quarantine=False, now=NOW)
    assert rep.tables["events"].quarantined == {"empty user_id": 1}
    assert not (tmp_path / "quarantine").exists()


def test_stale_quarantine_file_is_removed_when_data_is_clean(tmp_path):
    write(make_events(), tmp_path / "events.csv")
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "events.csv").write_text("old")
    load_dataset(tmp_path, now=NOW)
    assert not (tmp_path / "quarantine" / "events.csv").exists()


def test_broken_json_lines_are_quarantined_with_their_line_number(tmp_path):
    path = write(make_events(), tmp_path / "events.jsonl")
    lines = path.read_text().splitlines()
    lines[3] = '{"user_id": "u9", "event": '        # truncated
    lines[5] = '["not", "an", "object"]'
    lines.insert(7, "")                              # blank lines are not rows
    path.write_text("\n".join(lines) + "\n")
    ds = load_dataset(tmp_path, now=NOW)
    rep = ds.report.tables["events"]
    assert rep.quarantined == {"invalid JSON": 1, "row is not a JSON object": 1}
    q = pd.read_csv(tmp_path / "quarantine" / "events.csv")
    assert q["row_number"].tolist() == [4, 6]
    assert q["raw"].iloc[0].strip() == '{"user_id": "u9", "event":'
    assert len(ds.events) == 22 and rep.rows_read == 24
    assert_balanced(ds.report)


def test_bad_row_after_blank_line_gets_its_true_line_number(tmp_path):
    (tmp_path / "events.jsonl").write_text(
        '{"user_id": "a", "event": "e", "timestamp": "2024-01-01"}\n\n'
        '{"user_id": "", "event": "e", "timestamp": "2024-01-01"}\n')
    load_dataset(tmp_path, now=NOW)
    q = pd.read_csv(tmp_path / "quarantine" / "events.csv")
    assert q["row_number"].tolist() == [3] and q["reason"].tolist() == ["empty user_id"]
    assert json.loads(q["raw"].iloc[0])["user_id"] == ""


def test_malformed_csv_row_is_quarantined(tmp_path):
    (tmp_path / "events.csv").write_text(
        "user_id,event,timestamp\nu1,login,2024-01-01\nu2,login,2024-01-02,extra,cells\nu3,login,2024-01-03\n")
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.events["user_id"].tolist() == ["u1", "u3"]
    q = pd.read_csv(tmp_path / "quarantine" / "events.csv")
    assert q[["row_number", "reason"]].values.tolist() == [[3, "malformed row"]]
    assert_balanced(ds.report)


def test_conversion_checks(tmp_path):
    world(tmp_path, "csv")
    # a1 is in accounts, "a-ev" appears only as an event account id, "ghost" nowhere
    ev = pd.concat([make_events(), pd.DataFrame([{"user_id": "u0", "event": "login",
                                                  "timestamp": "2024-03-09", "account_id": "a-ev"}])])
    write(ev, tmp_path / "events.csv")
    write(pd.DataFrame({"account_id": ["a1", "a-ev", "ghost", "a2", "", "a1"],
                        "converted_at": ["2024-04-01", "2024-04-02", "2024-04-03", "not a date",
                                         "2024-04-04", "2024-04-01"]}), tmp_path / "conversions.csv")
    ds = load_dataset(tmp_path, now=NOW)
    rep = ds.report.tables["conversions"]
    assert rep.quarantined == {"unknown account": 1, "unparseable converted_at": 1, "empty account_id": 1}
    assert rep.duplicates == 1
    assert sorted(ds.conversions["account_id"]) == ["a-ev", "a1"]
    assert_balanced(ds.report)


def test_account_end_dates_are_parsed_checked_and_not_fit_attributes(tmp_path):
    write(make_events(), tmp_path / "events.csv")
    write(pd.DataFrame({"account_id": ["a0", "a1", "a2", "a3", "a4"],
                        "created_at": ["2024-01-01", "2024-01-01", "2024-02-01", "2024-01-01", "2024-01-01"],
                        "ended_at": ["2024-03-15T00:00:00Z", None, "2024-01-10", "soon", "2030-01-01"],
                        "industry": ["saas"] * 5}), tmp_path / "accounts.csv")
    ds = load_dataset(tmp_path, now=NOW)
    rep = ds.report.tables["accounts"]
    assert rep.quarantined == {"ended_at before created_at": 1, "unparseable ended_at": 1}
    kept = ds.accounts.set_index("account_id")
    assert sorted(kept.index) == ["a0", "a1", "a4"]
    assert kept.loc["a0", "ended_at"] == pd.Timestamp("2024-03-15")
    assert pd.isna(kept.loc["a1", "ended_at"])
    assert kept.loc["a4", "ended_at"] == pd.Timestamp("2030-01-01")  # a scheduled end is not "future data"
    assert str(ds.accounts["ended_at"].dtype) == ACCOUNT_RESERVED["ended_at"]
    assert "ended_at" not in [c for c in ds.accounts.columns if c not in ACCOUNT_RESERVED]
    assert_balanced(ds.report)
    quarantine = pd.read_csv(tmp_path / "quarantine" / "accounts.csv")
    assert set(quarantine["account_id"]) == {"a2", "a3"}


def test_accounts_without_events_are_reported(tmp_path):
    world(tmp_path)
    accounts = pd.read_csv(tmp_path / "accounts.csv")
    silent = pd.DataFrame({"account_id": ["quiet1", "quiet2"], "domain": ["quiet.io", "acme.com"],
                           "employees": [5, 5], "industry": ["saas", "saas"]})
    pd.concat([accounts, silent]).to_csv(tmp_path / "accounts.csv", index=False)
    loaded = load_dataset(tmp_path, now=NOW).report
    assert (loaded.accounts_total, loaded.accounts_without_events) == (5, 2)
    rep = validate(tmp_path, now=NOW)
    # quiet2 shares acme.com with a0, but resolution sends each user to one account: both stay silent
    assert rep.accounts_without_events == 2
    assert any("2 of 5 accounts have no events" in w for w in rep.warnings)
    assert "Accounts with no events: 2 of 5 (after identity resolution)" in rep.to_text()
    assert rep.to_dict()["accounts_without_events"] == 2


def test_unknown_accounts_are_not_checked_without_an_accounts_table(tmp_path):
    write(make_events(), tmp_path / "events.csv")
    write(pd.DataFrame({"account_id": ["anything"], "converted_at": ["2024-04-01"]}), tmp_path / "conversions.csv")
    assert load_dataset(tmp_path, now=NOW).conversions["account_id"].tolist() == ["anything"]


# --- duplicates -------------------------------------------------------------------------------


def test_duplicates_are_dropped_once_and_counted(tmp_path):
    ev = make_events()
    same_message = ev.iloc[[0]].assign(event="renamed_but_same_message")
    no_id = ev.drop(columns="message_id").iloc[:3]
    frame = pd.concat([ev, same_message, ev.iloc[[1, 1]],  # same message_id twice more
                       no_id.assign(message_id=None), no_id.assign(message_id=None),
                       no_id.iloc[[0]].assign(message_id=None, event="other")], ignore_index=True)
    write(frame, tmp_path / "events.parquet")
    ds = load_dataset(tmp_path, now=NOW)
    rep = ds.report.tables["events"]
    assert rep.duplicates == 1 + 2 + 3
    assert len(ds.events) == len(ev) + 3 + 1
    assert ds.events["message_id"].dropna().is_unique
    assert "renamed_but_same_message" not in set(ds.events["event"])
    assert_balanced(ds.report)


def test_user_duplicates_and_conflicts(tmp_path):
    write(make_events(), tmp_path / "events.csv")
    write(pd.DataFrame({"user_id": ["u0", "u0", "u1", "u1"],
                        "email": ["a@acme.com", "a@acme.com", "b@beta.io", "other@beta.io"],
                        "created_at": "2024-01-01"}),
          tmp_path / "users.csv")
    ds = load_dataset(tmp_path, now=NOW)
    rep = ds.report.tables["users"]
    assert rep.duplicates == 1 and rep.quarantined == {"conflicting duplicate id": 1}
    assert ds.users.set_index("user_id")["email"].to_dict() == {"u0": "a@acme.com", "u1": "b@beta.io"}


# --- errors -----------------------------------------------------------------------------------


def test_missing_required_column_names_file_and_column(tmp_path):
    write(make_events().drop(columns="event"), tmp_path / "events.csv")
    with pytest.raises(ContractError) as err:
        load_dataset(tmp_path, now=NOW)
    assert err.value.column == "event" and err.value.file.endswith("events.csv")
    assert "events.csv" in str(err.value) and "'event'" in str(err.value)


def test_missing_column_of_optional_table(tmp_path):
    write(make_events(), tmp_path / "events.csv")
    write(pd.DataFrame({"account_id": ["a1"]}), tmp_path / "conversions.parquet")
    with pytest.raises(ContractError, match="conversions.parquet.*converted_at"):
        load_dataset(tmp_path, now=NOW)


def test_mostly_unparseable_timestamp_column_is_a_type_error(tmp_path):
    write(make_events().assign(timestamp="last tuesday"), tmp_path / "events.csv")
    with pytest.raises(ContractError) as err:
        load_dataset(tmp_path, now=NOW)
    assert err.value.column == "timestamp" and "do not parse" in str(err.value)


def test_unreadable_file_is_a_clear_error(tmp_path):
    (tmp_path / "events.parquet").write_bytes(b"definitely not parquet")
    with pytest.raises(ContractError, match="events.parquet.*cannot read"):
        load_dataset(tmp_path, now=NOW)


def test_two_formats_of_one_table_is_an_error(tmp_path):
    write(make_events(), tmp_path / "events.csv")
    write(make_events(), tmp_path / "events.parquet")
    with pytest.raises(ContractError, match="several formats"):
        load_dataset(tmp_path, now=NOW)


def test_no_events_file_is_an_error(tmp_path):
    with pytest.raises(ContractError, match="no events file"):
        load_dataset(tmp_path, now=NOW)


def test_aggregated_data_is_named_in_the_error(tmp_path):
    write(pd.DataFrame({"user_id": ["u1", "u2"], "logins": [5, 12], "reports": [0, 3]}), tmp_path / "events.csv")
    with pytest.raises(ContractError, match="aggregated counts"):
        load_dataset(tmp_path, now=NOW)
    write(pd.DataFrame({"user_id": ["u1", "u2"], "invited": [True, False], "shared": [False, True]}),
          tmp_path / "events.csv")
    with pytest.raises(ContractError, match="attribute flags"):
        load_dataset(tmp_path, now=NOW)


# --- report -----------------------------------------------------------------------------------


def test_level_reflects_how_much_time_structure_there_is(tmp_path):
    write(make_events(), tmp_path / "a" / "events.csv")
    assert validate(tmp_path / "a", now=NOW).level == "sequences"
    write(make_events(per_user=1), tmp_path / "b" / "events.csv")
    assert validate(tmp_path / "b", now=NOW).level == "event-level with timestamps"
    assert detect_level(pd.DataFrame({"user_id": [], "timestamp": []})) == "event-level with timestamps"


def test_report_warnings_and_linkability(tmp_path):
    rep = validate(world(tmp_path, "parquet"), now=NOW)
    # u1, u3, u5 have free-mail addresses and their only account-bearing event is event k=0,
    # which carries an account id for every user: all six are linkable.
    assert rep.users_total == 6 and rep.users_unlinkable == 0
    assert rep.converters == 1
    assert any("fewer than 50" in w for w in rep.warnings)
    # Drop event account ids: free-mail users without inviter become unlinkable.
    write(make_events().assign(account_id=None), tmp_path / "events.parquet")
    rep = validate(tmp_path, now=NOW)
    assert rep.users_unlinkable == 3 and rep.unlinkable_share == pytest.approx(0.5)
    assert any("3 of 6 users" in w for w in rep.warnings)


def test_report_text_and_dict(tmp_path):
    rep = validate(world(tmp_path, "csv"), now=NOW)
    text = rep.to_text()
    for word in ("events", "users", "accounts", "conversions", "sequences", "warning"):
        assert word in text
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["tables"]["events"]["rows_kept"] == 24 and d["level"] == "sequences"


def test_table_report_balance_property():
    assert TableReport("events", rows_read=5, rows_kept=3, quarantined={"x": 1}, duplicates=1).balanced
    assert not TableReport("events", rows_read=5, rows_kept=3).balanced


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_no_row_is_lost_on_random_dirty_data(tmp_path, fmt):
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame({
        "user_id": rng.choice(["u1", "u2", "u3", "", "u4"], n),
        "event": rng.choice(["login", "share", ""], n),
        "timestamp": rng.choice(["2024-01-01T00:00:00Z", "2024-02-01 10:00", "garbage", "2099-01-01",
                                 "1704067200"], n, p=[0.4, 0.3, 0.1, 0.1, 0.1]),
        "message_id": rng.choice(["m1", "m2", "m3", None, None, None], n),
        "properties": rng.choice(['{"a": 1}', "[]", None, "{bad"], n),
    })
    write(frame, tmp_path / f"events.{fmt}")
    ds = load_dataset(tmp_path, now=NOW)
    rep = ds.report.tables["events"]
    assert rep.rows_read == n and rep.quarantined_total > 0 and rep.duplicates > 0
    assert_balanced(ds.report)
    q = pd.read_csv(tmp_path / "quarantine" / "events.csv")
    assert len(q) == rep.quarantined_total and q["row_number"].is_unique


# --- CLI --------------------------------------------------------------------------------------


def test_cli_validate_prints_summary_on_good_data(tmp_path):
    from pql.cli import app

    result = CliRunner().invoke(app, ["validate", str(world(tmp_path, "csv"))])
    assert result.exit_code == 0, result.output
    assert "Data level: sequences" in result.output and "conversions" in result.output


def test_cli_validate_fails_cleanly_on_missing_column(tmp_path):
    from pql.cli import app

    write(make_events().drop(columns="timestamp"), tmp_path / "events.csv")
    result = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code != 0
    assert "events.csv" in result.output and "timestamp" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ContractError)


def test_cli_validate_json(tmp_path):
    from pql.cli import app

    result = CliRunner().invoke(app, ["validate", str(world(tmp_path, "parquet")), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["tables"]["users"]["rows_kept"] == 6


# --- public row validators (shared with the webhook ingest) -------------------------------------


def test_canonical_events_gives_the_loaders_verdict_row_by_row(tmp_path):
    from features import contract

    frame = pd.concat([make_events(n_users=2), pd.DataFrame([
        {"user_id": "", "event": "login", "timestamp": "2024-03-01"},
        {"user_id": "x", "event": "login", "timestamp": "2030-01-01"},
        {"user_id": "x", "event": "login", "timestamp": "2024-03-01", "properties": "[1]"},
    ])], ignore_index=True)
    write(frame, tmp_path / "events.csv")
    ds = load_dataset(tmp_path, now=NOW)
    events, reasons = canonical_events(frame, "/v1/batch", pd.Timestamp(NOW) + FUTURE_TOLERANCE)
    assert reasons[reasons != ""].value_counts().to_dict() == ds.report.tables["events"].quarantined
    pd.testing.assert_frame_equal(events[reasons == ""].reset_index(drop=True), ds.events)
    assert contract._canonical_events is canonical_events  # the old private name still works
    with pytest.raises(ContractError, match="/v1/batch.*'event'"):
        canonical_events(frame.drop(columns="event"), "/v1/batch", pd.Timestamp(NOW))


# --- users file: email and created_at are expected, not required -----------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("column", ["email", "created_at"])
def test_users_file_without_email_or_created_at_loads_with_a_warning(tmp_path, fmt, column):
    world(tmp_path, fmt)
    users = pd.DataFrame({"user_id": ["u0", "u1"], "email": ["a@acme.com", "b@beta.io"],
                          "created_at": ["2024-01-01", "2024-01-02"], "account_id": ["a0", None]})
    write(users.drop(columns=column), tmp_path / f"users.{fmt}")
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.report.tables["users"].rows_kept == 2 and ds.users[column].isna().all()
    assert ds.report.users_file_missing == [column]
    assert sum(f"no {column} values" in w for w in ds.report.warnings) == 1
    assert ds.users.set_index("user_id").loc["u0", "account_id"] == "a0"  # other fields still link


def test_users_file_needs_user_id(tmp_path):
    world(tmp_path)
    write(pd.DataFrame({"email": ["a@acme.com"], "created_at": ["2024-01-01"]}), tmp_path / "users.csv")
    with pytest.raises(ContractError) as err:
        load_dataset(tmp_path, now=NOW)
    assert err.value.column == "user_id" and err.value.file.endswith("users.csv")


def test_users_file_single_empty_values_are_kept_and_an_empty_column_is_warned(tmp_path):
    write(make_events(), tmp_path / "events.csv")
    (tmp_path / "users.csv").write_text(
        "user_id,email,created_at\nu0,a@acme.com,\nu1,,2024-01-02\n")
    ds = load_dataset(tmp_path, now=NOW)
    users = ds.users.set_index("user_id")
    assert pd.isna(users.loc["u0", "created_at"]) and pd.isna(users.loc["u1", "email"])
    assert ds.report.tables["users"].rows_kept == 2 and ds.report.users_file_missing == []
    (tmp_path / "users.csv").write_text("user_id,email,created_at\nu0,,2024-01-01\nu1,,2024-01-02\n")
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.report.users_file_missing == ["email"] and ds.report.tables["users"].rows_kept == 2


# --- report: reasons as lines, identity resolution ----------------------------------------------


def test_report_text_lists_each_reason_on_its_own_line(tmp_path):
    bad = pd.DataFrame([{"user_id": "", "event": "login", "timestamp": "2024-03-01"},
                        {"user_id": "x", "event": "login", "timestamp": "yesterday-ish"},
                        {"user_id": "x", "event": "login", "timestamp": "2024-03-01", "source": "crm"}])
    write(pd.concat([make_events(), bad], ignore_index=True), tmp_path / "events.csv")
    text = load_dataset(tmp_path, now=NOW).report.to_text()
    lines = text.splitlines()
    for reason in ("empty user_id", "unparseable timestamp", "unknown source"):
        hits = [line for line in lines if reason in line]
        assert len(hits) == 1 and hits[0].split() == ["events", *reason.split(), "1"], hits
    assert "Quarantined rows by reason:" in text


def test_validate_attaches_identity_resolution_and_uses_it_for_linkability(tmp_path):
    from features.identity import resolve_accounts

    world_dir = world(tmp_path, "parquet")
    write(make_events().assign(account_id=None), world_dir / "events.parquet")
    ds = load_dataset(world_dir, now=NOW)
    expected = resolve_accounts(ds.users, ds.events, ds.accounts).report

    rep = validate(world_dir, now=NOW)
    assert rep.resolution is not None and rep.resolution.counts == expected.counts
    assert rep.linkability() == (expected.unresolved, expected.n_users, "identity resolution")
    n = expected.unresolved
    assert n > 0  # free-mail users without account id or inviter
    assert any(w.startswith(f"{n} of {expected.n_users} users") and "identity resolution" in w
               for w in rep.warnings)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["resolution"]["counts"] == expected.counts
    assert d["not_linkable"] == {"users": n, "of": expected.n_users, "basis": "identity resolution",
                                 "share": round(n / expected.n_users, 4)}
    assert "Identity resolution:" in rep.to_text()

    quick = validate(world_dir, now=NOW, resolve=False)
    assert quick.resolution is None and quick.linkability()[2] == "evidence"
    assert quick.to_dict()["resolution"] is None and "Identity resolution:" not in quick.to_text()


def test_cli_validate_shows_identity_resolution_on_a_generated_world(small_world, tmp_path):
    import re
    import shutil

    from features.identity import resolve_accounts
    from pql.cli import app

    data = tmp_path / "world"
    shutil.copytree(small_world, data)  # quarantine writes into the data directory
    ds = load_dataset(data, quarantine=False)
    expected = resolve_accounts(ds.users, ds.events, ds.accounts).report

    result = CliRunner().invoke(app, ["validate", str(data)])
    assert result.exit_code == 0, result.output
    assert "Identity resolution:" in result.output
    line = re.search(r"Users not linkable to an account \(identity resolution\): ([\d,]+) of ([\d,]+)",
                     result.output)
    assert line, result.output
    assert [int(g.replace(",", "")) for g in line.groups()] == [expected.unresolved, expected.n_users]
    for method in ("explicit", "domain", "link", "name", "provisional", "unresolved"):
        assert re.search(rf"^\s+{method}\s+{expected.counts[method]:,}\s", result.output, re.M), method

    as_json = CliRunner().invoke(app, ["validate", str(data), "--json"])
    d = json.loads(as_json.output)
    assert sum(d["resolution"]["counts"].values()) == d["resolution"]["n_users"] == expected.n_users
    quick = json.loads(CliRunner().invoke(app, ["validate", str(data), "--json", "--no-identity"]).output)
    assert quick["resolution"] is None and quick["not_linkable"]["basis"] == "evidence"


def test_cli_validate_help_describes_layout_formats_and_quarantine():
    from pql.cli import app

    result = CliRunner().invoke(app, ["validate", "--help"], terminal_width=120)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for needed in ("events", "users", "accounts", "conversions", ".parquet", ".csv", ".jsonl",
                   "quarantine/<table>.csv", "Segment", "email, created_at"):
        assert needed in text, needed


# --- the fast paths of load_dataset on millions of rows give pandas' answers ----------------

def test_hashed_duplicates_equal_pandas_duplicated_with_nulls(monkeypatch):
    import features.contract as contract

    rng = np.random.default_rng(3)
    n = 5_000
    frame = pd.DataFrame({
        "user_id": pd.array(rng.choice(["u1", "u2", "u3", None], n), dtype="string"),
        "event": pd.array(rng.choice(["a", "b"], n), dtype="string"),
        "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 20, n), unit="s"),
        "properties": pd.array(rng.choice(['{"k": 1}', None], n), dtype="string")})
    frame["timestamp"] = frame["timestamp"].astype("datetime64[us]")
    expected = frame.duplicated().to_numpy()
    assert 0 < expected.sum() < n
    monkeypatch.setattr(contract, "_HASHED_DUPLICATES_FROM", 0)  # force the hashed path
    np.testing.assert_array_equal(contract._duplicated(frame), expected)
    np.testing.assert_array_equal(contract._duplicated(frame.iloc[::-1].reset_index(drop=True)),
                                  frame.iloc[::-1].duplicated().to_numpy())
    # an attribute Arrow cannot type (numbers and text in one object column) still gets an answer
    mixed = frame.assign(size=pd.Series([1, "big"] * (n // 2), dtype=object))
    np.testing.assert_array_equal(contract._duplicated(mixed), mixed.duplicated().to_numpy())


def test_row_filter_keeps_values_dtypes_and_a_fresh_index():
    from features.contract import _rows

    frame = pd.DataFrame({"user_id": pd.array(["u1", None, "u3", "u4"], dtype="string"),
                          "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02", None, "2024-01-04"]),
                          "n": [1, 2, 3, 4]}, index=[10, 11, 12, 13])
    keep = np.array([True, True, False, True])
    got = _rows(frame, keep)
    pd.testing.assert_frame_equal(got, frame[keep].reset_index(drop=True))


def test_linkability_and_level_count_users_of_both_tables():
    from features.contract import _linkability, detect_level

    users = pd.DataFrame({
        "user_id": pd.array(["u1", "u2", "u3", "u4", None], dtype="string"),
        "email": pd.array(["a@acme.com", "b@gmail.com", "c@gmail.com", "d@gmail.com", "e@x.com"], dtype="string"),
        "account_id": pd.array([None, "acc1", None, None, None], dtype="string"),
        "invited_by": pd.array([None, None, "u1", None, None], dtype="string")})
    t = pd.Timestamp("2024-01-01")
    events = pd.DataFrame({
        "user_id": pd.array(["u4", "u5", "u5", "u6", "u6"], dtype="string"),
        "account_id": pd.array([None, "acc2", None, None, None], dtype="string"),
        "timestamp": [t, t, t + pd.Timedelta(days=1), t, t]})
    # users u1..u6: u1 corporate mail, u2 account id, u3 invited, u5 named on an event;
    # u4 (free mail, only unnamed events) and u6 (events only, never named) are not linkable
    assert _linkability(users, events) == (6, 2)
    # u4 and u6 act once, u5 on two days: 1 of 3 users acts at several times
    assert detect_level(events) == "event-level with timestamps"
    assert detect_level(events.assign(timestamp=[t, t, t, t, t + pd.Timedelta(hours=1)])) == "event-level with timestamps"
    assert detect_level(events.assign(timestamp=[t, t, t + pd.Timedelta(days=1), t, t + pd.Timedelta(hours=1)])) \
        == "sequences"
