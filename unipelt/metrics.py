"""GLUE-convention metrics, computed with scikit-learn and scipy only.

Values are plain floats on the metric's natural scale (accuracy and F1 in [0, 1], correlations in [-1, 1]);
the command line multiplies by 100 for display. Which metrics a task reports, and which one picks the best
checkpoint, come from the GLUE task table in :mod:`unipelt.data`, so the two can never disagree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from unipelt.data import glue_task, is_glue_task
from unipelt.errors import UniPELTError

ArrayLike = Sequence[float] | np.ndarray

CLASSIFICATION = "classification"
REGRESSION = "regression"

_KIND_METRICS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("accuracy", "f1_macro"),
    REGRESSION: ("pearson", "spearman"),
}
_KIND_MAIN: dict[str, str] = {CLASSIFICATION: "accuracy", REGRESSION: "spearman"}


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the label."""
    return float(accuracy_score(labels, predictions))


def f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of class 1, as GLUE scores MRPC (equivalent) and QQP (duplicate); 0 when undefined."""
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def f1_macro(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Unweighted mean F1 over the classes seen, for user data where no class is 'the positive one'."""
    return float(f1_score(labels, predictions, average="macro", zero_division=0))


def matthews(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient (CoLA); scikit-learn gives 0 when it is undefined."""
    return float(matthews_corrcoef(labels, predictions))


def _correlation(function: Callable[..., object], predictions: ArrayLike, labels: ArrayLike) -> float:
    """Run a scipy correlation, giving 0 instead of NaN when one side is constant.

    A constant prediction is common in the first epochs of a regression run; NaN there would break the "is this
    the best checkpoint so far" comparison, while 0 (no correlation) orders correctly against real scores.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        value = float(function(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))[0])
    return 0.0 if np.isnan(value) else value


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation (STS-B)."""
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation (STS-B's main metric in the paper)."""
    return _correlation(stats.spearmanr, predictions, labels)


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "f1_macro": f1_macro,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


def _kind(task_or_kind: str) -> str | None:
    key = task_or_kind.strip().lower()
    return key if key in _KIND_METRICS else None


def metric_names(task_or_kind: str) -> tuple[str, ...]:
    """Metrics reported for a GLUE task, or for user data of kind "classification" / "regression"."""
    kind = _kind(task_or_kind)
    if kind is not None:
        return _KIND_METRICS[kind]
    if is_glue_task(task_or_kind):
        return glue_task(task_or_kind).metrics
    raise UniPELTError(
        f"Unknown task {task_or_kind!r}: give a GLUE task name or 'classification' / 'regression' for your own data."
    )


def main_metric(task_or_kind: str) -> str:
    """The metric that selects the best checkpoint and is reported in results tables.

    Paper protocol: Matthews for CoLA, F1 for MRPC and QQP, Spearman for STS-B, accuracy elsewhere;
    accuracy for user classification and Spearman for user regression.
    """
    kind = _kind(task_or_kind)
    if kind is not None:
        return _KIND_MAIN[kind]
    metric_names(task_or_kind)  # raises the clear error for an unknown name
    return glue_task(task_or_kind).main_metric


def _is_regression(task_or_kind: str) -> bool:
    kind = _kind(task_or_kind)
    if kind is not None:
        return kind == REGRESSION
    return glue_task(task_or_kind).regression


def compute_task_metrics(task_or_kind: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """All metrics of a task as ``{name: value}``.

    ``predictions`` may be class ids or raw logits of shape (n, classes), which are arg-maxed, so a trainer can
    pass model output straight in; for regression a (n, 1) array is flattened.
    """
    names = metric_names(task_or_kind)
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if _is_regression(task_or_kind):
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    elif preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1 or gold.ndim != 1:
        raise UniPELTError(
            f"Expected one prediction and one label per example, got shapes {preds.shape} and {gold.shape}."
        )
    if len(preds) != len(gold):
        raise UniPELTError(f"{len(preds)} predictions for {len(gold)} labels: they must be the same length.")
    if len(gold) == 0:
        raise UniPELTError("No predictions to score: the evaluation set is empty.")
    return {name: METRICS[name](preds, gold) for name in names}
