"""Names for the synthetic world: companies, domains, people and e-mail addresses.

Kept apart from :mod:`features.synthetic` because it is pure string-making: everything here is
vectorised over numpy index arrays and reproducible from the generator it is handed.
"""

from __future__ import annotations

import numpy as np

_ONSETS = np.array(["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
                    "br", "cr", "dr", "fl", "gr", "pr", "st", "tr", "sk", "qu", "pl", "sh"])
_VOWELS = np.array(["a", "e", "i", "o", "u", "ai", "ea", "io", "y", "ou"])
_CODAS = np.array(["", "", "n", "r", "x", "s", "l", "m", "t", "ck", "nt", "rk", "ve", "ly"])

#: Industry -> words a company in it likes to put after its brand.
SECTOR_WORDS = {
    "software": ["Software", "Labs", "Systems", "Cloud", "Digital"],
    "fintech": ["Capital", "Pay", "Finance", "Ledger"],
    "marketing": ["Media", "Marketing", "Creative", "Studio"],
    "ecommerce": ["Commerce", "Goods", "Retail", "Market"],
    "healthcare": ["Health", "Care", "Medical", "Bio"],
    "education": ["Learning", "Academy", "Education"],
    "manufacturing": ["Industries", "Manufacturing", "Works", "Materials"],
    "consulting": ["Consulting", "Partners", "Advisory", "Analytics"],
}
_LEGAL = np.array(["Inc", "LLC", "Ltd", "GmbH", "Group", "Corp", "Co", "SA", "BV", ""])
_TLD_BY_COUNTRY = {"US": ".com", "GB": ".co.uk", "DE": ".de", "FR": ".fr", "NL": ".nl", "CA": ".ca",
                   "AU": ".com.au", "IN": ".in", "BR": ".com.br", "ES": ".es"}
_GENERIC_TLDS = np.array([".com", ".io", ".co", ".ai", ".net"])

FIRST_NAMES = np.array(
    "james mary john patricia robert jennifer michael linda david elizabeth william barbara richard "
    "susan joseph jessica thomas sarah charles karen daniel nancy matthew lisa anthony betty mark "
    "sandra paul ashley steven emily andrew donna joshua michelle kevin carol brian amanda george "
    "melissa timothy deborah ronald laura jason rebecca ryan sharon jacob cynthia gary kathleen "
    "nicolas amy eric anna jonas lea lukas emma noah mia ahmed fatima wei li hiroshi yuki priya "
    "arjun carlos lucia mateo sofia olga ivan".split())
LAST_NAMES = np.array(
    "smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez "
    "gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white harris "
    "sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen hill "
    "flores green adams nelson baker hall rivera campbell mitchell carter roberts mueller schmidt "
    "schneider fischer weber meyer wagner becker dubois moreau laurent bernard rossi russo ferrari "
    "kumar sharma patel singh tanaka suzuki sato wang zhang chen silva santos oliveira kowalski "
    "novak jansen devries".split())

#: Free-mail providers used for personal sign-ups (they never identify a company).
FREE_MAIL_DOMAINS = np.array(["gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com",
                              "proton.me"])
_FREE_MAIL_WEIGHTS = np.array([0.5, 0.16, 0.1, 0.1, 0.08, 0.06])


def _cat(*parts) -> np.ndarray:
    """Element-wise concatenation of equal-length (or scalar) string arrays."""
    out = np.asarray(parts[0], dtype=object)
    for p in parts[1:]:
        out = out + np.asarray(p, dtype=object)
    return out


def _brands(rng: np.random.Generator, n: int) -> np.ndarray:
    two = rng.random(n) < 0.7
    b = _cat(_ONSETS[rng.integers(0, len(_ONSETS), n)], _VOWELS[rng.integers(0, len(_VOWELS), n)],
             np.where(two, _ONSETS[rng.integers(0, len(_ONSETS), n)], ""),
             np.where(two, _VOWELS[rng.integers(0, len(_VOWELS), n)], ""),
             _CODAS[rng.integers(0, len(_CODAS), n)])
    return np.array([s.capitalize() for s in b], dtype=object)


def company_names(rng: np.random.Generator, industries: np.ndarray, countries: np.ndarray):
    """Return ``(brand, name, domain)`` arrays: unique brands, company names and domains.

    Brands are made of syllables so that 100k+ companies stay distinct; duplicates are redrawn
    (the identity resolver relies on a domain meaning exactly one company).
    """
    n = len(industries)
    brands = _brands(rng, n)
    for _ in range(50):  # redraw duplicates until every brand is unique
        _, first = np.unique(brands, return_index=True)
        dup = np.ones(n, bool)
        dup[first] = False
        if not dup.any():
            break
        brands[dup] = _brands(rng, int(dup.sum()))
    else:  # pragma: no cover - astronomically unlikely below a few million companies
        brands = _cat(brands, np.arange(n).astype(str))
    sector = np.empty(n, dtype=object)
    for ind, words in SECTOR_WORDS.items():
        m = industries == ind
        sector[m] = np.array(words, dtype=object)[rng.integers(0, len(words), int(m.sum()))]
    legal = _LEGAL[rng.integers(0, len(_LEGAL), n)].astype(object)
    name = _cat(brands, " ", sector, np.where(legal == "", "", " "), legal)
    with_sector = rng.random(n) < 0.35
    local_tld = np.array([_TLD_BY_COUNTRY.get(c, ".com") for c in countries], dtype=object)
    tld = np.where(rng.random(n) < 0.55, local_tld,
                   _GENERIC_TLDS[rng.integers(0, len(_GENERIC_TLDS), n)].astype(object))
    stem = np.array([b.lower() for b in brands], dtype=object)
    domain = _cat(stem, np.where(with_sector, np.array([s.lower() for s in sector], dtype=object), ""), tld)
    return brands, name, domain


def domain_aliases(rng: np.random.Generator, brands: np.ndarray, domains: np.ndarray, share: float):
    """Return one alias domain per company for a ``share`` of companies (empty string otherwise)."""
    n = len(brands)
    has = rng.random(n) < share
    kind = rng.integers(0, 3, n)
    stem = np.array([b.lower() for b in brands], dtype=object)
    alias = np.where(kind == 0, _cat(stem, "hq.com"), np.where(kind == 1, _cat("get", stem, ".com"),
                                                              _cat(stem, ".io")))
    alias = np.where(alias == domains, _cat(stem, "-app.com"), alias)
    return np.where(has, alias, "").astype(object)


def company_spellings(rng: np.random.Generator, brands: np.ndarray, names: np.ndarray) -> np.ndarray:
    """How users type their company at sign-up: the CRM name or a slightly different spelling.

    ``Acme Analytics Inc`` may come back as ``Acme Analytics``, ``Acme Analytics Inc.``,
    ``acme analytics`` or ``ACME Analytics`` — what a fuzzy name matcher has to cope with.
    """
    n = len(names)
    kind = rng.integers(0, 6, n)
    no_legal = np.array([" ".join(s.split()[:2]) for s in names], dtype=object)
    out = np.where(kind == 0, names, no_legal)
    out = np.where(kind == 2, _cat(names, "."), out)
    out = np.where(kind == 3, np.array([s.lower() for s in no_legal], dtype=object), out)
    out = np.where(kind == 4, np.array([b.upper() + s[len(b):] for b, s in zip(brands, no_legal)],
                                       dtype=object), out)
    return out


def person_names(rng: np.random.Generator, n: int):
    """Return ``(first, last)`` lower-case name arrays."""
    return (FIRST_NAMES[rng.integers(0, len(FIRST_NAMES), n)].astype(object),
            LAST_NAMES[rng.integers(0, len(LAST_NAMES), n)].astype(object))


def emails(rng: np.random.Generator, first: np.ndarray, last: np.ndarray, domain: np.ndarray,
           free_mail: np.ndarray) -> np.ndarray:
    """Build unique e-mail addresses: ``first.last@domain`` styles, or free-mail for ``free_mail``."""
    n = len(first)
    style = rng.integers(0, 3, n)
    local = np.where(style == 0, _cat(first, ".", last),
                     np.where(style == 1, _cat(np.array([f[0] for f in first], dtype=object), last),
                              first))
    free_local = _cat(first, np.where(rng.random(n) < 0.5, ".", ""), last,
                      rng.integers(1, 999, n).astype(str).astype(object))
    free_dom = FREE_MAIL_DOMAINS[rng.choice(len(FREE_MAIL_DOMAINS), n, p=_FREE_MAIL_WEIGHTS)].astype(object)
    out = np.where(free_mail, _cat(free_local, "@", free_dom), _cat(local, "@", domain))
    # Two "john.smith@acme.com" are one mailbox; give every later duplicate a number.
    _, first_idx = np.unique(out, return_index=True)
    dup = np.ones(n, bool)
    dup[first_idx] = False
    if dup.any():
        idx = np.flatnonzero(dup)
        parts = [s.split("@", 1) for s in out[idx]]
        out[idx] = np.array([f"{a}{i}@{b}" for (a, b), i in zip(parts, idx)], dtype=object)
    return out
