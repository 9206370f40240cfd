"""The scoring model as serving sees it: a registered MLflow model turned into a `Scorer`.

Training writes a *model bundle* (docs/architecture.md, "Model bundle"): the native LightGBM
booster logged with ``mlflow.lightgbm.log_model`` plus ``scorer/*`` artifacts on the same run
(calibrator, feature manifest, milestone file, fit categories, tier cut points). Serving reads
it only through the registry: :func:`download_bundle` copies it into one local directory,
:func:`import_to_bentoml` puts that directory into the Bento model store (so ``bentoml build``
bundles it), and :class:`Scorer` scores and explains feature rows with it.

Local bundle layout (identical in the Bento model store)::

    model/            MLflow LightGBM model directory (native booster)
    scorer/           calibrator.json, feature_manifest.csv, milestones.yaml,
                      fit_categories.json, tiers.json
    bundle.json       registered name, version, run id, source URI
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.spec import MilestoneSpec, load_milestones

MODEL_NAME = "pql-account-scorer"
DEFAULT_ALIAS = "champion"
BENTO_MODEL_NAME = "pql-account-scorer"
DEFAULT_TIERS = {"hot": 70.0, "warm": 40.0}
SCORER_FILES = ("calibrator.json", "feature_manifest.csv", "milestones.yaml",
                "fit_categories.json", "tiers.json")


class ModelError(RuntimeError):
    """A model that cannot be found, loaded or trusted; the message says what to do."""


# --- finding and fetching the registered model ----------------------------------------------
def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def resolve_model_version(model_uri: str | None = None, tracking_uri: str | None = None):
    """Find the registered model version that ``model_uri`` names.

    Parameters
    ----------
    model_uri : str, optional
        ``models:/pql-account-scorer@champion`` (default), ``models:/NAME@ALIAS``,
        ``models:/NAME/VERSION``, a bare version number (``"3"``) or a bare alias
        (``"challenger"``) of ``pql-account-scorer``.
    tracking_uri : str, optional
        MLflow tracking/registry URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.

    Returns
    -------
    (mlflow.entities.model_registry.ModelVersion, str)
        The version and the tracking URI used.
    """
    client, uri = _client(tracking_uri)
    spec = model_uri or f"models:/{MODEL_NAME}@{DEFAULT_ALIAS}"
    if not spec.startswith("models:/"):
        spec = f"models:/{MODEL_NAME}/{spec}" if spec.isdigit() else f"models:/{MODEL_NAME}@{spec}"
    body = spec[len("models:/"):]
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = body.partition("/")
            if not version.isdigit():
                raise ModelError(f"{spec}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
            mv = client.get_model_version(name, version)
    except ModelError:
        raise
    except Exception as e:  # MlflowException: unknown name, alias or version
        raise ModelError(
            f"model {spec} not found in the MLflow registry at {uri}: {e}. "
            "Train one first (`pql train`), or pass --model with an existing version.") from None
    return mv, uri


def download_bundle(model_uri: str | None = None, tracking_uri: str | None = None,
                    dst: str | Path | None = None) -> Path:
    """Copy a registered model bundle (booster + ``scorer/*``) into one local directory.

    The copy is assembled in a temporary sibling directory and renamed into place, so a
    failed download never leaves a half-bundle behind.
    """
    import mlflow

    mv, uri = resolve_model_version(model_uri, tracking_uri)
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="pql-bundle-"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=dst.parent))
    try:
        # Resolve the version's storage location with *our* client: MLflow's models:/ artifact
        # repository looks names up in the global registry URI and ignores registry_uri=.
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        client, _ = _client(uri)
        (tmp / "model").mkdir()
        get_artifact_repository(client.get_model_version_download_uri(mv.name, mv.version)
                                ).download_artifacts("", str(tmp / "model"))
        scorer = Path(mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path="scorer", dst_path=str(tmp), tracking_uri=uri))
        missing = [f for f in SCORER_FILES if f not in ("tiers.json", "fit_categories.json")
                   and not (scorer / f).is_file()]
        if missing:
            raise ModelError(f"models:/{mv.name}/{mv.version} (run {mv.run_id}) lacks "
                             f"scorer/{', scorer/'.join(missing)}; retrain with training.train")
        (tmp / "bundle.json").write_text(json.dumps({
            "name": mv.name, "version": str(mv.version), "run_id": mv.run_id,
            "aliases": list(getattr(mv, "aliases", []) or []),
            "source": f"models:/{mv.name}/{mv.version}", "tracking_uri": uri}, indent=2))
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def import_to_bentoml(model_uri: str | None = None, tracking_uri: str | None = None):
    """Import a registered model into the Bento model store; return its Bento tag.

    A version already imported (same registered name, version and run) is reused, so
    ``pql serve`` can import on every start without filling the store.
    """
    import bentoml

    mv, uri = resolve_model_version(model_uri, tracking_uri)
    labels = {"mlflow_name": mv.name, "mlflow_version": str(mv.version), "mlflow_run": mv.run_id}
    try:
        imported = bentoml.models.list(BENTO_MODEL_NAME)
    except bentoml.exceptions.NotFound:  # an empty store raises instead of returning []
        imported = []
    for m in imported:
        if all(m.info.labels.get(k) == v for k, v in labels.items()):
            return m.tag
    with tempfile.TemporaryDirectory() as tmp:
        local = download_bundle(f"models:/{mv.name}/{mv.version}", uri, Path(tmp) / "bundle")
        with bentoml.models.create(BENTO_MODEL_NAME, labels=labels,
                                   metadata={"tracking_uri": uri}) as ref:
            shutil.copytree(local, ref.path, dirs_exist_ok=True)
    return ref.tag


def check_bento_model(tag) -> "ModelBundle":
    """Load a model of the Bento store and run :func:`check_manifest` on it (``pql serve``)."""
    import bentoml

    bundle = load_bundle(bentoml.models.get(tag).path)
    check_manifest(bundle)
    return bundle


# --- the loaded bundle ----------------------------------------------------------------------
@dataclass
class Calibrator:
    """Raw log-odds -> probability, as training fitted it (``scorer/calibrator.json``)."""

    method: str
    params: dict

    @classmethod
    def from_json(cls, data: dict) -> "Calibrator":
        method = data.get("method")
        if method == "isotonic":
            x, y = np.asarray(data["x"], float), np.asarray(data["y"], float)
            if len(x) < 2 or len(x) != len(y) or np.any(np.diff(x) < 0):
                raise ModelError("calibrator.json: isotonic 'x' must be increasing and as long as 'y'")
            return cls(method, {"x": x, "y": y})
        if method == "platt":
            return cls(method, {"a": float(data["a"]), "b": float(data["b"])})
        if method in ("none", "sigmoid", None):
            return cls("sigmoid", {})
        raise ModelError(f"calibrator.json: unknown method {method!r} (isotonic | platt)")

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, float)
        if self.method == "isotonic":
            return np.interp(raw, self.params["x"], self.params["y"])
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.params["a"] * raw + self.params["b"])))
        return 1.0 / (1.0 + np.exp(-raw))


def parse_tiers(data: dict | list | None) -> dict[str, float]:
    """Tier cut points as ``{tier: minimum score}``, highest first; cold is everything below.

    Accepts ``{"hot": 70, "warm": 40}``, ``{"cuts": {...}}`` or
    ``[{"name": "hot", "min_score": 70}, ...]``.

    >>> parse_tiers({"warm": 40, "hot": 70})
    {'hot': 70.0, 'warm': 40.0}
    """
    if not data:
        return dict(DEFAULT_TIERS)
    if isinstance(data, dict) and "cuts" in data:
        data = data["cuts"]
    if isinstance(data, list):
        data = {d["name"]: d.get("min_score", d.get("min")) for d in data}
    cuts = {str(k): float(v) for k, v in data.items() if k != "cold" and v is not None}
    bad = {k: v for k, v in cuts.items() if not 0 <= v <= 100}
    if bad:
        raise ModelError(f"tiers: cut points must lie in 0..100, got {bad}")
    return dict(sorted(cuts.items(), key=lambda kv: -kv[1]))


@dataclass
class ModelBundle:
    """Everything one registered model needs to score and explain."""

    booster: object
    calibrator: Calibrator
    manifest: pd.DataFrame
    spec: MilestoneSpec
    fit_categories: dict[str, list]
    tiers: dict[str, float]
    info: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        """``NAME/VERSION`` of the registered model (``unknown`` for a hand-made bundle)."""
        return f"{self.info.get('name', MODEL_NAME)}/{self.info.get('version', 'unknown')}"


def load_bundle(path: str | Path, tiers: dict | None = None) -> ModelBundle:
    """Load a local bundle directory (see the module docstring for the layout)."""
    import mlflow.lightgbm

    path = Path(path)
    scorer = path / "scorer"
    if not (path / "model").is_dir() or not scorer.is_dir():
        raise ModelError(f"{path}: not a model bundle (needs model/ and scorer/)")
    booster = mlflow.lightgbm.load_model(str(path / "model"))
    manifest = pd.read_csv(scorer / "feature_manifest.csv", dtype=str, keep_default_na=False)
    if "name" not in manifest.columns:
        raise ModelError(f"{scorer / 'feature_manifest.csv'}: column 'name' missing")
    model_features = list(booster.feature_name())
    if list(manifest["name"]) != model_features:
        raise ModelError(
            f"{scorer / 'feature_manifest.csv'} lists {len(manifest)} columns that differ from the "
            f"booster's {len(model_features)} inputs (first difference: "
            f"{_first_difference(list(manifest['name']), model_features)})")
    cal = Calibrator.from_json(json.loads((scorer / "calibrator.json").read_text()))
    cats_file = scorer / "fit_categories.json"
    fit_categories = json.loads(cats_file.read_text()) if cats_file.is_file() else {}
    tiers_file = scorer / "tiers.json"
    tier_cuts = parse_tiers(tiers if tiers is not None else
                            (json.loads(tiers_file.read_text()) if tiers_file.is_file() else None))
    info_file = path / "bundle.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return ModelBundle(booster, cal, manifest, load_milestones(scorer / "milestones.yaml"),
                       fit_categories, tier_cuts, info)


def load_from_registry(model_uri: str | None = None, tracking_uri: str | None = None,
                       tiers: dict | None = None) -> ModelBundle:
    """Download and load a registered model (champion by default)."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_bundle(download_bundle(model_uri, tracking_uri, Path(tmp) / "b"), tiers)


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"position {i}: {x!r} vs {y!r}"
    return f"lengths {len(a)} vs {len(b)}"


def check_manifest(bundle: ModelBundle, expected: pd.DataFrame | None = None) -> None:
    """Refuse a model whose inputs differ from what the feature code produces.

    ``expected`` defaults to ``features.pipeline.feature_manifest`` for the bundled milestone
    file and fit columns. A mismatch means the service would feed the model columns it was
    not trained on (training/serving skew), so we stop with a message that says which.
    """
    if expected is None:
        from features.pipeline import feature_manifest

        names = list(bundle.manifest["name"])
        fit_cols = [n[len("fit__"):] for n in names if n.startswith("fit__")]
        marketing = [n[len("dg__"):-len("__decayed")] for n in names
                     if n.startswith("dg__") and n.endswith("__decayed")]
        expected = feature_manifest(bundle.spec, fit_cols, marketing)
    produced = set(expected["name"])
    missing = [n for n in bundle.manifest["name"] if n not in produced]
    if missing:
        raise ModelError(
            f"model {bundle.version} expects {len(missing)} feature column(s) the feature code "
            f"does not produce for its milestones.yaml: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}. The feature code changed since training; "
            "retrain (`pql train`) or serve a matching model version.")


# --- scoring --------------------------------------------------------------------------------
class Scorer:
    """Score feature rows with a :class:`ModelBundle`.

    ``prepare`` turns a feature frame (``features.pipeline`` columns) into the model's input
    matrix; the other methods work on that matrix so one preparation serves prediction,
    contributions and re-scoring.
    """

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.booster = bundle.booster
        self.feature_names: list[str] = list(bundle.manifest["name"])
        self.tiers = bundle.tiers
        # Category order is the booster's own (LightGBM stores the pandas categories it saw
        # in training); fit_categories.json must agree, or codes would be shifted.
        cat_cols = [n for n in self.feature_names if n.startswith("fit__")
                    and self._is_categorical(n)]
        booster_cats = getattr(self.booster, "pandas_categorical", None) or []
        self.categories: dict[str, list] = {}
        for i, col in enumerate(cat_cols):
            levels = bundle.fit_categories.get(col, bundle.fit_categories.get(col[len("fit__"):]))
            if i < len(booster_cats):
                if levels is not None and [str(x) for x in levels] != [str(x) for x in booster_cats[i]]:
                    raise ModelError(f"fit_categories.json: levels of {col} differ from the booster's")
                levels = booster_cats[i]
            self.categories[col] = list(levels or [])

    def _is_categorical(self, name: str) -> bool:
        m = self.bundle.manifest
        row = m.loc[m["name"] == name]
        if "dtype" in m.columns and len(row) and row["dtype"].iloc[0]:
            return row["dtype"].iloc[0] in ("category", "string", "object", "str")
        return name[len("fit__"):] in self.bundle.fit_categories or name in self.bundle.fit_categories

    def prepare(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[str | None]]:
        """Model input matrix for ``frame`` plus, per row, why it cannot be scored (or None).

        Raises
        ------
        ModelError
            When the frame lacks model columns (the feature code and the model disagree).
        """
        missing = [c for c in self.feature_names if c not in frame.columns]
        if missing:
            raise ModelError(f"feature frame lacks model columns {missing[:8]}")
        n = len(frame)
        X = np.empty((n, len(self.feature_names)), dtype=np.float64)
        problems: list[str | None] = [None] * n
        for j, col in enumerate(self.feature_names):
            s = frame[col]
            if col in self.categories:
                levels = self.categories[col]
                values = s.astype("object")
                codes = pd.Index(levels, dtype=object).get_indexer(values).astype(np.float64)
                unknown = np.flatnonzero((codes < 0) & values.notna().to_numpy())
                for i in unknown:
                    problems[i] = problems[i] or (
                        f"{col}={values.iloc[i]!r} is not a category the model knows "
                        f"(known: {', '.join(map(str, levels[:10]))})")
                codes[codes < 0] = np.nan
                X[:, j] = codes
            elif isinstance(s.dtype, np.dtype) and s.dtype.kind in "fiub":
                # Plain numpy numbers and booleans: the same floats as the general path below,
                # without its per-column conversions (~0.2 ms a column, 63 columns per batch).
                X[:, j] = s.to_numpy(dtype=np.float64)
            else:
                X[:, j] = pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(na_value=np.nan)
        return X, problems

    def raw_score(self, X: np.ndarray) -> np.ndarray:
        """Model output in log-odds."""
        return self.booster.predict(X, raw_score=True)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions, shape (n, features + 1); the last column is the base value.

        Each row sums to :meth:`raw_score` of that row (LightGBM ``pred_contrib``).
        """
        return self.booster.predict(X, pred_contrib=True)

    def probability(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probability of conversion within the horizon."""
        return np.clip(self.bundle.calibrator(raw), 0.0, 1.0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probability for each row of ``X``."""
        return self.probability(self.raw_score(X))

    @staticmethod
    def to_score(probability: np.ndarray) -> np.ndarray:
        """Probability as a 0-100 integer score (what sales tools display)."""
        return np.rint(np.asarray(probability, float) * 100).astype(int)

    @staticmethod
    def tier_score(probability: np.ndarray) -> np.ndarray:
        """The quantity tier cut points are defined on: ``round(100 * probability, 1)``.

        ``training.train.make_tiers`` cuts on exactly this; the integer :meth:`to_score` would
        move accounts just below a cut (0.4 points at most) into the tier below.
        """
        return np.round(100 * np.asarray(probability, float), 1)

    def tier(self, score) -> np.ndarray:
        """hot / warm / cold from the bundle's (or configured) cut points.

        ``score`` is :meth:`tier_score` of the probability, not the integer score.
        """
        score = np.asarray(score, float)
        out = np.full(score.shape, "cold", dtype=object)
        for name, cut in sorted(self.tiers.items(), key=lambda kv: kv[1]):
            out[score >= cut] = name
        return out
