"""What a server knows about each task it answers: name, labels, input shape, score, and how to read its inputs.

A served task comes from a finished run folder (or an ONNX export of one). Its name is the run's GLUE task
(``rte``, ``sst2``, ...) when it has one, else the run folder's name; ``NAME=RUN`` on the command line names it
explicitly, and a name used twice gets ``-2``, ``-3``, ... appended. Inputs are checked here, before they reach
the model, so a bad request is a clear 4xx answer and never an exception in the model's thread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unipelt.errors import UniPELTError


class InputError(UniPELTError):
    """A request the server cannot answer: ``status`` is the HTTP status that says why (400, 404, 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Row:
    """One tokenised input of one task, ready to be padded into a batch with rows of any task."""

    task: str
    ids: dict[str, list[int]]
    truncated: bool
    tokens: int  # length before truncation


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

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.labels or [])

    def describe(self) -> dict[str, Any]:
        """The task as ``GET /v1/tasks`` lists it."""
        return {
            "name": self.name,
            "run": self.source,
            "kind": "regression" if self.regression else "classification",
            "labels": self.labels,
            "inputs": "pair" if self.pair else "single",
            "max_length": self.max_length,
            "metric": self.metric,
            "score": self.score,
            "parameters": self.parameters,
        }

    def encode(self, inputs: Sequence[Any]) -> list[Row]:
        """Tokenise a request's inputs (text, or [text_a, text_b] for a pair task); over-long ones are truncated
        to the run's ``max_length`` (what training and ``unipelt eval`` used) and flagged."""
        first, second = [], []
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
            first.append(texts[0])
            second.append(texts[1] if self.pair else None)
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
