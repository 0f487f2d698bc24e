"""What a server knows about each task it answers: name, kind, labels, input shape, score, and how to read its
inputs and write its answers.

A served task comes from a finished run folder (or an ONNX export of one). Its name is the run's GLUE task
(``rte``, ``sst2``, ...) when it has one, else the run folder's name; ``NAME=RUN`` on the command line names it
explicitly, and a name used twice gets ``-2``, ``-3``, ... appended. Inputs are checked here, before they reach
the model, so a bad request is a clear 4xx answer and never an exception in the model's thread.

What the inputs and answers of a task look like is its task kind's business (:mod:`unipelt.kinds`: the
``serves``, ``request_*`` and ``answer`` hooks); :class:`ServedTask` holds one run's part (name, labels, input
shape, preprocessor) and asks its kind for the rest. Rows of tasks of one ``group`` can share a forward; the
groups differ in their model head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unipelt.errors import InputError, UniPELTError
from unipelt.kinds import TaskKind, get_kind, kind_of_run
from unipelt.kinds.serving import Row, check_text

__all__ = [
    "InputError",
    "Row",
    "ServedTask",
    "check_text",
    "default_name",
    "pair_task",
    "run_score",
    "served_task",
    "split_name",
    "unique_names",
]


@dataclass
class ServedTask:
    """One task as a server sees it. ``tokenizer`` is the run's preprocessor (a tokenizer, or an image
    processor), shared by the tasks of one backbone; ``task_kind`` defaults to classification or regression."""

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
    task_kind: TaskKind | None = None

    def __post_init__(self) -> None:
        if self.task_kind is None:
            self.task_kind = kind_of_run({"regression": self.regression})
        self.tokenizer = self.task_kind.serving_preprocessor(self.tokenizer)

    @property
    def group(self) -> str:
        """Tasks of one group share a model (one head class), so their rows can share a forward."""
        return self.task_kind.serving_group()

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.labels or [])

    @property
    def kind(self) -> str:
        return self.task_kind.name

    @property
    def input_shape(self) -> str:
        return self.task_kind.request_inputs(self.pair)

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
        return self.task_kind.request_schema(self.pair, max_chars)

    def check(self, inputs: Sequence[Any], max_chars: int | None = None) -> None:
        """Refuse inputs of the wrong shape (400) or that the limits do not take (413, 422), before encoding."""
        self.task_kind.check_request(inputs, self.pair, max_chars)

    def encode(self, inputs: Sequence[Any]) -> list[Row]:
        """A request's inputs as rows, encoded as the run's training encoded them; over-long texts are cut to
        the run's ``max_length`` (what training and ``unipelt eval`` used) and flagged."""
        self.check(inputs)
        return self.task_kind.request_rows(self.tokenizer, inputs, self.pair, self.max_length, self.name)

    def answer(self, logits: np.ndarray, row: Row) -> dict[str, Any]:
        """The JSON answer for one input from its logits (already cut to this task's outputs)."""
        return self.task_kind.answer(logits, row, self.labels)


def served_task(kind: str | TaskKind, **fields: Any) -> ServedTask:
    """The served task of a run of ``kind`` (an object or its name); a kind that POST /v1/predict does not
    answer is refused by name."""
    task_kind = get_kind(kind) if isinstance(kind, str) else kind
    if task_kind.serves == "predict":
        return ServedTask(task_kind=task_kind, **fields)
    source = fields.get("source")
    if task_kind.serves is None:
        raise UniPELTError(f"{source} is a {task_kind.name} run: `unipelt serve` cannot answer it")
    raise UniPELTError(
        f"{source} is a {task_kind.name} run; `unipelt serve` answers it only on its own routes"
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
