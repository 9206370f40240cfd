"""The feature manifest on disk: ``features.parquet`` travels with ``features.manifest.csv``.

The manifest (name, family, milestone, description, dtype) is what training logs next to a model
and what explanations read their wording from, so it is written with the features, atomically:
either both files are complete or neither is replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

MANIFEST_COLUMNS = ("name", "family", "milestone", "description", "dtype")
FAMILIES = ("milestone", "sequence", "warning", "account", "fit", "demand_gen", "activity")


def manifest_path_for(features_path: str | Path) -> Path:
    """``features.parquet`` -> ``features.manifest.csv`` (next to it)."""
    p = Path(features_path)
    return p.with_name(p.name[: -len(p.suffix)] + ".manifest.csv" if p.suffix else p.name + ".manifest.csv")


def write_feature_set(fs, out: str | Path) -> tuple[Path, Path]:
    """Write ``fs.frame`` to ``out`` (parquet) and ``fs.manifest`` next to it, each via temp + rename.

    Returns
    -------
    (features_path, manifest_path)
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    man = manifest_path_for(out)
    tmp_frame = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp_man = man.with_name(f".{man.name}.{os.getpid()}.tmp")
    try:
        fs.frame.to_parquet(tmp_frame, index=False)
        fs.manifest.loc[:, list(MANIFEST_COLUMNS)].to_csv(tmp_man, index=False)
        tmp_frame.replace(out)
        tmp_man.replace(man)
    finally:
        for t in (tmp_frame, tmp_man):
            t.unlink(missing_ok=True)
    return out, man


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV and check its columns and families (a clear error naming the file)."""
    path = Path(path)
    m = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    missing = [c for c in MANIFEST_COLUMNS if c not in m.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {missing}")
    bad = sorted(set(m["family"].dropna()) - set(FAMILIES))
    if bad:
        raise ValueError(f"{path}: unknown feature families {bad}")
    return m.loc[:, list(MANIFEST_COLUMNS)].astype(object).where(m.notna(), None)
