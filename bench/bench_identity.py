"""Benchmark identity resolution (issue 4): speed at 1M users, precision/recall against truth.

Builds its own world with numpy (accounts with domains, aliases and names; users with
corporate / sub-domain / alias / free-mail / disposable addresses, explicit ids, invites,
workspaces and typed company names; a few events per user) so the true user → account map is
known, then times ``resolve_accounts`` alone. Optionally also scores a generated synthetic world
(``--world DIR`` with ``truth.json``, or ``--generate N`` accounts via ``features.synthetic``).

Usage::

    .venv/bin/python bench/bench_identity.py --users 1000000
    .venv/bin/python bench/bench_identity.py --users 100000 --generate 3000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.identity import attach_accounts, evaluate_resolution, resolve_accounts  # noqa: E402

_SYL = np.array("ba ko ti ra me lu sa no vi de zu pe ga ri xo fa le mo ki tu ne sy qua bre dro fli ste gru".split())
_SECTOR = np.array(["Analytics", "Labs", "Software", "Health", "Capital", "Media", "Systems", "Works"])
_LEGAL = np.array(["Inc.", "Ltd", "GmbH", "LLC", "Corp", ""])
_FREE = np.array(["gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com"])
_DISPOSABLE = np.array(["mailinator.com", "guerrillamail.com"])


def _s(a) -> pd.Series:
    return pd.Series(np.asarray(a, dtype=object))


def build_world(n_users: int, seed: int = 0, users_per_account: int = 10):
    """Return ``(users, events, accounts, truth)`` frames for ``n_users`` users."""
    rng = np.random.default_rng(seed)
    n_acc = max(n_users // users_per_account, 1)
    code = rng.permutation(len(_SYL) ** 4)[:n_acc]
    brand = _s(_SYL[code % 28]) + _SYL[(code // 28) % 28] + _SYL[(code // 784) % 28] + _SYL[(code // 21952) % 28]
    stem = brand + pd.Series(np.arange(n_acc) % 7).astype(str).where(lambda s: s != "0", "")
    tld = np.where(rng.random(n_acc) < 0.8, ".com", ".co.uk")
    domain = stem + tld
    alias = (stem + "hq.com").where(rng.random(n_acc) < 0.2, "")
    sector = _SECTOR[rng.integers(0, len(_SECTOR), n_acc)]
    legal = _LEGAL[rng.integers(0, len(_LEGAL), n_acc)]
    name = (brand.str.capitalize() + " " + sector + " " + legal).str.strip()
    # 5% of the companies are not in the CRM: their users' truth is "no account".
    in_crm = rng.random(n_acc) >= 0.05
    acc_ids = _s([f"acc_{i}" for i in range(n_acc)])
    accounts = pd.DataFrame(
        {
            "account_id": acc_ids[in_crm],
            "domain": domain[in_crm],
            "domain_aliases": alias[in_crm],
            "name": name[in_crm],
            "created_at": pd.Timestamp("2024-01-01"),
            "employees": rng.integers(5, 5000, int(in_crm.sum()))[: int(in_crm.sum())],
        }
    ).reset_index(drop=True)

    acct = rng.integers(0, n_acc, n_users)
    uid = _s([f"u{i}" for i in range(n_users)])
    kind = rng.choice(6, n_users, p=[0.55, 0.08, 0.05, 0.25, 0.02, 0.05])
    # 0 corporate, 1 sub-domain, 2 alias (falls back to corporate), 3 free-mail, 4 disposable,
    # 5 corporate but typed company only (still corporate address)
    local = uid
    dom = domain[acct].to_numpy()
    sub = ("eu." + domain[acct]).to_numpy()
    ali = alias[acct].to_numpy()
    free = _FREE[rng.integers(0, len(_FREE), n_users)]
    disp = _DISPOSABLE[rng.integers(0, len(_DISPOSABLE), n_users)]
    d = np.where(kind == 1, sub, dom)
    d = np.where((kind == 2) & (ali != ""), ali, d)
    d = np.where(kind == 3, free, d)
    d = np.where(kind == 4, disp, d)
    email = local + "@" + _s(d)
    explicit = np.where(rng.random(n_users) < 0.2, acc_ids[acct].to_numpy(), None)
    explicit = np.where(in_crm[acct], explicit, None)
    company = np.where(rng.random(n_users) < 0.4, name[acct].str.replace(r" (Inc\.|Ltd|GmbH|LLC|Corp)$", "", regex=True).to_numpy(), None)
    # invites: a user is invited by an earlier user of the same account (30%)
    order = np.lexsort((np.arange(n_users), acct))
    prev = np.empty(n_users, dtype=np.int64)
    prev[order[1:]] = order[:-1]
    same = np.zeros(n_users, bool)
    same[order[1:]] = acct[order[1:]] == acct[order[:-1]]
    invited = same & (rng.random(n_users) < 0.3)
    invited_by = np.where(invited, uid.to_numpy()[prev], None)
    users = pd.DataFrame(
        {
            "user_id": uid,
            "email": email,
            "created_at": pd.Timestamp("2024-02-01"),
            "account_id": explicit,
            "company": company,
            "invited_by": invited_by,
        }
    )
    for c in ("user_id", "email", "account_id", "company", "invited_by"):
        users[c] = users[c].astype("string")

    # events: 3 per user; 50% of users also have a workspace event; 5% of events carry account_id
    n_ev = 3 * n_users
    ev_user = np.repeat(np.arange(n_users), 3)
    props = np.full(n_ev, None, dtype=object)
    ws_rows = np.flatnonzero((np.arange(n_ev) % 3 == 0) & (rng.random(n_ev) < 0.5))
    props[ws_rows] = _s(['{"workspace_id": "ws_'] * len(ws_rows)).add(
        _s(acct[ev_user[ws_rows]]).astype(str)
    ).add('"}').to_numpy()
    ev_acc = np.where(rng.random(n_ev) < 0.05, acc_ids[acct[ev_user]].to_numpy(), None)
    ev_acc = np.where(in_crm[acct[ev_user]], ev_acc, None)
    events = pd.DataFrame(
        {
            "user_id": uid.to_numpy()[ev_user],
            "account_id": ev_acc,
            "event": "page_viewed",
            "timestamp": pd.Timestamp("2024-03-01") + pd.to_timedelta(rng.integers(0, 86400 * 90, n_ev), unit="s"),
            "message_id": None,
            "source": "product",
            "properties": props,
        }
    )
    for c in ("user_id", "account_id", "event", "message_id", "source", "properties"):
        events[c] = events[c].astype("string")
    events["timestamp"] = events["timestamp"].astype("datetime64[us]")
    truth = pd.DataFrame({"user_id": uid, "account_id": np.where(in_crm[acct], acc_ids[acct].to_numpy(), None)})
    truth["free_mail"] = kind == 3
    return users, events, accounts, truth


def _free_mail_guessed(ua: pd.DataFrame, users: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Free-mail users that got an account although nothing but their address spoke for them."""
    dom = users["email"].str.rsplit("@", n=1).str[-1]
    from features.domains import classify_domains

    fm = users.loc[classify_domains(dom).isin(["free", "disposable"]).to_numpy(), ["user_id"]]
    r = fm.merge(ua, on="user_id").merge(truth[["user_id", "account_id"]].rename(columns={"account_id": "true"}), on="user_id")
    linked = r["account_id"].notna()
    wrong = linked & (r["account_id"] != r["true"]).fillna(True)
    return {
        "free_or_disposable_users": int(len(r)),
        "linked": int(linked.sum()),
        "linked_wrong": int(wrong.sum()),
        "by_method": r.loc[linked, "method"].value_counts().to_dict(),
    }


def _print_eval(label: str, ua: pd.DataFrame, users: pd.DataFrame, truth: pd.DataFrame) -> None:
    m = evaluate_resolution(ua, truth)
    print(f"[{label}] precision={m['precision']:.4f} recall={m['recall']:.4f} "
          f"linked={m['linked']:,} true_links={m['true_links']:,} provisional={m['provisional']:,}")
    for meth, v in m["by_method"].items():
        print(f"[{label}]   {meth:<9} linked={v['linked']:>9,} precision={v['precision']:.4f}")
    print(f"[{label}] free-mail/disposable: {_free_mail_guessed(ua, users, truth)}")


def bench_synthetic(n_users: int, seed: int, repeat: int) -> None:
    t0 = time.perf_counter()
    users, events, accounts, truth = build_world(n_users, seed)
    print(f"built {len(users):,} users, {len(events):,} events, {len(accounts):,} accounts "
          f"in {time.perf_counter() - t0:.1f}s")
    times, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        res = resolve_accounts(users, events, accounts)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    # CPU time (all threads) is reported too: on a shared machine wall time mostly measures the
    # neighbours, while CPU time bounds what an idle machine needs.
    print(f"resolve_accounts: best {min(times):.2f}s wall of {repeat} "
          f"(all: {', '.join(f'{t:.2f}' for t in times)}); CPU {', '.join(f'{c:.2f}' for c in cpus)}s")
    t0 = time.perf_counter()
    attached = attach_accounts(events, res.user_accounts)
    print(f"attach_accounts on {len(events):,} events: {time.perf_counter() - t0:.2f}s "
          f"(account_id filled on {attached['account_id'].notna().mean():.1%} of events)")
    print(res.report.to_text())
    _print_eval("numpy world", res.user_accounts, users, truth)


def _truth_from_world(world: Path) -> pd.DataFrame:
    pq = world / "truth_user_accounts.parquet"
    if pq.exists():
        return pd.read_parquet(pq)
    t = json.loads((world / "truth.json").read_text())
    ua = t["user_accounts"]
    if isinstance(ua, dict):
        return pd.DataFrame({"user_id": list(ua), "account_id": list(ua.values())})
    return pd.DataFrame(ua)


def bench_world(world: Path) -> None:
    # The generator writes canonical parquet, so the bench reads it directly (no contract pass).
    users, events, accounts = (pd.read_parquet(world / f"{t}.parquet") for t in ("users", "events", "accounts"))
    truth = _truth_from_world(world)
    t0, c0 = time.perf_counter(), time.process_time()
    res = resolve_accounts(users, events, accounts)
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"world {world}: {len(users):,} users, {len(events):,} events, {len(accounts):,} accounts; "
          f"resolve_accounts {el:.2f}s wall, {cpu:.2f}s CPU")
    print(res.report.to_text())
    _print_eval("generated world", res.user_accounts, users, truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000, help="users in the numpy-built world (0 to skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--world", type=Path, help="a generated world directory with truth.json")
    ap.add_argument("--generate", type=int, default=0, help="generate a world with this many accounts")
    a = ap.parse_args()
    if a.users:
        bench_synthetic(a.users, a.seed, a.repeat)
    if a.generate:
        from features.synthetic import generate_world

        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            generate_world(Path(d), n_accounts=a.generate, seed=a.seed)
            print(f"generated {a.generate} accounts in {time.perf_counter() - t0:.1f}s")
            bench_world(Path(d))
    if a.world:
        bench_world(a.world)


if __name__ == "__main__":
    main()
