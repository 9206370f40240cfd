"""Identity resolution: which CRM account does each product user belong to?

One person exploring is a solo evaluation; three people at one company is a buying signal — but
only once product users are connected to accounts. :func:`resolve_accounts` gives every known user
(users table *and* users seen only in events) at most one account, by precedence:

1. **explicit** — an account id on the user record or on the user's events (Segment ``group``
   calls end up there). Disagreeing explicit ids: most votes wins, then the most recent.
2. **domain** — the e-mail domain equals an account's domain or alias, or sits under it
   (``eu.acme.com`` → ``acme.com``). Free-mail and disposable domains never count.
3. **link** — label propagation to a fixed point over invites (``users.invited_by`` and
   ``invitee_email`` in event properties, both directions) and shared ``workspace_id``\\ s (a
   workspace speaks for the account holding a strict majority of its resolved members).
4. **name** — the typed company name (``users.company``, else ``company`` in event properties)
   fuzzy-matched to account names with rapidfuzz, after removing legal suffixes (Inc, GmbH...).
5. **provisional** — still unresolved users of a corporate domain no account has get
   ``domain:<registered domain>`` so their milestones still roll up.

Each method's answer is computed for every user it applies to, so disagreements between methods
are counted (``report.conflicts``) even though precedence settles them. See ``docs/identity.md``.

All steps are vectorised joins and group-bys (pandas, DuckDB for the event scan); the only loops
run over label-propagation rounds and domain-label depth, never over users.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from features.domains import (
    classify_domains,
    email_domain,
    lookup,
    match_domain_suffix,
    positions,
    normalize_domain,
    registered_domain,
)
from features.schema import USER_ACCOUNT_COLUMNS

__all__ = [
    "METHODS",
    "PROVISIONAL_PREFIX",
    "Resolution",
    "ResolutionReport",
    "resolve_accounts",
    "attach_accounts",
    "normalize_company_name",
    "evaluate_resolution",
    "write_resolution",
]

#: Resolution methods in order of precedence (``unresolved`` is the absence of all of them).
METHODS = ("explicit", "domain", "link", "name", "provisional")
#: Prefix of provisional account ids (``domain:newco.io``).
PROVISIONAL_PREFIX = "domain:"

CONFIDENCE_EXPLICIT = 1.0
CONFIDENCE_DOMAIN = 0.95
#: Link confidence: every vote agreed (invites and fully-agreeing workspaces) vs a majority.
CONFIDENCE_LINK_UNANIMOUS = 0.9
CONFIDENCE_LINK_MAJORITY = 0.85
#: A name match scores ``NAME_CONFIDENCE_SCALE * score / 100`` — a perfect name match (0.8)
#: still ranks below any link, because typed company names are the least reliable evidence.
NAME_CONFIDENCE_SCALE = 0.8
CONFIDENCE_PROVISIONAL = 0.5

#: Two candidate accounts whose name scores are closer than this are too close to call.
NAME_AMBIGUITY_MARGIN = 3.0
#: Blocking tokens shared by more account names than this are too common to propose pairs
#: ("labs", "group"); other tokens or the name prefix still do.
_MAX_BLOCK_SIZE = 200
_MAX_LINK_ROUNDS = 100
_AMBIGUOUS = "\x00ambiguous"

# Legal-form words removed from the end of company names before matching.
_LEGAL_SUFFIXES = (
    "inc incorporated corp corporation co company ltd limited llc llp lp plc gmbh mbh ag kg ug "
    "sa sas sarl sl srl spa bv nv oy oyj ab as asa aps pty pte kk group holding holdings"
).split()
_LEGAL_SUFFIX_RE = r"(?: (?:" + "|".join(_LEGAL_SUFFIXES) + r"))+$"
# What people type when they have no company; never matched to an account.
_PLACEHOLDER_COMPANIES = frozenset(
    {"na", "n a", "none", "null", "nil", "self", "self employed", "freelance", "freelancer", "personal",
     "private", "individual", "student", "test", "me", "home", "unknown", "no company", "not applicable"}
)


# ---------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------


@dataclass
class ResolutionReport:
    """What identity resolution did, for ``pql validate`` and the feature run's notes.

    Attributes
    ----------
    n_users : int
        Known users (users table plus users seen only in events).
    counts : dict
        Users per method (``explicit``, ``domain``, ``link``, ``name``, ``provisional``,
        ``unresolved``).
    provisional_accounts : int
        Distinct ``domain:<domain>`` accounts created.
    conflicts : dict
        Users on which two methods named different accounts, keyed ``"<winner>/<loser>"``
        (``explicit/explicit`` counts users whose explicit ids disagree among themselves).
    free_mail_users, disposable_users : int
        Users whose address is free-mail / disposable (their domain was never used).
    ambiguous_domain_users : int
        Users whose domain belongs to several accounts (not used as evidence).
    ambiguous_name_users : int
        Users whose company name matched several accounts equally well (not used).
    name_vetoed_users : int
        Users with a corporate domain no account has whose company name was only *similar* to an
        account name (not used: the unknown domain says it is another company).
    explicit_unknown_accounts : int
        Distinct explicit account ids that are not in the accounts table (kept, but worth a look).
    link_rounds : int
        Label-propagation rounds until the fixed point.
    """

    n_users: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    provisional_accounts: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)
    free_mail_users: int = 0
    disposable_users: int = 0
    ambiguous_domain_users: int = 0
    ambiguous_name_users: int = 0
    name_vetoed_users: int = 0
    explicit_unknown_accounts: int = 0
    link_rounds: int = 0

    @property
    def shares(self) -> dict[str, float]:
        """Share of users per method (0 when there are no users)."""
        n = self.n_users or 1
        return {m: c / n if self.n_users else 0.0 for m, c in self.counts.items()}

    @property
    def unresolved(self) -> int:
        """Users left without any account."""
        return int(self.counts.get("unresolved", 0))

    def to_dict(self) -> dict:
        """Plain JSON-able dict (with ``shares`` included)."""
        out = asdict(self)
        out["shares"] = {k: round(v, 6) for k, v in self.shares.items()}
        out["unresolved"] = self.unresolved
        return out

    def to_text(self) -> str:
        """A short human-readable summary (shown by ``pql validate``)."""
        lines = [f"Identity resolution: {self.n_users:,} users"]
        for m in (*METHODS, "unresolved"):
            c = self.counts.get(m, 0)
            lines.append(f"  {m:<12} {c:>10,}  {self.shares.get(m, 0.0):6.1%}")
        lines.append(f"  provisional accounts: {self.provisional_accounts:,}")
        lines.append(
            f"  free-mail users: {self.free_mail_users:,}   disposable users: {self.disposable_users:,}"
        )
        if self.ambiguous_domain_users or self.ambiguous_name_users or self.name_vetoed_users:
            lines.append(
                f"  not used: ambiguous domain {self.ambiguous_domain_users:,}, "
                f"ambiguous company name {self.ambiguous_name_users:,}, "
                f"similar name but unknown corporate domain {self.name_vetoed_users:,}"
            )
        if self.explicit_unknown_accounts:
            lines.append(
                f"  explicit account ids missing from accounts table: {self.explicit_unknown_accounts:,}"
            )
        total = sum(self.conflicts.values())
        if total:
            detail = ", ".join(f"{k} {v:,}" for k, v in self.conflicts.items() if v)
            lines.append(f"  conflicts settled by precedence: {total:,} ({detail})")
        else:
            lines.append("  conflicts settled by precedence: 0")
        lines.append(f"  link propagation rounds: {self.link_rounds}")
        return "\n".join(lines)


@dataclass
class Resolution:
    """Result of :func:`resolve_accounts`.

    Attributes
    ----------
    user_accounts : pandas.DataFrame
        ``user_id, account_id, method, confidence`` — one row per known user; unresolved users
        have a null ``account_id``, method ``unresolved`` and confidence 0.
    report : ResolutionReport
    """

    user_accounts: pd.DataFrame
    report: ResolutionReport


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
#
# Internally every user is an integer code (its row in the known-users table) and every account
# in the link step is an integer code too: joins, group-bys and look-ups on int64 arrays are an
# order of magnitude faster than on strings, which is what keeps 1M users well under 30 s.


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` as stripped strings (``str`` dtype), NaN for missing or blank values."""
    if name in df.columns:
        s = df[name].astype("str").str.strip()
        return s.where(s.ne(""))
    return pd.Series(np.nan, index=df.index, dtype="str")


def normalize_company_name(names: pd.Series) -> pd.Series:
    """Normalise company names for matching: lower case, no punctuation, no legal suffixes.

    Works on the distinct values only, then maps back.

    Examples
    --------
    >>> normalize_company_name(pd.Series(["Acme Analytics, Inc.", "The Müller GmbH & Co. KG", None])).tolist()
    ['acme analytics', 'müller', nan]
    """
    s = names.astype("str")
    uniq = pd.Series(s.dropna().unique(), dtype="str")
    n = uniq.str.lower().str.replace("&", " and ", regex=False)
    # \p{L}/\p{N} keep accented letters (RE2, as used by pyarrow, reads \w as ASCII only); no
    # \s anywhere: pandas would fall back to Python's re, row by row.
    n = n.str.replace(r"[^\p{L}\p{N}]+", " ", regex=True).str.strip()
    n = n.str.replace(r"^the ", "", regex=True)
    # "Müller GmbH and Co KG": drop trailing legal words, and a dangling "and" between them.
    for _ in range(3):
        n = n.str.replace(_LEGAL_SUFFIX_RE, "", regex=True).str.replace(r" and$", "", regex=True)
    n = n.str.strip()
    n = n.where(n.ne("") & ~n.isin(_PLACEHOLDER_COMPANIES))
    return lookup(s, uniq, n.to_numpy(dtype=object)).astype("str")


def _pick_top(votes: pd.DataFrame, key: str, value: str, weight: str, *tiebreak: str) -> pd.DataFrame:
    """Rows of ``votes`` with the highest ``weight`` per ``key`` (then ``tiebreak`` columns)."""
    cols = [key, weight, *tiebreak, value]
    order = votes.sort_values(cols, ascending=[True, False, *[False] * len(tiebreak), True])
    return order.drop_duplicates(key, keep="first")


class _Codes:
    """User id → integer code (row of the known-users table); -1 for unknown ids."""

    def __init__(self, user_ids: pd.Series):
        self.user_ids = user_ids

    def __call__(self, values) -> np.ndarray:
        return positions(values, self.user_ids)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _scan_events(events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Aggregate what identity needs from the events, in DuckDB (one scan per question).

    Returns frames ``users`` (user_id, first row), ``explicit`` (user_id, account_id, n, last),
    ``workspaces`` (user_id, workspace_id), ``invites`` (user_id, invitee_email) and
    ``companies`` (user_id, company: the most frequent ``company`` property).
    """
    empty = {
        "users": pd.DataFrame({"user_id": pd.Series(dtype=object), "first": pd.Series(dtype="int64")}),
        "explicit": pd.DataFrame(columns=["user_id", "account_id", "n", "last"]),
        "workspaces": pd.DataFrame(columns=["user_id", "workspace_id"]),
        "invites": pd.DataFrame(columns=["user_id", "invitee_email"]),
        "companies": pd.DataFrame(columns=["user_id", "company"]),
    }
    if events is None or len(events) == 0 or "user_id" not in events.columns:
        return empty
    import duckdb

    ev = pd.DataFrame(
        {
            "user_id": _col(events, "user_id"),
            "account_id": _col(events, "account_id"),
            "timestamp": pd.to_datetime(events["timestamp"], errors="coerce")
            if "timestamp" in events.columns
            else pd.NaT,
            "properties": events["properties"].astype("str")
            if "properties" in events.columns
            else pd.Series(np.nan, index=events.index, dtype="str"),
        }
    )
    ev["row"] = np.arange(len(ev))
    con = duckdb.connect()
    try:
        con.register("ev", ev)
        out = {}
        out["users"] = con.execute(
            "select user_id, min(row) as first from ev where user_id is not null group by user_id order by first"
        ).df()
        out["explicit"] = con.execute(
            "select user_id, account_id, count(*) as n, max(timestamp) as last from ev "
            "where user_id is not null and account_id is not null group by all"
        ).df()
        # Only rows that mention a key are parsed; try() turns malformed JSON into null.
        # Grouped in SQL: nearly every product event carries a workspace_id, and returning one
        # row per event (10M+) to pandas only to deduplicate it there cost 4x the whole scan.
        # Ordered by first appearance so workspace codes do not depend on DuckDB's scan order.
        props = con.execute(
            """
            select user_id, workspace_id, invitee_email, company, count(*) as n, min(row) as first
            from (
                select user_id, row,
                       try(json_extract_string(properties, '$.workspace_id')) as workspace_id,
                       try(json_extract_string(properties, '$.invitee_email')) as invitee_email,
                       try(json_extract_string(properties, '$.company')) as company
                from ev
                where user_id is not null and properties is not null
                  and (contains(properties, 'workspace_id') or contains(properties, 'invitee_email')
                       or contains(properties, 'company'))
            )
            group by all
            order by first
            """
        ).df()
    finally:
        con.close()
    for c in ("workspace_id", "invitee_email", "company"):
        props[c] = _col(props, c)
    out["workspaces"] = props.loc[props.workspace_id.notna(), ["user_id", "workspace_id"]].drop_duplicates()
    out["invites"] = props.loc[props.invitee_email.notna(), ["user_id", "invitee_email"]].drop_duplicates()
    comp = props.loc[props.company.notna(), ["user_id", "company", "n"]]
    comp = comp.groupby(["user_id", "company"], sort=False)["n"].sum().rename("n").reset_index()
    out["companies"] = _pick_top(comp, "user_id", "company", "n")[["user_id", "company"]]
    return out


def _known_users(users: pd.DataFrame, scanned: dict) -> pd.DataFrame:
    """One row per known user: users table order, then event-only users by first appearance."""
    u = pd.DataFrame(
        {
            "user_id": _col(users, "user_id"),
            "email": _col(users, "email"),
            "company": _col(users, "company"),
            "invited_by": _col(users, "invited_by"),
        }
    )
    u = u[u.user_id.notna()]
    if u.user_id.duplicated().any():
        # Several rows for one user (e.g. re-imports): keep the last non-null value per field.
        u = u.groupby("user_id", sort=False).last().reset_index()
    seen = scanned["users"]["user_id"].astype("str")
    extra = seen[positions(seen, u.user_id) < 0]
    u = pd.concat([u, pd.DataFrame({"user_id": extra})], ignore_index=True)
    u = u.astype({c: "str" for c in u.columns})
    comp = scanned["companies"]
    if len(comp):
        # Event properties fill in a company name the users table lacks.
        from_events = lookup(u["user_id"], comp["user_id"], comp["company"].to_numpy(dtype=object))
        u["company"] = u["company"].where(u["company"].notna(), from_events).astype("str")
    return u.reset_index(drop=True)


def _account_domains(accounts: pd.DataFrame) -> pd.Series:
    """Usable account domain → account id (domains of several accounts map to a marker).

    Free-mail / disposable domains and bare public suffixes are dropped: a CRM record with
    ``gmail.com`` as its domain must not swallow every gmail user.
    """
    if len(accounts) == 0:
        return pd.Series(dtype=object)
    aid = _col(accounts, "account_id")
    parts = [pd.DataFrame({"account_id": aid, "domain": _col(accounts, "domain")})]
    aliases = _col(accounts, "domain_aliases")
    if aliases.notna().any():
        al = pd.DataFrame({"account_id": aid, "domain": aliases.str.split(",")}).explode("domain")
        parts.append(al)
    d = pd.concat(parts, ignore_index=True)
    d["domain"] = normalize_domain(d["domain"].astype(object))
    d = d.dropna().drop_duplicates()
    kind = classify_domains(d["domain"])
    d = d[(kind == "corporate") & registered_domain(d["domain"]).notna()]
    n_acc = d.groupby("domain")["account_id"].nunique()
    mapping = d.drop_duplicates("domain").set_index("domain")["account_id"].astype(object)
    mapping[mapping.index.isin(n_acc.index[n_acc > 1])] = _AMBIGUOUS
    return mapping


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


def _explicit(users: pd.DataFrame, scanned: dict, code: _Codes) -> tuple[pd.Series, int]:
    """Explicit account per user code (most votes, then most recent) and how many users disagree."""
    ua = pd.DataFrame(
        {
            "user": code(_col(users, "user_id")),
            "account_id": _col(users, "account_id").to_numpy(dtype=object),
            "n": 1,
            "last": pd.to_datetime(users["created_at"], errors="coerce").to_numpy(dtype="datetime64[us]")
            if "created_at" in users.columns
            else np.datetime64("NaT", "us"),
        }
    )
    ua = ua[(ua.user >= 0) & ua.account_id.notna()]
    ev = scanned["explicit"]
    ev = pd.DataFrame(
        {
            "user": code(ev["user_id"]),
            "account_id": _col(ev, "account_id").to_numpy(dtype=object),
            "n": ev["n"].astype("int64"),
            "last": pd.to_datetime(ev["last"], errors="coerce").astype("datetime64[us]"),
        }
    )
    votes = pd.concat([ua, ev[ev.user >= 0]], ignore_index=True)
    if votes.empty:
        return pd.Series(dtype=object), 0
    votes = votes.groupby(["user", "account_id"], sort=False).agg(n=("n", "sum"), last=("last", "max")).reset_index()
    n_disagree = int(votes["user"][votes["user"].duplicated()].nunique())
    votes["last"] = votes["last"].fillna(pd.Timestamp.min)
    top = _pick_top(votes, "user", "account_id", "n", "last")
    return pd.Series(top["account_id"].to_numpy(dtype=object), index=top["user"].to_numpy()), n_disagree


def _invite_edges(u: pd.DataFrame, scanned: dict, code: _Codes) -> tuple[np.ndarray, np.ndarray]:
    """Invite links between known users, as directed pairs ``(src, dst)`` in both directions."""
    inviter = code(u["invited_by"])
    has = inviter >= 0
    a = [np.flatnonzero(has)]
    b = [inviter[has]]
    ie = scanned["invites"]
    if len(ie):
        email = u["email"].str.lower()
        by_email = pd.DataFrame({"invitee_email": email, "invitee": np.arange(len(u))}).dropna()
        ie = pd.DataFrame(
            {"inviter": code(ie["user_id"]), "invitee_email": ie["invitee_email"].astype("str").str.lower()}
        )
        ie = ie[ie.inviter >= 0].merge(by_email, on="invitee_email")
        a.append(ie["invitee"].to_numpy())
        b.append(ie["inviter"].to_numpy())
    a, b = np.concatenate(a).astype(np.int64), np.concatenate(b).astype(np.int64)
    keep = a != b
    pairs = pd.DataFrame({"src": np.concatenate([a[keep], b[keep]]), "dst": np.concatenate([b[keep], a[keep]])})
    pairs = pairs.drop_duplicates()
    return pairs["src"].to_numpy(), pairs["dst"].to_numpy()


@dataclass
class _Graph:
    """Users (codes) in workspaces and invite pairs, for label propagation."""

    m_user: np.ndarray
    m_ws: np.ndarray
    n_ws: int
    e_src: np.ndarray
    e_dst: np.ndarray


def _workspaces(scanned: dict, code: _Codes) -> tuple[np.ndarray, np.ndarray, int]:
    ws = scanned["workspaces"]
    if len(ws) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), 0
    user = code(ws["user_id"])
    ws_code, ws_names = pd.factorize(ws["workspace_id"].astype("str"))
    keep = user >= 0
    m = pd.DataFrame({"u": user[keep], "w": ws_code[keep]}).drop_duplicates()
    return m["u"].to_numpy(np.int64), m["w"].to_numpy(np.int64), len(ws_names)


def _link_votes(targets: np.ndarray, labels: np.ndarray, g: _Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Account (code) proposed by each target user's links, leaving the user's own label out.

    A workspace votes for the account holding a strict majority of its *other* resolved members;
    each invite partner votes for its own account. A user takes the account with a strict majority
    of its votes. Returns ``(user, account, unanimous)`` arrays.
    """
    users, accs, unan = [], [], []
    if len(g.m_user):
        lab = labels[g.m_user]
        ok = lab >= 0
        if ok.any():
            counts = (
                pd.DataFrame({"ws": g.m_ws[ok], "acc": lab[ok]}).groupby(["ws", "acc"], sort=False).size()
            ).rename("n").reset_index()
            total = np.bincount(g.m_ws[ok], minlength=g.n_ws)
            t = targets[g.m_user]
            tm = pd.DataFrame({"user": g.m_user[t], "ws": g.m_ws[t]}).merge(counts, on="ws")
            user = tm["user"].to_numpy()
            acc = tm["acc"].to_numpy()
            own = labels[user]
            n = tm["n"].to_numpy() - (own == acc)
            tot = total[tm["ws"].to_numpy()] - (own >= 0)
            keep = (n > 0) & (2 * n > tot)  # strict majority of the other resolved members
            users.append(user[keep])
            accs.append(acc[keep])
            unan.append(n[keep] == tot[keep])
    if len(g.e_src):
        la = labels[g.e_src]
        k = targets[g.e_dst] & (la >= 0)
        users.append(g.e_dst[k])
        accs.append(la[k])
        unan.append(np.ones(int(k.sum()), bool))
    if not users or sum(len(x) for x in users) == 0:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, bool)
    v = pd.DataFrame({"user": np.concatenate(users), "acc": np.concatenate(accs), "unan": np.concatenate(unan)})
    v = v.groupby(["user", "acc"], sort=False).agg(w=("unan", "size"), unan=("unan", "all")).reset_index()
    v["total"] = v.groupby("user")["w"].transform("sum")
    top = _pick_top(v, "user", "acc", "w")
    top = top[2 * top["w"] > top["total"]]
    unanimous = top["unan"].to_numpy() & (top["w"] == top["total"]).to_numpy()
    return top["user"].to_numpy(), top["acc"].to_numpy(), unanimous


def _propagate(seeds: np.ndarray, g: _Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Label propagation from fixed seeds to a fixed point.

    Returns ``(link, unanimous, labels, rounds)``: the account code each newly linked user got
    (-1 otherwise), whether its votes were unanimous, all labels after propagation, rounds run.
    """
    labels = seeds.copy()
    link = np.full(len(seeds), -1, dtype=np.int64)
    unanimous = np.zeros(len(seeds), bool)
    in_graph = np.zeros(len(seeds), bool)
    in_graph[g.m_user] = True
    in_graph[g.e_dst] = True
    rounds = 0
    while rounds < _MAX_LINK_ROUNDS:
        targets = in_graph & (labels < 0)
        if not targets.any():
            break
        user, acc, unan = _link_votes(targets, labels, g)
        rounds += 1
        if len(user) == 0:
            break
        labels[user] = acc
        link[user] = acc
        unanimous[user] = unan
    return link, unanimous, labels, rounds


def _name_candidates(
    company: pd.Series, accounts: pd.DataFrame, threshold: float
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Fuzzy-match typed company names to account names.

    Returns (account, score, ambiguous) Series indexed like ``company`` (only users with a match).
    Pairs are proposed by blocking (a shared uncommon word, or the same 4-character prefix of the
    name without spaces) and scored with ``rapidfuzz.process.cpdist`` in one vectorised call, so
    the cost grows with the number of plausible pairs, not distinct names x accounts.
    """
    from rapidfuzz import fuzz, process

    empty = (pd.Series(dtype=object), pd.Series(dtype=float), pd.Series(dtype=bool))
    if len(accounts) == 0 or "name" not in accounts.columns or company.notna().sum() == 0:
        return empty
    acc = pd.DataFrame(
        {"account_id": _col(accounts, "account_id"), "norm": normalize_company_name(_col(accounts, "name"))}
    )
    acc = acc.dropna().drop_duplicates()
    if acc.empty:
        return empty
    n_per_name = acc.groupby("norm")["account_id"].nunique()
    ambiguous_names = set(n_per_name.index[n_per_name > 1])
    names = acc.drop_duplicates("norm")[["norm", "account_id"]].reset_index(drop=True)

    q_norm = normalize_company_name(company)
    queries = pd.Series(q_norm.dropna().unique(), dtype="str")
    if queries.empty:
        return empty

    q_arr = queries.to_numpy(dtype=object)
    n_arr = names["norm"].to_numpy(dtype=object)
    # Exact normalised matches first (most typed names differ from the CRM only by case,
    # punctuation or legal form); only the rest pays for fuzzy scoring.
    exact_pos = positions(queries, names["norm"])
    exact = pd.DataFrame({"i_q": np.flatnonzero(exact_pos >= 0), "i_n": exact_pos[exact_pos >= 0], "score": 100.0})
    rest = queries[exact_pos < 0]

    def keys(s: pd.Series) -> pd.DataFrame:
        tok = s.str.split(" ").explode()
        tok = tok[tok.str.len() >= 3]
        pre = s.str.replace(" ", "", regex=False).str[:4]
        k = pd.concat([("t:" + tok), ("p:" + pre)])
        return pd.DataFrame({"i": k.index.to_numpy(), "key": k.to_numpy(dtype=object)}).drop_duplicates()

    fuzzy = exact.iloc[:0]
    if len(rest):
        nk = keys(names["norm"])
        size = nk.groupby("key").size()
        nk = nk[nk["key"].map(size).to_numpy() <= _MAX_BLOCK_SIZE]
        fuzzy = keys(rest).merge(nk, on="key", suffixes=("_q", "_n"))[["i_q", "i_n"]].drop_duplicates()
        if len(fuzzy):
            fuzzy["score"] = process.cpdist(
                q_arr[fuzzy.i_q.to_numpy()].tolist(),
                n_arr[fuzzy.i_n.to_numpy()].tolist(),
                scorer=fuzz.token_sort_ratio,
                workers=-1,
            )
    pairs = pd.concat([exact, fuzzy], ignore_index=True)
    pairs = pairs[pairs.score >= threshold]
    if pairs.empty:
        return empty
    pairs = pairs.sort_values(["i_q", "score"], ascending=[True, False])
    best = pairs.drop_duplicates("i_q", keep="first").set_index("i_q")
    second = pairs[pairs.duplicated("i_q", keep="first")].drop_duplicates("i_q").set_index("i_q")["score"]
    close = (best["score"] - second.reindex(best.index)).lt(NAME_AMBIGUITY_MARGIN).fillna(False)
    best_norm = pd.Series(n_arr[best["i_n"].to_numpy()], index=best.index)
    amb = close | best_norm.isin(ambiguous_names)
    acc_of = pd.Series(names["account_id"].to_numpy(dtype=object), index=n_arr)
    q_index = q_arr[best.index.to_numpy()]
    q_account = pd.Series(best_norm.map(acc_of).where(~amb).to_numpy(dtype=object), index=q_index)
    q_score = pd.Series(best["score"].to_numpy(dtype=float), index=q_index)
    q_amb = pd.Series(amb.to_numpy(dtype=bool), index=q_index)
    return (
        lookup(q_norm, q_index, q_account.to_numpy(dtype=object)).dropna(),
        lookup(q_norm, q_index, q_score.to_numpy(dtype=float)).dropna(),
        lookup(q_norm, q_index, q_amb.to_numpy(dtype=bool), default=False).astype(bool),
    )


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def resolve_accounts(
    users: pd.DataFrame,
    events: pd.DataFrame,
    accounts: pd.DataFrame,
    *,
    name_threshold: float = 92.0,
) -> Resolution:
    """Resolve every known user to at most one account (see the module docstring for the rules).

    Parameters
    ----------
    users, events, accounts : pandas.DataFrame
        Canonical tables (``features.schema``); any may be empty.
    name_threshold : float, default 92.0
        Minimum rapidfuzz ``token_sort_ratio`` (0-100) for a company-name match. Conservative on
        purpose: "Acme Analytics" vs "Acme Logistics" scores 71.

    Returns
    -------
    Resolution
        ``user_accounts`` (``user_id, account_id, method, confidence``; one row per user of the
        users table or the events) and a :class:`ResolutionReport`.

    Examples
    --------
    >>> users = pd.DataFrame({"user_id": ["u1", "u2", "u3"],
    ...                       "email": ["ann@acme.com", "bob@gmail.com", "cy@eu.acme.com"]})
    >>> accounts = pd.DataFrame({"account_id": ["A"], "domain": ["acme.com"], "name": ["Acme"]})
    >>> res = resolve_accounts(users, pd.DataFrame(), accounts)
    >>> res.user_accounts[["user_id", "account_id", "method"]].values.tolist()
    [['u1', 'A', 'domain'], ['u2', <NA>, 'unresolved'], ['u3', 'A', 'domain']]
    """
    if not 0 < float(name_threshold) <= 100:
        raise ValueError(f"name_threshold must be in (0, 100], got {name_threshold!r}")
    users = users if users is not None else pd.DataFrame()
    events = events if events is not None else pd.DataFrame()
    accounts = accounts if accounts is not None else pd.DataFrame()

    scanned = _scan_events(events)
    u = _known_users(users, scanned)
    n = len(u)
    code = _Codes(u["user_id"])
    report = ResolutionReport(n_users=n)

    # 1. explicit
    explicit, n_disagree = _explicit(users, scanned, code)
    known_accounts = set(_col(accounts, "account_id").dropna())
    report.explicit_unknown_accounts = int(len(set(explicit.unique()) - known_accounts))

    # 2. domain (corporate addresses only)
    dom = email_domain(u["email"])
    kind = classify_domains(dom)
    report.free_mail_users = int((kind == "free").sum())
    report.disposable_users = int((kind == "disposable").sum())
    corporate = kind.eq("corporate").to_numpy()
    mapping = _account_domains(accounts)
    dom_match = pd.Series(None, index=u.index, dtype=object)
    if len(mapping) and corporate.any():
        dom_match[corporate] = match_domain_suffix(dom[corporate], mapping).to_numpy(dtype=object)
    amb_domain = dom_match.eq(_AMBIGUOUS).to_numpy()
    report.ambiguous_domain_users = int(amb_domain.sum())
    domain = dom_match[~amb_domain].dropna()

    # 3. links, seeded with the explicit and domain answers
    seed_acc = np.full(n, None, dtype=object)
    seed_acc[domain.index.to_numpy()] = domain.to_numpy()
    seed_acc[explicit.index.to_numpy()] = explicit.to_numpy()
    seed_codes, acc_names = pd.factorize(seed_acc)
    acc_names = np.asarray(acc_names, dtype=object)
    m_user, m_ws, n_ws = _workspaces(scanned, code)
    e_src, e_dst = _invite_edges(u, scanned, code)
    graph = _Graph(m_user, m_ws, n_ws, e_src, e_dst)
    link_code, link_unan, labels, report.link_rounds = _propagate(seed_codes.astype(np.int64), graph)
    linked = np.flatnonzero(link_code >= 0)
    link = pd.Series(acc_names[link_code[linked]], index=linked)
    link_conf = pd.Series(
        np.where(link_unan[linked], CONFIDENCE_LINK_UNANIMOUS, CONFIDENCE_LINK_MAJORITY), index=linked
    )
    # What links say about users resolved otherwise — only to count conflicts.
    lu, la, _ = _link_votes(seed_codes >= 0, labels, graph)
    link_about_seeds = pd.Series(acc_names[la], index=lu)

    # 4. company name
    name, name_score, name_amb = _name_candidates(u["company"], accounts, float(name_threshold))
    # A corporate domain that no account has is evidence of a company the CRM lacks; a merely
    # similar name (a neighbour in the CRM) must not override it — only an exact name match may.
    unknown_domain = corporate & dom_match.isna().to_numpy()
    vetoed = unknown_domain[name.index.to_numpy()] & (name_score.reindex(name.index).to_numpy() < 100.0)
    report.name_vetoed_users = int(vetoed.sum())
    name = name[~vetoed]

    # Settle by precedence: each method fills only users no earlier method resolved.
    acc = np.full(n, None, dtype=object)
    method = np.full(n, "unresolved", dtype=object)
    conf = np.zeros(n, dtype=float)
    for m, cand, c in (
        ("explicit", explicit, pd.Series(CONFIDENCE_EXPLICIT, index=explicit.index)),
        ("domain", domain, pd.Series(CONFIDENCE_DOMAIN, index=domain.index)),
        ("link", link, link_conf),
        ("name", name, NAME_CONFIDENCE_SCALE * name_score / 100.0),
    ):
        idx = cand.index.to_numpy()
        idx = idx[pd.isna(acc[idx])]
        acc[idx] = cand[idx].to_numpy(dtype=object)
        method[idx] = m
        conf[idx] = c[idx].to_numpy(dtype=float)
    unresolved = pd.isna(acc)
    report.ambiguous_name_users = int(name_amb[unresolved[name_amb.index.to_numpy()]].sum()) if len(name_amb) else 0

    # 5. provisional: corporate domain that no account has (nor any parent of it).
    todo = unresolved & unknown_domain
    prov = registered_domain(dom[todo]).dropna()
    idx = prov.index.to_numpy()
    acc[idx] = (PROVISIONAL_PREFIX + prov.astype(object)).to_numpy(dtype=object)
    method[idx] = "provisional"
    conf[idx] = CONFIDENCE_PROVISIONAL
    report.provisional_accounts = int(prov.nunique())

    # Conflicts: two methods that both answered for a user and disagree.
    cands = {
        "explicit": explicit,
        "domain": domain,
        "link": pd.concat([link, link_about_seeds]),
        "name": name,
    }
    conflicts = {"explicit/explicit": n_disagree}
    for a, b in combinations(("explicit", "domain", "link", "name"), 2):
        x, y = cands[a], cands[b]
        both = x.index.intersection(y.index)
        conflicts[f"{a}/{b}"] = int((x[both].to_numpy(dtype=object) != y[both].to_numpy(dtype=object)).sum())
    report.conflicts = conflicts
    counts = pd.Series(method).value_counts()
    report.counts = {m: int(counts.get(m, 0)) for m in (*METHODS, "unresolved")}

    out = pd.DataFrame({"user_id": u["user_id"], "account_id": acc, "method": method, "confidence": conf})
    return Resolution(user_accounts=out.astype(USER_ACCOUNT_COLUMNS), report=report)


def attach_accounts(events: pd.DataFrame, user_accounts: pd.DataFrame) -> pd.DataFrame:
    """Fill each event's missing ``account_id`` from the user → account resolution.

    An account id the event already carries is kept. Row order, index and the other columns are
    unchanged; events of unresolved users keep a null ``account_id``.

    Parameters
    ----------
    events : pandas.DataFrame
        Canonical events (``user_id``, ``account_id``, ...).
    user_accounts : pandas.DataFrame
        ``Resolution.user_accounts``.

    Returns
    -------
    pandas.DataFrame
        A copy of ``events`` with ``account_id`` filled.
    """
    out = events.copy()
    if "account_id" not in out.columns:
        out["account_id"] = pd.Series(pd.NA, index=out.index, dtype="string")
    if len(out) == 0 or "user_id" not in out.columns:
        return out
    ua = user_accounts.dropna(subset=["user_id", "account_id"]).drop_duplicates("user_id")
    filled = lookup(out["user_id"], ua["user_id"], ua["account_id"].to_numpy(dtype=object), default=None)
    current = out["account_id"]
    out["account_id"] = current.where(current.notna(), filled).astype(current.dtype)
    return out


def evaluate_resolution(user_accounts: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Precision and recall of user → account links against a known truth.

    Provisional (``domain:...``) answers count as *not linked* to a real account; they are
    reported separately.

    Parameters
    ----------
    user_accounts : pandas.DataFrame
        ``Resolution.user_accounts``.
    truth : pandas.DataFrame
        ``user_id, account_id`` — the true account per user (null: the user belongs to none).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``linked`` (real links made), ``correct``, ``true_links``,
        ``provisional`` and per-method
        precision under ``by_method``.
    """
    t = truth[["user_id", "account_id"]].rename(columns={"account_id": "true"})
    r = user_accounts.merge(t, on="user_id", how="inner")
    real = r["account_id"].notna() & ~r["account_id"].astype("string").str.startswith(PROVISIONAL_PREFIX).fillna(False)
    correct = real & (r["account_id"] == r["true"]).fillna(False)
    n_true = int(r["true"].notna().sum())
    out = {
        "users_evaluated": int(len(r)),
        "true_links": n_true,
        "linked": int(real.sum()),
        "correct": int(correct.sum()),
        "precision": float(correct.sum() / real.sum()) if real.sum() else 1.0,
        "recall": float(correct.sum() / n_true) if n_true else 1.0,
        "provisional": int((r["method"] == "provisional").sum()),
        "by_method": {},
    }
    for m, g in r[real].groupby("method"):
        ok = (g["account_id"] == g["true"]).fillna(False)
        out["by_method"][m] = {"linked": int(len(g)), "precision": float(ok.mean())}
    return out


def write_resolution(resolution: Resolution, out_dir: Path) -> tuple[Path, Path]:
    """Write ``user_accounts.parquet`` and ``identity_report.json`` atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "user_accounts.parquet"
    rep = out_dir / "identity_report.json"
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".parquet.tmp", delete=False) as f:
        tmp_table = Path(f.name)
    resolution.user_accounts.to_parquet(tmp_table, index=False)
    with tempfile.NamedTemporaryFile("w", dir=out_dir, suffix=".json.tmp", delete=False) as f:
        json.dump(resolution.report.to_dict(), f, indent=2)
        tmp_rep = Path(f.name)
    os.replace(tmp_table, table)
    os.replace(tmp_rep, rep)
    return table, rep
