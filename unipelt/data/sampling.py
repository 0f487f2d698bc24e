"""The paper's low-resource protocol: K training and a separate validation sample drawn from the train split.

Kept apart from the readers so that peer benchmarks can import exactly the same sampling and get the same
examples for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from unipelt.errors import DataError, UniPELTError

T = TypeVar("T")


def k_shot_split(
    train_examples: Sequence[T], k: int, seed: int, n_valid: int = 1000
) -> tuple[list[T], list[T]]:
    """Sample ``k`` training and up to ``n_valid`` validation examples, disjoint, from the training set.

    This is the paper's low-resource protocol: K examples (not K per class) are drawn at random, a separate
    validation set of ``min(n_valid, rest)`` comes from the remaining training data, and the GLUE dev set is used
    as the test set. The same seed always gives the same split; the original file order is kept inside each part.
    """
    n = len(train_examples)
    if k < 1:
        raise UniPELTError(f"k must be at least 1, not {k}.")
    if n_valid < 0:
        raise UniPELTError(f"n_valid must be 0 or more, not {n_valid}.")
    if k > n or (k == n and n_valid > 0):
        raise DataError(
            f"Asked for {k} training examples plus a validation set, but the training set has only {n}. "
            f"Use a smaller k."
        )
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n_valid, n - k)
    train_idx = np.sort(order[:k])
    valid_idx = np.sort(order[k : k + n_val])
    return [train_examples[i] for i in train_idx], [train_examples[i] for i in valid_idx]
