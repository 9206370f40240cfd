"""Vectorised two-group statistics for milestone candidates.

Every function takes arrays so that ten thousand candidates are scored in one call: ``s`` and
``f`` are how many converters / non-converters reached a candidate, ``S`` and ``F`` how many
converters / non-converters there are. All functions broadcast.

Example
-------
>>> import numpy as np
>>> t = two_group_table(np.array([30]), np.array([10]), 100, 200)
>>> round(float(t["lift"][0]), 2)
6.0
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

#: z for a two-sided 95% interval.
Z95 = float(sps.norm.ppf(0.975))


def wilson_interval(successes, totals, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion.

    Chosen over the normal ("Wald") interval because it stays inside [0, 1] and behaves at
    rates near 0 or 1, which is where rare milestones live.

    Parameters
    ----------
    successes, totals : array-like
        Counts; ``totals`` may be 0 (the interval is then ``(0, 1)``).
    z : float
        Normal quantile (1.96 for 95%).

    Returns
    -------
    (low, high) : tuple of ndarray

    >>> lo, hi = wilson_interval(5, 10)
    >>> round(float(lo), 4), round(float(hi), 4)
    (0.2366, 0.7634)
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(totals, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        lo = np.where(n > 0, np.clip(centre - half, 0, 1), 0.0)
        hi = np.where(n > 0, np.clip(centre + half, 0, 1), 1.0)
    return lo, hi


def lift(s, f, S, F) -> np.ndarray:
    """Converter rate divided by non-converter rate (``inf`` when no non-converter reached it).

    >>> round(float(lift(30, 10, 100, 200)), 6)
    6.0
    """
    s, f, S, F = (np.asarray(x, dtype=float) for x in (s, f, S, F))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (s / S) / (f / F)
    # 0/0 (nobody reached it) carries no evidence either way.
    return np.where((s == 0) & (f == 0), np.nan, out)


def smoothed_odds_ratio(s, f, S, F, prior_k: float = 1.0) -> np.ndarray:
    """Odds ratio with ``prior_k`` added to every cell: ((s+k)(F-f+k)) / ((S-s+k)(f+k)).

    The prior keeps the ratio finite when a cell is empty (PostHog uses k = 1).

    >>> round(float(smoothed_odds_ratio(30, 10, 100, 200, prior_k=1)), 4)  # 31*191 / (71*11)
    7.5813
    """
    s, f, S, F = (np.asarray(x, dtype=float) for x in (s, f, S, F))
    k = float(prior_k)
    return ((s + k) * (F - f + k)) / ((S - s + k) * (f + k))


def phi_coefficient(s, f, S, F) -> np.ndarray:
    """Phi (Matthews) correlation between "converted" and "reached the candidate".

    >>> round(float(phi_coefficient(30, 10, 100, 200)), 4)  # 5000 / sqrt(40*260*100*200)
    0.3467
    """
    a, b = np.asarray(s, dtype=float), np.asarray(f, dtype=float)
    c, d = np.asarray(S, dtype=float) - a, np.asarray(F, dtype=float) - b
    with np.errstate(divide="ignore", invalid="ignore"):
        den = np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
        out = (a * d - b * c) / den
    return np.where(den > 0, out, 0.0)


def fisher_exact_two_sided(s, f, S, F) -> np.ndarray:
    """Two-sided Fisher exact p-values of many 2x2 tables at once.

    The table is ``[[s, f], [S - s, F - f]]``. This reproduces ``scipy.stats.fisher_exact``
    (``alternative="two-sided"``: sum the probabilities of all tables no more likely than the
    observed one, with scipy's relative tolerance) but runs the search for the far tail as a
    vectorised bisection over :func:`scipy.stats.hypergeom`, so 10,000 tables cost a few
    dozen array calls instead of 10,000 Python calls.

    >>> from scipy.stats import fisher_exact
    >>> p = fisher_exact_two_sided([8], [2], 10, 12)[0]
    >>> bool(abs(p - fisher_exact([[8, 2], [2, 10]]).pvalue) < 1e-12)
    True
    """
    s = np.atleast_1d(np.asarray(s, dtype=np.int64))
    f = np.atleast_1d(np.asarray(f, dtype=np.int64))
    S, F = np.broadcast_to(np.asarray(S, np.int64), s.shape), np.broadcast_to(np.asarray(F, np.int64), s.shape)
    # scipy's parametrisation: population M = S + F, n1 = first row total (= s + f), draws n = S.
    n1 = s + f
    M = S + F
    n = S
    x = s
    # Work in log space: hypergeom.logpmf is ~100x faster than pmf for large tables. Ties
    # (tables exactly as likely as the observed one, common when S == F) are recognised with a
    # relative tolerance of 1e-9 on the probability, which rounding in log space cannot cross.
    tol = 1e-9
    mode = ((n + 1) * (n1 + 1) // (M + 2)).astype(np.int64)
    log_exact = sps.hypergeom.logpmf(x, M, n1, n)
    log_mode = sps.hypergeom.logpmf(mode, M, n1, n)
    at_mode = np.abs(log_exact - log_mode) <= tol
    log_thresh = log_exact + tol
    lower = x < mode

    # Boundary of the far tail: observed in the lower tail -> smallest b in (mode, n + 1] with
    # pmf(b) below the observed one; in the upper tail -> largest b in [-1, mode) likewise.
    left = np.where(lower, mode, -1).astype(np.int64)
    right = np.where(lower, n + 1, mode).astype(np.int64)
    for _ in range(64):
        active = right - left > 1
        if not active.any():
            break
        mid = (left + right) // 2
        below = sps.hypergeom.logpmf(mid, M, n1, n) < log_thresh
        right = np.where(active & lower & below, mid, right)
        left = np.where(active & lower & ~below, mid, left)
        left = np.where(active & ~lower & below, mid, left)
        right = np.where(active & ~lower & ~below, mid, right)
    p = np.empty(s.shape, dtype=float)
    lw, up = lower, ~lower
    p[lw] = (sps.hypergeom.cdf(x[lw], M[lw], n1[lw], n[lw])
             + sps.hypergeom.sf(right[lw] - 1, M[lw], n1[lw], n[lw]))
    p[up] = (sps.hypergeom.sf(x[up] - 1, M[up], n1[up], n[up])
             + np.where(left[up] >= 0, sps.hypergeom.cdf(left[up], M[up], n1[up], n[up]), 0.0))
    p = np.where(at_mode, 1.0, p)
    return np.minimum(p, 1.0)


def bh_qvalues(p_values) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) via ``scipy.stats.false_discovery_control``.

    NaN p-values (untestable candidates) stay NaN and do not count as tests.

    >>> bh_qvalues([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = sps.false_discovery_control(p[ok], method="bh")
    return q


def two_group_table(s, f, S, F, prior_k: float = 1.0) -> pd.DataFrame:
    """All statistics of the discovery report for arrays of (s, f) against totals (S, F).

    Returns a DataFrame with columns ``s, f, S, F, converter_rate, converter_rate_low,
    converter_rate_high, non_converter_rate, non_converter_rate_low, non_converter_rate_high,
    lift, odds_ratio, phi, p_value``. q-values are left to the caller, because the family of
    tests (all candidates, or all sequences) is the caller's choice.
    """
    s = np.atleast_1d(np.asarray(s, dtype=np.int64))
    f = np.atleast_1d(np.asarray(f, dtype=np.int64))
    S_arr = np.broadcast_to(np.asarray(S, dtype=np.int64), s.shape)
    F_arr = np.broadcast_to(np.asarray(F, dtype=np.int64), s.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        cr = np.where(S_arr > 0, s / S_arr, np.nan)
        nr = np.where(F_arr > 0, f / F_arr, np.nan)
    cr_lo, cr_hi = wilson_interval(s, S_arr)
    nr_lo, nr_hi = wilson_interval(f, F_arr)
    return pd.DataFrame({
        "s": s, "f": f, "S": S_arr, "F": F_arr,
        "converter_rate": cr, "converter_rate_low": cr_lo, "converter_rate_high": cr_hi,
        "non_converter_rate": nr, "non_converter_rate_low": nr_lo, "non_converter_rate_high": nr_hi,
        "lift": lift(s, f, S_arr, F_arr),
        "odds_ratio": smoothed_odds_ratio(s, f, S_arr, F_arr, prior_k),
        "phi": phi_coefficient(s, f, S_arr, F_arr),
        "p_value": fisher_exact_two_sided(s, f, S_arr, F_arr) if len(s) else np.array([], float),
    })


def conditional_lift(reached, converted, given) -> float:
    """Lift of ``reached`` after stratifying by ``given`` (Mantel–Haenszel pooled rate ratio).

    Measures what a candidate adds beside an already chosen milestone: "≥ 2 projects" next to
    "≥ 3 projects" has a conditional lift near 1 because inside each stratum of the chosen one
    it barely separates converters from non-converters.

    Parameters
    ----------
    reached, converted, given : boolean arrays over the same accounts.

    Returns
    -------
    float
        ``sum_k s_k F_k / N_k`` over ``sum_k f_k S_k / N_k`` for strata k of ``given``
        (NaN when undefined).
    """
    reached = np.asarray(reached, bool)
    converted = np.asarray(converted, bool)
    given = np.asarray(given, bool)
    num = den = 0.0
    for stratum in (False, True):
        m = given == stratum
        n_k = m.sum()
        if n_k == 0:
            continue
        S_k = (converted & m).sum()
        F_k = n_k - S_k
        s_k = (reached & converted & m).sum()
        f_k = (reached & ~converted & m).sum()
        num += s_k * F_k / n_k
        den += f_k * S_k / n_k
    if den == 0:
        return float("inf") if num > 0 else float("nan")
    return float(num / den)


def normalized_mutual_information(a, b) -> float:
    """Mutual information of two binary arrays over the smaller of their entropies (0..1).

    1 means one of the two determines the other (e.g. nested thresholds of the same event).
    """
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    n = len(a)
    if n == 0:
        return 0.0
    joint = np.array([[np.sum(~a & ~b), np.sum(~a & b)], [np.sum(a & ~b), np.sum(a & b)]], float) / n
    pa, pb = joint.sum(1), joint.sum(0)

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    with np.errstate(divide="ignore", invalid="ignore"):
        terms = joint * np.log(joint / np.outer(pa, pb))
    mi = float(np.nansum(terms))
    h = min(entropy(pa), entropy(pb))
    return mi / h if h > 0 else 0.0


def lift_interval(s, f, S, F, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Katz log interval of the lift (ratio of two proportions); 0.5 is added to empty cells.

    >>> lo, hi = lift_interval(30, 10, 100, 200)
    >>> bool(lo < 6.0 < hi)
    True
    """
    s, f, S, F = (np.asarray(x, dtype=float) for x in (s, f, S, F))
    empty = (s == 0) | (f == 0)
    s2, f2 = np.where(empty, s + 0.5, s), np.where(empty, f + 0.5, f)
    S2, F2 = np.where(empty, S + 0.5, S), np.where(empty, F + 0.5, F)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lift = np.log((s2 / S2) / (f2 / F2))
        se = np.sqrt(1 / s2 - 1 / S2 + 1 / f2 - 1 / F2)
    return np.exp(log_lift - z * se), np.exp(log_lift + z * se)


def cmh_pvalue(s_k, f_k, S_k, F_k) -> np.ndarray:
    """Cochran–Mantel–Haenszel test (continuity-corrected, 1 df) of many stratified tables.

    ``s_k``/``f_k`` are (candidates, strata) arrays of converters/non-converters reaching the
    candidate in each stratum; ``S_k``/``F_k`` the (strata,) group totals. Returns two-sided
    p-values (NaN when no stratum carries information).
    """
    s_k, f_k = np.asarray(s_k, float), np.asarray(f_k, float)
    S_k, F_k = np.asarray(S_k, float), np.asarray(F_k, float)
    N_k = S_k + F_k
    m_k = s_k + f_k
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(N_k > 0, S_k * m_k / N_k, 0.0)
        var = np.where(N_k > 1, S_k * F_k * m_k * (N_k - m_k) / (N_k**2 * (N_k - 1)), 0.0)
    diff = (s_k - expected).sum(-1)
    v = var.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.maximum(np.abs(diff) - 0.5, 0) ** 2 / v
    return np.where(v > 0, sps.chi2.sf(chi2, 1), np.nan)
