"""Token classification (tagging, e.g. NER): one tag per word, from CoNLL / JSON-lines files or a Hub dataset."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from unipelt.data.conll import TokenData, is_token_file, load_hub_tokens, load_tokens
from unipelt.data.inputs import read_sentences
from unipelt.data.token_align import tokenize_tagged
from unipelt.errors import UniPELTError
from unipelt.kinds.base import Splits, TaskKind, hold_out
from unipelt.kinds.baseline import majority_class_scores
from unipelt.kinds.imbalance import apply_oversampling
from unipelt.metrics import compute_token_metrics

if TYPE_CHECKING:
    from unipelt.training.config import TrainConfig

log = logging.getLogger("unipelt")


class TokenClassification(TaskKind):
    name = "token-classification"
    head = "token-classification"
    onnx_export = True

    def detect(self, config: TrainConfig) -> bool:
        return (
            config.task is None
            and bool(config.train_file)
            and is_token_file(config.train_file, config.encoding)
        )

    def read_splits(self, config: TrainConfig) -> Splits:
        """Tagged sentences from files or a Hub dataset (such as conll2003); eval tags must be training tags."""
        if config.task is not None:
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
        train, valid = hold_out(config, train, valid)
        return Splits(
            train=apply_oversampling(config, train),
            valid=valid,
            test=test,
            kind=self,
            labels=train.label_list,
        )

    def datasets(
        self, splits: Splits, tokenizer: Any, config: TrainConfig, evaluate_test: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        datasets, cuts = {}, {}
        for name, data in (("train", splits.train), ("valid", splits.valid), ("test", splits.test)):
            if data is None or (name == "test" and not evaluate_test):
                continue
            dataset, report = tokenize_tagged(data.examples, tokenizer, config.max_length)
            message = report.message(data.source, config.max_length)
            if message:
                log.warning(message)
            datasets[name] = dataset
            cuts[name] = {**report.to_dict(), "empty_sentences_skipped": getattr(data, "skipped_empty", 0)}
        return datasets, cuts

    def eval_datasets(self, datasets: dict[str, Any]) -> dict[str, Any]:
        from unipelt.data import in_length_order

        return {name: in_length_order(data) for name, data in datasets.items() if name != "train"}

    def collator(self, tokenizer: Any) -> Any:
        """Pads each batch to its longest row; tag labels are padded with -100."""
        from transformers import DataCollatorForTokenClassification

        from unipelt.data.token_align import pretokenized_tokenizer

        return DataCollatorForTokenClassification(pretokenized_tokenizer(tokenizer))

    def main_metric(self, splits: Splits) -> str:
        return "f1"  # entity-level F1, as seqeval scores it

    def scores(self, splits: Splits, predictions: Any, labels: Any) -> dict[str, float]:
        return compute_token_metrics(predictions, labels, splits.labels or [])

    def compute_metrics(self, splits: Splits) -> Any:
        tags = splits.labels or []

        def compute(prediction: Any) -> dict[str, float]:
            return compute_token_metrics(prediction.predictions, prediction.label_ids, tags)

        return compute

    def result_extra(self, splits: Splits, cuts: dict[str, Any]) -> dict[str, Any]:
        return {
            "majority_class": majority_class_scores(splits),  # every word tagged with the commonest tag
            "train_examples": len(splits.train),
            **({"alignment": cuts} if cuts else {}),
        }

    def auto_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def encode_request(self, tokenizer: Any, texts: list[Any], max_length: int) -> dict[str, Any]:
        """Words (a list, or a whitespace-separated text) aligned to sub-tokens as training aligned them."""
        from unipelt.data.conll import TokenExample
        from unipelt.data.token_align import encode_words

        sentences = [
            TokenExample(tuple(t.split() if isinstance(t, str) else map(str, t)), None) for t in texts
        ]
        encoding, first_positions, _ = encode_words(sentences, tokenizer, max_length)
        return {"encoding": encoding, "word_starts": first_positions}

    def decode_output(self, outputs: np.ndarray, labels: list[str] | None) -> dict[str, Any]:
        """Per-word tag probabilities (words x tags; a row of NaN: a word past the maximum length, tagged O
        with score 0) -> each word's tag and score."""
        tags, scores = [], []
        for row in outputs:
            best = None if np.isnan(row).any() else int(row.argmax())
            tags.append("O" if best is None else (labels or [])[best])
            scores.append(0.0 if best is None else float(row[best]))
        return {"tags": tags, "scores": scores}

    # ------------------------------------------------------------------ using a finished run

    def read_file(
        self, path: str, config: TrainConfig, labels: list[str] | None, encoding: str | None
    ) -> Any:
        return load_tokens(path, config.tag_column, labels, encoding=encoding or config.encoding)

    def read_task(self, task: str, data_dir: str | None, labels: list[str] | None) -> Any:
        return load_hub_tokens(task, "test", labels)  # a tagged Hub dataset's test split

    def prediction_inputs(
        self, source: str, columns: list[str], encoding: str, task: str | None, tag_column: int = -1
    ) -> list[Any]:
        """Sentences to tag: JSON lines with ``tokens``, a CoNLL file, or plain lines (words split on spaces)."""
        return read_sentences(source, tag_column, encoding)

    def prediction_batches(
        self, examples: list[Any], tokenizer: Any, max_length: int
    ) -> tuple[list[Any], Any]:
        """Sentences' words aligned to sub-tokens as training aligned them (the outputs are per sub-token)."""
        from transformers import DataCollatorWithPadding

        from unipelt.running.tagging import as_sentence, word_rows

        rows, _ = word_rows([as_sentence(e) for e in examples], tokenizer, max_length)
        return rows, DataCollatorWithPadding(tokenizer)

    def predictions(self, run: Any, examples: list[Any], progress: bool = False) -> Iterator[dict[str, Any]]:
        """Tags, word scores and entity spans of each sentence (and ``words_cut`` when words were past the run's
        maximum length)."""
        from unipelt.running.tagging import tag_sentences

        return tag_sentences(run.forward, run.preprocessor, examples, run.labels, run.max_length)

    def labelled(self, examples: list[Any]) -> bool:
        return all(e.tags is not None for e in examples)

    def evaluate_run(
        self, run: Any, data: Any, progress: bool = True, task: str | None = None
    ) -> dict[str, float]:
        """seqeval's entity and word scores; words past the maximum length count as tagged O (``words_cut``)."""
        from unipelt.running.tagging import evaluate_tagged

        return evaluate_tagged(run.forward, run.preprocessor, data.examples, run.labels, run.max_length)

    def run_metric(self, metric_kind: str) -> str:
        return "f1"

    def prediction_line(self, record: dict[str, Any], max_length: int) -> str:
        from unipelt.running.tagging import bracketed

        return bracketed(record)  # the sentence with its entities in brackets

    def onnx_axes(self, names: tuple[str, ...]) -> dict[str, dict[int, str]]:
        return {**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch", 1: "sequence"}}
