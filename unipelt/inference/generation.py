"""Text generation with a causal-LM run: load it, format prompts with the chat template, generate, score answers.

A causal-LM run folder (written by the run life cycle of :mod:`unipelt.training.run`) holds the run configuration, the tokenizer
with its chat template and the checkpoint (the added modules, or the whole model for ``ft``). :class:`ChatRun`
rebuilds the model exactly as training built it, through :func:`unipelt.backbones.load_base_model`.

Generation goes through ``model.generate`` (Transformers: KV cache, greedy or sampling, stop at the end-of-turn
token); prompts of a batch are padded on the left so that every row continues right after its own prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from unipelt.backbones import load_base_model, load_tokenizer
from unipelt.data.chat import (
    Conversation,
    check_chat_template,
    choice_of,
    encode_prompt,
    normalise_answer,
    read_chat_file,
)
from unipelt.devices import Placement
from unipelt.errors import UniPELTError
from unipelt.inference.loop import model_device
from unipelt.kinds import get_kind
from unipelt.methods import get_method
from unipelt.model import UniPELTModel
from unipelt.training.run_files import read_labels, read_run_config


@dataclass
class Sampling:
    """How to pick tokens: greedy (``temperature`` 0, the default) or sampling with temperature and top-p."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.max_new_tokens < 1:
            raise UniPELTError(f"--max-new-tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UniPELTError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


def context_limit(model: Any, tokenizer: Any) -> int | None:
    """How many positions the model takes (its config's ``max_position_embeddings``), when it says."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(limit) if limit else None


def prompt_ids(
    tokenizer: Any, conversation: Conversation, limit: int | None, max_new_tokens: int
) -> list[int]:
    """The prompt's token ids; a prompt that leaves no room for ``max_new_tokens`` in the context is refused."""
    ids = encode_prompt(tokenizer, conversation)
    if limit is not None and len(ids) + max_new_tokens > limit:
        raise UniPELTError(
            f"{conversation.source}: the prompt is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} "
            f"it does not fit the model's context of {limit} tokens (shorten it; prompts are not truncated)"
        )
    return ids


def _generate_call(model: Any, task: str | None, **kwargs: Any) -> torch.Tensor:
    if isinstance(model, UniPELTModel):
        return model.generate(task=task, **kwargs)
    return model.generate(**kwargs)


def generate_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    sampling: Sampling,
    *,
    task: str | None = None,
    batch_size: int = 16,
    streamer: Any = None,
) -> list[list[int]]:
    """The new token ids generated after each prompt (left-padded batches of ``batch_size``)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = sampling.generate_kwargs()
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start : start + batch_size]
        width = max(len(r) for r in rows)
        device = model_device(model)
        input_ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.inference_mode():
            out = _generate_call(
                model,
                task,
                input_ids=input_ids,
                attention_mask=mask,
                pad_token_id=pad,
                streamer=streamer,
                **kwargs,
            )
        for row in out[:, width:].tolist():
            outputs.append(_until_end(row, tokenizer, pad))
    return outputs


def _until_end(row: list[int], tokenizer: Any, pad: int) -> list[int]:
    """Generated ids up to (not including) the first end-of-sequence token; the rest is batch padding."""
    ends = {tokenizer.eos_token_id, pad} - {None}
    for index, token in enumerate(row):
        if token in ends:
            return row[:index]
    return row


def generate_texts(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    sampling: Sampling,
    *,
    task: str | None = None,
    batch_size: int = 16,
) -> list[str]:
    """The model's answer to each conversation (its prompt part, through the chat template)."""
    check_chat_template(tokenizer)
    limit = context_limit(model, tokenizer)
    prompts = [prompt_ids(tokenizer, c, limit, sampling.max_new_tokens) for c in conversations]
    new = generate_ids(model, tokenizer, prompts, sampling, task=task, batch_size=batch_size)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]


def answer_metrics(
    generated: Sequence[str], conversations: Sequence[Conversation], choices: Sequence[str] | None
) -> dict[str, float]:
    """Exact match of the normalised answers, and with answer choices the accuracy of the choice each
    generated answer starts with plus the share of answers that name no choice at all."""
    references = [normalise_answer(c.response or "") for c in conversations]
    exact = [normalise_answer(g) == r for g, r in zip(generated, references)]
    metrics = {"exact_match": sum(exact) / len(exact)}
    if choices:
        picked = [choice_of(g, choices) for g in generated]
        metrics["accuracy"] = sum(p == r for p, r in zip(picked, references)) / len(references)
        metrics["no_choice"] = sum(p is None for p in picked) / len(picked)
    return metrics


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
        scoring the run's metrics.json holds (:func:`unipelt.inference.chat_scoring.score_chats`)."""
        from unipelt.inference.chat_scoring import score_chats  # late: chat_scoring imports this module

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
