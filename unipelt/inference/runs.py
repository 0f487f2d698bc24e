"""Using a finished run: load it, evaluate it on any data, predict for new inputs.

A run folder written by :func:`unipelt.training.train` holds everything needed to rebuild its model: the run
configuration (which base model and method), the label names of the head, the tokenizer (or image processor)
and the checkpoint. The base model is built by :func:`unipelt.backbones.load_base_model` exactly as training
built it, so the head has the shape and label map it was trained with. What differs between kinds of task (the
data ``eval`` reads, how outputs are scored and turned into predictions) is asked of the run's task kind
(:mod:`unipelt.kinds`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from unipelt.backbones import load_base_model
from unipelt.data.glue import glue_task, is_glue_task
from unipelt.devices import Placement
from unipelt.errors import UniPELTError
from unipelt.kinds import kind_of_run
from unipelt.methods import get_method
from unipelt.running.loop import model_forward
from unipelt.running.tagging import as_sentence
from unipelt.training.run_files import check_run_folder, read_labels, read_run_config


class Run:
    """A trained run folder: its config, label map, preprocessor and model (UniPELT or fully fine-tuned).

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
        self.info: dict[str, Any] = read_labels(self.folder)  # labels.json
        check_run_folder(self.folder, self.info)
        self.labels: list[str] | None = self.info["labels"]
        self.regression: bool = self.info["regression"]
        self.metric_kind: str = self.info["metric_kind"]  # the GLUE task or the kind whose metrics score it
        self.kind = kind_of_run(self.info)
        self.method = get_method(self.config.method)
        if compile and not self.kind.compiles:
            raise UniPELTError(f"--compile does not apply to {self.kind.name} runs")
        self._model = None
        self._tokenizer = None

    def load(self) -> tuple[torch.nn.Module, Any]:
        """(model in eval mode, preprocessor), loaded on first use."""
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
            self.kind.ready(self._model)
            if self.placement is not None:
                self.placement.place(self._model)
            self._model.eval()
            if self.compile:
                self._model.compile(backend=self.compile)
        return self._model, self._tokenizer

    @property
    def preprocessor(self) -> Any:
        """The run's tokenizer (or image processor)."""
        return self.load()[1]

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def forward(self, batches: Iterable[Mapping[str, Any]]) -> Iterator[np.ndarray]:
        """The model's logits per collated batch (float32 on the host), through the batch loop."""
        return model_forward(self.load()[0])(batches)

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
    def tag_column(self) -> int:
        """The column of a CoNLL input's tags (what the run was trained with)."""
        return self.config.tag_column

    @property
    def task_kind(self) -> str:
        return self.kind.name

    def data(
        self,
        task: str | None = None,
        data_dir: str | None = None,
        path: str | None = None,
        encoding: str | None = None,
    ) -> Any:
        """The run's test split by default; another task's held-out split or a labelled file in the run's format
        otherwise (what each kind reads: :meth:`unipelt.kinds.TaskKind.run_data`)."""
        return self.kind.run_data(self, task, data_dir, path, encoding)

    def logits(self, examples: list[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.kind.outputs(self, examples, batch_size, progress)

    def evaluate(self, data: Any, progress: bool = True, task: str | None = None) -> dict[str, float]:
        """The run's metrics on ``data`` (from :meth:`data`); ``task``: which task of a multi-task model."""
        return self.kind.evaluate_run(self, data, progress, task)

    def predict(self, examples: list[Any], progress: bool = False) -> Iterator[dict[str, Any]]:
        """One record per example: its input and answer (label and class probabilities, a score, or a tagged
        sentence), plus ``truncated`` and the full ``tokens`` count when only its start was read."""
        return self.kind.predictions(self, examples, progress)

    def tag(self, sentences: list[Any]) -> Iterator[dict[str, Any]]:
        """Tags, word scores and entity spans of a tagging run for each sentence (a TokenExample, a list of
        words or a whitespace-separated text)."""
        return self.predict([as_sentence(s) for s in sentences])

    def retention(self, facts: str, task: str | None = None) -> dict[str, Any]:
        """How many facts its base model answers correctly the run still answers (chat runs)."""
        return self.kind.retention(self, facts, task)
