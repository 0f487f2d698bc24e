"""Scoring a causal-LM model on chats: answer-token loss and perplexity, and the accuracy of generated answers.

One function serves the end of training (the valid / test numbers in metrics.json) and ``unipelt eval`` on a
finished run, so that evaluating a run on its own test file gives back exactly the numbers training wrote.

The loss is the mean cross-entropy over every answer token of the data (token-weighted, so it does not depend on
how rows fall into batches); perplexity is its exponential. With answer choices (short label answers), greedy
generation gives accuracy, exact match and the share of answers that name no choice
(:func:`unipelt.running.decoding.answer_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from unipelt.data.chat import IGNORE, ChatCollator, Conversation, tokenize_conversations
from unipelt.model import UniPELTModel
from unipelt.running.decoding import Sampling, answer_metrics, generate_texts
from unipelt.running.loop import chunks, forward_batches


def answer_loss(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    max_length: int,
    batch_size: int = 16,
    task: str | None = None,
) -> float:
    """Mean next-token cross-entropy over the answer tokens of all conversations."""
    rows = list(tokenize_conversations(list(conversations), tokenizer, max_length))
    collate = ChatCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    extra = {"task": task} if isinstance(model, UniPELTModel) and task is not None else {}
    for loss, batch in forward_batches(
        model, chunks(rows, collate, batch_size), select=_summed_loss, use_cache=False, **extra
    ):
        total += float(loss)
        count += int((batch["labels"][:, 1:] != IGNORE).sum())
    return total / max(count, 1)


def _summed_loss(output: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy of a batch's answer tokens, on the model's device (token t predicts t + 1)."""
    logits = output.logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def score_chats(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    choices: Sequence[str] | None,
    *,
    max_length: int,
    max_new_tokens: int,
    batch_size: int = 16,
    task: str | None = None,
) -> dict[str, float]:
    """loss and perplexity on the answers; with ``choices`` also accuracy, exact match and no-choice share."""
    loss = answer_loss(model, tokenizer, conversations, max_length, batch_size, task)
    scores = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if choices:
        sampling = Sampling(max_new_tokens=max_new_tokens)
        generated = generate_texts(
            model, tokenizer, conversations, sampling, task=task, batch_size=batch_size
        )
        scores.update(answer_metrics(generated, conversations, choices))
    return scores
