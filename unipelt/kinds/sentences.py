"""Sentence (or sentence-pair) classification and regression: GLUE tasks or the user's CSV/TSV/JSONL files."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from unipelt.data import TaskData, in_length_order, k_shot_split, load_glue, load_table, tokenize_examples
from unipelt.data.glue import glue_task
from unipelt.errors import InputError
from unipelt.kinds.base import Splits, TaskKind, class_answer, sample_valid
from unipelt.kinds.baseline import majority_class_scores
from unipelt.kinds.imbalance import apply_oversampling
from unipelt.kinds.serving import Row, check_text
from unipelt.metrics import compute_task_metrics, main_metric

if TYPE_CHECKING:
    from unipelt.training.config import TrainConfig


class SentenceKind(TaskKind):
    """One label (a class, or a number) per text or text pair."""

    onnx_export = True
    serves = "predict"

    def read_splits(self, config: TrainConfig) -> Splits:
        from unipelt.kinds.registry import get_kind  # the data decides: GLUE's STS-B is a regression

        if config.task is not None:
            train = load_glue(config.task, config.data_dir, "train")
            test = load_glue(config.task, config.data_dir, "dev")
            valid = None
        else:
            regression = config.regression or self.regression
            train = load_table(
                config.train_file,
                config.text_columns,
                config.label_column,
                regression=regression,
                encoding=config.encoding,
            )

            def table(path: str | None) -> TaskData | None:
                if path is None:
                    return None
                return load_table(
                    path,
                    config.text_columns,
                    config.label_column,
                    train.label_list,
                    regression=regression,
                    encoding=config.encoding,
                )

            valid, test = table(config.valid_file), table(config.test_file)
        if config.k is not None:
            train_part, valid_part = k_shot_split(train.examples, config.k, config.seed, config.n_valid)
            valid = dataclasses.replace(train, examples=valid_part)
            train = dataclasses.replace(train, examples=train_part)
        elif valid is None and config.task is not None:
            valid = test  # full-data GLUE: the dev set both selects and reports, as in the paper's Table 3
        elif valid is None:
            kept, held = sample_valid(train.examples, config.n_valid, config.seed)
            valid = dataclasses.replace(train, examples=held)
            train = dataclasses.replace(train, examples=kept)
        kind = get_kind("regression" if train.regression else "classification")
        return Splits(
            train=apply_oversampling(config, train),
            valid=valid,
            test=test,
            kind=kind,
            labels=train.label_list,
            glue_task=glue_task(config.task).name if config.task is not None else None,
        )

    def datasets(
        self, splits: Splits, tokenizer: Any, config: TrainConfig, evaluate_test: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        datasets = {
            name: tokenize_examples(data.examples, tokenizer, config.max_length)
            for name, data in (("train", splits.train), ("valid", splits.valid), ("test", splits.test))
            if data is not None and (name != "test" or evaluate_test)
        }
        return datasets, {}

    def eval_datasets(self, datasets: dict[str, Any]) -> dict[str, Any]:
        return {name: in_length_order(data) for name, data in datasets.items() if name != "train"}

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def _scored_as(self, splits: Splits) -> str:
        return splits.glue_task or self.metrics_as

    def main_metric(self, splits: Splits) -> str:
        return main_metric(self._scored_as(splits))

    def scores(self, splits: Splits, predictions: Any, labels: Any) -> dict[str, float]:
        return compute_task_metrics(self._scored_as(splits), predictions, labels)

    def compute_metrics(self, splits: Splits) -> Any:
        scored_as = self._scored_as(splits)

        def compute(prediction: Any) -> dict[str, float]:
            return compute_task_metrics(scored_as, prediction.predictions, prediction.label_ids)

        return compute

    def result_extra(self, splits: Splits, cuts: dict[str, Any]) -> dict[str, Any]:
        # the score of always answering the commonest class
        return {"majority_class": majority_class_scores(splits), "train_examples": len(splits.train)}

    def encode_request(self, tokenizer: Any, texts: list[Any], max_length: int) -> dict[str, Any]:
        first = [t if isinstance(t, str) else t[0] for t in texts]
        second = [None if isinstance(t, str) else t[1] for t in texts]
        pairs = second if any(s is not None for s in second) else None
        return tokenizer(first, pairs, truncation=True, max_length=max_length)

    def serving_group(self) -> str:
        return "sequence"  # classification and regression heads are one model class

    def request_inputs(self, pair: bool) -> str:
        return "pair" if pair else "single"

    def request_schema(self, pair: bool, max_chars: int) -> dict[str, Any]:
        text = {"type": "string", "maxLength": max_chars}
        if pair:
            return {"type": "array", "items": text, "minItems": 2, "maxItems": 2}
        return text

    def check_request(self, inputs: Sequence[Any], pair: bool, max_chars: int | None) -> None:
        """A text per input, or [text_a, text_b] for a task that compares two texts."""
        for i, item in enumerate(inputs):
            texts = [item] if isinstance(item, str) else list(item)
            if not texts or len(texts) > 2 or not all(isinstance(t, str) for t in texts):
                raise InputError(f"inputs[{i}] must be a text or a list of two texts")
            if pair and len(texts) != 2:
                raise InputError(
                    f"this task compares two texts: give inputs[{i}] as [text_a, text_b], not one text"
                )
            if not pair and len(texts) != 1:
                raise InputError(f"this task takes one text per input; inputs[{i}] has {len(texts)}")
            for j, text in enumerate(texts):
                check_text(text, f"inputs[{i}]" + (f"[{j}]" if pair else ""), max_chars)

    def request_rows(
        self, preprocessor: Any, inputs: Sequence[Any], pair: bool, max_length: int, task: str
    ) -> list[Row]:
        """Texts (or pairs) tokenised in full, then the over-long ones again truncated to ``max_length`` (what
        training and ``eval`` read) and flagged with their full token count."""
        first = [item if isinstance(item, str) else item[0] for item in inputs]
        second = [None if isinstance(item, str) else item[1] for item in inputs] if pair else None
        full = preprocessor(first, second, truncation=False)
        lengths = [len(ids) for ids in full["input_ids"]]
        long = [i for i, n in enumerate(lengths) if n > max_length]
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in full]
        columns = {k: list(full[k]) for k in keys}
        if long:
            cut = preprocessor(
                [first[i] for i in long],
                [second[i] for i in long] if second is not None else None,
                truncation=True,
                max_length=max_length,
            )
            for j, i in enumerate(long):
                for k in keys:
                    columns[k][i] = cut[k][j]
        return [
            Row(task, {k: list(columns[k][i]) for k in keys}, i in long, lengths[i])
            for i in range(len(first))
        ]


class Classification(SentenceKind):
    name = "classification"
    metrics_as = "classification"

    def decode_output(self, outputs: np.ndarray, labels: list[str] | None) -> dict[str, Any]:
        return class_answer(outputs, labels)


class Regression(SentenceKind):
    name = "regression"
    metrics_as = "regression"
    head = "regression"
    regression = True

    def decode_output(self, outputs: np.ndarray, labels: list[str] | None) -> dict[str, Any]:
        return {"score": float(outputs[0])}
