"""Instruction tuning of a decoder LLM (``causal-lm``): JSON-lines chats, the model's own LM head.

The loss is the base model's next-token loss on the answer tokens only (:mod:`unipelt.data.chat`); the best
checkpoint has the lowest validation loss. Final scores are loss and perplexity and, when the answers are short
labels (``answer_choices``: given, or detected from the training answers), accuracy and exact match of greedy
generations (:func:`unipelt.running.chat_scoring.score_chats`, which ``unipelt eval`` uses too).
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
from unipelt.data.examples import TaskData
from unipelt.errors import UniPELTError
from unipelt.kinds.base import Splits, TaskKind

if TYPE_CHECKING:
    from torch import nn

    from unipelt.training.config import TrainConfig


class CausalLM(TaskKind):
    name = "causal-lm"
    head = "causal-lm"
    greater_is_better = False  # the checkpoint with the lowest validation loss is best
    onnx_reason = "generation is served with PyTorch only: its decoding loop is not one graph"
    compiles = False
    example_noun = "conversations"
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
        from unipelt.running.chat_scoring import score_chats  # torch: loaded by a run, not by the CLI

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
            scores["retention"] = _retention(
                config, model, context.unipelt, context.tokenizer, config.retention
            )
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

    # ------------------------------------------------------------------ using a finished run

    def ready(self, model: nn.Module) -> None:
        model.config.use_cache = True  # generation: the KV cache that training turned off

    def run_data(
        self, run: Any, task: str | None, data_dir: str | None, path: str | None, encoding: str | None
    ) -> TaskData:
        """Chats with answers: ``path``, else the run's own test file (GLUE tasks do not apply)."""
        if data_dir or (task and not path):
            raise UniPELTError(
                f"{run.folder} is a causal-lm run: evaluate it on chats with --data FILE.jsonl (GLUE tasks do not "
                "apply)"
            )
        path = path or run.config.test_file
        if path is None:
            raise UniPELTError(f"{run.folder} was trained without a test file: pass --data CHATS.jsonl")
        conversations = read_chat_file(path, encoding=encoding or run.config.encoding)
        return TaskData(conversations, None, False, str(path))

    def evaluate_run(
        self, run: Any, data: Any, progress: bool = True, task: str | None = None
    ) -> dict[str, float]:
        """Answer loss and perplexity, and with the run's answer choices the accuracy of greedy answers: the
        scoring of the run's metrics.json. ``task`` names the task of a multi-task model that answers."""
        from unipelt.running.chat_scoring import score_chats  # torch: loaded by a run, not by the CLI

        model, tokenizer = run.load()
        return score_chats(
            model,
            tokenizer,
            data.examples,
            run.info.get("answer_choices"),
            max_length=run.config.max_length,
            max_new_tokens=run.config.max_new_tokens,
            batch_size=run.config.eval_batch_size,
            task=_task_of(run, model, task),
        )

    def retention(self, run: Any, facts: str, task: str | None = None) -> dict[str, Any]:
        """The run's retention of the facts file against its base model (see :func:`_retention`)."""
        from unipelt.running.retention import facts_path  # torch: loaded by a run, not by the CLI

        model, tokenizer = run.load()
        unipelt = model if hasattr(model, "disabled") else None
        result = _retention(run.config, model, unipelt, tokenizer, facts, _task_of(run, model, task), 16)
        return {"file": str(facts_path(facts)), **result}


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


def _task_of(run: Any, model: Any, task: str | None) -> str | None:
    """``task`` checked against the tasks of the run's model (None: the model's only or merged task)."""
    if task is None:
        return None
    names = list(model.tasks) if hasattr(model, "tasks") else []
    if task not in names:
        raise UniPELTError(f"{run.folder} has no task {task!r}; its tasks: {', '.join(names) or 'none'}")
    return task


def _retention(
    config: TrainConfig,
    model: Any,
    unipelt: Any,
    tokenizer: Any,
    facts: str,
    task: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The retention of the facts file (``facts``: a path, or ``facts`` for the packaged one) against the base
    model: the modules switched off, or for full fine-tuning a fresh copy of the base model."""
    from unipelt.backbones import load_base_model
    from unipelt.running.retention import facts_path, measure_retention, read_facts

    base = None
    if unipelt is None:
        base = load_base_model(config.model, "causal-lm", pad_token_id=tokenizer.pad_token_id).eval()
    return measure_retention(
        model,
        tokenizer,
        read_facts(facts_path(facts)),
        base=base,
        task=task,
        batch_size=batch_size or config.eval_batch_size,
    )
