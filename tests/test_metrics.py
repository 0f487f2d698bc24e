"""Tests for unipelt.metrics: agreement with scikit-learn/scipy, hand-computed values, the task table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from unipelt.errors import UniPELTError
from unipelt.metrics import (
    accuracy,
    compute_task_metrics,
    f1,
    f1_macro,
    main_metric,
    matthews,
    metric_names,
    pearson,
    spearman,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=200)
    preds = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    assert accuracy(preds, labels) == pytest.approx(accuracy_score(labels, preds))
    assert f1(preds, labels) == pytest.approx(f1_score(labels, preds))
    assert matthews(preds, labels) == pytest.approx(matthews_corrcoef(labels, preds))
    three = rng.integers(0, 3, size=200)
    guess = rng.integers(0, 3, size=200)
    assert f1_macro(guess, three) == pytest.approx(f1_score(three, guess, average="macro"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 5, size=300)
    preds = labels + rng.normal(0, 1.5, size=300)
    assert pearson(preds, labels) == pytest.approx(stats.pearsonr(preds, labels)[0])
    assert spearman(preds, labels) == pytest.approx(stats.spearmanr(preds, labels)[0])


def test_hand_computed_binary() -> None:
    preds = [1, 0, 1, 1, 0, 1]
    labels = [1, 0, 0, 1, 1, 1]  # TP=3, TN=1, FP=1, FN=1
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    assert f1(preds, labels) == pytest.approx(0.75)  # precision 3/4, recall 3/4
    assert matthews(preds, labels) == pytest.approx((3 * 1 - 1 * 1) / math.sqrt(4 * 4 * 2 * 2))


def test_hand_computed_correlations() -> None:
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    assert spearman([1, 2, 3], [1, 2, 4]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)  # 1 - 6*6 / (3*(9-1))


def test_f1_uses_class_one_as_positive() -> None:
    # All-zero predictions: no true positives for class 1, so F1 is 0 even though accuracy is high.
    assert f1([0, 0, 0, 0], [0, 0, 0, 1]) == 0.0
    assert accuracy([0, 0, 0, 0], [0, 0, 0, 1]) == 0.75


def test_constant_predictions_give_zero_not_nan() -> None:
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert matthews([1, 1, 1], [0, 1, 0]) == 0.0


@pytest.mark.parametrize(
    ("task", "main", "names"),
    [
        ("cola", "matthews", {"matthews", "accuracy", "f1_macro"}),
        ("sst2", "accuracy", {"accuracy", "f1_macro"}),
        ("mrpc", "f1", {"f1", "accuracy", "f1_macro"}),
        ("stsb", "spearman", {"pearson", "spearman"}),
        ("STS-B", "spearman", {"pearson", "spearman"}),
        ("qqp", "f1", {"f1", "accuracy", "f1_macro"}),
        ("mnli", "accuracy", {"accuracy", "f1_macro"}),
        ("qnli", "accuracy", {"accuracy", "f1_macro"}),
        ("rte", "accuracy", {"accuracy", "f1_macro"}),
        ("wnli", "accuracy", {"accuracy", "f1_macro"}),
        ("classification", "accuracy", {"accuracy", "f1_macro"}),
        ("regression", "spearman", {"pearson", "spearman"}),
        ("token-classification", "f1", {"f1", "precision", "recall", "accuracy"}),
    ],
)
def test_task_table(task: str, main: str, names: set[str]) -> None:
    assert main_metric(task) == main
    assert set(metric_names(task)) == names
    assert main in metric_names(task)


def test_compute_task_metrics_classification() -> None:
    labels = np.array([1, 0, 0, 1, 1, 1])
    result = compute_task_metrics("mrpc", [1, 0, 1, 1, 0, 1], labels)
    assert result == pytest.approx({"f1": 0.75, "accuracy": 4 / 6, "f1_macro": (0.75 + 0.5) / 2})
    assert all(isinstance(v, float) for v in result.values())
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0], [-1, 1], [5, 0], [0, 0.5]])
    from_logits = compute_task_metrics("mrpc", logits, labels)
    # arg-maxed logits give the same ids; binary logits add the AUC of class 1's log-odds
    # (0.8, -3, 3, 2, -5, 0.5): of the 4 x 2 (positive, negative) pairs, 3 are ordered right
    assert from_logits == pytest.approx({**result, "auc": 3 / 8})


def test_auc_only_for_binary_logits_with_both_classes() -> None:
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    assert "auc" not in compute_task_metrics("sst2", [1, 0, 1], [1, 0, 1])  # ids alone have no ranking
    assert "auc" not in compute_task_metrics("sst2", logits, [1, 1, 1])  # one class: AUC is undefined
    assert compute_task_metrics("sst2", logits, [1, 0, 1])["auc"] == 1.0
    diverged = np.array([[np.nan, np.nan], [1.0, 0.0], [0.0, 2.0]])
    assert "auc" not in compute_task_metrics("sst2", diverged, [1, 0, 1])  # NaN logits have no order
    three = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    assert "auc" not in compute_task_metrics("classification", three, [1, 0, 2])


def test_compute_task_metrics_regression_and_ranges() -> None:
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, size=50)
    preds = (labels + rng.normal(0, 1, size=50)).reshape(-1, 1)  # a (n, 1) regression head output
    result = compute_task_metrics("stsb", preds, labels)
    assert set(result) == {"pearson", "spearman"}
    assert result["spearman"] == pytest.approx(stats.spearmanr(preds[:, 0], labels)[0])
    assert all(-1.0 <= v <= 1.0 for v in result.values())
    cola = compute_task_metrics("cola", rng.integers(0, 2, 100), rng.integers(0, 2, 100))
    assert -1.0 <= cola["matthews"] <= 1.0 and 0.0 <= cola["accuracy"] <= 1.0


def test_compute_task_metrics_errors() -> None:
    with pytest.raises(UniPELTError, match="same length"):
        compute_task_metrics("rte", [0, 1], [0, 1, 1])
    with pytest.raises(UniPELTError, match="empty"):
        compute_task_metrics("rte", [], [])
    with pytest.raises(UniPELTError, match="Unknown task"):
        compute_task_metrics("squad", [0], [0])
    with pytest.raises(UniPELTError, match="Unknown task"):
        main_metric("squad")
