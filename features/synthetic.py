"""A synthetic B2B product-led SaaS world (a project-management tool) with a known answer.

Every other stage is tested against this world: identity resolution against the true
user -> account map, discovery and training against the planted drivers, revalidation against
the fading and renamed milestones. The hidden mechanism is documented in
``docs/synthetic-world.md`` and written to ``truth.json`` next to the data.

How it is simulated (all vectorised with numpy; no Python loop per event or per account):

1. Accounts get firmographics, an ICP segment, a latent *value* ``v`` (how much the team gets
   out of the product; drives milestone propensity), an independent *chattiness* (drives noise
   events only), a lifetime after which the account goes quiet, and a hazard noise term.
2. Candidate users join each account over time; invites pull invitees in.
3. "Base life" events (until the account goes quiet) are drawn per account or per user as
   point processes: milestone events with propensities that rise with ``v``; noise, decoys and
   marketing touches that do not.
4. Milestone reach times are read back *from those events* (k-th event, k-th distinct user), so
   the truth describes exactly the data written.
5. A day-by-day loop over the period (vectorised over accounts) draws conversions from a hazard
   that rises with the milestones reached so far, a completed ordered sequence, fit, recency
   (effects decay once the account is quiet) and per-account noise.
6. Converted accounts keep using the product until the end of the period.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import synthetic_names as names
from features.schema import ACCOUNT_RESERVED, CONVERSION_COLUMNS, EVENT_COLUMNS, USER_COLUMNS
from features.spec import MilestoneSpec

# --------------------------------------------------------------------------------------------
# The catalogue: event names and the values of their one descriptive property.
# --------------------------------------------------------------------------------------------

#: event name -> (property key, possible values); key None means no descriptive property.
EVENT_CATALOGUE: dict[str, tuple[str | None, list[str]]] = {
    # activation
    "onboarding_completed": ("steps", ["4", "5", "6"]),
    "project_created": ("template", ["blank", "kanban", "sprint", "roadmap", "content_calendar"]),
    "integration_connected": ("provider", ["slack", "github", "jira", "google_drive", "salesforce", "zapier"]),
    # adoption
    "report_viewed": ("report", ["burndown", "workload", "portfolio", "time_tracking"]),
    "report_opened": ("report", ["burndown", "workload", "portfolio", "time_tracking"]),  # renamed
    "feature_used": ("feature", ["gantt", "timeline", "automations", "dashboards", "forms", "time_tracking"]),
    # collaboration
    "teammate_invited": ("invitee_email", []),  # value is the invitee's address
    "project_shared": ("channel", ["link", "email", "workspace"]),
    "user_added": ("role", ["member", "admin", "guest"]),
    # expansion
    "usage_limit_hit": ("limit", ["projects", "seats", "storage", "automations"]),
    "premium_feature_tried": ("feature", ["sso", "advanced_permissions", "guest_access", "custom_fields"]),
    "workspace_created": (None, []),
    # noise that looks like signal
    "login": ("method", ["password", "google", "sso"]),
    "page_view": ("path", ["/projects", "/dashboard", "/inbox", "/settings", "/reports", "/templates",
                           "/pricing", "/help"]),
    "api_call": ("endpoint", ["/api/v1/tasks", "/api/v1/projects", "/api/v1/users", "/api/v1/search"]),
    "settings_changed": ("setting", ["notifications", "theme", "timezone", "language"]),
    "search_performed": ("scope", ["tasks", "projects", "people"]),
    "template_browsed": ("category", ["engineering", "marketing", "hr", "operations"]),
    # marketing touches (source="marketing")
    "email_clicked": ("campaign", ["newsletter", "product_update", "trial_nurture", "case_study"]),
    "form_filled": ("form", ["contact_sales", "ebook", "demo_request"]),
    "pricing_page_viewed": ("campaign", ["organic", "paid_search", "newsletter"]),
    "webinar_attended": ("webinar", ["getting_started", "advanced_reporting", "customer_panel"]),
    # a warning sign (last, so the codes of the events above never move)
    "trial_cancel_clicked": ("reason", ["too_expensive", "missing_feature", "switching_tool", "not_needed"]),
}
EVENT_NAMES = list(EVENT_CATALOGUE)
_CODE = {e: i for i, e in enumerate(EVENT_NAMES)}
MARKETING_EVENTS = ("email_clicked", "form_filled", "pricing_page_viewed", "webinar_attended")
NOISE_EVENTS = ("login", "page_view", "api_call", "settings_changed", "search_performed", "template_browsed")
#: Milestone-looking events that have no effect on conversion (and are not driven by value).
DECOY_EVENTS = ("workspace_created", "user_added")

# --------------------------------------------------------------------------------------------
# The hidden mechanism.
# --------------------------------------------------------------------------------------------

#: Planted drivers, strongest first. ``strength`` is the additive log-hazard effect while the
#: account is active (it decays with the recency half-life once the account goes quiet).
DRIVERS: list[dict] = [
    {"name": "invited_teammate", "category": "collaboration", "label": "invited a teammate",
     "event": "teammate_invited", "min_count": 1, "min_users": 1, "strength": 2.7},
    {"name": "connected_integration", "category": "activation", "label": "connected an integration",
     "event": "integration_connected", "min_count": 1, "min_users": 1, "strength": 2.2},
    {"name": "hit_usage_limit", "category": "expansion", "label": "hit a usage limit",
     "event": "usage_limit_hit", "min_count": 1, "min_users": 1, "strength": 1.8},
    {"name": "created_three_projects", "category": "adoption", "label": "created 3+ projects",
     "event": "project_created", "min_count": 3, "min_users": 1, "strength": 1.5},
    {"name": "three_users_active", "category": "collaboration", "label": "3+ users used a feature",
     "event": "feature_used", "min_count": 1, "min_users": 3, "strength": 1.25},
    {"name": "shared_project", "category": "collaboration", "label": "shared a project",
     "event": "project_shared", "min_count": 1, "min_users": 1, "strength": 1.0},
    {"name": "viewed_reports_repeatedly", "category": "adoption", "label": "viewed reports 3+ times",
     "event": "report_viewed", "min_count": 3, "min_users": 1, "strength": 0.9},
    {"name": "tried_premium_feature", "category": "expansion", "label": "tried a premium feature",
     "event": "premium_feature_tried", "min_count": 1, "min_users": 1, "strength": 0.8},
]
#: Milestones that matter only as steps of a sequence.
STEP_MILESTONES: list[dict] = [
    {"name": "completed_onboarding", "category": "activation", "label": "completed onboarding",
     "event": "onboarding_completed", "min_count": 1, "min_users": 1, "strength": 0.0},
]
SEQUENCES: list[dict] = [
    {"name": "onboarded_invited_built", "steps": ["completed_onboarding", "invited_teammate",
                                                  "created_three_projects"],
     "within_days": 14, "strength": 0.6,
     "label": "onboarded, invited a teammate and created 3 projects within 14 days"},
]
#: Planted warning sign: a user opens the cancel-trial flow. Not a cause: it marks an account about
#: to go quiet (whose hazard then decays), plus a little background noise from curious users.
#: Only accounts that have not bought yet can click it (a paying customer has no trial to cancel).
WARNING_SIGN = {"name": "clicked_cancel_trial", "label": "clicked cancel trial", "event": "trial_cancel_clicked",
                "before_quiet_share": 0.5, "before_quiet_days": 5.0, "background_share": 0.04}
FADING_DRIVER = "shared_project"  # sharing became the default in the latest quarter
#: Renamed by the same release (instrumentation clean-up): same behaviour, same effect, new name.
#: A weaker driver on purpose: default cutoffs sit mostly in the latest quarter, and renaming a
#: top-5 driver there would leave no model able to learn it.
RENAMED = {"report_viewed": "report_opened"}
FIT_ICP = {"core": 0.6, "adjacent": 0.0, "outside": -0.8}
FIT_EMPLOYEES_PER_DECADE = 0.3  # log-hazard per x10 employees above 50, clipped to [-1, 1.5] decades
RECENCY_HALF_LIFE_DAYS = 14.0
BASE_LOG_HAZARD = -9.5
ACCOUNT_NOISE_SD = 0.6

INDUSTRIES = list(names.SECTOR_WORDS)
_INDUSTRY_P = np.array([0.22, 0.1, 0.14, 0.12, 0.1, 0.08, 0.12, 0.12])
COUNTRIES = ["US", "GB", "DE", "FR", "NL", "CA", "AU", "IN", "BR", "ES"]
_COUNTRY_P = np.array([0.38, 0.12, 0.1, 0.07, 0.05, 0.07, 0.05, 0.07, 0.05, 0.04])
_CORE_INDUSTRIES = {"software", "marketing", "consulting"}
_OUTSIDE_INDUSTRIES = {"manufacturing"}

_US_PER_DAY = 86_400_000_000


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


#: How likely an account (or user) is to reach each behaviour: intercept, loading on the latent
#: value ``v``, and the sd of an idiosyncratic term (so milestones are related, not redundant).
#: Probabilities go through a logistic; counts (projects, reports) through exp as Poisson means.
PROPENSITY = {
    "onboarding": (1.0, 0.6, 0.5),
    "projects": (-0.05, 0.72, 0.4),
    "integration": (-1.3, 0.96, 0.5),
    "reports": (0.0, 0.72, 0.4),
    "feature_user": (-0.4, 0.84, 0.5),
    "sharing": (-1.1, 0.84, 0.5),
    "usage_limit": (-1.9, 0.96, 0.5),
    "premium": (-1.5, 0.72, 0.5),
    "invites": (-1.5, 1.08, 0.5),
}


def _propensity(kind, v, z, extra=0.0):
    a, b, sd = PROPENSITY[kind]
    return _sigmoid(a + b * v + sd * z + extra)


def _rate(kind, v, z):
    a, b, sd = PROPENSITY[kind]
    return np.exp(a + b * v + sd * z)


# --------------------------------------------------------------------------------------------
# Point-process helpers (vectorised over owners).
# --------------------------------------------------------------------------------------------

def _arrivals(rng, counts, origin, first_mean, gap_mean):
    """Draw ``counts[i]`` ordered arrival times per owner ``i``.

    The first arrival is ``origin + Exp(first_mean)``, later ones follow with ``Exp(gap_mean)``
    gaps. Returns ``(owner, time)``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(counts.size), counts)
    if owner.size == 0:
        return owner, np.empty(0)
    starts = np.cumsum(counts) - counts
    nz = counts > 0
    is_first = np.zeros(owner.size, bool)
    is_first[starts[nz]] = True
    g = rng.exponential(1.0, owner.size) * np.where(is_first, first_mean[owner], gap_mean[owner])
    cs = np.cumsum(g)
    before = np.repeat((cs - g)[starts[nz]], counts[nz])
    return owner, origin[owner] + cs - before


def _uniform(rng, rate, start, end):
    """A homogeneous Poisson process with ``rate`` per day on ``[start, end)`` per owner."""
    length = np.clip(end - start, 0.0, None)
    counts = rng.poisson(rate * length)
    owner = np.repeat(np.arange(counts.size), counts)
    return owner, start[owner] + rng.random(owner.size) * length[owner]


class _EventBuffer:
    """Collects event chunks as parallel arrays (user index, event code, time, property value)."""

    def __init__(self):
        self.user, self.code, self.t, self.val = [], [], [], []

    def add(self, user, event, t, val=None, rng=None):
        user = np.asarray(user, dtype=np.int64)
        if user.size == 0:
            return
        code = np.full(user.size, _CODE[event], dtype=np.int16) if isinstance(event, str) else event
        if val is None:
            n_vals = len(EVENT_CATALOGUE[event][1])
            val = rng.integers(0, n_vals, user.size) if n_vals else np.full(user.size, -1)
        self.user.append(user)
        self.code.append(code)
        self.t.append(np.asarray(t, dtype=np.float64))
        self.val.append(np.asarray(val, dtype=np.int64))

    def arrays(self):
        if not self.user:
            return (np.empty(0, np.int64), np.empty(0, np.int16), np.empty(0), np.empty(0, np.int64))
        return (np.concatenate(self.user), np.concatenate(self.code), np.concatenate(self.t),
                np.concatenate(self.val))


# --------------------------------------------------------------------------------------------
# The world.
# --------------------------------------------------------------------------------------------

def _accounts(rng, n, horizon):
    created = rng.uniform(0.0, horizon - 14.0, n)
    employees = np.clip(np.round(rng.lognormal(math.log(40), 1.3, n)), 1, 50_000).astype(np.int64)
    industry = np.array(INDUSTRIES, dtype=object)[rng.choice(len(INDUSTRIES), n, p=_INDUSTRY_P)]
    country = np.array(COUNTRIES, dtype=object)[rng.choice(len(COUNTRIES), n, p=_COUNTRY_P)]
    core = np.isin(industry, list(_CORE_INDUSTRIES)) & (employees >= 10) & (employees <= 5000)
    outside = np.isin(industry, list(_OUTSIDE_INDUSTRIES)) | (employees < 5)
    segment = np.where(core, "core", np.where(outside, "outside", "adjacent")).astype(object)
    flip = rng.random(n) < 0.1  # CRM segments are assigned by people and are sometimes off
    segment[flip] = np.array(list(FIT_ICP), dtype=object)[rng.integers(0, 3, int(flip.sum()))]
    fit = (np.array([FIT_ICP[s] for s in segment])
           + FIT_EMPLOYEES_PER_DECADE * np.clip(np.log10(employees / 50.0), -1.0, 1.5))
    value = rng.normal(0.0, 1.0, n) + 0.3 * fit
    chatty = rng.lognormal(0.0, 0.6, n)
    heavy_lost = rng.random(n) < 0.04
    chatty[heavy_lost] *= 5.0
    automated = rng.random(n) < 0.015
    lifetime = 7.0 + rng.exponential(90.0 * np.exp(0.35 * value))
    lifetime[heavy_lost] = horizon * 2  # very active until the end, never buy
    return dict(created=created, employees=employees, industry=industry, country=country,
                segment=segment, fit=fit, value=value, chatty=chatty, heavy_lost=heavy_lost,
                automated=automated, quiet=created + lifetime,
                noise=rng.normal(0.0, ACCOUNT_NOISE_SD, n))


def _candidate_users(rng, acc, n):
    """Users who would join each account if it stayed active: ``(account index, join day)``."""
    lam = 0.45 * acc["employees"] ** 0.35 * np.exp(0.3 * acc["value"])
    n_users = np.clip(1 + rng.poisson(lam), 1, 15)
    acct = np.repeat(np.arange(n), n_users)
    first = np.zeros(acct.size, bool)
    first[np.cumsum(n_users) - n_users] = True
    delay = rng.exponential(30.0 * np.exp(-0.3 * acc["value"][acct]))
    join = acc["created"][acct] + np.where(first, 0.0, 0.01 + delay)
    return acct, join


class _Users:
    """Users of the world, kept sorted by (account, join time)."""

    def __init__(self, acct, join, n_accounts):
        order = np.lexsort((join, acct))
        self.acct = acct[order]
        self.join = join[order]
        self.n_accounts = n_accounts
        self._rebuild()

    def _rebuild(self):
        self.span = float(np.max(self.join) - min(0.0, float(np.min(self.join))) + 10.0) if self.join.size else 1.0
        self.key = self.acct * self.span + np.clip(self.join, None, self.span - 1)
        counts = np.bincount(self.acct, minlength=self.n_accounts)
        self.first = np.cumsum(counts) - counts
        self.end = self.first + counts

    def resort(self):
        """Re-sort after join times changed; return the old -> new index map."""
        order = np.lexsort((self.join, self.acct))
        self.acct, self.join = self.acct[order], self.join[order]
        self._rebuild()
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return order, inverse

    def joined_by(self, acct, t):
        """Number of users of ``acct`` who joined by ``t`` (vectorised)."""
        hi = np.searchsorted(self.key, acct * self.span + np.clip(t, None, self.span - 1), side="right")
        return hi - self.first[acct]

    def pick(self, rng, acct, t):
        """A random user of ``acct`` among those who joined by ``t`` (the creator at least)."""
        k = np.maximum(self.joined_by(acct, t), 1)
        return self.first[acct] + np.floor(rng.random(acct.size) * k).astype(np.int64)


def _kth_time(acct, t, k, n_accounts):
    """Time at which each account logged its ``k``-th event (inf when it never did)."""
    out = np.full(n_accounts, np.inf)
    if acct.size < 1:
        return out
    order = np.lexsort((t, acct))
    a, ts = acct[order], t[order]
    counts = np.bincount(a, minlength=n_accounts)
    first = np.cumsum(counts) - counts
    rank = np.arange(a.size) - first[a]
    hit = rank == k - 1
    out[a[hit]] = ts[hit]
    return out


def _kth_user_time(acct, user, t, k, n_accounts):
    """Time at which the ``k``-th distinct user of each account first logged the event."""
    if user.size == 0:
        return np.full(n_accounts, np.inf)
    order = np.lexsort((t, user))
    u, ts, a = user[order], t[order], acct[order]
    first_of_user = np.ones(u.size, bool)
    first_of_user[1:] = u[1:] != u[:-1]
    return _kth_time(a[first_of_user], ts[first_of_user], k, n_accounts)


def _base_events(rng, acc, users, horizon, change_day, buf):
    """Events of each account's active life (before it goes quiet), plus marketing touches.

    Returns the invite links ``(invite_event_rows, invitee_user)`` for the teammate invites.
    """
    n = acc["created"].size
    v = acc["value"]
    base_end = np.minimum(acc["quiet"], horizon)
    created = acc["created"]
    ua, uj = users.acct, users.join

    def per_account(event, counts, first_mean, gap_mean, until=None):
        owner, t = _arrivals(rng, counts, created, np.broadcast_to(first_mean, (n,)).astype(float),
                             np.broadcast_to(gap_mean, (n,)).astype(float))
        keep = t < (base_end if until is None else until)[owner]
        owner, t = owner[keep], t[keep]
        buf.add(users.pick(rng, owner, t), event, t, rng=rng)
        return owner, t

    z = lambda: rng.normal(0.0, 1.0, n)  # noqa: E731 - per-milestone idiosyncratic propensity
    # -- activation
    onboard = rng.random(n) < _propensity("onboarding", v, z())
    t_on = created + rng.exponential(1.5, n)
    ok = onboard & (t_on < base_end)
    buf.add(users.first[ok], "onboarding_completed", t_on[ok], rng=rng)
    joined_later = np.ones(ua.size, bool)
    joined_later[users.first] = False
    other = joined_later & (rng.random(ua.size) < 0.45)
    t_other = uj + rng.exponential(1.0, ua.size)
    ok = other & (t_other < base_end[ua])
    buf.add(np.flatnonzero(ok), "onboarding_completed", t_other[ok], rng=rng)

    n_proj = rng.poisson(_rate("projects", v, z()))
    per_account("project_created", n_proj, 2.0, 8.0 * np.exp(-0.25 * v))
    has_int = rng.random(n) < _propensity("integration", v, z())
    per_account("integration_connected", has_int * (1 + rng.poisson(0.4, n)), 12.0 * np.exp(-0.3 * v), 30.0)
    # -- adoption
    n_rep = rng.poisson(_rate("reports", v, z()))
    per_account("report_viewed", n_rep, 7.0, 7.0 * np.exp(-0.25 * v))
    uses = rng.random(ua.size) < _propensity("feature_user", v[ua], rng.normal(size=ua.size))
    owner, t = _arrivals(rng, uses * (1 + rng.poisson(2.0, ua.size)), uj, np.full(ua.size, 3.0),
                         np.full(ua.size, 10.0))
    keep = t < base_end[ua[owner]]
    buf.add(owner[keep], "feature_used", t[keep], rng=rng)
    # -- collaboration (invites are handled by the caller: they pull invitees in)
    sharer = rng.random(n) < _propensity("sharing", v, z())
    until = np.minimum(base_end, change_day)  # before the release, sharing was a deliberate act
    per_account("project_shared", sharer * (1 + rng.poisson(1.0, n)), 8.0, 12.0, until=until)
    late_start = np.maximum(created, change_day)
    late = (rng.random(n) < 0.45) & (late_start < base_end)  # after it, a default for everyone
    owner, t = _arrivals(rng, late * (1 + rng.poisson(1.5, n)), late_start, np.full(n, 5.0), np.full(n, 12.0))
    keep = t < base_end[owner]
    buf.add(users.pick(rng, owner[keep], t[keep]), "project_shared", t[keep], rng=rng)
    # -- expansion
    limit = rng.random(n) < _propensity("usage_limit", v, z(), 0.35 * np.log10(acc["employees"]))
    per_account("usage_limit_hit", limit * (1 + rng.poisson(1.0, n)), 30.0, 12.0)
    premium = rng.random(n) < _propensity("premium", v, z())
    per_account("premium_feature_tried", premium * (1 + rng.poisson(0.5, n)), 20.0, 20.0)
    # -- decoys: look like milestones, carry no value signal
    per_account("workspace_created", (rng.random(n) < 0.3) * (1 + rng.poisson(0.3, n)), 25.0, 40.0)
    per_account("user_added", (rng.random(n) < 0.35) * (1 + rng.poisson(1.0, n)), 15.0, 20.0)
    # -- noise per user, driven by chattiness only
    u_end = base_end[ua]
    c = acc["chatty"][ua]
    for event, rate in (("login", 0.045), ("page_view", 0.06), ("search_performed", 0.01),
                        ("settings_changed", 0.004), ("template_browsed", 0.006)):
        owner, t = _uniform(rng, rate * c, uj, u_end)
        buf.add(owner, event, t, rng=rng)
    scripted = rng.random(n) < 0.2  # some teams script against the API a little
    owner, t = _uniform(rng, 0.02 * scripted[ua] * c, uj, u_end)
    buf.add(owner, "api_call", t, rng=rng)
    # automated test suites: a few accounts fire huge bursts of api calls within an hour
    auto = np.flatnonzero(acc["automated"])
    n_bursts = 1 + rng.poisson(2.0, auto.size)
    b_acct = np.repeat(auto, n_bursts)
    b_t = created[b_acct] + rng.random(b_acct.size) * np.clip(base_end[b_acct] - created[b_acct], 0, None)
    size = np.clip(rng.lognormal(math.log(150), 0.9, b_acct.size), 20, 5000).astype(np.int64)
    e_acct = np.repeat(b_acct, size)
    e_t = np.repeat(b_t, size) + rng.random(e_acct.size) / 24.0
    keep = e_t < base_end[e_acct]
    buf.add(users.first[e_acct[keep]], "api_call", e_t[keep], rng=rng)


def _late_joiners_after_purchase(rng, acc, users, conv, horizon, u, code, val, invited_by):
    """Users who would have joined while their account was quiet join only after it buys.

    Without this, a converted account would gain sign-ups *before* its conversion that a
    non-converted one never gets: the future leaking into the users table. Users are re-sorted;
    every stored user index (event users, invitee values, inviters) is remapped.
    """
    base_end = np.minimum(acc["quiet"], horizon)
    ua = users.acct
    late = np.isfinite(conv[ua]) & (users.join >= base_end[ua]) & (users.join < conv[ua])
    users.join[late] = conv[ua][late] + rng.exponential(3.0, int(late.sum()))
    old_to_new = users.resort()[1]
    is_invite = (code == _CODE["teammate_invited"]) & (val >= 0)
    val = np.where(is_invite, old_to_new[np.maximum(val, 0)], val)
    new_invited_by = np.full(invited_by.size, -1, dtype=np.int64)
    has = invited_by >= 0
    new_invited_by[old_to_new[has]] = old_to_new[invited_by[has]]
    return old_to_new[u], val, new_invited_by


def _marketing(rng, users, horizon, buf):
    """Marketing touches: independent of value and of conversion.

    Touches start at sign-up: a touch before it would reveal a user who only exists because the
    account later converted (users who join after an account went quiet join only if it buys).
    """
    n_u = users.acct.size
    counts = rng.poisson(0.8, n_u)
    owner = np.repeat(np.arange(n_u), counts)
    lo = np.clip(users.join[owner], 0.0, None)
    t = lo + rng.random(owner.size) * np.clip(horizon - lo, 0.0, None)
    event = rng.choice(len(MARKETING_EVENTS), owner.size, p=[0.55, 0.15, 0.22, 0.08])
    for i, name in enumerate(MARKETING_EVENTS):
        m = event == i
        buf.add(owner[m], name, t[m], rng=rng)


def _invites(rng, acc, users, horizon):
    """Teammate invites: each pulls the next user to join (sooner) and sets ``invited_by``.

    Returns ``(inviter, t, invitee)`` with invitee ``-1`` for invites nobody accepted.
    Users are re-sorted in place; returned indices refer to the new order.
    """
    n = acc["created"].size
    v = acc["value"]
    base_end = np.minimum(acc["quiet"], horizon)
    invites = rng.random(n) < _propensity("invites", v, rng.normal(size=n))
    counts = invites * (1 + rng.poisson(0.35 * (users.end - users.first - 1)))
    owner, t = _arrivals(rng, counts, acc["created"], 9.0 * np.exp(-0.3 * v), np.full(n, 15.0))
    keep = t < base_end[owner]
    owner, t = owner[keep], t[keep]
    inviter = users.pick(rng, owner, t)
    nxt = users.first[owner] + users.joined_by(owner, t)
    accepted = nxt < users.end[owner]
    # one acceptance per invitee: the earliest invite wins
    invitee = np.where(accepted, nxt, -1)
    order = np.lexsort((t, invitee))
    taken = np.zeros(invitee.size, bool)
    inv_sorted = invitee[order]
    dup = np.zeros(order.size, bool)
    dup[1:] = inv_sorted[1:] == inv_sorted[:-1]
    taken[order] = dup & (inv_sorted >= 0)
    invitee = np.where(taken, -1, invitee)
    ok = invitee >= 0
    new_join = t[ok] + rng.exponential(1.0, int(ok.sum()))
    users.join[invitee[ok]] = np.minimum(users.join[invitee[ok]], new_join)
    invited_by = np.full(users.acct.size, -1, dtype=np.int64)
    invited_by[invitee[ok]] = inviter[ok]
    old_to_new = users.resort()[1]
    # remap every stored index to the new order
    inv_by_new = np.full(users.acct.size, -1, dtype=np.int64)
    has = invited_by >= 0
    inv_by_new[old_to_new[has]] = old_to_new[invited_by[has]]
    inviter = old_to_new[inviter]
    invitee = np.where(invitee >= 0, old_to_new[np.maximum(invitee, 0)], -1)
    return inviter, t, invitee, inv_by_new


def _sequence_times(reach, seq):
    """When each account completed ``seq``: its steps first reached in order within the window."""
    times = [reach[s] for s in seq["steps"]]
    with np.errstate(invalid="ignore"):  # inf - inf for accounts that never started
        span = times[-1] - times[0]
    ordered = np.ones_like(times[0], dtype=bool)
    for a, b in zip(times, times[1:]):
        ordered &= a <= b
    done = ordered & np.isfinite(times[-1]) & (span <= seq["within_days"])
    return np.where(done, times[-1], np.inf)


def _reach_times(acct, user, code, t, n):
    """Milestone reach times per account, read back from the generated events."""
    reach = {}
    for m in DRIVERS + STEP_MILESTONES:
        sel = code == _CODE[m["event"]]
        if m["min_users"] > 1:
            reach[m["name"]] = _kth_user_time(acct[sel], user[sel], t[sel], m["min_users"], n)
        else:
            reach[m["name"]] = _kth_time(acct[sel], t[sel], m["min_count"], n)
    for s in SEQUENCES:
        reach[s["name"]] = _sequence_times(reach, s)
    return reach


def _log_hazard_effects(reach, day, change_day):
    """Sum of planted effects an account has earned by the start of ``day``."""
    eff = 0.0
    for m in DRIVERS + SEQUENCES:
        if m["strength"] == 0 or (m["name"] == FADING_DRIVER and day >= change_day):
            continue
        eff = eff + m["strength"] * (reach[m["name"]] <= day)
    return eff


def _convert(rng, acc, reach, horizon, change_day):
    """Draw conversion times from the day-by-day hazard (vectorised over accounts)."""
    n = acc["created"].size
    conv = np.full(n, np.inf)
    can = ~acc["heavy_lost"]
    base = BASE_LOG_HAZARD + acc["fit"] + acc["noise"]
    for day in range(int(np.floor(acc["created"].min())) + 1, int(np.ceil(horizon))):
        at_risk = can & (acc["created"] < day) & np.isinf(conv)
        idx = np.flatnonzero(at_risk)
        if idx.size == 0:
            continue
        sub = {k: r[idx] for k, r in reach.items()}
        quiet_for = np.clip(day - acc["quiet"][idx], 0.0, None)
        decay = np.exp2(-quiet_for / RECENCY_HALF_LIFE_DAYS)
        log_h = base[idx] + decay * _log_hazard_effects(sub, day, change_day)
        p = -np.expm1(-np.exp(log_h))
        hit = idx[rng.random(idx.size) < p]
        conv[hit] = np.minimum(day + rng.random(hit.size), horizon - 1e-6)
    return conv


def _continuation(rng, acc, users, conv, horizon, buf):
    """Converted accounts keep using the product until the end of the period."""
    n = acc["created"].size
    base_end = np.minimum(acc["quiet"], horizon)
    cont_start = np.where(np.isfinite(conv), np.maximum(conv, base_end), horizon)
    ua = users.acct
    u_start = np.maximum(users.join, cont_start[ua])
    u_end = np.full(ua.size, horizon)
    c = acc["chatty"][ua]
    for event, rate in (("login", 0.045 * c), ("page_view", 0.06 * c), ("search_performed", 0.01 * c),
                        ("settings_changed", 0.003 * c), ("template_browsed", 0.003 * c),
                        ("feature_used", np.full(ua.size, 0.03)), ("report_viewed", np.full(ua.size, 0.01))):
        owner, t = _uniform(rng, rate, u_start, u_end)
        buf.add(owner, event, t, rng=rng)
    a_end = np.full(n, horizon)
    for event, rate in (("project_created", 0.05), ("project_shared", 0.03), ("teammate_invited", 0.01),
                        ("usage_limit_hit", 0.012), ("premium_feature_tried", 0.01),
                        ("integration_connected", 0.004), ("user_added", 0.02), ("workspace_created", 0.004)):
        owner, t = _uniform(rng, np.full(n, rate), cont_start, a_end)
        buf.add(users.pick(rng, owner, t), event, t, rng=rng)


def _cancel_clicks(rng, acc, users, conv, horizon, buf):
    """The planted warning sign (:data:`WARNING_SIGN`), drawn from its own random stream.

    Half of the accounts that go quiet within the period open the cancel-trial flow in their
    last days of activity; 4% of all accounts do once at a random active moment. Only clicks
    before the account's conversion are kept, a condition on the past only.
    """
    n = acc["created"].size
    created, quiet = acc["created"], acc["quiet"]
    base_end = np.minimum(quiet, horizon)
    ws = WARNING_SIGN
    leaving = (quiet < horizon) & (rng.random(n) < ws["before_quiet_share"])
    t_leave = np.maximum(quiet - rng.random(n) * ws["before_quiet_days"], created + 0.01)
    curious = rng.random(n) < ws["background_share"]
    t_curious = created + rng.random(n) * np.clip(base_end - created, 0.0, None)
    owner = np.concatenate([np.flatnonzero(leaving), np.flatnonzero(curious)])
    t = np.concatenate([t_leave[leaving], t_curious[curious]])
    keep = (t < conv[owner]) & (t < base_end[owner])
    owner, t = owner[keep], t[keep]
    buf.add(users.pick(rng, owner, t), ws["event"], t, rng=rng)


def _frag(key, value):
    return json.dumps({key: value})[1:-1]


def _property_fragments():
    """Static JSON fragments ``"key": "value"`` and each event's offset into them."""
    frags, offset = [], np.zeros(len(EVENT_NAMES), dtype=np.int64)
    for i, (event, (key, values)) in enumerate(EVENT_CATALOGUE.items()):
        offset[i] = len(frags)
        frags.extend(_frag(key, v) for v in values)
    return frags, offset


def _atomic_write(path: Path, write):
    """Write through ``write(tmp_path)`` then rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _pandas_schema(columns: dict[str, str], arrow_types: dict[str, pa.DataType]) -> pa.Schema:
    """Arrow schema carrying pandas metadata, so ``pd.read_parquet`` restores canonical dtypes."""
    empty = pd.DataFrame({c: pd.Series(dtype=d) for c, d in columns.items()})
    meta = pa.Schema.from_pandas(empty, preserve_index=False).metadata
    return pa.schema([pa.field(c, arrow_types[c]) for c in columns], metadata=meta)


def _frame_to_parquet(df: pd.DataFrame, columns: dict[str, str], path: Path):
    df = df[list(columns)].astype(columns)
    table = pa.Table.from_pandas(df, preserve_index=False)
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _rules_baseline() -> MilestoneSpec:
    """The team's hand-made points model: plausible, partly wrong, missing real drivers."""
    return MilestoneSpec.model_validate({
        "settings": {"half_life_days": RECENCY_HALF_LIFE_DAYS, "horizon_days": 30,
                     "activity_events": {"logins": ["login"], "page_views": ["page_view"],
                                         "api_calls": ["api_call"], "searches": ["search_performed"]}},
        "milestones": [
            {"name": "completed_onboarding", "category": "activation", "label": "completed onboarding",
             "event": "onboarding_completed", "points": 10},
            {"name": "created_first_project", "category": "activation", "label": "created a first project",
             "event": "project_created", "points": 10},
            {"name": "ten_logins", "category": "adoption", "label": "logged in 10+ times",
             "event": "login", "min_count": 10, "points": 20},
            {"name": "browsed_templates", "category": "adoption", "label": "browsed templates 3+ times",
             "event": "template_browsed", "min_count": 3, "points": 10},
            {"name": "invited_teammate", "category": "collaboration", "label": "invited a teammate",
             "event": "teammate_invited", "points": 15},
            {"name": "added_user", "category": "collaboration", "label": "added a user",
             "event": "user_added", "points": 10},
            {"name": "created_second_workspace", "category": "expansion", "label": "created another workspace",
             "event": "workspace_created", "points": 15},
            {"name": "tried_premium_feature", "category": "expansion", "label": "tried a premium feature",
             "event": "premium_feature_tried", "points": 10},
        ],
    })


def _truth_spec() -> MilestoneSpec:
    """The planted mechanism as a milestone file (points = 10 x log-hazard strength)."""
    keys = ("name", "category", "label", "event", "min_count", "min_users")
    return MilestoneSpec.model_validate({
        "settings": {"half_life_days": RECENCY_HALF_LIFE_DAYS, "horizon_days": 30},
        "milestones": [{**{k: m[k] for k in keys}, "points": round(10 * m["strength"], 2)}
                       for m in DRIVERS + STEP_MILESTONES],
        "sequences": [{"name": s["name"], "steps": s["steps"], "within_days": s["within_days"],
                       "label": s["label"], "points": round(10 * s["strength"], 2)} for s in SEQUENCES],
        "warning_signs": [{"name": WARNING_SIGN["name"], "label": WARNING_SIGN["label"],
                           "event": WARNING_SIGN["event"]}],
    })


def _iso(start_ts: pd.Timestamp, day: float) -> str:
    return (start_ts + pd.Timedelta(days=float(day))).isoformat()


def generate_world(out_dir: Path, n_accounts: int = 5000, seed: int = 0, *, start: str = "2025-01-01",
                   months: int = 18, progress: bool = False, segment_export: bool = False,
                   product_change: bool = True) -> dict:
    """Generate a synthetic product-led B2B SaaS world with a documented hidden mechanism.

    Parameters
    ----------
    out_dir : Path
        Directory to write into (created if missing). Existing world files are replaced
        atomically, one by one.
    n_accounts : int
        Number of accounts (companies). Users, events and conversions scale with it
        (about 2.6 users and 110 events per account).
    seed : int
        Random seed; the same seed writes byte-identical data files.
    start : str
        First day of the simulated period (UTC).
    months : int
        Length of the period in months.
    progress : bool
        Print one line per stage.
    segment_export : bool
        Also write ``events_segment.jsonl`` (Segment-spec identify/group/track messages for the
        same data), for format tests.
    product_change : bool
        Plant the release in the latest quarter that makes one driver fade and renames one event.

    Returns
    -------
    dict
        Summary: ``accounts``, ``users``, ``events``, ``conversions``, ``conversion_rate``,
        ``seconds``, ``out_dir``.

    Examples
    --------
    >>> import tempfile
    >>> s = generate_world(Path(tempfile.mkdtemp()), n_accounts=50, seed=1)
    >>> s["accounts"], s["users"] > 50, s["events"] > 1000
    (50, True, True)
    """
    if int(n_accounts) < 1:
        raise ValueError(f"n_accounts must be at least 1, got {n_accounts}")
    if int(months) < 4:
        raise ValueError(f"months must be at least 4 (the latest quarter holds the product change), got {months}")
    clock = time.perf_counter()
    say = (lambda msg: print(f"[generate {time.perf_counter() - clock:6.1f}s] {msg}", flush=True)) \
        if progress else (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = int(n_accounts)
    rng = np.random.default_rng(seed)
    start_ts = pd.Timestamp(start)
    if start_ts.tz is not None:
        start_ts = start_ts.tz_convert("UTC").tz_localize(None)
    end_ts = start_ts + pd.DateOffset(months=int(months))
    horizon = (end_ts - start_ts) / pd.Timedelta(days=1)
    change_day = horizon - 91.0 if product_change else np.inf

    # -- who
    acc = _accounts(rng, n, horizon)
    users = _Users(*_candidate_users(rng, acc, n), n)
    inviter, t_inv, invitee, invited_by = _invites(rng, acc, users, horizon)
    say(f"{n} accounts, {users.acct.size} candidate users, {t_inv.size} invites")

    # -- what they did before going quiet, and what that earned them
    buf = _EventBuffer()
    buf.add(inviter, "teammate_invited", t_inv, val=invitee)
    _base_events(rng, acc, users, horizon, change_day, buf)
    u, code, t, val = buf.arrays()
    reach = _reach_times(users.acct[u], u, code, t, n)
    conv = _convert(rng, acc, reach, horizon, change_day)
    converted = np.isfinite(conv)
    say(f"{u.size} base events; {int(converted.sum())} conversions")
    u, val, invited_by = _late_joiners_after_purchase(rng, acc, users, conv, horizon, u, code, val, invited_by)
    # the warning sign has its own random stream, so adding it moved no draw of the rest
    signs = _EventBuffer()
    _cancel_clicks(np.random.default_rng([seed, 1]), acc, users, conv, horizon, signs)
    u_w, code_w, t_w, val_w = signs.arrays()
    later = _EventBuffer()
    _continuation(rng, acc, users, conv, horizon, later)
    _marketing(rng, users, horizon, later)
    u2, code2, t2, val2 = later.arrays()
    u, code, t, val = (np.concatenate([u, u2]), np.concatenate([code, code2]),
                       np.concatenate([t, t2]), np.concatenate([val, val2]))
    del u2, code2, t2, val2, buf, later

    # -- users that exist: joined while the account was active, or after it converted
    base_end = np.minimum(acc["quiet"], horizon)
    ua = users.acct
    kept = (users.join < base_end[ua]) | (converted[ua] & (users.join < horizon))
    new_idx = np.cumsum(kept) - 1
    keep_ev = kept[u] & (t >= 0) & (t < horizon)
    u, code, t, val = u[keep_ev], code[keep_ev], t[keep_ev], val[keep_ev]
    keep_w = kept[u_w] & (t_w >= 0) & (t_w < horizon)
    u_w, code_w, t_w, val_w = u_w[keep_w], code_w[keep_w], t_w[keep_w], val_w[keep_w]
    if product_change:
        for old, new in RENAMED.items():
            code[(code == _CODE[old]) & (t >= change_day)] = _CODE[new]
    say(f"{int(kept.sum())} users, {u.size} events")

    # -- names, e-mails and the links identity resolution has to find
    brands, company, domain = names.company_names(rng, acc["industry"], acc["country"])
    aliases = names.domain_aliases(rng, brands, domain, share=0.1)
    n_u = ua.size
    first, last = names.person_names(rng, n_u)
    free = rng.random(n_u) < np.where(acc["employees"][ua] < 5, 0.45, 0.18)
    r = rng.random(n_u)
    user_domain = np.where((aliases[ua] != "") & (r < 0.3), aliases[ua], domain[ua])
    sub = np.array(["eu.", "us.", "uk.", "mail."], dtype=object)[rng.integers(0, 4, n_u)]
    user_domain = np.where((r >= 0.3) & (r < 0.38), sub + domain[ua], user_domain)
    email = names.emails(rng, first, last, user_domain, free)
    known = rng.random(n_u) < np.where(free, 0.3, 0.65)
    typed = rng.random(n_u) < np.where(free & ~known, 0.55, 0.35)
    spelled = names.company_spellings(rng, brands[ua], company[ua])
    orphan = free & ~known & (invited_by < 0) & ~typed & (rng.random(n_u) < 0.5)

    acct_ids = np.array([f"acc_{i:06d}" for i in rng.permutation(n)], dtype=object)
    user_ids = np.full(n_u, None, dtype=object)
    user_ids[kept] = [f"usr_{i:07d}" for i in rng.permutation(int(kept.sum()))]
    ws_ids = np.array([f"ws_{i:06d}" for i in rng.permutation(2 * n)], dtype=object)
    to_ts = lambda days: (np.datetime64(start_ts.to_datetime64(), "us")  # noqa: E731
                          + (np.asarray(days) * _US_PER_DAY).astype(np.int64).astype("timedelta64[us]"))

    accounts = pd.DataFrame({
        "account_id": acct_ids, "domain": domain, "domain_aliases": np.where(aliases == "", None, aliases),
        "name": company, "created_at": to_ts(acc["created"]), "employees": acc["employees"],
        "industry": acc["industry"], "country": acc["country"], "icp_segment": acc["segment"]})
    inv = invited_by[kept]
    users_df = pd.DataFrame({
        "user_id": user_ids[kept], "email": email[kept], "created_at": to_ts(users.join[kept]),
        "account_id": np.where(known[kept], acct_ids[ua[kept]], None),
        "company": np.where(typed[kept], spelled[kept], None),
        "invited_by": np.where(inv >= 0, user_ids[np.maximum(inv, 0)], None)})
    conv_idx = np.flatnonzero(converted)
    conversions = pd.DataFrame({"account_id": acct_ids[conv_idx], "converted_at": to_ts(conv[conv_idx])})
    conversions = conversions.sort_values("converted_at", kind="stable").reset_index(drop=True)
    truth_users = pd.DataFrame({"user_id": user_ids[kept], "account_id": acct_ids[ua[kept]]})

    # accounts of this world never end (no trial expiry is simulated), so no ended_at column
    reserved = {c: t for c, t in ACCOUNT_RESERVED.items() if c != "ended_at"}
    account_cols = {**reserved, "employees": "int64", "industry": "string", "country": "string",
                    "icp_segment": "string"}
    _frame_to_parquet(accounts, account_cols, out / "accounts.parquet")
    _frame_to_parquet(users_df, USER_COLUMNS, out / "users.parquet")
    _frame_to_parquet(conversions, CONVERSION_COLUMNS, out / "conversions.parquet")
    _frame_to_parquet(truth_users, {"user_id": "string", "account_id": "string"},
                      out / "truth_user_accounts.parquet")

    # -- events, written in sorted row groups
    order = np.lexsort((new_idx[u], t))
    u, code, t, val = u[order], code[order], t[order], val[order]
    ev_acct = ua[u]
    first_ws = _kth_time(ev_acct[code == _CODE["workspace_created"]], t[code == _CODE["workspace_created"]], 1, n)
    second = (code == _CODE["workspace_created"]) | ((t > first_ws[ev_acct]) & (rng.random(u.size) < 0.3))
    is_mkt = np.isin(code, [_CODE[e] for e in MARKETING_EVENTS])
    ws_idx = np.where(is_mkt | orphan[u], -1, np.where(second, n + ev_acct, ev_acct))
    frags, offset = _property_fragments()
    fidx = np.where(val >= 0, offset[code] + val, -1)
    inv_rows = np.flatnonzero(code == _CODE["teammate_invited"])
    inv_val = val[inv_rows]
    fresh_first, fresh_last = names.person_names(rng, inv_rows.size)
    fresh = [f"{a}.{b}@{d}" for a, b, d in zip(fresh_first, fresh_last, domain[ev_acct[inv_rows]])]
    inv_email = np.where(inv_val >= 0, email[np.maximum(inv_val, 0)], np.array(fresh, dtype=object))
    fidx[inv_rows] = len(frags) + np.arange(inv_rows.size)
    frags = frags + [_frag("invitee_email", e) for e in inv_email]
    acct_of_event = np.where(known[u], ev_acct, -1)
    # the warning sign's rows join last, so every draw above is the one it was without them
    # (the lexsort is stable: equal keys keep the order of the concatenation)
    ev_acct_w = ua[u_w]
    rows = {"u": (u, u_w), "code": (code, code_w), "t": (t, t_w), "val": (val, val_w),
            "ws_idx": (ws_idx, np.where(orphan[u_w], -1, ev_acct_w)), "fidx": (fidx, offset[code_w] + val_w),
            "acct_of_event": (acct_of_event, np.where(known[u_w], ev_acct_w, -1)),
            "is_mkt": (is_mkt, np.zeros(u_w.size, bool))}
    rows = {k: np.concatenate(v) for k, v in rows.items()}
    order = np.lexsort((new_idx[rows["u"]], rows["t"]))
    u, code, t, val = (rows[k][order] for k in ("u", "code", "t", "val"))
    ws_idx, fidx, acct_of_event, is_mkt = (rows[k][order] for k in ("ws_idx", "fidx", "acct_of_event", "is_mkt"))
    ts_us = (np.datetime64(start_ts.to_datetime64(), "us").astype(np.int64)
             + (t * _US_PER_DAY).astype(np.int64))

    user_arr = pa.array(user_ids[kept].tolist(), pa.string())
    acct_arr = pa.array(acct_ids.tolist(), pa.string())
    event_arr = pa.array(EVENT_NAMES, pa.string())
    frag_arr = pa.array(frags, pa.string())
    ws_arr = pa.array([_frag("workspace_id", w) for w in ws_ids], pa.string())
    source_arr = pa.array(["product", "marketing"], pa.string())
    schema = _pandas_schema(EVENT_COLUMNS, {c: pa.timestamp("us") if c == "timestamp" else pa.string()
                                            for c in EVENT_COLUMNS})
    prefix = f"evt-{seed}-"

    sep_arr = pa.array(["", ", "], pa.string())

    def take(arr, idx):
        return arr.take(pa.array(idx, mask=idx < 0))

    def take_or_empty(arr, idx):
        return pc.fill_null(take(arr, idx), "")

    def write_events(tmp):
        # unique message ids and high-cardinality properties gain nothing from dictionaries
        dictionary = ["user_id", "account_id", "event", "source"]
        with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=dictionary) as writer:
            for lo in range(0, max(u.size, 1), 1_000_000):
                sl = slice(lo, lo + 1_000_000)
                # (no null_handling="skip": pyarrow 25 drops rows whose inputs are all null)
                w, f = ws_idx[sl], fidx[sl]
                sep = sep_arr.take(pa.array(((w >= 0) & (f >= 0)).astype(np.int8)))
                props = pc.binary_join_element_wise("{", take_or_empty(ws_arr, w), sep, take_or_empty(frag_arr, f), "}", "")
                seq = pc.utf8_lpad(pc.cast(pa.array(np.arange(lo, lo + len(u[sl]))), pa.string()), 9, "0")
                table = pa.table({
                    "user_id": user_arr.take(pa.array(new_idx[u[sl]])),
                    "account_id": take(acct_arr, acct_of_event[sl]),
                    "event": event_arr.take(pa.array(code[sl].astype(np.int32))),
                    "timestamp": pa.array(ts_us[sl], pa.timestamp("us")),
                    "message_id": pc.binary_join_element_wise(prefix, seq, ""),
                    "source": source_arr.take(pa.array(is_mkt[sl].astype(np.int8))),
                    "properties": props}, schema=schema)
                writer.write_table(table)

    _atomic_write(out / "events.parquet", write_events)
    say(f"events.parquet written ({u.size} rows)")

    # -- truth, the rules baseline and a README
    stats = _reach_stats(reach, conv, acc, horizon)
    sign = code == _CODE[WARNING_SIGN["event"]]
    stats.update(_reach_stats({WARNING_SIGN["name"]: _kth_time(ua[u[sign]], t[sign], 1, n)}, conv, acc, horizon,
                              [WARNING_SIGN]))
    truth = _truth_document(seed, n, start_ts, end_ts, months, change_day, product_change, stats,
                            n_users=int(kept.sum()), n_events=int(u.size), n_conv=int(converted.sum()))
    _atomic_write(out / "truth.json", lambda tmp: tmp.write_text(json.dumps(truth, indent=2), encoding="utf-8"))
    _atomic_write(out / "milestones.yaml", lambda tmp: tmp.write_text(_rules_baseline().to_yaml(), encoding="utf-8"))
    _atomic_write(out / "truth_milestones.yaml", lambda tmp: tmp.write_text(_truth_spec().to_yaml(), encoding="utf-8"))
    _atomic_write(out / "README.md", lambda tmp: tmp.write_text(_readme(truth), encoding="utf-8"))
    if segment_export:
        from features.synthetic_segment import write_segment_export

        write_segment_export(out / "events_segment.jsonl", out)
    elif (out / "events_segment.jsonl").exists():
        (out / "events_segment.jsonl").unlink()  # a stale export would describe another world
    say("done")
    return {"accounts": n, "users": int(kept.sum()), "events": int(u.size),
            "conversions": int(converted.sum()), "conversion_rate": round(float(converted.mean()), 4),
            "seconds": round(time.perf_counter() - clock, 2), "out_dir": str(out)}


def _reach_stats(reach, conv, acc, horizon, rules=None):
    """Share of converters (before converting) and non-converters (ever) reaching each milestone."""
    converted = np.isfinite(conv)
    as_of = np.where(converted, conv, horizon)
    out = {}
    for m in rules if rules is not None else DRIVERS + STEP_MILESTONES + SEQUENCES:
        hit = reach[m["name"]] <= as_of
        c = float(hit[converted].mean()) if converted.any() else float("nan")
        nc = float(hit[~converted].mean()) if (~converted).any() else float("nan")
        out[m["name"]] = {"converters": round(c, 4), "non_converters": round(nc, 4),
                          "ratio": round(c / nc, 2) if nc > 0 else None}
    return out


def _truth_document(seed, n, start_ts, end_ts, months, change_day, product_change, stats, *, n_users,
                    n_events, n_conv) -> dict:
    change_date = _iso(start_ts, change_day)[:10] if product_change else None
    drivers = []
    for rank, m in enumerate(DRIVERS, start=1):
        drivers.append({**m, "within_days": None, "rank": rank,
                        "fading": bool(product_change and m["name"] == FADING_DRIVER)})
    return {
        "description": "Synthetic product-led B2B SaaS world; see docs/synthetic-world.md.",
        "seed": seed, "n_accounts": n, "n_users": n_users, "n_events": n_events, "n_conversions": n_conv,
        "conversion_rate": round(n_conv / n, 4),
        "start": start_ts.isoformat(), "end": end_ts.isoformat(), "months": months,
        "mechanism": "daily conversion hazard: log h = base + fit + account_noise "
                     "+ 0.5**(days_quiet/half_life) * sum(strength of milestones and sequences reached)",
        "base_log_hazard": BASE_LOG_HAZARD, "account_noise_sd": ACCOUNT_NOISE_SD,
        "recency_half_life_days": RECENCY_HALF_LIFE_DAYS,
        "drivers": drivers,
        "sequences": [{**s, "step_events": [next(m["event"] for m in DRIVERS + STEP_MILESTONES if m["name"] == st)
                                            for st in s["steps"]]} for s in SEQUENCES],
        "step_milestones": STEP_MILESTONES,
        "warning_signs": [dict(WARNING_SIGN)],
        "warning_sign_events": [WARNING_SIGN["event"]],
        "driver_events": sorted({m["event"] for m in DRIVERS}),
        # new names of renamed driver events (same behaviour, same effect): neither drivers of
        # their own nor non-drivers, so finding them is neither a hit nor a false discovery
        "renamed_driver_events": sorted(RENAMED[m["event"]] for m in DRIVERS if product_change and m["event"] in RENAMED),
        "non_drivers": list(NOISE_EVENTS) + list(MARKETING_EVENTS) + list(DECOY_EVENTS),
        "noise_events": list(NOISE_EVENTS), "marketing_events": list(MARKETING_EVENTS),
        "decoy_events": list(DECOY_EVENTS),
        "product_change_date": change_date,
        "fading": [FADING_DRIVER] if product_change else [],
        "fading_events": [next(m["event"] for m in DRIVERS if m["name"] == FADING_DRIVER)] if product_change else [],
        "renamed": dict(RENAMED) if product_change else {},
        "fit_effects": {"icp_segment": FIT_ICP, "employees_log10_per_decade_above_50": FIT_EMPLOYEES_PER_DECADE,
                        "employees_decades_clip": [-1.0, 1.5]},
        "heavy_lost_share": 0.04, "automated_api_share": 0.015,
        "user_accounts_file": "truth_user_accounts.parquet",
        "truth_milestones_file": "truth_milestones.yaml",
        "rules_baseline_file": "milestones.yaml",
        "reach_rates": stats,
    }


def _readme(truth: dict) -> str:
    drivers = "\n".join(f"| {d['rank']} | {d['name']} | {d['event']} | {d['min_count']} | {d['min_users']} | "
                        f"{d['strength']} | {'fades from ' + truth['product_change_date'] if d['fading'] else ''} |"
                        for d in truth["drivers"])
    renamed = ", ".join(f"`{a}` -> `{b}`" for a, b in truth["renamed"].items()) or "nothing"
    ws = truth["warning_signs"][0]
    return f"""# Synthetic world (seed {truth['seed']})

A product-led B2B SaaS (a project-management tool), generated by `features.synthetic.generate_world`.
Period {truth['start'][:10]} .. {truth['end'][:10]}: {truth['n_accounts']} accounts, {truth['n_users']} users,
{truth['n_events']} events, {truth['n_conversions']} conversions ({truth['conversion_rate']:.1%}).

Files: `events.parquet`, `users.parquet`, `accounts.parquet`, `conversions.parquet` (canonical
columns of `features/schema.py`; timestamps naive UTC), `truth.json` (the hidden mechanism),
`truth_user_accounts.parquet` (every user's true account), `truth_milestones.yaml` (the planted
drivers as a milestone file), `milestones.yaml` (a team's hand-made rules: the baseline to beat).

Planted drivers (log-hazard strength while the account is active):

| rank | milestone | event | min count | min users | strength | note |
|---|---|---|---|---|---|---|
{drivers}

Planted warning sign: `{ws['event']}` ({ws['label']}): half of the accounts that go quiet do it in their
last {ws['before_quiet_days']:g} days of activity, {ws['background_share']:.0%} of all accounts once at random; never after buying.

Noise and non-drivers: {', '.join(truth['non_drivers'])}.
{'Renamed from ' + truth['product_change_date'] + ': ' + renamed + '.' if truth['renamed'] else 'No product change.'} Details: docs/synthetic-world.md.
"""
