"""What a server knows about each task it answers: name, kind, labels, input shape, score, and how to read its
inputs and write its answers.

A served task comes from a finished run folder (or an ONNX export of one). Its name is the run's GLUE task
(``rte``, ``sst2``, ...) when it has one, else the run folder's name; ``NAME=RUN`` on the command line names it
explicitly, and a name used twice gets ``-2``, ``-3``, ... appended. Inputs are checked here, before they reach
the model, so a bad request is a clear 4xx answer and never an exception in the model's thread.

Two kinds of task are served: :class:`ServedTask` (classification and regression: one answer per text or text
pair) and :class:`TaggedTask` (token classification: a tag per word and entity spans, as ``unipelt predict``
gives them). Rows of tasks of one ``group`` can share a forward; the groups differ in their model head.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unipelt.errors import UniPELTError

SURROGATE = re.compile("[\ud800-\udfff]")


class InputError(UniPELTError):
    """A request the server cannot answer: ``status`` is the HTTP status that says why (400, 404, 413, 422)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_text(text: str, where: str, max_chars: int | None) -> None:
    """Refuse a text over ``max_chars`` characters (413) or one that cannot be encoded as UTF-8 (422), before
    any tokeniser sees it."""
    if max_chars is not None and len(text) > max_chars:
        raise InputError(
            f"{where} has {len(text)} characters; this server takes at most {max_chars} per text "
            "(--max-text-chars)",
            413,
        )
    bad = SURROGATE.search(text)
    if bad is not None:
        raise InputError(
            f"{where} cannot be encoded as UTF-8: a lone surrogate (U+{ord(bad.group()):04X}) at character "
            f"{bad.start()}",
            422,
        )


@dataclass
class Row:
    """One tokenised input of one task, ready to be padded into a batch with rows of any task."""

    task: str
    ids: dict[str, list[int]]
    truncated: bool
    tokens: int  # length before truncation
    detail: Any = None  # what the task's answer needs besides the logits (a tagged sentence's words)

    @property
    def length(self) -> int:
        return len(self.ids["input_ids"])


@dataclass
class ServedTask:
    """One task as a server sees it. ``tokenizer`` is shared by all tasks of one backbone."""

    name: str
    source: str  # the run (or export) folder
    labels: list[str] | None
    regression: bool
    pair: bool
    max_length: int
    tokenizer: Any
    metric: str | None = None
    score: float | None = None
    parameters: dict[str, int] = field(default_factory=dict)

    group = "sequence"  # tasks of one group share a model head, so their rows can share a forward

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.labels or [])

    @property
    def kind(self) -> str:
        return "regression" if self.regression else "classification"

    @property
    def input_shape(self) -> str:
        return "pair" if self.pair else "single"

    def describe(self) -> dict[str, Any]:
        """The task as ``GET /v1/tasks`` lists it."""
        return {
            "name": self.name,
            "run": self.source,
            "kind": self.kind,
            "labels": self.labels,
            "inputs": self.input_shape,
            "max_length": self.max_length,
            "metric": self.metric,
            "score": self.score,
            "parameters": self.parameters,
        }

    def schema_item(self, max_chars: int) -> dict[str, Any]:
        """The JSON schema of one input of this task."""
        text = {"type": "string", "maxLength": max_chars}
        if self.pair:
            return {"type": "array", "items": text, "minItems": 2, "maxItems": 2}
        return text

    def check(self, inputs: Sequence[Any], max_chars: int | None = None) -> None:
        """Refuse inputs of the wrong shape (400) or texts the limits do not take, without tokenising."""
        for i, item in enumerate(inputs):
            texts = [item] if isinstance(item, str) else list(item)
            if not texts or len(texts) > 2 or not all(isinstance(t, str) for t in texts):
                raise InputError(f"inputs[{i}] must be a text or a list of two texts")
            if self.pair and len(texts) != 2:
                raise InputError(
                    f"task {self.name!r} compares two texts: give inputs[{i}] as [text_a, text_b], not one text"
                )
            if not self.pair and len(texts) != 1:
                raise InputError(f"task {self.name!r} takes one text per input; inputs[{i}] has {len(texts)}")
            for j, text in enumerate(texts):
                check_text(text, f"inputs[{i}]" + (f"[{j}]" if self.pair else ""), max_chars)

    def encode(self, inputs: Sequence[Any]) -> list[Row]:
        """Tokenise a request's inputs (text, or [text_a, text_b] for a pair task); over-long ones are truncated
        to the run's ``max_length`` (what training and ``unipelt eval`` used) and flagged."""
        self.check(inputs)
        first = [item if isinstance(item, str) else item[0] for item in inputs]
        second = [None if isinstance(item, str) else item[1] for item in inputs]
        pairs = second if self.pair else None
        full = self.tokenizer(first, pairs, truncation=False)
        lengths = [len(ids) for ids in full["input_ids"]]
        long = [i for i, n in enumerate(lengths) if n > self.max_length]
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in full]
        columns = {k: list(full[k]) for k in keys}
        if long:
            cut = self.tokenizer(
                [first[i] for i in long],
                [second[i] for i in long] if self.pair else None,
                truncation=True,
                max_length=self.max_length,
            )
            for j, i in enumerate(long):
                for k in keys:
                    columns[k][i] = cut[k][j]
        return [
            Row(self.name, {k: columns[k][i] for k in keys}, i in long, lengths[i]) for i in range(len(first))
        ]

    def answer(self, logits: np.ndarray, row: Row) -> dict[str, Any]:
        """The JSON answer for one input from its logits (already cut to this task's outputs)."""
        record: dict[str, Any]
        if self.regression:
            record = {"score": float(logits[0])}
        else:
            shifted = np.exp(logits - logits.max())
            probabilities = shifted / shifted.sum()
            best = int(probabilities.argmax())
            record = {
                "label": self.labels[best],
                "probabilities": {n: round(float(p), 6) for n, p in zip(self.labels, probabilities)},
            }
        if row.truncated:
            record["truncated"] = True
            record["tokens"] = row.tokens
        return record


class TaggedTask(ServedTask):
    """A token-classification task: an input is a sentence (split on whitespace) or a list of words; the answer
    is each word's tag and score and the entity spans, as ``unipelt predict`` writes them for a tagging run."""

    group = "tokens"

    def __post_init__(self) -> None:
        from unipelt.data.token_align import pretokenized_tokenizer

        self.tokenizer = pretokenized_tokenizer(self.tokenizer)  # takes words already split

    @property
    def kind(self) -> str:
        return "token-classification"

    @property
    def input_shape(self) -> str:
        return "words"

    def schema_item(self, max_chars: int) -> dict[str, Any]:
        word = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": "\\S"}
        sentence = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": "\\S"}
        return {"anyOf": [sentence, {"type": "array", "items": word, "minItems": 1}]}

    def check(self, inputs: Sequence[Any], max_chars: int | None = None) -> None:
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

    def encode(self, inputs: Sequence[Any]) -> list[Row]:
        """Words to sub-tokens as training aligned them; words past ``max_length`` are left untagged."""
        from unipelt.data.conll import TokenExample
        from unipelt.data.token_align import encode_words

        self.check(inputs)
        sentences = [
            TokenExample(tuple(item.split() if isinstance(item, str) else item), None) for item in inputs
        ]
        encoding, positions, _ = encode_words(sentences, self.tokenizer, self.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
        rows = []
        for i, sentence in enumerate(sentences):
            ids = {k: list(encoding[k][i]) for k in keys}
            cut = any(p < 0 for p in positions[i])
            rows.append(Row(self.name, ids, cut, len(ids["input_ids"]), (sentence.tokens, positions[i])))
        return rows

    def answer(self, logits: np.ndarray, row: Row) -> dict[str, Any]:
        """Tags, scores and entity spans from a row's (tokens, labels) logits."""
        from unipelt.inference.tagging import decode, entity_spans

        words, positions = row.detail
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        per_word = np.full((len(words), probabilities.shape[-1]), np.nan, dtype=np.float32)
        for w, p in enumerate(positions):
            if p >= 0:
                per_word[w] = probabilities[p]
        tags, scores, cut = decode(per_word, self.labels)
        record: dict[str, Any] = {
            "tokens": list(words),
            "tags": tags,
            "scores": [round(s, 6) for s in scores],
            "entities": entity_spans(words, tags, scores),
        }
        if cut:
            record["words_cut"] = cut
        return record


def served_task(kind: str, **fields: Any) -> ServedTask:
    """The served task of a run of ``kind``; kinds a server cannot answer this way are refused by name."""
    if kind == "token-classification":
        return TaggedTask(**fields)
    if kind in ("classification", "regression"):
        return ServedTask(**fields)
    raise UniPELTError(
        f"{fields.get('source')} is a {kind} run; `unipelt serve` answers it only on its own routes"
    )


def pair_task(config: Any) -> bool:
    """Whether a run's task compares two texts: the GLUE task's columns, or the run's own text columns."""
    from unipelt.data import glue_task, is_glue_task

    if config.task and is_glue_task(config.task):
        return len(glue_task(config.task).text_columns) == 2
    return len(config.text_columns) == 2


def run_score(folder: Path) -> tuple[str | None, float | None]:
    """(metric name, test score, or validation score when there was no test split) from metrics.json."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None, None
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, None
    metric = metrics.get("metric")
    for split in ("test", "valid"):
        value = (metrics.get(split) or {}).get(metric)
        if value is not None:
            return metric, float(value)
    return metric, None


def split_name(spec: str) -> tuple[str | None, Path]:
    """``NAME=RUN`` gives (NAME, RUN); a plain path gives (None, path)."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, Path(rest)
    return None, Path(spec)


def unique_names(wanted: Sequence[str]) -> list[str]:
    """Task names without dots, made unique by appending -2, -3, ... to repeats."""
    names: list[str] = []
    for name in wanted:
        base = name.replace(".", "-") or "task"
        candidate, n = base, 1
        while candidate in names:
            n += 1
            candidate = f"{base}-{n}"
        names.append(candidate)
    return names


def default_name(config: Any, folder: Path) -> str:
    """The run's GLUE task when it has one, else the run folder's name."""
    from unipelt.data import glue_task, is_glue_task

    if config.task and is_glue_task(config.task):
        return glue_task(config.task).name
    return folder.resolve().name
