"""The score a run must beat to show it learned anything: always predicting the training split's most frequent
class. With few labels a run can end exactly there (MRPC's F1 81.2 and CoLA's Matthews 0 in the K = 100 grid are
that constant), so the train verb prints it next to the test score."""

from __future__ import annotations

from collections import Counter
from typing import Any

from unipelt.data import TokenData
from unipelt.metrics import entity_metrics


def majority_class_scores(splits: Any) -> dict[str, dict[str, float]] | None:
    """Metrics of the constant most-frequent-training-class prediction on the validation and test splits, or
    None for regression (a constant has no correlation) and for splits without labels."""
    if splits.regression:
        return None
    if isinstance(splits.train, TokenData):
        return _majority_tag_scores(splits)
    labels = [getattr(example, "label", None) for example in splits.train.examples]  # tagged sentences: none
    if not labels or not all(isinstance(label, int) for label in labels):
        return None  # one class id per sequence only (token tags are scored per token)
    counts = Counter(labels)
    majority = counts.most_common(1)[0][0]
    scores: dict[str, dict[str, float]] = {}
    for name, data in (("valid", splits.valid), ("test", splits.test)):
        if data is None or not data.examples or any(e.label is None for e in data.examples):
            continue
        gold = [example.label for example in data.examples]
        scores[name] = splits.kind.scores(splits, [majority] * len(gold), gold)
    return scores or None


def _majority_tag_scores(splits: Any) -> dict[str, dict[str, float]] | None:
    """Entity scores and word accuracy of tagging every word with the commonest training tag (usually ``O``:
    entity F1 0, word accuracy the share of untagged words, the figure a tagger's accuracy must beat)."""
    counts = Counter(tag for example in splits.train.examples for tag in example.tags or ())
    if not counts:
        return None
    names = splits.train.label_list
    commonest = names[counts.most_common(1)[0][0]]
    scores: dict[str, dict[str, float]] = {}
    for name, data in (("valid", splits.valid), ("test", splits.test)):
        if data is None or not data.examples or any(e.tags is None for e in data.examples):
            continue
        gold = [[names[i] for i in example.tags] for example in data.examples]
        if any(gold):
            scores[name] = entity_metrics(gold, [[commonest] * len(tags) for tags in gold])
    return scores or None
