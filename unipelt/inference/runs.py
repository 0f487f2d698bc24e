"""Using a finished run: load it, evaluate it on any data, predict labels for new texts.

A run folder written by :func:`unipelt.training.train` holds everything needed to rebuild its model: the run
configuration (which base model and method), the label names of the head, the tokenizer and the checkpoint. The
base model is built by :func:`unipelt.backbones.load_base_model` exactly as training built it, so the head has
the shape and label map it was trained with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from unipelt.backbones import load_base_model
from unipelt.data import Example, TaskData, load_glue
from unipelt.data.conll import load_hub_tokens, load_tokens
from unipelt.data.glue import glue_task, is_glue_task
from unipelt.devices import Placement
from unipelt.errors import UniPELTError
from unipelt.inference.tagging import evaluate_tagged, tag_sentences
from unipelt.kinds import kind_of_run
from unipelt.methods import get_method
from unipelt.metrics import compute_task_metrics
from unipelt.running.loop import chunks, logits_and_labels
from unipelt.training.run_files import check_run_folder, read_labels, read_run_config


class Run:
    """A trained run folder: its config, label map, tokenizer and model (UniPELT or fully fine-tuned).

    ``placement`` says where the model goes when it is loaded (default: the CPU, in the dtype it was saved in);
    ``compile`` names a torch.compile backend for it, or is None."""

    def __init__(
        self, folder: str | Path, placement: Placement | None = None, compile: str | None = None
    ) -> None:
        self.folder = Path(folder)
        self.placement = placement
        self.compile = compile
        for name in ("config.json", "labels.json", "checkpoint"):
            if not (self.folder / name).exists():
                raise UniPELTError(
                    f"{self.folder} is not a finished unipelt run (no {name}); give the --out folder of `unipelt train`"
                )
        self.config = read_run_config(self.folder)
        labels = read_labels(self.folder)
        check_run_folder(self.folder, labels)
        self.labels: list[str] | None = labels["labels"]
        self.regression: bool = labels["regression"]
        self.metric_kind: str = labels["metric_kind"]  # the GLUE task or the kind whose metrics score it
        self.kind = kind_of_run(labels)
        self.method = get_method(self.config.method)
        self.is_tagger = self.kind.name == "token-classification"
        self._model = None
        self._tokenizer = None

    def load(self) -> tuple[torch.nn.Module, Any]:
        """(model in eval mode, tokenizer), loaded on first use."""
        if self._model is None:
            hf_logging.set_verbosity_error()
            tokenizer = self.kind.load_preprocessor(self.folder / "tokenizer", local=True)

            def base() -> torch.nn.Module:
                return load_base_model(
                    self.config.model,
                    self.kind.head,
                    labels=self.labels,
                    pad_token_id=getattr(tokenizer, "pad_token_id", None),
                )

            self._tokenizer = tokenizer
            self._model = self.method.load(self.folder / "checkpoint", self.kind, base)
            if self.placement is not None:
                self.placement.place(self._model)
            self._model.eval()
            if self.compile:
                self._model.compile(backend=self.compile)
        return self._model, self._tokenizer

    @property
    def input_columns(self) -> list[str]:
        """The text fields of a prediction input: a GLUE pair task's two field names (e.g. sentence1 and
        sentence2 for RTE), else the run's text columns."""
        if self.config.task is not None and is_glue_task(self.config.task):
            columns = glue_task(self.config.task).hf_text_columns
            if len(columns) == 2:
                return list(columns)
        return list(self.config.text_columns)

    @property
    def task_kind(self) -> str:
        return self.kind.name

    def data(
        self,
        task: str | None = None,
        data_dir: str | None = None,
        path: str | None = None,
        encoding: str | None = None,
    ) -> TaskData:
        """The run's test split by default; another GLUE task split or a file with the run's columns otherwise
        (for a tagging run: a CoNLL / JSON-lines file, or the test split of a tagged Hub dataset)."""
        if self.is_tagger and (path is not None or task is not None or self.config.task is not None):
            if path is not None:
                return load_tokens(
                    path, self.config.tag_column, self.labels, encoding=encoding or self.config.encoding
                )
            return load_hub_tokens(task or self.config.task, "test", self.labels)
        if path is not None:
            return self.kind.read_file(path, self.config, self.labels, encoding)
        task = task or self.config.task
        if task is None:
            if self.config.test_file is None:
                raise UniPELTError(
                    "this run was trained on your own files and has no test file: pass --data FILE"
                )
            return self.data(path=self.config.test_file)
        return load_glue(task, data_dir or self.config.data_dir, "dev")

    def logits(self, examples: list[Example], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        model, tokenizer = self.load()
        items, collate = self.kind.prediction_batches(examples, tokenizer, self.config.max_length)
        batches = chunks(items, collate, batch_size)
        total = -(-len(items) // batch_size)
        batches = tqdm(batches, total=total, disable=not progress, desc="predict", unit="batch")
        return logits_and_labels(model, batches)[0]

    def evaluate(self, data: TaskData, progress: bool = True) -> dict[str, float]:
        if self.is_tagger:
            model, tokenizer = self.load()
            return evaluate_tagged(model, tokenizer, data.examples, self.labels, self.config.max_length)
        if any(e.label is None for e in data.examples):
            raise UniPELTError(f"{data.source} has unlabelled examples; `eval` needs labels (use `predict`)")
        logits = self.logits(data.examples, progress=progress)
        labels = np.array([e.label for e in data.examples])
        return compute_task_metrics(self.metric_kind, logits, labels)

    def tag(self, sentences: list[Any]) -> Iterator[dict[str, Any]]:
        """Tags, word scores and entity spans of a tagging run for each sentence (a TokenExample)."""
        if not self.is_tagger:
            raise UniPELTError(f"{self.folder} is not a token-classification run")
        model, tokenizer = self.load()
        return tag_sentences(model, tokenizer, sentences, self.labels, self.config.max_length)

    def predict(self, examples: list[Example], progress: bool = False) -> Iterator[dict[str, Any]]:
        """One record per example: its label and class probabilities (or score), plus ``truncated`` and its
        full ``tokens`` count when it was longer than the run's ``max_length`` and only its start was read."""
        logits = self.logits(examples, progress=progress)
        tokenizer = self.load()[1]
        if self.regression:
            records = ({"score": float(value)} for value in logits[:, 0])
        else:
            probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
            records = (
                {
                    "label": self.labels[int(row.argmax())],
                    "probabilities": {name: round(float(p), 6) for name, p in zip(self.labels, row)},
                }
                for row in probabilities
            )
        for example, answer in zip(examples, records):
            record = self.kind.input_record(example, tokenizer, self.config.max_length)
            cut = {key: record.pop(key) for key in ("truncated", "tokens") if key in record}
            yield {**record, **answer, **cut}
