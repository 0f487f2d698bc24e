"""Class imbalance: class weights for the cross-entropy and oversampling of minority classes.

Both work for sentence classification (one label per example) and token classification (one tag per word):

- ``--class-weights balanced`` gives each class ``n / (classes * count)`` (scikit-learn's "balanced" rule),
  counted over the training labels (over word tags for tokens), so a rare class weighs as much in the loss as
  a common one; ``w1,w2,...`` gives them by hand in label order. The weights live on the task
  (``TaskModules.class_weights``) and so are saved in its checkpoint and in the run's config.
- ``--oversample`` repeats examples of the smaller classes, drawn with a seeded generator, until every class has
  as many examples as the largest. A sentence of a tagging task counts for its rarest tag (over the whole
  training set), so sentences holding a rare entity type are the ones repeated.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from unipelt.data.conll import TokenData
from unipelt.errors import UniPELTError

log = logging.getLogger("unipelt")

T = TypeVar("T")


def parse_class_weights(spec: str | None, labels: Sequence[str], counts: Counter[int]) -> list[float] | None:
    """The weight of each class id for ``spec`` (none, balanced, or w1,w2,...); None means unweighted.

    ``counts`` maps class id to how often it occurs in the training labels.
    """
    text = (spec or "none").strip().lower()
    if text == "none":
        return None
    n_classes = len(labels)
    if text == "balanced":
        total = sum(counts.values())
        if total == 0:
            raise UniPELTError("--class-weights balanced needs labelled training data")
        # a class absent from training gets weight 1: it cannot be learnt, and 1 keeps the loss finite
        return [total / (n_classes * counts[i]) if counts.get(i) else 1.0 for i in range(n_classes)]
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise UniPELTError(
            f"--class-weights must be none, balanced or comma-separated numbers, not {spec!r}"
        ) from None
    if len(weights) != n_classes:
        raise UniPELTError(
            f"--class-weights gives {len(weights)} weights but there are {n_classes} classes "
            f"({', '.join(labels)}): give one per class in that order"
        )
    if any(not np.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise UniPELTError(f"--class-weights must be finite, non-negative and not all zero: {spec!r}")
    return weights


def oversample(items: Sequence[T], group: Callable[[T], int], seed: int) -> list[T]:
    """``items`` plus random repeats of the smaller groups, until every group is as large as the largest.

    The originals keep their order and the repeats follow them, drawn with replacement by a generator seeded
    with ``seed`` (the same seed gives the same training set).
    """
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(group(item), []).append(index)
    if len(groups) < 2:
        return list(items)
    largest = max(len(members) for members in groups.values())
    rng = np.random.default_rng(seed)
    extra: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        if len(members) < largest:
            extra.extend(rng.choice(members, size=largest - len(members), replace=True).tolist())
    rng.shuffle(extra)
    return [*items, *(items[i] for i in extra)]


def rarest_tag_group(tag_lists: Sequence[Sequence[int]]) -> Callable[[Sequence[int]], int]:
    """A grouping for tagged sentences: the sentence's rarest tag, rarity counted over all ``tag_lists``."""
    counts = Counter(t for tags in tag_lists for t in tags)

    def group(tags: Sequence[int]) -> int:
        present = set(tags)
        if not present:
            return -1
        return min(present, key=lambda t: (counts[t], t))

    return group


def _label_ids(data: Any) -> list[list[int]]:
    """Each example's class ids: its tags for a tagged sentence, its one label otherwise."""
    return [list(e.tags or ()) if hasattr(e, "tags") else [int(e.label)] for e in data.examples]


def apply_oversampling(config: Any, train: Any) -> Any:
    """The training data with minority classes repeated up to the majority count (``--oversample``); a tagged
    sentence counts for its rarest tag."""
    if not config.oversample:
        return train
    if train.regression:
        raise UniPELTError("--oversample needs classes; a regression task has none")
    ids = _label_ids(train)
    if isinstance(train, TokenData):
        rarest = rarest_tag_group(ids)
        groups = [rarest(tags) for tags in ids]
    else:
        groups = [tags[0] for tags in ids]
    order = oversample(list(range(len(ids))), lambda i: groups[i], config.seed)
    log.info("oversampling: %d training examples become %d", len(ids), len(order))
    return dataclasses.replace(train, examples=[train.examples[i] for i in order])


def class_weights(config: Any, train: Any) -> list[float] | None:
    """The weight of each class for the cross-entropy (``--class-weights``), counted on the training data."""
    if (config.class_weights or "none").strip().lower() == "none":
        return None
    if train.regression:
        raise UniPELTError("--class-weights needs classes; a regression task has none")
    counts = Counter(i for ids in _label_ids(train) for i in ids)
    return parse_class_weights(config.class_weights, train.label_list or [], counts)
