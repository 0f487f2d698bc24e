"""Instruction tuning of a decoder LLM (``causal-lm``): JSON-lines chats, the model's own LM head.

The loss is the base model's next-token loss on the answer tokens only (:mod:`unipelt.data.chat`); the best
checkpoint has the lowest validation loss. Final scores are loss and perplexity and, when the answers are short
labels (``answer_choices``: given, or detected from the training answers), accuracy and exact match of greedy
generations (:func:`unipelt.inference.chat_scoring.score_chats`, which ``unipelt eval`` uses too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from unipelt.data.chat import (
    ChatCollator,
    Conversation,
    check_chat_template,
    detect_answer_choices,
    is_chat_file,
    normalise_answer,
    read_chat_file,
    tokenize_conversations,
)
from unipelt.errors import UniPELTError
from unipelt.kinds.base import Splits, TaskKind

if TYPE_CHECKING:
    from torch import nn

    from unipelt.training.config import TrainConfig


class CausalLM(TaskKind):
    name = "causal-lm"
    head = "causal-lm"
    greater_is_better = False  # the checkpoint with the lowest validation loss is best
    serves = "generate"  # on the OpenAI-compatible completion routes

    def detect(self, config: TrainConfig) -> bool:
        return config.task is None and bool(config.train_file) and is_chat_file(config.train_file)

    def read_splits(self, config: TrainConfig) -> Splits:
        """Every chat file read and checked; without ``--valid`` ``n_valid`` chats (at most a tenth) are held
        out of the training file, and ``k`` keeps K training chats (seeded)."""
        if config.train_file is None:
            raise UniPELTError("a causal-lm run trains on your own chats: give --train FILE.jsonl")
        train = read_chat_file(config.train_file, encoding=config.encoding)
        valid = read_chat_file(config.valid_file, encoding=config.encoding) if config.valid_file else None
        test = read_chat_file(config.test_file, encoding=config.encoding) if config.test_file else None
        rng = np.random.default_rng(config.seed)
        if valid is None:
            n_valid = min(config.n_valid, max(1, len(train) // 10))
            held = set(rng.permutation(len(train))[:n_valid].tolist())
            valid = [c for i, c in enumerate(train) if i in held]
            train = [c for i, c in enumerate(train) if i not in held]
        if config.k is not None:
            if config.k > len(train):
                raise UniPELTError(
                    f"--k {config.k} but {config.train_file} has only {len(train)} training chats"
                )
            train = [train[i] for i in sorted(rng.permutation(len(train))[: config.k])]
        return Splits(train, valid, test, kind=self, answer_choices=answer_choices(config, train))

    def check_tokenizer(self, tokenizer: Any) -> None:
        check_chat_template(tokenizer)

    def base_model(self, config: TrainConfig, splits: Splits, tokenizer: Any) -> nn.Module:
        from unipelt.backbones import load_base_model
        from unipelt.inject.architectures import architecture_for

        base = load_base_model(config.model, self.head, pad_token_id=tokenizer.pad_token_id)
        base.config.use_cache = False  # training: no KV cache (generation turns it back on)
        architecture_for(base)  # an unsupported architecture fails here, for ft as for UniPELT
        return base

    def datasets(
        self, splits: Splits, tokenizer: Any, config: TrainConfig, evaluate_test: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the Trainer needs; the final scores tokenise their splits themselves (score_chats)."""
        return {
            "train": tokenize_conversations(
                splits.train, tokenizer, config.max_length, packing=config.packing
            ),
            "valid": tokenize_conversations(splits.valid, tokenizer, config.max_length),
        }, {}

    def collator(self, tokenizer: Any) -> Any:
        return ChatCollator(tokenizer.pad_token_id)

    def main_metric(self, splits: Splits) -> str:
        return "accuracy" if splits.answer_choices else "perplexity"

    def checkpoint_metric(self, splits: Splits) -> str:
        return "loss"

    def configure_trainer(self, args: Any) -> None:
        args.prediction_loss_only = True  # the logits (tokens x vocabulary) are not needed, only the loss

    def score(self, context: Any, trainer: Any, evaluate: dict[str, Any]) -> dict[str, dict[str, float]]:
        """The same scoring as ``unipelt eval`` on the finished run, for validation and test chats."""
        from unipelt.inference.chat_scoring import score_chats

        model, splits, config = context.model, context.splits, context.config
        model.eval()
        base = context.unipelt.base_model if context.unipelt is not None else model
        base.config.use_cache = True
        scores: dict[str, Any] = {
            split: score_chats(
                model,
                context.tokenizer,
                getattr(splits, split),
                splits.answer_choices,
                max_length=config.max_length,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.eval_batch_size,
            )
            for split in ("valid", "test")
            if getattr(splits, split) is not None
        }
        if config.retention:  # facts the base model knows, still known after training (metrics.json)
            scores["retention"] = _retention(config, model, context.unipelt, context.tokenizer)
        return scores

    def result_extra(self, splits: Splits, cuts: dict[str, Any]) -> dict[str, Any]:
        return {"answer_choices": splits.answer_choices}

    def gate_report_data(self, evaluate: dict[str, Any]) -> Any:
        return None

    def run_info(self, splits: Splits) -> dict[str, Any]:
        return {**super().run_info(splits), "answer_choices": splits.answer_choices}

    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM


def answer_choices(config: TrainConfig, train: Sequence[Conversation]) -> list[str] | None:
    """The short answers scored by generation: given (comma-separated), detected (``auto``) or none."""
    value = (config.answer_choices or "none").strip()
    if value.lower() == "none":
        return None
    if value.lower() == "auto":
        return detect_answer_choices(train)
    choices = [normalise_answer(part) for part in value.split(",") if part.strip()]
    if len(choices) < 2:
        raise UniPELTError(f"--answer-choices needs at least two comma-separated answers, got {value!r}")
    return choices


def _retention(config: TrainConfig, model: Any, unipelt: Any, tokenizer: Any) -> dict[str, Any]:
    """The finished run's retention of the facts file against its base model (the modules switched off; for
    full fine-tuning a fresh copy of the base model)."""
    from unipelt.backbones import load_base_model
    from unipelt.inference.retention import facts_path, measure_retention, read_facts

    facts = read_facts(facts_path(config.retention))
    base = None
    if unipelt is None:
        base = load_base_model(config.model, "causal-lm", pad_token_id=tokenizer.pad_token_id).eval()
    return measure_retention(model, tokenizer, facts, base=base, batch_size=config.eval_batch_size)
