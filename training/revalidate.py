"""Re-validation: do the milestones still separate converters from non-converters, cohort by cohort?

Run every quarter (``pql revalidate DATA --milestones milestones.yaml --by quarter``). Accounts
are grouped by the period of their start; within each period the same cohort rules as
discovery apply (outcome known; behaviour only up to conversion or the same relative time).

Flags
-----
``lift_below_threshold``
    A period's lift is under ``lift_threshold`` while the pooled lift of the earlier periods was
    at or above it, and the period's 95% (Katz) interval excludes that earlier lift: the
    milestone stopped predicting conversion.
``warning_sign_faded``
    For a warning sign: a period's lift is above ``warning_lift`` while the pooled lift of the
    earlier periods was at or below it, and the period's interval excludes that earlier lift:
    converters now do it about as often as others, so it no longer warns.
``prevalence_jump``
    Many more accounts reach it than before (the action became a default, e.g. a new onboarding
    flow does it for everyone), judged against the median of earlier periods.
``prevalence_collapse``
    Far fewer accounts reach it (the event was renamed, removed or stopped being tracked).
``new_event``
    A frequent event that first appeared well after the data began, that no milestone uses, and
    that the latest cohort does at least twice as often as earlier cohorts did at the same
    account ages (an event every account does late in its life is not new).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from features.spec import MilestoneSpec
from training import stats
from training.discover import _atomic_write, account_events, build_cohort, reach_times

_FREQ = {"quarter": "Q", "month": "M", "half": "2Q", "year": "Y"}


@dataclass
class Revalidation:
    """Result of :func:`revalidate`.

    Attributes
    ----------
    table : DataFrame
        One row per (period, milestone or warning sign; category ``warning``): ``period, milestone,
        label, category, S, F, s, f``, rates
        with Wilson intervals, ``prevalence, lift, odds_ratio, phi, p_value, flags``.
    flags : DataFrame
        ``period, milestone, flag, detail`` (empty when all is well).
    new_events : DataFrame
        ``event, first_seen, share_latest`` of frequent new events no milestone uses.
    settings : dict
        The thresholds used.
    warnings : list of str
    """

    table: pd.DataFrame
    flags: pd.DataFrame
    new_events: pd.DataFrame
    settings: dict
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """True when anything needs a look (``--fail-on-flags``)."""
        return len(self.flags) > 0


def revalidate(dataset, spec: MilestoneSpec, *, by: Literal["quarter", "month", "half", "year"] = "quarter",
               lift_threshold: float = 1.5, horizon_days: int | None = None, min_group: int = 15,
               prevalence_jump: float = 1.5, prevalence_collapse: float = 0.5,
               min_prevalence_change: float = 0.15, new_event_share: float = 0.05,
               new_after_days: int = 30, prior_k: float = 1.0, warning_lift: float = 0.5) -> Revalidation:
    """Each milestone's (and warning sign's) rates and lift per cohort period, with flags.

    Parameters
    ----------
    dataset : features.contract.Dataset-like
        ``events``, ``accounts``, ``conversions`` (and optionally ``users``) frames.
    spec : MilestoneSpec
        The milestone file to check.
    by : {"quarter", "month", "half", "year"}
        Cohort period of the account's start.
    lift_threshold : float
        A lift under this (after being above it) is flagged.
    horizon_days : int, optional
        Outcome-known rule; default the spec's ``settings.horizon_days``.
    min_group : int
        Periods with fewer converters or non-converters than this are reported but not judged.
    prevalence_jump, prevalence_collapse, min_prevalence_change : float
        Prevalence flags: ratio to the earlier median at least ``prevalence_jump`` (or at most
        ``prevalence_collapse``) *and* an absolute change of at least ``min_prevalence_change``.
    new_event_share : float
        A new event is "frequent" when at least this share of the latest period's accounts did it.
    new_after_days : int
        An event is "new" when it first occurs more than this many days after the data begin.
    prior_k : float
        Pseudo-count of the smoothed odds ratio.
    warning_lift : float
        A warning sign whose lift rises above this (after being at or below it) is flagged
        (discovery's threshold for calling a rule a warning sign).

    Returns
    -------
    Revalidation
    """
    if by not in _FREQ:
        raise ValueError(f"by: expected one of {sorted(_FREQ)}, got {by!r}")
    horizon = horizon_days or spec.settings.horizon_days
    events, notes = account_events(dataset)
    cohort, cohort_notes, _ = build_cohort(events, getattr(dataset, "accounts", None),
                                           getattr(dataset, "conversions", None), horizon)
    notes += cohort_notes
    unused = spec.unused_milestones(events["event"].unique())
    if unused:
        notes.append(f"milestones whose events never occur in the data: {unused}")
    # warning signs are checked like milestones (same rule fields), with their own lift flag
    rules = [*spec.milestones, *spec.warning_signs]
    warns = {w.name for w in spec.warning_signs}
    times = reach_times(events, cohort, rules)
    periods = cohort["start"].dt.to_period(_FREQ[by])
    order = sorted(periods.unique())
    converted = cohort["converted"].to_numpy(bool)

    rows = []
    for p in order:
        in_p = (periods == p).to_numpy()
        S, F = int((in_p & converted).sum()), int((in_p & ~converted).sum())
        for m in rules:
            r = np.isfinite(times[m.name])
            rows.append(dict(period=str(p), milestone=m.name, label=m.label,
                             category="warning" if m.name in warns else m.category, S=S, F=F,
                             s=int((r & in_p & converted).sum()), f=int((r & in_p & ~converted).sum())))
    table = pd.DataFrame(rows)
    st = stats.two_group_table(table["s"], table["f"], table["S"], table["F"], prior_k)
    table = pd.concat([table[["period", "milestone", "label", "category"]], st], axis=1)
    table["lift_low"], table["lift_high"] = stats.lift_interval(table["s"], table["f"], table["S"], table["F"])
    table["prevalence"] = (table["s"] + table["f"]) / (table["S"] + table["F"]).where(lambda x: x > 0)
    table["judged"] = (table["S"] >= min_group) & (table["F"] >= min_group)

    flags = []
    for m in rules:
        sub = table[table["milestone"] == m.name].reset_index()
        for i in range(1, len(sub)):
            row = sub.loc[i]
            earlier = sub.loc[: i - 1]
            earlier = earlier[earlier["judged"]]
            if not row["judged"] or earlier.empty:
                continue
            pooled = stats.lift(earlier["s"].sum(), earlier["f"].sum(), earlier["S"].sum(), earlier["F"].sum())
            # Flag a real fall only: below the threshold, and the period's 95% interval excludes
            # the earlier pooled lift (a small period's noise alone does not page anyone).
            if m.name in warns:
                if row["lift"] > warning_lift >= pooled and row["lift_low"] > pooled:
                    flags.append((row["period"], m.name, "warning_sign_faded",
                                  f"lift {row['lift']:.2f} > {warning_lift} (earlier periods: {pooled:.2f}); "
                                  f"converters {row['converter_rate']:.0%} vs non-converters "
                                  f"{row['non_converter_rate']:.0%}: no longer a warning sign"))
            elif row["lift"] < lift_threshold <= pooled and row["lift_high"] < pooled:
                flags.append((row["period"], m.name, "lift_below_threshold",
                              f"lift {row['lift']:.2f} < {lift_threshold} (earlier periods: {pooled:.2f}); "
                              f"converters {row['converter_rate']:.0%} vs non-converters {row['non_converter_rate']:.0%}"))
            base = float(earlier["prevalence"].median())
            prev = float(row["prevalence"])
            if prev >= prevalence_jump * base and prev - base >= min_prevalence_change:
                flags.append((row["period"], m.name, "prevalence_jump",
                              f"reached by {prev:.0%} of accounts (earlier median {base:.0%}): "
                              "has the action become a default?"))
            if prev <= prevalence_collapse * base and base - prev >= min_prevalence_change:
                flags.append((row["period"], m.name, "prevalence_collapse",
                              f"reached by {prev:.0%} of accounts (earlier median {base:.0%}): "
                              "was the event renamed, removed or no longer tracked?"))
    # Frequent new events no milestone uses: first seen well after the data begin, and done by the
    # latest cohort far more often than earlier cohorts did at the same account ages. Without the
    # second part, an event every account does late in its life (a course's final exam) looked
    # new merely because the first accounts reached that age late in the data.
    activity = {e for evs in spec.settings.activity_events.values() for e in evs}
    used = spec.all_events | activity
    data_start = events["timestamp"].min()
    first_seen = events.groupby("event")["timestamp"].min()
    new = first_seen[(first_seen > data_start + pd.Timedelta(days=new_after_days))
                     & ~first_seen.index.isin(list(used))]
    new_rows = []
    if len(new) and order:
        latest = (periods == order[-1]).to_numpy()
        ids = cohort["account_id"].astype(str)
        start = pd.Series(cohort["start"].to_numpy(), index=ids.to_numpy())
        ev_new = events[events["event"].isin(new.index)]
        ev_ids = ev_new["account_id"].astype(str)
        age = ev_new["timestamp"] - ev_ids.map(start)
        max_age = events["timestamp"].max() - cohort.loc[latest, "start"].min()

        def share_of(accounts: pd.Series, rows) -> pd.Series:
            done = ev_new[rows & ev_ids.isin(set(accounts)).to_numpy()]
            return done.groupby("event")["account_id"].nunique() / max(1, len(accounts))

        share = share_of(ids[latest], np.ones(len(ev_new), bool))
        share_before = share_of(ids[~latest], (age <= max_age).to_numpy())
        for e, fs in new.items():
            sh, before = float(share.get(e, 0.0)), float(share_before.get(e, 0.0))
            if sh >= new_event_share and before < sh / 2:
                new_rows.append(dict(event=e, first_seen=str(fs), share_latest=sh, share_earlier_same_age=before))
                flags.append((str(order[-1]), e, "new_event",
                              f"'{e}' first seen {fs:%Y-%m-%d}, done by {sh:.0%} of the latest cohort against "
                              f"{before:.0%} of earlier cohorts at the same account ages; no milestone uses it "
                              "(a renamed event?)"))
    flag_df = pd.DataFrame(flags, columns=["period", "milestone", "flag", "detail"])
    per_row = flag_df.groupby(["period", "milestone"])["flag"].agg(";".join)
    table["flags"] = [per_row.get((p, m), "") for p, m in zip(table["period"], table["milestone"])]
    settings = dict(by=by, lift_threshold=lift_threshold, warning_lift=warning_lift, horizon_days=horizon,
                    min_group=min_group,
                    prevalence_jump=prevalence_jump, prevalence_collapse=prevalence_collapse,
                    min_prevalence_change=min_prevalence_change, new_event_share=new_event_share,
                    new_after_days=new_after_days, periods=[str(p) for p in order])
    return Revalidation(table=table, flags=flag_df,
                        new_events=pd.DataFrame(new_rows, columns=["event", "first_seen", "share_latest",
                                                          "share_earlier_same_age"]),
                        settings=settings, warnings=notes)


def write_revalidation(reval: Revalidation, out_dir: str | Path) -> dict[str, Path]:
    """Write ``revalidation.csv``, ``flags.csv`` and ``revalidation.html`` (each atomically)."""
    from training.report import render_revalidation_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = render_revalidation_report(reval)
    paths = {"table": out / "revalidation.csv", "flags": out / "flags.csv", "report": out / "revalidation.html"}
    _atomic_write(paths["table"], lambda p: reval.table.to_csv(p, index=False))
    _atomic_write(paths["flags"], lambda p: reval.flags.to_csv(p, index=False))
    _atomic_write(paths["report"], lambda p: p.write_text(html, encoding="utf-8"))
    return paths
