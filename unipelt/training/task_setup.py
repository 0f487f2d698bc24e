"""What differs between kinds of task in a training run, kept out of :mod:`unipelt.training.run`: which kind a
run is (``task_type``, inferred from the data when ``auto``), reading tagged sentences for token classification,
tokenising, batching and scoring each kind, and the class-imbalance options (weights, oversampling).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from unipelt.data import TaskData, k_shot_split, tokenize_examples
from unipelt.data.chat import is_chat_file
from unipelt.data.conll import TokenData, is_token_file, load_hub_tokens, load_tokens
from unipelt.data.token_align import tokenize_tagged
from unipelt.errors import UniPELTError
from unipelt.metrics import compute_task_metrics, compute_token_metrics
from unipelt.training.config import TrainConfig
from unipelt.training.imbalance import oversample, parse_class_weights, rarest_tag_group

TOKEN = "token-classification"
log = logging.getLogger("unipelt")


def resolve_task_type(config: TrainConfig) -> str:
    """The run's kind of task: ``config.task_type`` unless ``auto``, then regression with ``--regression``,
    token classification for tagged files (:func:`~unipelt.data.conll.is_token_file`), instruction tuning
    (``causal-lm``) for chat files (:func:`~unipelt.data.chat.is_chat_file`), else classification."""
    if config.task_type != "auto":
        if config.regression and config.task_type != "regression":
            raise UniPELTError(f"--regression contradicts --task-type {config.task_type}")
        return config.task_type
    if config.regression:
        return "regression"
    if config.task is None and config.train_file and is_token_file(config.train_file, config.encoding):
        return TOKEN
    if config.task is None and config.train_file and is_chat_file(config.train_file):
        return "causal-lm"
    return "classification"


def load_token_splits(config: TrainConfig) -> tuple[TokenData, TokenData, TokenData | None]:
    """(train, valid, test) tagged sentences from files or a Hub dataset; eval tags must be training tags."""
    if config.task is not None:  # a Hub dataset such as conll2003
        train = load_hub_tokens(config.task, "train")
        valid = load_hub_tokens(config.task, "validation", train.label_list)
        test = load_hub_tokens(config.task, "test", train.label_list)
    else:
        train = load_tokens(config.train_file, config.tag_column, encoding=config.encoding)

        def other(path: str | None) -> TokenData | None:
            if path is None:
                return None
            return load_tokens(path, config.tag_column, train.label_list, encoding=config.encoding)

        valid, test = other(config.valid_file), other(config.test_file)
    for data in (train, valid, test):
        if data is not None and data.skipped_empty:
            log.warning("%s: %d empty sentences skipped", data.source, data.skipped_empty)
    if len(train.label_list or []) < 2:
        raise UniPELTError(
            f"{train.source}: every word has the tag {train.label_list}; give at least two tags"
        )
    if config.k is not None:
        train_part, valid_part = k_shot_split(train.examples, config.k, config.seed, config.n_valid)
        return (
            dataclasses.replace(train, examples=train_part),
            dataclasses.replace(train, examples=valid_part),
            test,
        )
    if valid is None:
        n_valid = min(config.n_valid, max(1, len(train) // 10))
        order = np.random.default_rng(config.seed).permutation(len(train))
        pick = set(order[:n_valid].tolist())
        valid = dataclasses.replace(train, examples=[e for i, e in enumerate(train.examples) if i in pick])
        train = dataclasses.replace(
            train, examples=[e for i, e in enumerate(train.examples) if i not in pick]
        )
    return train, valid, test


def _label_ids(data: TaskData) -> list[list[int]]:
    """Each example's class ids: its tags for a tagged sentence, its one label otherwise."""
    return [list(e.tags or ()) if hasattr(e, "tags") else [int(e.label)] for e in data.examples]


def apply_oversampling(config: TrainConfig, train: TaskData) -> TaskData:
    """The training data with minority classes repeated up to the majority count (``--oversample``)."""
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


def class_weights(config: TrainConfig, train: TaskData) -> list[float] | None:
    """The weight of each class for the cross-entropy (``--class-weights``), counted on the training data."""
    if (config.class_weights or "none").strip().lower() == "none":
        return None
    if train.regression:
        raise UniPELTError("--class-weights needs classes; a regression task has none")
    counts = Counter(i for ids in _label_ids(train) for i in ids)
    return parse_class_weights(config.class_weights, train.label_list or [], counts)


def tokenize_split(kind: str, data: TaskData, tokenizer: Any, max_length: int) -> tuple[Any, dict[str, int]]:
    """(the split as a ``datasets.Dataset``, what tokenising cut: word counts for tagged sentences, else {})."""
    if kind != TOKEN:
        return tokenize_examples(data.examples, tokenizer, max_length), {}
    dataset, report = tokenize_tagged(data.examples, tokenizer, max_length)
    message = report.message(data.source, max_length)
    if message:
        log.warning(message)
    return dataset, {**report.to_dict(), "empty_sentences_skipped": getattr(data, "skipped_empty", 0)}


def collator(kind: str, tokenizer: Any) -> Any:
    """Pads each batch to its longest row; tag labels are padded with -100."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if kind == TOKEN:
        from unipelt.data.token_align import pretokenized_tokenizer

        return DataCollatorForTokenClassification(pretokenized_tokenizer(tokenizer))
    return DataCollatorWithPadding(tokenizer)


def metrics_function(metric_kind: str, labels: list[str] | None) -> Callable[[Any], dict[str, float]]:
    """The Trainer's ``compute_metrics`` for the run's kind of task."""

    def compute(prediction: Any) -> dict[str, float]:
        if metric_kind == TOKEN:
            return compute_token_metrics(prediction.predictions, prediction.label_ids, labels or [])
        return compute_task_metrics(metric_kind, prediction.predictions, prediction.label_ids)

    return compute
