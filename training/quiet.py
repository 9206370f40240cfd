"""Silence the warnings MLflow, SHAP and matplotlib print during training that mean nothing to a user.

Each entry below is a message we have read and judged harmless for *this* project; everything
else still reaches the user (e.g. "milestones whose events never occur in the data").

- MLflow "dataset source can be interpreted in multiple ways": a local path matches two
  registered source classes that are one and the same.
- MLflow "Inferred schema contains integer column(s)": the booster's input is all float64
  (``training.models.model_matrix``); the hint is about the logged snapshot table's counts.
- matplotlib / SHAP tight-layout warnings: a cosmetic layout fallback of the beeswarm plot.
- MLflow's "Failed to resolve installed pip version" (a uv environment has no pip; the model's
  requirements are written explicitly anyway).

Example
-------
>>> import warnings
>>> with warnings.catch_warnings(record=True) as seen:
...     warnings.simplefilter("always")
...     with known_noise_silenced():
...         warnings.warn("The specified dataset source can be interpreted in multiple ways: A, A")
...         warnings.warn("something real")
>>> [str(w.message) for w in seen]
['something real']
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: (category, regex matched against the start of the message) of warnings known to be harmless.
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (UserWarning, r"The specified dataset source can be interpreted in multiple ways"),
    (UserWarning, r"Hint: Inferred schema contains integer column"),
    (UserWarning, r".*tight_layout"),
    (UserWarning, r"The figure layout has changed to tight"),
)
#: Loggers whose WARNING records are known noise here: raised to ERROR while training.
NOISY_LOGGERS: tuple[str, ...] = ("mlflow.utils.environment",)


@contextmanager
def known_noise_silenced() -> Iterator[None]:
    """Within the block, drop :data:`HARMLESS_WARNINGS` and the WARNINGs of :data:`NOISY_LOGGERS`.

    Filters and logger levels are restored on exit.
    """
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for category, pattern in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
