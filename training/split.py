"""Split snapshots by time: train on earlier cutoffs, calibrate and evaluate on later ones.

Three parts, oldest to newest::

    train cutoffs | gap >= horizon | calibration cutoffs | evaluation cutoffs (newest)

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

    def summary(self, labels) -> pd.DataFrame:
        """Rows, converters and cutoff range of each part (a table to print and log)."""
        y = np.asarray(labels)
        rows = []
        for part, mask, cutoffs in (
            ("train", self.train, self.train_cutoffs),
            ("calibration", self.calibration, self.calibration_cutoffs),
            ("evaluation", self.evaluation, self.evaluation_cutoffs),
        ):
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
        dropped_cutoffs=dropped,
    )
