"""Split snapshots by time: train on earlier cutoffs, calibrate and evaluate on later ones.

Three parts, oldest to newest::

    train cutoffs | gap >= horizon | calibration cutoffs | evaluation cutoffs (newest)

Cutoffs that fall into the gap are used by no part; :meth:`TimeSplit.summary` shows them as
the part ``gap (unused)`` so that nobody wonders where those snapshots went.

Why a gap: a training row at cutoff T is labelled by conversions in (T, T + horizon]. A
validation row of the same account at T' < T + horizon would see, as *features*, behaviour
from inside that label window — the model would be judged on a future it was partly fit on.
Requiring ``T' - T >= horizon`` between the last training cutoff and the first held-out
cutoff rules that out for every account.

The calibration part (the first held-out cutoffs) serves early stopping and the calibrator;
the evaluation part (the newest cutoffs) is touched by nothing but the final metrics and the
champion/challenger comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


#: Name of the summary row of cutoffs dropped between the train and calibration parts.
GAP_PART = "gap (unused)"
#: The parts a model is fit, calibrated or judged on (each needs converters and non-converters).
USED_PARTS = ("train", "calibration", "evaluation")


class SplitError(ValueError):
    """The snapshots cannot be split by time as asked; the message says what data is needed."""


@dataclass(frozen=True)
class TimeSplit:
    """Row masks and cutoffs of the three parts of a time split."""

    train: np.ndarray
    calibration: np.ndarray
    evaluation: np.ndarray
    train_cutoffs: list[pd.Timestamp]
    calibration_cutoffs: list[pd.Timestamp]
    evaluation_cutoffs: list[pd.Timestamp]
    dropped_cutoffs: list[pd.Timestamp]
    #: rows whose cutoff falls into the purge gap (used by no part)
    gap: np.ndarray | None = None

    def summary(self, labels) -> pd.DataFrame:
        """Rows, converters and cutoff range of each part (a table to print and log).

        Parts in time order: ``train``, ``gap (unused)`` (only when cutoffs fell into the
        purge gap), ``calibration``, ``evaluation``.
        """
        y = np.asarray(labels)
        parts = [("train", self.train, self.train_cutoffs)]
        if self.dropped_cutoffs:
            gap = self.gap if self.gap is not None else ~(self.train | self.calibration | self.evaluation)
            parts.append((GAP_PART, gap, self.dropped_cutoffs))
        parts += [("calibration", self.calibration, self.calibration_cutoffs),
                  ("evaluation", self.evaluation, self.evaluation_cutoffs)]
        rows = []
        for part, mask, cutoffs in parts:
            n = int(mask.sum())
            pos = int(y[mask].sum())
            rows.append({
                "part": part, "rows": n, "converters": pos,
                "rate": pos / n if n else float("nan"), "cutoffs": len(cutoffs),
                "first_cutoff": min(cutoffs) if cutoffs else pd.NaT,
                "last_cutoff": max(cutoffs) if cutoffs else pd.NaT,
            })
        return pd.DataFrame(rows)


def time_split(cutoff_column, horizon_days: int, *, holdout_fraction: float = 0.4,
               calibration_share: float = 0.5) -> TimeSplit:
    """Split snapshot rows by their cutoff.

    Parameters
    ----------
    cutoff_column : array-like of datetime
        The cutoff of every snapshot row.
    horizon_days : int
        Label horizon; the gap between the last training cutoff and the first held-out cutoff
        is at least this long.
    holdout_fraction : float
        Share of the distinct cutoffs (newest first) held out for calibration + evaluation.
    calibration_share : float
        Share of the held-out cutoffs (oldest first) used for early stopping and calibration;
        the rest, the newest, is the evaluation period.

    Returns
    -------
    TimeSplit

    Raises
    ------
    SplitError
        When there are too few cutoffs for three parts with the gap.

    Examples
    --------
    >>> cut = pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01",
    ...                       "2024-05-01", "2024-06-01"])
    >>> s = time_split(cut, horizon_days=30, holdout_fraction=0.34)
    >>> [str(c.date()) for c in s.train_cutoffs], [str(c.date()) for c in s.evaluation_cutoffs]
    (['2024-01-01', '2024-02-01', '2024-03-01', '2024-04-01'], ['2024-06-01'])
    >>> s.calibration_cutoffs[0] - s.train_cutoffs[-1] >= pd.Timedelta(days=30)
    True
    """
    cutoffs = pd.to_datetime(pd.Series(np.asarray(cutoff_column)))
    distinct = sorted(cutoffs.dropna().unique())
    distinct = [pd.Timestamp(c) for c in distinct]
    need = "snapshots at more cutoffs (a longer event history, or more frequent cutoffs in the milestone file's settings.cutoffs)"
    if len(distinct) < 3:
        raise SplitError(f"time split needs at least 3 distinct cutoffs, got {len(distinct)}: provide {need}")
    n_holdout = min(len(distinct) - 1, max(2, int(round(holdout_fraction * len(distinct)))))
    held = distinct[-n_holdout:]
    n_calib = min(n_holdout - 1, max(1, int(round(calibration_share * n_holdout))))
    calib_cutoffs, eval_cutoffs = held[:n_calib], held[n_calib:]
    last_train_allowed = held[0] - pd.Timedelta(days=horizon_days)
    train_cutoffs = [c for c in distinct[:-n_holdout] if c <= last_train_allowed]
    dropped = [c for c in distinct[:-n_holdout] if c > last_train_allowed]
    if not train_cutoffs:
        raise SplitError(
            f"no training cutoff is at least {horizon_days} days (the horizon) before the first held-out "
            f"cutoff {held[0].date()}; cutoffs span {distinct[0].date()}..{distinct[-1].date()}: provide {need}")
    c = cutoffs.to_numpy()
    mask = lambda chosen: np.isin(c, np.array(chosen, dtype=c.dtype))  # noqa: E731
    return TimeSplit(
        train=mask(train_cutoffs), calibration=mask(calib_cutoffs), evaluation=mask(eval_cutoffs),
        train_cutoffs=train_cutoffs, calibration_cutoffs=calib_cutoffs, evaluation_cutoffs=eval_cutoffs,
        dropped_cutoffs=dropped, gap=mask(dropped),
    )


def training_cutoffs(spec, event_times, conversion_times=None) -> list[pd.Timestamp]:
    """The cutoffs to train on: the milestone file's schedule, where labels can be observed.

    Explicit ``settings.cutoffs.dates`` (or an explicit ``end``) are used as written. Otherwise
    the schedule ends one horizon before the newest event *or the newest conversion, whichever
    is earlier*: a snapshot's label needs the conversions of its whole window
    (T, T + horizon], and past the newest recorded conversion nobody can tell "did not convert"
    from "not recorded yet" (a conversions export older than the events, a cohort that ended).
    On data where conversions keep coming this is the plain schedule.

    Parameters
    ----------
    spec : MilestoneSpec
    event_times : array-like of datetime
        Timestamps of the events (their span bounds the schedule).
    conversion_times : array-like of datetime, optional
        ``converted_at`` of the conversions.

    Returns
    -------
    list of pandas.Timestamp
        Sorted cutoffs.

    Examples
    --------
    >>> from features.spec import MilestoneSpec
    >>> spec = MilestoneSpec.model_validate({"settings": {"horizon_days": 30, "cutoffs": {"count": 3}},
    ...     "milestones": [{"name": "a", "category": "adoption", "label": "a", "event": "a"}]})
    >>> events = pd.to_datetime(["2024-01-01", "2024-12-31"])
    >>> [str(c.date()) for c in training_cutoffs(spec, events)]
    ['2024-11-17', '2024-11-24', '2024-12-01']
    >>> [str(c.date()) for c in training_cutoffs(spec, events, pd.to_datetime(["2024-10-31"]))]
    ['2024-09-17', '2024-09-24', '2024-10-01']
    """
    schedule = spec.settings.cutoffs
    times = pd.to_datetime(pd.Series(np.asarray(event_times))).dropna()
    if times.empty:
        raise SplitError("no event timestamps: cannot place cutoffs")
    first, last = times.min(), times.max()
    if not schedule.dates and schedule.end is None and conversion_times is not None:
        conv = pd.to_datetime(pd.Series(np.asarray(conversion_times))).dropna()
        if len(conv):
            last = min(last, conv.max())
    return [pd.Timestamp(c) for c in schedule.resolve(first, last, spec.settings.horizon_days)]

