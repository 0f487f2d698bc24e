"""Decoding with a causal LM: prompts through the chat template, left-padded batches, ``model.generate``.

Generation goes through ``model.generate`` (Transformers: KV cache, greedy or sampling, stop at the end-of-turn
token); prompts of a batch are padded on the left so that every row continues right after its own prompt.
These are the pieces that scoring a causal-LM run, measuring retention, ``generate`` and ``serve`` share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unipelt.data.chat import Conversation, check_chat_template, choice_of, encode_prompt, normalise_answer
from unipelt.errors import UniPELTError
from unipelt.model import UniPELTModel
from unipelt.running.loop import model_device


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
