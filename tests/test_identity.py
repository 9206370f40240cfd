"""Identity resolution (issue 4): each method on a constructed case, precedence, safety rules."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from features.domains import classify_domains, email_domain, registered_domain
from features.identity import (
    attach_accounts,
    evaluate_resolution,
    normalize_company_name,
    resolve_accounts,
    write_resolution,
)
from features.schema import USER_ACCOUNT_COLUMNS

T0 = pd.Timestamp("2025-01-01")


def make_users(rows: list[dict]) -> pd.DataFrame:
    cols = ["user_id", "email", "created_at", "account_id", "company", "invited_by"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    df["created_at"] = pd.to_datetime(df["created_at"]).fillna(T0).astype("datetime64[us]")
    for c in cols:
        if c != "created_at":
            df[c] = df[c].astype("string")
    return df


def make_events(rows: list[dict]) -> pd.DataFrame:
    cols = ["user_id", "account_id", "event", "timestamp", "message_id", "source", "properties"]
    out = []
    for i, r in enumerate(rows):
        props = r.get("properties")
        out.append(
            {
                "user_id": r.get("user_id"),
                "account_id": r.get("account_id"),
                "event": r.get("event", "page_viewed"),
                "timestamp": r.get("timestamp", T0 + pd.Timedelta(hours=i)),
                "message_id": f"m{i}",
                "source": "product",
                "properties": json.dumps(props) if isinstance(props, dict) else props,
            }
        )
    df = pd.DataFrame(out, columns=cols)
    df["timestamp"] = pd.to_datetime(df["timestamp"]).astype("datetime64[us]")
    for c in cols:
        if c != "timestamp":
            df[c] = df[c].astype("string")
    return df


def make_accounts(rows: list[dict]) -> pd.DataFrame:
    cols = ["account_id", "domain", "domain_aliases", "name", "created_at", "employees"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    df["created_at"] = pd.to_datetime(df["created_at"]).fillna(T0).astype("datetime64[us]")
    for c in ("account_id", "domain", "domain_aliases", "name"):
        df[c] = df[c].astype("string")
    return df


ACCOUNTS = make_accounts(
    [
        {"account_id": "A", "domain": "acme.com", "domain_aliases": "acme.io, acme-corp.de", "name": "Acme Analytics Inc."},
        {"account_id": "B", "domain": "https://www.globex.com/", "name": "Globex Corporation"},
        {"account_id": "C", "domain": "initech.co.uk", "name": "Acme Logistics"},
    ]
)
EMPTY_EVENTS = make_events([])


def resolved(res) -> dict[str, tuple]:
    ua = res.user_accounts
    return {
        r.user_id: (None if pd.isna(r.account_id) else r.account_id, r.method, r.confidence)
        for r in ua.itertuples()
    }


# --- domain helpers -----------------------------------------------------------------------------


def test_domain_helpers_parse_classify_and_register():
    assert email_domain(pd.Series(["X@Mail.ACME.com", "no-at-sign", " y@acme.io "])).tolist()[::2] == [
        "mail.acme.com",
        "acme.io",
    ]
    kinds = classify_domains(pd.Series(["gmail.com", "yahoo.co.uk", "mailinator.com", "acme.com"]))
    assert kinds.tolist() == ["free", "free", "disposable", "corporate"]
    assert registered_domain(pd.Series(["a.b.acme.com.au", "eu.acme.com"])).tolist() == [
        "acme.com.au",
        "acme.com",
    ]


def test_normalize_company_name_drops_legal_suffixes():
    got = normalize_company_name(pd.Series(["Acme Analytics, Inc.", "ACME ANALYTICS LTD", "Globex GmbH"]))
    assert got.tolist() == ["acme analytics", "acme analytics", "globex"]


# --- each method --------------------------------------------------------------------------------


def test_explicit_from_user_record_and_from_events():
    users = make_users([{"user_id": "u1", "account_id": "B", "email": "a@gmail.com"}, {"user_id": "u2"}])
    events = make_events([{"user_id": "u2", "account_id": "C"}, {"user_id": "u3", "account_id": "A"}])
    r = resolved(resolve_accounts(users, events, ACCOUNTS))
    assert r["u1"] == ("B", "explicit", 1.0)
    assert r["u2"] == ("C", "explicit", 1.0)
    assert r["u3"] == ("A", "explicit", 1.0)  # a user seen only in events is still known


def test_explicit_disagreement_majority_wins_and_is_counted():
    users = make_users([{"user_id": "u1", "account_id": "A"}])
    events = make_events([{"user_id": "u1", "account_id": "B"}] * 3)
    res = resolve_accounts(users, events, ACCOUNTS)
    assert resolved(res)["u1"][:2] == ("B", "explicit")
    assert res.report.conflicts["explicit/explicit"] == 1


def test_explicit_tie_goes_to_most_recent():
    events = make_events(
        [
            {"user_id": "u1", "account_id": "A", "timestamp": T0 + pd.Timedelta(days=5)},
            {"user_id": "u1", "account_id": "B", "timestamp": T0 + pd.Timedelta(days=1)},
        ]
    )
    assert resolved(resolve_accounts(make_users([]), events, ACCOUNTS))["u1"][0] == "A"


def test_domain_subdomain_alias_and_url_shaped_account_domain():
    users = make_users(
        [
            {"user_id": "u1", "email": "ann@acme.com"},
            {"user_id": "u2", "email": "bo@eu.sales.acme.com"},
            {"user_id": "u3", "email": "cy@acme-corp.de"},
            {"user_id": "u4", "email": "di@globex.com"},
            {"user_id": "u5", "email": "ed@notacme.com"},
            {"user_id": "u6", "email": "fi@london.initech.co.uk"},
        ]
    )
    r = resolved(resolve_accounts(users, EMPTY_EVENTS, ACCOUNTS))
    assert r["u1"] == ("A", "domain", 0.95)
    assert r["u2"][:2] == ("A", "domain")
    assert r["u3"][:2] == ("A", "domain")
    assert r["u4"][:2] == ("B", "domain")
    assert r["u5"][1] == "provisional"  # "notacme.com" is not a sub-domain of acme.com
    assert r["u6"][:2] == ("C", "domain")


def test_free_mail_and_disposable_never_link_alone():
    accounts = pd.concat(
        [ACCOUNTS, make_accounts([{"account_id": "G", "domain": "gmail.com", "name": "Bad CRM row"}])]
    )
    users = make_users(
        [
            {"user_id": "u1", "email": "someone@gmail.com"},
            {"user_id": "u2", "email": "x@mailinator.com"},
            {"user_id": "u3", "email": "y@googlemail.com"},
        ]
    )
    res = resolve_accounts(users, EMPTY_EVENTS, accounts)
    r = resolved(res)
    for u in ("u1", "u2", "u3"):
        assert r[u] == (None, "unresolved", 0.0)
    assert res.report.counts["provisional"] == 0
    assert res.report.free_mail_users == 2 and res.report.disposable_users == 1


def test_invite_chain_propagates_over_two_hops():
    users = make_users(
        [
            {"user_id": "root", "email": "boss@globex.com"},
            {"user_id": "hop1", "email": "a@gmail.com", "invited_by": "root"},
            {"user_id": "hop2", "email": "b@outlook.com", "invited_by": "hop1"},
            {"user_id": "lone", "email": "c@gmail.com"},
        ]
    )
    res = resolve_accounts(users, EMPTY_EVENTS, ACCOUNTS)
    r = resolved(res)
    assert r["hop1"][:2] == ("B", "link") and r["hop2"][:2] == ("B", "link")
    assert 0.85 <= r["hop2"][2] <= 0.9
    assert r["lone"][1] == "unresolved"
    assert res.report.link_rounds >= 2


def test_invitee_email_in_events_links_the_invitee():
    users = make_users(
        [{"user_id": "boss", "email": "boss@acme.com"}, {"user_id": "new", "email": "New.Person@gmail.com"}]
    )
    events = make_events(
        [{"user_id": "boss", "event": "teammate_invited", "properties": {"invitee_email": "new.person@gmail.com"}}]
    )
    assert resolved(resolve_accounts(users, events, ACCOUNTS))["new"][:2] == ("A", "link")


def test_workspace_majority_links_and_split_workspace_does_not():
    users = make_users(
        [
            {"user_id": "a1", "email": "a1@acme.com"},
            {"user_id": "a2", "email": "a2@acme.com"},
            {"user_id": "b1", "email": "b1@globex.com"},
            {"user_id": "x", "email": "x@gmail.com"},
            {"user_id": "s1", "email": "s1@acme.com"},
            {"user_id": "s2", "email": "s2@globex.com"},
            {"user_id": "y", "email": "y@gmail.com"},
        ]
    )
    ws = lambda u, w: {"user_id": u, "properties": {"workspace_id": w}}  # noqa: E731
    events = make_events(
        [ws("a1", "w1"), ws("a2", "w1"), ws("b1", "w1"), ws("x", "w1"), ws("s1", "w2"), ws("s2", "w2"), ws("y", "w2")]
        + [{"user_id": "x", "properties": "not json {"}]  # malformed properties are tolerated
    )
    res = resolve_accounts(users, events, ACCOUNTS)
    r = resolved(res)
    assert r["x"] == ("A", "link", 0.85)  # 2 of 3 resolved members: majority, not unanimous
    assert r["y"][1] == "unresolved"  # 1 vs 1: no majority, no guess
    # b1 is resolved by domain (B) but its workspace says A: counted as a conflict, domain wins.
    assert r["b1"][:2] == ("B", "domain")
    assert res.report.conflicts["domain/link"] >= 1


def test_fuzzy_company_name_matches_conservatively():
    users = make_users(
        [
            {"user_id": "u1", "email": "p@gmail.com", "company": "Acme Analytics"},
            {"user_id": "u2", "email": "q@gmail.com", "company": "acme analytcs ltd"},
            {"user_id": "u3", "email": "r@gmail.com", "company": "Acme Logistic Partners"},
            {"user_id": "u4", "email": "s@gmail.com", "company": "Acme"},
        ]
    )
    accounts = ACCOUNTS[ACCOUNTS.account_id != "C"]  # only "Acme Analytics Inc." is left
    r = resolved(resolve_accounts(users, EMPTY_EVENTS, accounts))
    assert r["u1"][:2] == ("A", "name") and r["u1"][2] == pytest.approx(0.8)
    assert r["u2"][:2] == ("A", "name") and r["u2"][2] < 0.8
    assert r["u3"][1] == "unresolved"
    assert r["u4"][1] == "unresolved"
    # "Acme Logistics" must not be taken for "Acme Analytics" either way round.
    users2 = make_users([{"user_id": "v", "email": "v@gmail.com", "company": "Acme Logistics"}])
    only_a = resolve_accounts(users2, EMPTY_EVENTS, accounts)
    assert resolved(only_a)["v"][1] == "unresolved"
    with_c = resolved(resolve_accounts(users2, EMPTY_EVENTS, ACCOUNTS))
    assert with_c["v"][:2] == ("C", "name")


def test_company_name_from_event_properties_when_user_has_none():
    users = make_users([{"user_id": "u1", "email": "p@gmail.com"}])
    events = make_events([{"user_id": "u1", "event": "identify", "properties": {"company": "Globex Corp"}}])
    assert resolved(resolve_accounts(users, events, ACCOUNTS))["u1"][:2] == ("B", "name")


def test_provisional_account_for_unknown_corporate_domain_after_links():
    users = make_users(
        [
            {"user_id": "p1", "email": "a@newco.io"},
            {"user_id": "p2", "email": "b@eu.newco.io"},
            {"user_id": "p3", "email": "c@newco.io", "invited_by": "boss"},
            {"user_id": "boss", "email": "boss@acme.com"},
        ]
    )
    res = resolve_accounts(users, EMPTY_EVENTS, ACCOUNTS)
    r = resolved(res)
    assert r["p1"] == ("domain:newco.io", "provisional", 0.5)
    assert r["p2"][0] == "domain:newco.io"
    assert r["p3"][:2] == ("A", "link")  # links are tried before a provisional account is made
    assert res.report.provisional_accounts == 1


def test_precedence_explicit_over_domain_over_name_and_conflicts_counted():
    users = make_users(
        [
            {"user_id": "u1", "email": "a@acme.com", "account_id": "B", "company": "Acme Logistics"},
            {"user_id": "u2", "email": "b@acme.com", "company": "Globex"},
        ]
    )
    res = resolve_accounts(users, EMPTY_EVENTS, ACCOUNTS)
    r = resolved(res)
    assert r["u1"][:2] == ("B", "explicit")
    assert r["u2"][:2] == ("A", "domain")
    c = res.report.conflicts
    assert c["explicit/domain"] == 1 and c["explicit/name"] == 1 and c["domain/name"] == 2


def test_ambiguous_domain_is_not_used():
    accounts = pd.concat([ACCOUNTS, make_accounts([{"account_id": "A2", "domain": "acme.com", "name": "Acme dup"}])])
    users = make_users([{"user_id": "u1", "email": "a@acme.com"}])
    res = resolve_accounts(users, EMPTY_EVENTS, accounts)
    assert resolved(res)["u1"][1] == "unresolved"
    assert res.report.ambiguous_domain_users == 1


# --- shapes, empties, attach --------------------------------------------------------------------


def test_empty_inputs_and_output_shape():
    res = resolve_accounts(make_users([]), EMPTY_EVENTS, make_accounts([]))
    assert list(res.user_accounts.columns) == list(USER_ACCOUNT_COLUMNS)
    assert len(res.user_accounts) == 0 and res.report.n_users == 0
    assert "0 users" in res.report.to_text()
    users = make_users([{"user_id": "u1", "email": "a@acme.com"}])
    res = resolve_accounts(users, pd.DataFrame(), pd.DataFrame())
    assert resolved(res)["u1"] == ("domain:acme.com", "provisional", 0.5)
    assert {k: str(v) for k, v in res.user_accounts.dtypes.items()} == {
        "user_id": "string",
        "account_id": "string",
        "method": "string",
        "confidence": "float64",
    }


def test_report_text_and_dict_agree():
    users = make_users([{"user_id": f"u{i}", "email": e} for i, e in enumerate(["a@acme.com", "b@gmail.com"])])
    rep = resolve_accounts(users, EMPTY_EVENTS, ACCOUNTS).report
    d = rep.to_dict()
    assert d["counts"]["domain"] == 1 and d["unresolved"] == 1 and d["shares"]["domain"] == 0.5
    json.dumps(d)
    text = rep.to_text()
    assert "domain" in text and "50.0%" in text


def test_attach_accounts_keeps_explicit_and_fills_missing():
    users = make_users([{"user_id": "u1", "email": "a@acme.com"}, {"user_id": "u2", "email": "b@gmail.com"}])
    events = make_events(
        [{"user_id": "u1"}, {"user_id": "u1", "account_id": "Z"}, {"user_id": "u2"}, {"user_id": None}]
    )
    res = resolve_accounts(users, events.iloc[:0], ACCOUNTS)
    out = attach_accounts(events, res.user_accounts)
    assert out["account_id"].tolist()[:2] == ["A", "Z"]
    assert out["account_id"].isna().tolist()[2:] == [True, True]
    assert out.index.equals(events.index) and out["account_id"].dtype == events["account_id"].dtype
    assert events["account_id"].isna().sum() == 3  # input untouched


def test_write_resolution_is_readable(tmp_path):
    users = make_users([{"user_id": "u1", "email": "a@acme.com"}])
    res = resolve_accounts(users, EMPTY_EVENTS, ACCOUNTS)
    table, rep = write_resolution(res, tmp_path)
    assert pd.read_parquet(table)["account_id"].tolist() == ["A"]
    assert json.loads(rep.read_text())["counts"]["domain"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_evaluate_resolution_counts_provisional_as_not_linked():
    ua = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "account_id": ["A", "B", "domain:x.io", None],
            "method": ["domain", "link", "provisional", "unresolved"],
            "confidence": [0.95, 0.9, 0.5, 0.0],
        }
    )
    truth = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "account_id": ["A", "A", "C", None]})
    m = evaluate_resolution(ua, truth)
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(1 / 3) and m["provisional"] == 1


# --- the generated world's truth ----------------------------------------------------------------


def _world(path):
    return tuple(pd.read_parquet(path / f"{t}.parquet") for t in ("users", "events", "accounts"))


def test_small_world_precision_recall_and_free_mail_orphans(small_world):
    users, events, accounts = _world(small_world)
    truth = pd.read_parquet(small_world / "truth_user_accounts.parquet")
    res = resolve_accounts(users, events, accounts)
    ua = res.user_accounts
    assert ua["user_id"].is_unique and set(ua["user_id"]) >= set(users["user_id"])
    m = evaluate_resolution(ua, truth)
    assert m["precision"] >= 0.99, m
    assert m["recall"] >= 0.95, m

    # A free-mail user with no other evidence (no explicit id, invite, workspace or company)
    # must stay unresolved; and free-mail users must never be resolved by domain.
    props = events["properties"].dropna()
    parsed = [json.loads(p) for p in props]  # a list: pandas would turn dicts into structs
    has = lambda key: [bool(p.get(key)) for p in parsed]  # noqa: E731
    ws_users = set(events.loc[props.index[has("workspace_id")], "user_id"])
    invite_rows = props.index[has("invitee_email")]
    invited_emails = {json.loads(p)["invitee_email"].lower() for p in props[invite_rows]}
    inviters = set(events.loc[invite_rows, "user_id"])
    explicit = set(users.loc[users.account_id.notna(), "user_id"]) | set(events.loc[events.account_id.notna(), "user_id"])
    invited_by_someone = set(users.loc[users.invited_by.notna(), "invited_by"])
    domain = users["email"].str.rsplit("@", n=1).str[-1].str.lower()
    free = classify_domains(domain).isin(["free", "disposable"])
    no_evidence = (
        free
        & users.account_id.isna()
        & users.invited_by.isna()
        & users.company.isna()
        & ~users.user_id.isin(explicit | ws_users | inviters | invited_by_someone)
        & ~users.email.str.lower().isin(invited_emails)
    )
    assert no_evidence.sum() > 0  # the world does contain such orphans
    method = ua.set_index("user_id")["method"]
    assert (method[users.loc[no_evidence, "user_id"]] == "unresolved").all()
    assert not (method[users.loc[free.to_numpy(), "user_id"]] == "domain").any()


def test_unknown_corporate_domain_vetoes_a_merely_similar_name():
    users = make_users(
        [
            {"user_id": "typo", "email": "a@newco.io", "company": "Acme Analytcs"},
            {"user_id": "exact", "email": "b@otherco.io", "company": "ACME Analytics"},
            {"user_id": "free", "email": "c@gmail.com", "company": "Acme Analytcs"},
        ]
    )
    res = resolve_accounts(users, EMPTY_EVENTS, ACCOUNTS)
    r = resolved(res)
    assert r["typo"][:2] == ("domain:newco.io", "provisional")
    assert r["exact"][:2] == ("A", "name")
    assert r["free"][:2] == ("A", "name")
    assert res.report.name_vetoed_users == 1


def test_minimal_columns_and_bad_threshold():
    users = pd.DataFrame({"user_id": ["u1", "u2"]})  # nothing but ids
    events = pd.DataFrame({"user_id": ["u2", "u3", None], "account_id": [None, "A", "A"]})
    res = resolve_accounts(users, events, pd.DataFrame())
    r = resolved(res)
    assert list(r) == ["u1", "u2", "u3"]  # users table first, then event-only users
    assert r["u3"][:2] == ("A", "explicit") and r["u1"][1] == r["u2"][1] == "unresolved"
    assert res.report.explicit_unknown_accounts == 1  # "A" is not in the (empty) accounts table
    with pytest.raises(ValueError, match="name_threshold"):
        resolve_accounts(users, events, pd.DataFrame(), name_threshold=0)


def test_placeholder_company_names_are_ignored():
    accounts = make_accounts([{"account_id": "N", "domain": "na.org", "name": "N/A Inc."}])
    users = make_users([{"user_id": "u1", "email": "p@gmail.com", "company": "n/a"}])
    assert resolved(resolve_accounts(users, EMPTY_EVENTS, accounts))["u1"][1] == "unresolved"


def test_docstring_examples_run():
    import doctest

    import features.domains
    import features.identity

    for module in (features.domains, features.identity):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
