"""THE explanation code: used by the service, ``pql explain`` and batch scoring alike.

Reasons are LightGBM ``pred_contrib`` contributions (TreeSHAP, log-odds) summed per *group*:
one group per milestone (all its ``ms__<m>__*`` columns), per sequence, per fit attribute and
per account/demand-gen/activity column. Group sums plus the base value equal the model's raw
output exactly, so the reasons add up to the score. Each group is worded in plain language
with the account's own values, from the labels of ``milestones.yaml`` (:class:`Wording`): a
reached milestone says who and when, an unmet one what is still missing in the rule's terms.
A reason's direction is the sign of its contribution and nothing else (an unmet milestone whose
partial progress raised the output is an "up" reason); the CRM's one-line ``top_reasons`` marks
each reason ``(+)`` or ``(-)`` because it lists both directions by strength.

Next-best milestones are found by re-scoring: for every unmet milestone, the account's row is
copied with that milestone reached (today, by the minimum users and count its rule needs) and
scored again; the milestones that raise the probability most are suggested.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from serving.model import Scorer

@dataclass
class Groups:
    """Feature columns grouped for explanation."""

    keys: list[str]  # e.g. "milestone:invited_teammate", "fit:industry"
    kinds: list[str]  # milestone | sequence | fit | account | demand_gen | activity | other
    subjects: list[str]  # milestone / sequence / attribute / column the group is about
    membership: np.ndarray  # (features, groups) 0/1 matrix


def group_of(name: str) -> tuple[str, str]:
    """``(kind, subject)`` of one feature column, e.g. ``("milestone", "invited_teammate")``.

    >>> group_of("ms__invited_teammate__users")
    ('milestone', 'invited_teammate')
    >>> group_of("fit__industry")
    ('fit', 'industry')
    """
    parts = name.split("__")
    prefix = parts[0]
    if prefix == "ms" and len(parts) >= 3:
        return "milestone", parts[1]
    if prefix == "seq" and len(parts) >= 3:
        return "sequence", parts[1]
    if prefix == "ws" and len(parts) >= 3:
        return "warning", parts[1]
    if prefix == "fit":
        return "fit", name[len("fit__"):]
    if prefix == "acct":
        return "account", name[len("acct__"):]
    if prefix == "dg":
        return "demand_gen", parts[1] if len(parts) > 1 else name
    if prefix == "raw":
        return "activity", name[len("raw__"):]
    return "other", name


def feature_groups(manifest: pd.DataFrame) -> Groups:
    """Group the model's columns (manifest order) by milestone, sequence or feature."""
    keys: list[str] = []
    kinds: list[str] = []
    subjects: list[str] = []
    index: dict[str, int] = {}
    assign = []
    for name in manifest["name"]:
        kind, subject = group_of(name)
        key = f"{kind}:{subject}"
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
            kinds.append(kind)
            subjects.append(subject)
        assign.append(index[key])
    membership = np.zeros((len(assign), len(keys)))
    membership[np.arange(len(assign)), assign] = 1.0
    return Groups(keys, kinds, subjects, membership)


# --- wording --------------------------------------------------------------------------------
#: Account roll-up columns: (singular, plural) of what is counted.
ACCOUNT_COUNTS = {
    "active_users_7d": ("active user in the last 7 days", "active users in the last 7 days"),
    "active_users_30d": ("active user in the last 30 days", "active users in the last 30 days"),
}
#: Words written in capitals when an attribute or activity name is turned into words.
ACRONYMS = {"icp", "arr", "mrr", "acv", "crm", "api", "sso", "id", "url", "us", "uk", "eu", "b2b", "saas"}
#: Activity families whose name is not a plural noun.
ACTIVITY_NOUNS = {"all_events": ("product event", "product events")}
#: Derived (not a model input) per-milestone value: the ``within_days`` window is over for sure.
WINDOW_OVER = "window_over"


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _ago(days) -> str:
    d = _num(days)
    if d is None:
        return ""
    d = int(round(d))
    return "today" if d <= 0 else "yesterday" if d == 1 else f"{d} days ago"


def _int(v) -> str:
    """A number as people write it: ``3``, ``2.5``, ``12,000``; ``0`` when missing."""
    f = _num(v)
    if f is None:
        return "0"
    return f"{int(round(f)):,}" if abs(f - round(f)) < 1e-9 else f"{f:,.1f}"


def _counted(n, singular: str, plural: str) -> str:
    """``"1 user"``, ``"3 users"``, ``"no users"``."""
    f = _num(n) or 0.0
    return f"no {plural}" if f == 0 else f"{_int(f)} {singular if f == 1 else plural}"


def _words(name: str) -> str:
    """``"icp_segment"`` -> ``"ICP segment"``: a column name in words."""
    return " ".join(w.upper() if w in ACRONYMS else w for w in name.split("_"))


def _singular(noun: str) -> str:
    for end in ("ches", "shes", "sses", "xes"):
        if noun.endswith(end):
            return noun[:-2]
    return noun[:-1] if noun.endswith("s") and not noun.endswith("ss") else noun


def _missing(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


class Wording:
    """Words one group for one account, from its feature values and the milestone file.

    Every method takes ``v``, the account's values by column name (only the group's own
    columns are needed), and returns one sentence without a direction: whether it pushed the
    score up or down is the sign of the group's contribution, shown beside it.

    Milestone labels come in two styles, and both read naturally:

    * verb phrases written by people (``"invited teammates"``): ``"3 users invited teammates;
      the last 2 days ago"``;
    * discovery's passive labels that start with the event (``"project created at least 3 times
      by at least 2 users"``): the rule's "by at least 2 users" gives way to the account's own
      number, ``"project created at least 3 times by 4 users; the last today"``.
    """

    def __init__(self, spec):
        self.spec = spec
        self.milestones = {m.name: m for m in spec.milestones}
        self.sequences = {s.name: s for s in spec.sequences}
        self.warning_signs = {w.name: w for w in spec.warning_signs}

    def milestone(self, name: str, v: dict) -> str:
        """A reached milestone with who and when; an unmet one with what is still missing."""
        m = self.milestones.get(name)
        label = m.label if m else name.replace("_", " ")
        reached = _num(v.get(f"ms__{name}__reached"))
        count = _num(v.get(f"ms__{name}__count")) or 0.0
        users = _num(v.get(f"ms__{name}__users"))
        if reached is None:
            reached = 1.0 if count > 0 else 0.0
        if reached >= 0.5:
            return self._reached(m, label, users, count, v.get(f"ms__{name}__days_since_last"))
        progress = self._progress(m, count, users, _num(v.get(f"ms__{name}__{WINDOW_OVER}")))
        return f"not yet: {label}" + (f" ({progress})" if progress else "")

    @staticmethod
    def _reached(m, label: str, users: float | None, count: float, last) -> str:
        who = _counted(users, "user", "users") if users is not None and users >= 1 else ""
        passive = m is not None and (
            " by at least " in label
            or any(label.lower().startswith(e.replace("_", " ").lower()) for e in m.events))
        when = _ago(last)
        # "the last" only makes sense when there was more than one event.
        when = (f"; the last {when}" if count >= 2 else f", {when}" if passive else f" {when}"
                ) if when else ""
        if not who:
            return f"{label}{when}"
        if passive:
            rule = f" by at least {m.min_users} users"
            base = label[:-len(rule)] if m.min_users > 1 and label.endswith(rule) else label
            return f"{base} by {who}{when}"
        return f"{who} {label}{when}"

    @staticmethod
    def _progress(m, count: float, users: float | None, window_over: float | None) -> str:
        """What an unmet milestone still lacks, in the rule's own terms ('' if nothing to say)."""
        if m is None:
            return ""
        if m.within_days and window_over is not None and window_over >= 0.5:
            return f"outside the first {m.within_days} days"
        if count <= 0:  # nothing so far: "not yet" says it all
            return ""
        parts = []
        if m.min_count > 1 and count < m.min_count:
            parts.append(f"{_int(count)} of {m.min_count} times")
        if m.min_users > 1 and (users or 0.0) < m.min_users:
            parts.append(f"{_int(users)} of {m.min_users} users")
        return ", ".join(parts) + " so far" if parts else ""

    def sequence(self, name: str, v: dict) -> str:
        """A completed sequence with when; otherwise "not yet"."""
        s = self.sequences.get(name)
        words = s.wording if s else name.replace("_", " ")
        done = _num(v.get(f"seq__{name}__completed"))
        if done is not None and done >= 0.5:
            when = _ago(v.get(f"seq__{name}__days_since"))
            return f"{words}" + (f" (completed {when})" if when else "")
        return f"not yet: {words}"

    def warning(self, name: str, v: dict) -> str:
        """A warning sign seen, with how often and when (``"warning sign: unsubscribed 2 times;
        the last 3 days ago"``); otherwise that it was not seen."""
        w = self.warning_signs.get(name)
        label = w.label if w else name.replace("_", " ")
        seen = _num(v.get(f"ws__{name}__reached"))
        count = _num(v.get(f"ws__{name}__count")) or 0.0
        if seen is None:
            seen = 1.0 if count > 0 else 0.0
        if seen < 0.5:
            return f"no warning sign: {label}"
        times = f" {_int(count)} times" if count >= 2 else ""
        when = _ago(v.get(f"ws__{name}__days_since_last"))
        when = (f"; the last {when}" if count >= 2 else f" {when}") if when else ""
        return f"warning sign: {label}{times}{when}"

    def fit(self, attr: str, v: dict) -> str:
        """``"2 employees"`` for a count-like number, ``"industry: Retail"`` otherwise."""
        val = v.get(f"fit__{attr}")
        words = _words(attr)
        if _missing(val):
            return f"{words}: unknown"
        f = _num(val) if not isinstance(val, str) else None
        if f is None:
            return f"{words}: {val}"
        # A plural noun ("employees", "seats") is a count: say "2 employees".
        if attr.endswith("s") and not attr.endswith("ss") and "_" not in attr:
            return _counted(f, _singular(words), words)
        return f"{words}: {_int(f)}"

    def account(self, col: str, v: dict) -> str:
        """Account roll-ups: active users, share activated, users per milestone category."""
        val = _num(v.get(f"acct__{col}")) or 0.0
        if col in ACCOUNT_COUNTS:
            return _counted(val, *ACCOUNT_COUNTS[col])
        if col == "share_users_activated":
            return f"{int(round(100 * val))}% of users activated"
        if col.startswith("users_"):
            cat = col[len("users_"):]
            article = "an" if cat[:1] in "aeiou" else "a"
            if val == 1:
                return f"1 user reached {article} {cat} milestone"
            return f"{_counted(val, 'user', 'users')} reached {cat} milestones"
        return f"{_words(col)}: {_int(val)}"

    def demand_gen(self, event: str, v: dict) -> str:
        """Recent marketing touches (decayed count) of one marketing event."""
        val = _num(v.get(f"dg__{event}__decayed")) or 0.0
        words = event.replace("_", " ")
        # Below 0.05 the weight prints as 0.0: say there was nothing recent.
        return (f"marketing: {words} (recent weight {val:.1f})" if val >= 0.05
                else f"no recent marketing: {words}")

    def activity(self, family: str, v: dict) -> str:
        """Raw event counts (baseline models): ``"12 logins"``."""
        plural = _words(family)
        singular, plural = ACTIVITY_NOUNS.get(family, (_singular(plural), plural))
        return _counted(v.get(f"raw__{family}"), singular, plural)

    def word(self, kind: str, subject: str, v: dict) -> str:
        """Plain-language text for one group of an account with feature values ``v``."""
        if kind == "milestone":
            return self.milestone(subject, v)
        if kind == "sequence":
            return self.sequence(subject, v)
        if kind == "warning":
            return self.warning(subject, v)
        if kind == "fit":
            return self.fit(subject, v)
        if kind == "account":
            return self.account(subject, v)
        if kind == "demand_gen":
            return self.demand_gen(subject, v)
        if kind == "activity":
            return self.activity(subject, v)
        return f"{subject.replace('_', ' ')}: {_int(v.get(subject))}"


def window_over(frame: pd.DataFrame, spec) -> dict[str, np.ndarray]:
    """For each milestone with ``within_days``: is its window over for sure, per row?

    The feature row has no account start, but every ``days_since`` value is measured from an
    event the account had, so the largest of them is a lower bound of the account's age. When
    that bound exceeds ``within_days`` the milestone can no longer be reached, and the wording
    says so instead of counting progress. Returned under ``ms__<m>__window_over`` so it joins
    the milestone's group (a derived value for wording, never a model input).
    """
    windowed = [m for m in spec.milestones if m.within_days]
    if not windowed or frame.empty:
        return {}
    days = [c for c in frame.columns if (c.startswith("ms__") and "__days_since" in c)
            or (c.startswith("seq__") and c.endswith("__days_since"))]
    if not days:
        return {}
    values = frame[days].to_numpy(dtype=np.float64, na_value=np.nan)
    seen = ~np.isnan(values).all(axis=1)
    age = np.where(seen, np.nanmax(np.where(np.isnan(values), -np.inf, values), axis=1), np.nan)
    return {f"ms__{m.name}__{WINDOW_OVER}": (age > m.within_days).astype(np.float64) for m in windowed}


# --- explanations ---------------------------------------------------------------------------
#: How a one-line list of reasons (the CRM's ``top_reasons``) shows each reason's direction.
MARK = {"up": "(+) ", "down": "(-) ", "none": ""}


def direction(contribution: float) -> str:
    """``up`` / ``down`` / ``none``: the sign of a contribution, and nothing else.

    A reason is "up" only because it raised the model's output: an unmet milestone whose
    partial progress raised it is up, a reached one that lowered it is down.
    """
    return "up" if contribution > 0 else "down" if contribution < 0 else "none"


def reason_line(reason: dict) -> str:
    """One reason of an :class:`Explanation` as ``pql score`` writes it into ``top_reasons``.

    >>> reason_line({"text": "not yet: teammate invited", "contribution": -0.4})
    '(-) not yet: teammate invited'
    """
    return MARK[direction(reason["contribution"])] + reason["text"]

@dataclass
class Explanation:
    """Score, tier and reasons of one account."""

    account_id: str
    probability: float
    score: int
    tier: str
    raw_score: float
    base_value: float
    reasons_up: list[dict]
    reasons_down: list[dict]
    milestones_reached: list[dict]
    next_best: list[dict]
    model_version: str
    cutoff: str | None = None
    contributions: list[dict] = field(default_factory=list)  # every group, for /explain

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return dict(self.__dict__)


@dataclass
class Scored:
    """Model outputs for the scorable rows of a feature frame (one preparation, many uses)."""

    rows: np.ndarray  # positions in the frame of the scorable rows
    X: np.ndarray  # model input matrix of those rows
    raw: np.ndarray  # log-odds
    probability: np.ndarray
    score: np.ndarray
    tier: np.ndarray
    group_contrib: np.ndarray  # (n, groups) pred_contrib summed per group
    base: np.ndarray  # (n,) base value
    gain: np.ndarray  # (n, milestones) probability gain of reaching each unmet milestone
    reached: np.ndarray  # (n, milestones) booleans
    unscorable: dict[int, str]  # frame position -> why it cannot be scored


class Explainer:
    """Score and explain feature rows with one model; vectorised for batch scoring.

    The service (``/score``, ``/explain``), ``pql explain`` and ``pql score`` all go through
    :meth:`score_rows`; :meth:`explain` words every row into :class:`Explanation` objects,
    :meth:`summarize` words only what a CRM file needs, one column at a time. Both rank the
    reasons and next-best milestones the same way and word them with the same :class:`Wording`,
    so a batch row and the service's answer for the same account and cutoff agree.

    Parameters
    ----------
    scorer : Scorer
        The loaded model.
    top_k : int
        Reasons up and down per account.
    next_best_k : int
        Next-best milestones per account.
    """

    def __init__(self, scorer: Scorer, top_k: int = 3, next_best_k: int = 3):
        self.scorer = scorer
        self.spec = scorer.bundle.spec
        self.groups = feature_groups(scorer.bundle.manifest)
        self.wording = Wording(self.spec)
        self.top_k = top_k
        self.next_best_k = next_best_k
        names = scorer.feature_names
        self._col = {n: j for j, n in enumerate(names)}
        self._milestones = [m for m in self.spec.milestones if f"ms__{m.name}__reached" in self._col
                            or f"ms__{m.name}__count" in self._col]

    # group contributions ---------------------------------------------------------------------
    def group_contributions(self, contrib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-group contributions (n, groups), base values (n,)) from ``pred_contrib`` output."""
        return contrib[:, :-1] @ self.groups.membership, contrib[:, -1]

    def reached_matrix(self, X: np.ndarray) -> np.ndarray:
        """(n, milestones) booleans: which milestones each row has reached."""
        out = np.zeros((X.shape[0], len(self._milestones)), dtype=bool)
        for k, m in enumerate(self._milestones):
            j = self._col.get(f"ms__{m.name}__reached")
            col = X[:, j] if j is not None else X[:, self._col[f"ms__{m.name}__count"]]
            out[:, k] = np.nan_to_num(col) > (0.5 if j is not None else 0)
        return out

    def next_best(self, X: np.ndarray, prob: np.ndarray, reached: np.ndarray | None = None) -> np.ndarray:
        """(n, milestones) probability gain if each unmet milestone were reached today (NaN if met).

        One ``predict`` per milestone on all the rows that have not reached it (a batch of
        modified copies), not one per account.
        """
        reached = self.reached_matrix(X) if reached is None else reached
        gain = np.full(reached.shape, np.nan)
        for k, m in enumerate(self._milestones):
            rows = np.flatnonzero(~reached[:, k])
            if not len(rows):
                continue
            Xc = X[rows]  # fancy indexing copies
            self._reach(Xc, m, reached[rows])
            gain[rows, k] = self.scorer.predict_proba(Xc) - prob[rows]
        return gain

    def _reach(self, Xc: np.ndarray, m, reached_rows: np.ndarray) -> None:
        # The counterfactual "reached today": the rule's minimum count and users, events now.
        def put(stat, fn):
            j = self._col.get(f"ms__{m.name}__{stat}")
            if j is not None:
                Xc[:, j] = fn(Xc[:, j])
        put("reached", lambda c: np.ones_like(c))
        put("count", lambda c: np.maximum(np.nan_to_num(c), m.min_count))
        put("users", lambda c: np.maximum(np.nan_to_num(c), m.min_users))
        put("days_since_first", lambda c: np.where(np.isnan(c), 0.0, c))
        put("days_since_last", lambda c: np.zeros_like(c))
        put("decayed", lambda c: np.nan_to_num(c) + m.min_count)
        # A sequence whose steps are then all reached counts as completed today.
        names = [x.name for x in self._milestones]
        for s in self.spec.sequences:
            if m.name not in s.steps:
                continue
            others = [names.index(st) for st in s.steps if st != m.name and st in names]
            done = reached_rows[:, others].all(axis=1) if others else np.ones(len(Xc), bool)
            for stat, val in (("completed", 1.0), ("days_since", 0.0)):
                j = self._col.get(f"seq__{s.name}__{stat}")
                if j is not None:
                    Xc[done, j] = val

    # scoring and ranking, shared by every caller ----------------------------------------------
    def score_rows(self, frame: pd.DataFrame, with_next_best: bool = True) -> Scored:
        """Probability, score, tier, grouped contributions and next-best gains of every row.

        Rows that cannot be scored (a fit category the model never saw) are left out and
        named in ``Scored.unscorable``, never silently dropped.
        """
        X, problems = self.scorer.prepare(frame)
        bad = {i: p for i, p in enumerate(problems) if p}
        ok = np.array([i for i in range(len(frame)) if i not in bad], dtype=int)
        X = X[ok]
        n_m = len(self._milestones)
        if not len(ok):
            empty = np.zeros(0)
            return Scored(ok, X, empty, empty, empty.astype(int), empty.astype(object),
                          np.zeros((0, len(self.groups.keys))), empty, np.zeros((0, n_m)),
                          np.zeros((0, n_m), bool), bad)
        contrib = self.scorer.contributions(X)
        raw = contrib.sum(axis=1)
        prob = self.scorer.probability(raw)
        score = self.scorer.to_score(prob)
        gc, base = self.group_contributions(contrib)
        reached = self.reached_matrix(X)
        gain = (self.next_best(X, prob, reached) if with_next_best and n_m
                else np.full((len(ok), n_m), np.nan))
        # Tiers on the quantity training cut on, not the integer score (serving.model.Scorer.tier).
        tier = self.scorer.tier(self.scorer.tier_score(prob))
        return Scored(ok, X, raw, prob, score, tier, gc, base, gain, reached, bad)

    def rank_reasons(self, gc: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) group indices, (n, k) each, strongest first; -1 where there is none.

        Up reasons are the k largest positive group contributions, down the k most negative.
        Stable sorts: ties go to the group that comes first in the manifest, on every path.
        """
        k = self.top_k if k is None else k
        order = np.argsort(-gc, axis=1, kind="stable")
        up = order[:, :k]
        down = order[:, ::-1][:, :k]
        up = np.where(np.take_along_axis(gc, up, axis=1) > 0, up, -1)
        down = np.where(np.take_along_axis(gc, down, axis=1) < 0, down, -1)
        return up, down

    def strongest(self, gc: np.ndarray, k: int = 3) -> np.ndarray:
        """(n, k) group indices of the k strongest reasons by absolute contribution (-1: none).

        Drawn from the ``top_k`` up and down reasons, so it is exactly "the k strongest of the
        reasons the service shows", ups before downs on equal strength.
        """
        up, down = self.rank_reasons(gc)
        cand = np.concatenate([up, down], axis=1)
        strength = np.where(cand >= 0, np.abs(np.take_along_axis(gc, np.maximum(cand, 0), axis=1)),
                            -np.inf)
        pick = np.argsort(-strength, axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(cand, pick, axis=1)
        return np.where(np.take_along_axis(strength, pick, axis=1) > -np.inf, chosen, -1)

    def rank_next_best(self, gain: np.ndarray, k: int | None = None) -> np.ndarray:
        """(n, k) milestone indices with the largest positive gains, best first; -1: none."""
        k = self.next_best_k if k is None else k
        g = np.where(np.isnan(gain), -np.inf, gain)
        order = np.argsort(-g, axis=1, kind="stable")[:, :k]
        return np.where(np.take_along_axis(g, order, axis=1) > 0, order, -1)

    def with_wording_values(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` plus the derived values wording reads (:func:`window_over`); a shallow copy."""
        derived = window_over(frame, self.spec)
        if not derived:
            return frame
        out = frame.copy(deep=False)
        for col, values in derived.items():
            out[col] = values
        return out

    # wording many rows at once -----------------------------------------------------------------
    def word_rows(self, frame: pd.DataFrame, rows: np.ndarray, group: int) -> np.ndarray:
        """Text of ``group`` for the frame rows ``rows`` (positions), as an object array.

        Each distinct combination of the group's own columns is worded once and broadcast:
        most accounts share "not yet reached: ..." or "industry is software", so 100,000
        accounts need a few thousand calls of :meth:`Wording.word`, not 100,000.
        """
        kind, subject = self.groups.kinds[group], self.groups.subjects[group]
        key = self.groups.keys[group]
        cols = [c for c in frame.columns if f"{group_of(c)[0]}:{group_of(c)[1]}" == key]
        if not len(rows):
            return np.array([], dtype=object)
        if not cols:
            text = self.wording.word(kind, subject, {})
            return np.full(len(rows), text, dtype=object)
        sub = frame.iloc[rows][cols]
        codes = pd.util.hash_pandas_object(sub, index=False).to_numpy()
        _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        arrays = {c: sub[c].to_numpy() for c in cols}
        texts = np.array([self.wording.word(kind, subject, {c: arrays[c][i] for c in cols})
                          for i in first], dtype=object)
        return texts[inverse.ravel()]

    def _word_matrix(self, frame: pd.DataFrame, rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Texts for a (n, k) matrix of group indices (-1 gives None), worded group by group."""
        out = np.full(groups.shape, None, dtype=object)
        for g in np.unique(groups[groups >= 0]):
            r, c = np.nonzero(groups == g)
            out[r, c] = self.word_rows(frame, rows[r], int(g))
        return out

    # batch summary (pql score) -------------------------------------------------------------------
    def summarize(self, frame: pd.DataFrame, reasons: int = 3, sep: str = " | ") -> tuple[
            pd.DataFrame, dict[int, str]]:
        """One row per scorable account with what a CRM file needs, without per-account objects.

        Returns
        -------
        (DataFrame, {row position: reason it cannot be scored})
            Columns ``account_id, probability, score, tier, top_reasons`` (the ``reasons``
            strongest by size, each as :func:`reason_line` words it, ``"(+) "`` or ``"(-) "``
            before its text, joined by ``sep``), ``next_best_milestone`` (label of the best
            one, empty if none would raise the score), ``milestones_reached`` (names joined by
            ";"), ``raw_score``.
        """
        frame = self.with_wording_values(frame)
        s = self.score_rows(frame, with_next_best=self.next_best_k > 0)
        n = len(s.rows)
        ids = (frame["account_id"].astype(str).to_numpy()[s.rows] if "account_id" in frame
               else s.rows.astype(str))
        chosen = self.strongest(s.group_contrib, reasons)
        texts = self._word_matrix(frame, s.rows, chosen)
        # Strongest by size mixes both directions: each carries its sign (reason_line).
        up = np.take_along_axis(s.group_contrib, np.maximum(chosen, 0), axis=1) > 0
        top = pd.Series([""] * n, dtype=object)
        for j in range(texts.shape[1]):
            col = pd.Series(texts[:, j], dtype=object)
            has = col.notna().to_numpy()
            line = np.where(up[has, j], MARK["up"], MARK["down"]) + col[has].to_numpy(dtype=object)
            top[has] = np.where(top[has] == "", line, top[has] + sep + line)
        labels = np.array([m.label for m in self._milestones] + [""], dtype=object)
        best = self.rank_next_best(s.gain, 1)[:, 0] if self._milestones else np.full(n, -1)
        reached_names = pd.Series([""] * n, dtype=object)
        for k, m in enumerate(self._milestones):
            on = s.reached[:, k]
            reached_names[on] = np.where(reached_names[on] == "", m.name,
                                         reached_names[on] + ";" + m.name)
        table = pd.DataFrame({
            "account_id": ids, "probability": s.probability, "score": s.score,
            "tier": s.tier.astype(str), "top_reasons": top.to_numpy(),
            "next_best_milestone": labels[best], "milestones_reached": reached_names.to_numpy(),
            "raw_score": s.raw})
        return table, {int(i): p for i, p in s.unscorable.items()}

    # full explanations (service, pql explain) ----------------------------------------------------
    def explain(self, frame: pd.DataFrame, with_all: bool = False) -> tuple[list[Explanation],
                                                                             dict[int, str]]:
        """Explain every row of a feature frame.

        Returns
        -------
        (list of Explanation, {row position: reason it cannot be scored})
            Rows that cannot be scored (e.g. a fit category the model never saw) are left out
            of the first list and named in the second, never silently dropped.
        """
        frame = self.with_wording_values(frame)
        s = self.score_rows(frame, with_next_best=self.next_best_k > 0)
        ok = s.rows
        if not len(ok):
            return [], s.unscorable
        gc = s.group_contrib
        ids = frame["account_id"].astype(str).to_numpy()[ok] if "account_id" in frame else ok.astype(str)
        cutoffs = (pd.to_datetime(frame["cutoff"]).to_numpy()[ok] if "cutoff" in frame
                   else [None] * len(ok))
        # Column values per account, only for the columns wording needs (all model columns
        # plus any extra pipeline columns the frame carries for the same groups).
        # (group_of decides, as for the groups themselves: a list of prefixes here once missed
        # warning signs, and every fired sign was worded "no warning sign")
        value_cols = [c for c in frame.columns if group_of(c)[0] != "other"]
        values = {c: frame[c].to_numpy()[ok] for c in value_cols}
        up, down = self.rank_reasons(gc)
        best = self.rank_next_best(s.gain) if self._milestones else np.full((len(ok), 0), -1)
        order = np.argsort(-gc, axis=1, kind="stable") if with_all else None
        out = []
        version = self.scorer.bundle.version
        for r in range(len(ok)):
            v = {c: values[c][r] for c in value_cols}
            cutoff = pd.Timestamp(cutoffs[r]) if cutoffs[r] is not None else None
            exp = Explanation(
                account_id=ids[r], probability=float(s.probability[r]), score=int(s.score[r]),
                tier=str(s.tier[r]), raw_score=float(s.raw[r]), base_value=float(s.base[r]),
                reasons_up=[self._reason(g, gc[r, g], v) for g in up[r] if g >= 0],
                reasons_down=[self._reason(g, gc[r, g], v) for g in down[r] if g >= 0],
                milestones_reached=self._reached(s.reached[r], v, cutoff),
                next_best=[self._next_step(k, s.gain[r, k], s.probability[r]) for k in best[r] if k >= 0],
                model_version=version,
                cutoff=cutoff.isoformat() if cutoff is not None else None)
            if with_all:
                exp.contributions = [self._reason(g, gc[r, g], v) for g in order[r]]
            out.append(exp)
        return out, {int(i): p for i, p in s.unscorable.items()}

    def _reason(self, g: int, value: float, v: dict) -> dict:
        kind, subject = self.groups.kinds[g], self.groups.subjects[g]
        return {"group": self.groups.keys[g], "kind": kind, "subject": subject,
                "contribution": float(value), "direction": direction(value),
                "text": self.wording.word(kind, subject, v)}

    def _reached(self, row: np.ndarray, v: dict, cutoff) -> list[dict]:
        out = []
        for k in np.flatnonzero(row):
            m = self._milestones[k]
            first = _num(v.get(f"ms__{m.name}__days_since_first"))
            when = (cutoff - pd.Timedelta(days=first)).date().isoformat() if (
                cutoff is not None and first is not None) else None
            out.append({"name": m.name, "label": m.label, "category": m.category,
                        "first_reached": when})
        return out

    def _next_step(self, k: int, gain: float, p: float) -> dict:
        m = self._milestones[k]
        return {"name": m.name, "label": m.label, "category": m.category,
                "probability_gain": float(gain), "probability_if_reached": float(p + gain)}


# --- the reviewer page ----------------------------------------------------------------------
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Why {account} scores {score}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:62em;color:#222}}
.tier{{padding:.1em .5em;border-radius:.3em;color:#fff}}
.hot{{background:#c0392b}}.warm{{background:#e67e22}}.cold{{background:#2980b9}}
table{{border-collapse:collapse}}td,th{{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}}
.up{{fill:#27ae60}}.down{{fill:#c0392b}}.base,.total,.none{{fill:#7f8c8d}}
</style></head><body>
<h1>Account {account}: score <span id="score">{score}</span>
 <span class="tier {tier}" id="tier">{tier}</span></h1>
<p>Probability of converting: <b>{prob:.1%}</b> · model {model} · as of {cutoff}</p>
<h2>Why: contributions to the model's output (log-odds)</h2>
<p>The bars start at the model's base value and add each reason's contribution;
the last bar is the account's output, {raw:.3f}.</p>
<svg id="waterfall" xmlns="http://www.w3.org/2000/svg" width="960" height="{height}"></svg>
<h2>Next-best milestones</h2><ol id="next-best">{next_best}</ol>
<h2>Milestones reached</h2><ul id="reached">{reached}</ul>
<h2>Every contribution</h2>
<table id="contributions"><tr><th>reason</th><th>contribution</th></tr>{rows}</table>
<script id="explanation-data" type="application/json">{data}</script>
<script>
// Drawn in the browser from the embedded explanation, so the page is one self-contained file.
(function() {{
  const d = JSON.parse(document.getElementById('explanation-data').textContent);
  const svg = document.getElementById('waterfall');
  const NS = 'http://www.w3.org/2000/svg';
  const steps = [{{text: 'base value', value: d.base_value, cls: 'base', start: 0}}];
  let run = d.base_value;
  for (const c of d.contributions) {{
    steps.push({{text: c.text, value: c.contribution, cls: c.direction,
                start: run, group: c.group}});
    run += c.contribution;
  }}
  steps.push({{text: 'model output', value: run, cls: 'total', start: 0}});
  const ends = steps.flatMap(s => [s.start, s.start + s.value]);
  const lo = Math.min(0, ...ends), hi = Math.max(0, ...ends);
  // Labels get most of the width: a reason's words matter more than its bar's length.
  const left = 540, width = 410, rowH = 22;
  const x = v => left + (v - lo) / ((hi - lo) || 1) * width;
  steps.forEach((s, i) => {{
    const a = x(s.start), b = x(s.start + s.value);
    const r = document.createElementNS(NS, 'rect');
    r.setAttribute('x', Math.min(a, b)); r.setAttribute('width', Math.max(Math.abs(b - a), 1));
    r.setAttribute('y', i * rowH + 4); r.setAttribute('height', rowH - 6);
    r.setAttribute('class', 'bar ' + s.cls);
    r.setAttribute('data-start', s.start); r.setAttribute('data-end', s.start + s.value);
    if (s.group) r.setAttribute('data-group', s.group);
    svg.appendChild(r);
    const t = document.createElementNS(NS, 'text');
    t.setAttribute('x', 4); t.setAttribute('y', i * rowH + 17); t.setAttribute('font-size', 12);
    t.textContent = s.text.length > 84 ? s.text.slice(0, 81) + '...' : s.text;
    const full = document.createElementNS(NS, 'title');  // the whole text on hover
    full.textContent = s.text;
    t.appendChild(full);
    svg.appendChild(t);
  }});
  svg.setAttribute('data-final', run);
  svg.setAttribute('data-ready', 'true');
}})();
</script></body></html>
"""


def render_html(exp: Explanation) -> str:
    """A self-contained page a reviewer can read: reasons as a waterfall chart, next steps.

    ``exp`` must carry every contribution (``Explainer.explain(..., with_all=True)``).
    """
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(c['text'])}</td><td>{c['contribution']:+.3f}</td></tr>"
                   for c in exp.contributions)
    nb = "".join(f"<li>{esc(n['label'])}: +{100 * n['probability_gain']:.1f} points</li>"
                 for n in exp.next_best) or "<li>none would raise the score</li>"
    reached = "".join(f"<li>{esc(m['label'])} ({esc(m['category'])}"
                      f"{', first ' + m['first_reached'] if m.get('first_reached') else ''})</li>"
                      for m in exp.milestones_reached) or "<li>none yet</li>"
    # "</" must not end the JSON script early.
    data = json.dumps(exp.to_dict(), default=str).replace("</", "<\\/")
    return _PAGE.format(account=esc(exp.account_id), score=exp.score, tier=esc(exp.tier),
                        prob=exp.probability, model=esc(exp.model_version),
                        cutoff=esc(exp.cutoff or "now"), raw=exp.raw_score,
                        height=22 * (len(exp.contributions) + 2) + 10, next_best=nb,
                        reached=reached, rows=rows, data=data)
