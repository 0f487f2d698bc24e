"""Text generation with a causal-LM run: load it, format prompts with the chat template, generate, score answers.

A causal-LM run folder (written by the run life cycle of :mod:`unipelt.training.run`) holds the run configuration,
the tokenizer with its chat template and the checkpoint (the added modules, or the whole model for ``ft``).
:class:`ChatRun` is the :class:`~unipelt.inference.Run` of such a folder, which also generates; ``eval`` scores it
as any run, through its task kind.

Generation itself (:class:`Sampling`, :func:`generate_texts`, ...) lives in :mod:`unipelt.running.decoding`
and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from unipelt.data.chat import Conversation
from unipelt.devices import Placement
from unipelt.errors import UniPELTError
from unipelt.inference.runs import Run
from unipelt.running.decoding import (
    Sampling,
    answer_metrics,
    context_limit,
    generate_ids,
    generate_texts,
    prompt_ids,
)

__all__ = [
    "ChatRun",
    "Sampling",
    "answer_metrics",
    "context_limit",
    "generate_ids",
    "generate_texts",
    "prompt_ids",
]


class ChatRun(Run):
    """A finished causal-LM run folder: its config, tokenizer (with chat template) and model, which generates."""

    def __init__(self, folder: str | Path, placement: Placement | None = None) -> None:
        super().__init__(folder, placement)
        if self.kind.serves != "generate":
            raise UniPELTError(
                f"{self.folder} is a {self.kind.name} run, not a causal-lm one: use `unipelt predict`"
            )
        if not (self.folder / "tokenizer").exists():
            raise UniPELTError(f"{self.folder} is not a finished unipelt run (no tokenizer)")

    @property
    def answer_choices(self) -> list[str] | None:
        """The short answers its scores are of, when it was trained with them."""
        return self.info.get("answer_choices")

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
