"""Turn whatever timestamps a data source hands us into naive UTC ``datetime64[us]``.

Accepted forms (the data contract, ``docs/data-contract.md``):

* ISO-8601 text with an offset (``2024-03-01T10:00:00+02:00``, ``...Z``) — converted to UTC;
* ISO-8601 text without an offset — taken to be UTC already;
* epoch seconds, milliseconds, microseconds or nanoseconds, as numbers or numeric text; the unit
  is inferred per value from its magnitude (see :func:`epoch_to_datetime`);
* typed datetimes (parquet/arrow timestamps), naive (UTC) or zone-aware (converted).

Everything is vectorised: 10 million values parse in seconds, no per-row Python.
:func:`check_timestamps` adds the contract's verdicts (missing / unparseable / in the future), used
by both the file loader and the Segment reader.

>>> s = pd.Series(["2024-01-01T12:00:00+02:00", "2024-01-01 10:00:00", "1704103200",
...                "1704103200000", "not a time", None])
>>> to_utc_naive(s).tolist()[:4] == [pd.Timestamp("2024-01-01 10:00:00")] * 4
True
>>> to_utc_naive(s).isna().tolist()[4:]
[True, True]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from features.schema import TIMESTAMP_DTYPE

# Epoch values below these magnitudes are read in the unit on the left. Seconds reach the year
# 5138 below 1e11, while milliseconds of any date after 1973 are above it, so real data is never
# ambiguous.
_EPOCH_UNIT_LIMITS = ((1e11, 1_000_000.0), (1e14, 1_000.0), (1e17, 1.0), (np.inf, 1e-3))
# Years a datetime64[us] can hold comfortably; epochs beyond are treated as unparseable.
_MAX_ABS_US = float(np.iinfo(np.int64).max) / 2


def epoch_to_datetime(values) -> pd.Series:
    """Convert epoch numbers (s, ms, us or ns, inferred per value) to naive UTC datetimes.

    Parameters
    ----------
    values : array-like of numbers
        NaN / None become NaT.

    Returns
    -------
    pandas.Series of ``datetime64[us]``

    Examples
    --------
    >>> [str(t) for t in epoch_to_datetime([1704103200, 1704103200000, 1704103200.5])]
    ['2024-01-01 10:00:00', '2024-01-01 10:00:00', '2024-01-01 10:00:00.500000']
    """
    x = pd.to_numeric(pd.Series(values), errors="coerce").astype("float64").to_numpy()
    index = values.index if isinstance(values, pd.Series) else None
    magnitude = np.abs(x)
    to_us = np.full(x.shape, np.nan)
    lower = 0.0
    for limit, factor in _EPOCH_UNIT_LIMITS:
        in_band = (magnitude >= lower) & (magnitude < limit)
        to_us[in_band] = factor
        lower = limit
    us = x * to_us
    ok = np.isfinite(us) & (np.abs(us) < _MAX_ABS_US)
    out = np.full(x.shape, np.datetime64("NaT"), dtype="datetime64[us]")
    out[ok] = np.round(us[ok]).astype("int64").astype("datetime64[us]")
    return pd.Series(out, index=index, dtype=TIMESTAMP_DTYPE)


def to_utc_naive(values: pd.Series) -> pd.Series:
    """Parse a column of timestamps to naive UTC ``datetime64[us]``; unparseable values are NaT.

    Callers tell "missing" from "unparseable" by comparing with ``values.isna()`` (or empty text);
    this function never raises on bad values.

    Parameters
    ----------
    values : pandas.Series
        Datetimes (naive or zone-aware), numbers (epoch), or text (ISO-8601 or numeric epoch).

    Returns
    -------
    pandas.Series of ``datetime64[us]`` with the same index.
    """
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None).astype(TIMESTAMP_DTYPE)
    if pd.api.types.is_datetime64_dtype(dtype):
        return values.astype(TIMESTAMP_DTYPE)
    if pd.api.types.is_bool_dtype(dtype):
        return pd.Series(pd.NaT, index=values.index, dtype=TIMESTAMP_DTYPE)
    if pd.api.types.is_numeric_dtype(dtype):
        return epoch_to_datetime(values)

    # Text (or mixed objects): ISO-8601 first, then numeric text as epoch for what is left.
    text = values.astype("string").str.strip()
    text = text.mask(text == "")
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    parsed = parsed.dt.tz_localize(None).astype(TIMESTAMP_DTYPE)
    left = parsed.isna() & text.notna()
    if left.any():
        numeric = pd.to_numeric(text[left], errors="coerce")
        if numeric.notna().any():
            parsed.loc[left] = epoch_to_datetime(numeric)
        still = parsed.isna() & text.notna()
        if still.any():
            # Mixed forms the strict ISO parser refuses (e.g. "2024/01/05 10:00"): give pandas'
            # general parser one chance on just those values.
            retry = pd.to_datetime(text[still], format="mixed", utc=True, errors="coerce")
            parsed.loc[still] = retry.dt.tz_localize(None).astype(TIMESTAMP_DTYPE)
    return parsed


class TimestampCheck(NamedTuple):
    """Result of :func:`check_timestamps`: parsed values and boolean masks (numpy, by position).

    Attributes
    ----------
    parsed : pandas.Series
        ``datetime64[us]`` naive UTC; NaT where missing or unparseable (future values kept).
    given : numpy.ndarray
        A value was supplied (not null, not blank text).
    unparseable : numpy.ndarray
        A value was supplied but is not a timestamp.
    future : numpy.ndarray
        The value parses to a time after ``future_limit`` (all False without a limit).
    """

    parsed: pd.Series
    given: np.ndarray
    unparseable: np.ndarray
    future: np.ndarray


def check_timestamps(values: pd.Series, future_limit: pd.Timestamp | None = None) -> TimestampCheck:
    """Parse a timestamp column and say which values were missing, unparseable or in the future.

    The one place both the file loader and the Segment reader get these rules from, so a value
    is "unparseable" or "future" in exactly the same cases whichever way it arrived.

    Parameters
    ----------
    values : pandas.Series
        Anything :func:`to_utc_naive` accepts.
    future_limit : pandas.Timestamp, optional
        Naive UTC; values after it are flagged ``future``.

    Returns
    -------
    TimestampCheck

    Examples
    --------
    >>> c = check_timestamps(pd.Series(["2024-01-01", "", "soon", "2999-01-01"]),
    ...                      pd.Timestamp("2025-01-01"))
    >>> c.given.tolist(), c.unparseable.tolist(), c.future.tolist()
    ([True, False, True, True], [False, False, True, False], [False, False, False, True])
    """
    parsed = to_utc_naive(values)
    given = values.notna()
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        given &= values.astype("string").str.strip().fillna("") != ""
    given = given.to_numpy(dtype=bool)
    unparseable = given & parsed.isna().to_numpy()
    if future_limit is None:
        future = np.zeros(len(values), dtype=bool)
    else:
        future = (parsed > future_limit).fillna(False).to_numpy(dtype=bool)
    return TimestampCheck(parsed, given, unparseable, future)
