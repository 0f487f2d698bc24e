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
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

from unipelt.data import glue_task, is_glue_task
from unipelt.errors import UniPELTError

ArrayLike = Sequence[float] | np.ndarray

CLASSIFICATION = "classification"
REGRESSION = "regression"

TOKEN_CLASSIFICATION = "token-classification"

_KIND_METRICS: dict[str, tuple[str, ...]] = {
    CLASSIFICATION: ("accuracy", "f1_macro"),
    REGRESSION: ("pearson", "spearman"),
    # entity-level (seqeval) F1, precision and recall, then word accuracy; per-type scores are added by
    # compute_token_metrics as f1_TYPE, precision_TYPE, recall_TYPE, support_TYPE
    TOKEN_CLASSIFICATION: ("f1", "precision", "recall", "accuracy"),
}
_KIND_MAIN: dict[str, str] = {CLASSIFICATION: "accuracy", REGRESSION: "spearman", TOKEN_CLASSIFICATION: "f1"}


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


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC AUC of a binary model's score for class 1 (0.5 = chance): how well it orders the examples, whatever
    the threshold. Accuracy, F1 and Matthews see only the labels a model commits to, so on a skewed task a model
    that ranks well but rarely predicts the rarer class scores like the majority class; AUC tells the two apart
    (benchmarks/RESULTS.md, "Where APL does not win")."""
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=float)))


def _kind(task_or_kind: str) -> str | None:
    key = task_or_kind.strip().lower()
    return key if key in _KIND_METRICS else None


def metric_names(task_or_kind: str) -> tuple[str, ...]:
    """Metrics reported for a GLUE task, or for user data of kind "classification" / "regression"."""
    kind = _kind(task_or_kind)
    if kind is not None:
        return _KIND_METRICS[kind]
    if is_glue_task(task_or_kind):
        task = glue_task(task_or_kind)
        # macro-F1 beside accuracy for every classification task: it shows what accuracy hides on skewed classes
        return task.metrics if task.regression or "f1_macro" in task.metrics else (*task.metrics, "f1_macro")
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
    pass model output straight in; for regression a (n, 1) array is flattened. Binary logits (n, 2) also give
    ``auc`` (class 1's log-odds ranked against the labels) when both classes occur among the labels and the
    logits are finite.
    """
    names = metric_names(task_or_kind)
    if _kind(task_or_kind) == TOKEN_CLASSIFICATION:
        raise UniPELTError(
            "token classification is scored by compute_token_metrics, which needs the tag names"
        )
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    score = None  # class 1's log-odds, for binary logits: the order AUC ranks
    if _is_regression(task_or_kind):
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    elif preds.ndim == 2:
        if preds.shape[1] == 2:
            score = preds[:, 1].astype(float) - preds[:, 0]
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1 or gold.ndim != 1:
        raise UniPELTError(
            f"Expected one prediction and one label per example, got shapes {preds.shape} and {gold.shape}."
        )
    if len(preds) != len(gold):
        raise UniPELTError(f"{len(preds)} predictions for {len(gold)} labels: they must be the same length.")
    if len(gold) == 0:
        raise UniPELTError("No predictions to score: the evaluation set is empty.")
    result = {name: METRICS[name](preds, gold) for name in names}
    # no AUC for a diverged model (NaN logits still arg-max to a label; they have no order)
    if score is not None and np.isfinite(score).all() and len(np.unique(gold)) == 2:
        result["auc"] = auc(score, gold)
    return result


def entity_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro over entities) and word accuracy, as seqeval scores them,
    plus the same per entity type (``f1_PER``...; ``support_PER`` is the number of gold entities).

    seqeval's default (lenient) mode is used, so IOB1, IOB2 and IOBES tags all give entities the way seqeval
    reads them; an entity counts only when its type and both ends match.
    """
    from seqeval.metrics import accuracy_score as word_accuracy
    from seqeval.metrics import classification_report

    gold = [list(s) for s in gold]
    predicted = [list(s) for s in predicted]
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise UniPELTError("predicted and gold tags must have the same sentences and words")
    if not gold or not any(gold):
        raise UniPELTError("No tagged words to score: the evaluation set is empty.")
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    result = {
        "f1": float(micro["f1-score"]),
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "accuracy": float(word_accuracy(gold, predicted)),
    }
    for name, scores in report.items():
        if name.endswith(" avg"):
            continue
        result[f"f1_{name}"] = float(scores["f1-score"])
        result[f"precision_{name}"] = float(scores["precision"])
        result[f"recall_{name}"] = float(scores["recall"])
        result[f"support_{name}"] = float(scores["support"])
    return result


def compute_token_metrics(
    predictions: np.ndarray, labels: np.ndarray, tags: Sequence[str]
) -> dict[str, float]:
    """:func:`entity_metrics` from per-token logits (n, length, tags) or tag ids (n, length) and gold ids
    (n, length) in which -100 marks positions that are not scored (special tokens, later sub-tokens, padding).
    """
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if preds.ndim == 3:
        preds = preds.argmax(axis=-1)
    if preds.shape != gold.shape:
        raise UniPELTError(f"predictions of shape {preds.shape} for labels of shape {gold.shape}")
    gold_tags, predicted_tags = [], []
    for pred_row, gold_row in zip(preds, gold):
        keep = gold_row != -100
        gold_tags.append([tags[i] for i in gold_row[keep]])
        predicted_tags.append([tags[i] if 0 <= i < len(tags) else "O" for i in pred_row[keep]])
    return entity_metrics(gold_tags, predicted_tags)
