"""Token classification (tagging, e.g. NER): one tag per word, from CoNLL / JSON-lines files or a Hub dataset."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from unipelt.data import in_length_order
from unipelt.data.conll import TokenData, TokenExample, is_token_file, load_hub_tokens, load_tokens
from unipelt.data.inputs import read_sentences
from unipelt.data.token_align import encode_words, pretokenized_tokenizer, tokenize_tagged
from unipelt.errors import InputError, UniPELTError
from unipelt.kinds.base import Splits, TaskKind, own_splits
from unipelt.kinds.baseline import majority_class_scores
from unipelt.kinds.serving import Row, check_text
from unipelt.metrics import compute_token_metrics

if TYPE_CHECKING:
    from unipelt.training.config import TrainConfig

log = logging.getLogger("unipelt")


class TokenClassification(TaskKind):
    name = "token-classification"
    head = "token-classification"
    onnx_export = True
    serves = "predict"

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
        return own_splits(self, config, train, valid, test)

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
        return {name: in_length_order(data) for name, data in datasets.items() if name != "train"}

    def collator(self, tokenizer: Any) -> Any:
        """Pads each batch to its longest row; tag labels are padded with -100."""
        from transformers import DataCollatorForTokenClassification

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

    # ------------------------------------------------------------------ serving: a tag per word

    def serving_preprocessor(self, preprocessor: Any) -> Any:
        return pretokenized_tokenizer(preprocessor)  # takes words already split

    def request_inputs(self, pair: bool) -> str:
        return "words"

    def request_schema(self, pair: bool, max_chars: int) -> dict[str, Any]:
        word = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": "\\S"}
        sentence = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": "\\S"}
        return {"anyOf": [sentence, {"type": "array", "items": word, "minItems": 1}]}

    def check_request(self, inputs: Sequence[Any], pair: bool, max_chars: int | None) -> None:
        """A sentence (split on whitespace) or a list of words per input, none of them empty."""
        for i, item in enumerate(inputs):
            words = item.split() if isinstance(item, str) else item
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise InputError(f"inputs[{i}] must be a sentence or a list of words")
            if not words or not all(w.strip() for w in words):
                raise InputError(f"inputs[{i}] has no words to tag (or an empty word)")
            if isinstance(item, str):
                check_text(item, f"inputs[{i}]", max_chars)
            else:
                for j, word in enumerate(words):
                    check_text(word, f"inputs[{i}][{j}]", max_chars)
                if max_chars is not None and sum(len(w) for w in words) > max_chars:
                    check_text(" ".join(words), f"inputs[{i}]", max_chars)

    def request_rows(
        self, preprocessor: Any, inputs: Sequence[Any], pair: bool, max_length: int, task: str
    ) -> list[Row]:
        """Words to sub-tokens as training aligned them; words past ``max_length`` are left untagged."""
        encoded = self.encode_request(preprocessor, list(inputs), max_length)
        encoding, starts = encoded["encoding"], encoded["word_starts"]
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
        rows = []
        for i, item in enumerate(inputs):
            words = tuple(item.split() if isinstance(item, str) else item)
            ids = {k: list(encoding[k][i]) for k in keys}
            cut = any(p < 0 for p in starts[i])
            rows.append(Row(task, ids, cut, len(ids["input_ids"]), (words, starts[i])))
        return rows

    def answer(self, outputs: np.ndarray, row: Row, labels: list[str] | None) -> dict[str, Any]:
        """Each word's tag and score, and the entity spans, from the row's (tokens, tags) logits."""
        from unipelt.running.tagging import entity_spans

        words, starts = row.detail
        shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        per_word = np.full((len(words), probabilities.shape[-1]), np.nan, dtype=np.float32)
        for w, p in enumerate(starts):
            if p >= 0:
                per_word[w] = probabilities[p]
        decoded = self.decode_output(per_word, labels)
        record: dict[str, Any] = {
            "tokens": list(words),
            "tags": decoded["tags"],
            "scores": [round(s, 6) for s in decoded["scores"]],
            "entities": entity_spans(words, decoded["tags"], decoded["scores"]),
        }
        cut = sum(p < 0 for p in starts)
        if cut:
            record["words_cut"] = cut
        return record
