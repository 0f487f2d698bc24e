"""Text generation with a causal-LM run: load it, format prompts with the chat template, generate, score answers.

A causal-LM run folder (written by the run life cycle of :mod:`unipelt.training.run`) holds the run configuration, the tokenizer
with its chat template and the checkpoint (the added modules, or the whole model for ``ft``). :class:`ChatRun`
rebuilds the model exactly as training built it, through :func:`unipelt.backbones.load_base_model`.

Generation itself (:class:`Sampling`, :func:`generate_texts`, ...) lives in :mod:`unipelt.running.decoding`
and is re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from unipelt.backbones import load_base_model, load_tokenizer
from unipelt.data.chat import Conversation, read_chat_file
from unipelt.devices import Placement
from unipelt.errors import UniPELTError
from unipelt.kinds import get_kind
from unipelt.methods import get_method
from unipelt.running.chat_scoring import score_chats
from unipelt.running.decoding import (
    Sampling,
    answer_metrics,
    context_limit,
    generate_ids,
    generate_texts,
    prompt_ids,
)
from unipelt.training.run_files import read_labels, read_run_config

__all__ = [
    "ChatRun",
    "Sampling",
    "answer_metrics",
    "context_limit",
    "generate_ids",
    "generate_texts",
    "is_chat_run",
    "prompt_ids",
]


def is_chat_run(folder: str | Path) -> bool:
    """Whether a run folder holds a causal-LM run (its labels.json says ``metric_kind`` ``causal-lm``)."""
    try:
        info = json.loads((Path(folder) / "labels.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # not a run, or a damaged one: the classification path reports it
    return isinstance(info, dict) and info.get("metric_kind") == "causal-lm"


class ChatRun:
    """A finished causal-LM run folder: its config, tokenizer (with chat template) and model."""

    def __init__(self, folder: str | Path, placement: Placement | None = None) -> None:
        self.folder = Path(folder)
        self.placement = placement  # where the model goes when loaded (default: the CPU, as saved)
        for name in ("config.json", "labels.json", "checkpoint", "tokenizer"):
            if not (self.folder / name).exists():
                raise UniPELTError(
                    f"{self.folder} is not a finished unipelt run (no {name}); give the --out folder of "
                    "`unipelt train --task-type causal-lm`"
                )
        self.config = read_run_config(self.folder)
        info = read_labels(self.folder)
        if info.get("metric_kind") != "causal-lm":
            raise UniPELTError(
                f"{self.folder} is a {info.get('metric_kind')} run, not a causal-lm one: use `unipelt predict`"
            )
        self.answer_choices: list[str] | None = info.get("answer_choices")
        self._model: Any = None
        self._tokenizer: Any = None

    def load(self) -> tuple[Any, Any]:
        """(model in eval mode, tokenizer), loaded on first use."""
        if self._model is None:
            hf_logging.set_verbosity_error()
            tokenizer = load_tokenizer(self.folder / "tokenizer", local=True)
            kind = get_kind("causal-lm")

            def base() -> Any:
                return load_base_model(self.config.model, kind.head, pad_token_id=tokenizer.pad_token_id)

            self._tokenizer = tokenizer
            self._model = get_method(self.config.method).load(self.folder / "checkpoint", kind, base)
            self._model.config.use_cache = True
            if self.placement is not None:
                self.placement.place(self._model)
            self._model.eval()
        return self._model, self._tokenizer

    def task_names(self) -> list[str]:
        model, _ = self.load()
        return list(model.tasks) if hasattr(model, "tasks") else []

    def check_task(self, task: str | None) -> str | None:
        if task is None:
            return None
        names = self.task_names()
        if task not in names:
            raise UniPELTError(f"{self.folder} has no task {task!r}; its tasks: {', '.join(names) or 'none'}")
        return task

    def data(self, path: str | None = None) -> list[Conversation]:
        """Chats to evaluate on: a JSON-lines file with answers, else the run's own test file."""
        path = path or self.config.test_file
        if path is None:
            raise UniPELTError(f"{self.folder} was trained without a test file: pass --data CHATS.jsonl")
        return read_chat_file(path, encoding=self.config.encoding)

    def evaluate(self, conversations: Sequence[Conversation], task: str | None = None) -> dict[str, float]:
        """Answer loss and perplexity, and with the run's answer choices the accuracy of greedy answers: the
        scoring the run's metrics.json holds (:func:`unipelt.running.chat_scoring.score_chats`)."""
        model, tokenizer = self.load()
        return score_chats(
            model,
            tokenizer,
            conversations,
            self.answer_choices,
            max_length=self.config.max_length,
            max_new_tokens=self.config.max_new_tokens,
            batch_size=self.config.eval_batch_size,
            task=self.check_task(task),
        )

    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling, task: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """One record per conversation: the prompt, the generated answer and the reference answer if any."""
        model, tokenizer = self.load()
        task = self.check_task(task)
        for conversation in conversations:
            text = generate_texts(model, tokenizer, [conversation], sampling, task=task)[0]
            record: dict[str, Any] = {"messages": conversation.prompt_messages, "generated": text}
            if conversation.response is not None:
                record["reference"] = conversation.response
            yield record
