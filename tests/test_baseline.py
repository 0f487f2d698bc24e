"""The majority-class score printed next to a run's test score: what always answering the commonest training
class gets on validation and test."""

from __future__ import annotations

from collections import Counter

import pytest

from unipelt.kinds.baseline import majority_class_scores
from unipelt.training import TrainConfig
from unipelt.training.run import load_splits


def _splits(glue_dir, task: str):
    return load_splits(TrainConfig(task=task, data_dir=str(glue_dir), k=64, n_valid=64, seed=1))


@pytest.mark.parametrize("task", ["mrpc", "cola"])
def test_majority_class_scores_are_the_constant_prediction(glue_dir, task):
    splits = _splits(glue_dir, task)
    scores = majority_class_scores(splits)
    majority = Counter(e.label for e in splits.train.examples).most_common(1)[0][0]
    gold = [e.label for e in splits.test.examples]
    accuracy = sum(label == majority for label in gold) / len(gold)
    assert scores["test"]["accuracy"] == pytest.approx(accuracy)
    assert 0.3 < accuracy < 0.75  # a real share of the dev set, not 0 or 1
    if task == "cola":
        assert scores["test"]["matthews"] == 0.0  # a constant has no correlation
    if task == "mrpc" and majority == 1:
        positives = sum(gold)
        assert scores["test"]["f1"] == pytest.approx(2 * positives / (positives + len(gold)))
    assert set(scores) == {"valid", "test"}


def test_regression_has_no_majority_class(glue_dir):
    assert majority_class_scores(_splits(glue_dir, "stsb")) is None
