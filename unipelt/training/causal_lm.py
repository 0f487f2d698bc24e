"""Instruction tuning of a decoder LLM: a ``task_type="causal-lm"`` run from JSON-lines chats to a run folder.

The model keeps its own LM head; the loss is the base model's next-token loss on the answer tokens only (labels
-100 elsewhere, :mod:`unipelt.data.chat`). The best checkpoint is the one with the lowest validation loss. At
the end the run reports validation (and test) loss and perplexity, and, when the answers are short labels
(``answer_choices``: given, or detected from the training answers), accuracy and exact match of greedy
generations, all through :func:`unipelt.inference.chat_scoring.score_chats`, which ``unipelt eval`` uses too.
The run folder has the same layout as a classification run (config.json, labels.json, checkpoint/, tokenizer/,
log.jsonl, metrics.json, learning_curves.png), with ``metric_kind`` ``causal-lm`` and the answer choices in
labels.json, so :class:`unipelt.inference.generation.ChatRun` can rebuild it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipelt.checkpoint import atomic_directory, write_json
from unipelt.data.chat import (
    Conversation,
    check_chat_template,
    detect_answer_choices,
    normalise_answer,
    read_chat_file,
    tokenize_conversations,
)
from unipelt.errors import UniPELTError
from unipelt.inference.chat_scoring import score_chats
from unipelt.inference.retention import facts_path, measure_retention, read_facts
from unipelt.training.config import TrainConfig
from unipelt.training.model_card import write_card
from unipelt.training.model_init import wrap_base


@dataclass
class ChatSplits:
    train: list[Conversation]
    valid: list[Conversation]
    test: list[Conversation] | None
    answer_choices: list[str] | None


def _sample(items: list[Conversation], count: int, rng: np.random.Generator) -> list[Conversation]:
    order = sorted(rng.permutation(len(items))[:count])
    return [items[i] for i in order]


def load_chat_splits(config: TrainConfig) -> ChatSplits:
    """Read and check every chat file before anything is written (bad data leaves no half-made run).

    ``k`` keeps K training conversations (seeded); without ``--valid`` the validation set is ``n_valid``
    conversations (at most a tenth) held out of the training file, as for classification files.
    """
    if config.train_file is None:
        raise UniPELTError("a causal-lm run trains on your own chats: give --train FILE.jsonl")
    train = read_chat_file(config.train_file, encoding=config.encoding)
    valid = read_chat_file(config.valid_file, encoding=config.encoding) if config.valid_file else None
    test = read_chat_file(config.test_file, encoding=config.encoding) if config.test_file else None
    rng = np.random.default_rng(config.seed)
    if valid is None:
        n_valid = min(config.n_valid, max(1, len(train) // 10))
        order = rng.permutation(len(train))
        held = set(order[:n_valid].tolist())
        valid = [c for i, c in enumerate(train) if i in held]
        train = [c for i, c in enumerate(train) if i not in held]
    if config.k is not None:
        if config.k > len(train):
            raise UniPELTError(f"--k {config.k} but {config.train_file} has only {len(train)} training chats")
        train = _sample(train, config.k, rng)
    return ChatSplits(train, valid, test, answer_choices(config, train))


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


def build_causal_model(config: TrainConfig) -> tuple[torch.nn.Module, Any, Any]:
    """(model, the UniPELT wrapper or None for ``ft``, tokenizer) with the model's own LM head."""
    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.inject.architectures import architecture_for
    from unipelt.pretrained import resolve_model

    tokenizer = load_tokenizer(resolve_model(config.model))
    check_chat_template(tokenizer)
    base = load_base_model(config.model, "causal-lm", pad_token_id=tokenizer.pad_token_id)
    base.config.use_cache = False  # training: no KV cache (generation turns it back on)
    architecture_for(base)  # an unsupported architecture fails here, for ft as for UniPELT
    if config.method == "ft":
        model, unipelt = base, None
    else:
        unipelt = wrap_base(base, config.method, config.unipelt, config.init_from)
        model = unipelt
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, unipelt, tokenizer


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant checkpointing of a base model or a UniPELT model (gates and prefix see the recomputed
    forward exactly as the first one: the per-call state lives in context variables)."""
    from unipelt.model import UniPELTModel

    if isinstance(model, UniPELTModel):
        model.gradient_checkpointing_enable({"use_reentrant": False})
    elif getattr(model, "supports_gradient_checkpointing", False):
        enable = getattr(
            model, "activation_checkpointing_enable", None
        )  # the newer name in transformers 5.2x
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise UniPELTError(f"{type(model).__name__} does not support gradient checkpointing")


def train_causal_lm(
    config: TrainConfig, resume: bool = False, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Train one causal-LM run into ``config.output_dir`` and return its metrics (also in metrics.json)."""
    import dataclasses

    from transformers import set_seed

    from unipelt.backbones import check_model
    from unipelt.data.chat import ChatCollator
    from unipelt.training.guards import make_divergence_guard, stop_diverged
    from unipelt.training.resume import finished_run, prepare_resume
    from unipelt.training.run_files import read_run_config
    from unipelt.training.trainer import make_trainer_class, run_callbacks, training_arguments

    run_dir = Path(config.output_dir)
    if resume and (run_dir / "config.json").is_file():
        config = dataclasses.replace(read_run_config(run_dir), output_dir=config.output_dir)
    config.validate()
    if (run_dir / "metrics.json").is_file():
        if not resume:
            raise UniPELTError(f"{run_dir} already holds a finished run; choose another --out or delete it")
        return finished_run(run_dir, config)
    if config.threads:
        torch.set_num_threads(config.threads)
    check_model(config.model, "causal-lm")  # a bad path or model kind fails here, before any data is read
    splits = load_chat_splits(config)
    if config.retention:  # a bad facts file fails before training, not after it
        read_facts(facts_path(config.retention))
    set_seed(config.seed)
    model, unipelt, tokenizer = build_causal_model(config)
    datasets = {  # what the Trainer needs; the final scores tokenise their split themselves (score_chats)
        "train": tokenize_conversations(splits.train, tokenizer, config.max_length, packing=config.packing),
        "valid": tokenize_conversations(splits.valid, tokenizer, config.max_length),
    }
    trainer_dir = run_dir / "trainer"
    run_dir.mkdir(parents=True, exist_ok=True)
    main_process = int(os.environ.get("RANK", "0")) == 0
    resume_from = prepare_resume(run_dir, trainer_dir, main_process) if resume else None
    if main_process and not resume_from:
        (run_dir / "log.jsonl").unlink(missing_ok=True)
    info = {
        "labels": None,
        "regression": False,
        "metric_kind": "causal-lm",
        "answer_choices": splits.answer_choices,
    }
    if main_process:
        write_json(
            run_dir / "config.json",
            {**config.to_dict(), "resolved_unipelt": unipelt.unipelt_config.to_dict() if unipelt else None},
        )
        write_json(run_dir / "labels.json", info)

    args = training_arguments(config, trainer_dir, "loss")
    args.metric_for_best_model = "loss"  # lowest validation loss is best
    args.greater_is_better = False
    args.prediction_loss_only = True  # the logits (tokens x vocabulary) are not needed, only the loss
    guard = make_divergence_guard(run_dir, config.on_divergence)
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["valid"],
        data_collator=ChatCollator(tokenizer.pad_token_id),
        callbacks=[*run_callbacks(config, run_dir, unipelt), guard, *callbacks],
        run_config=config,
        divergence_guard=guard,
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.time() - start
    if guard.event is not None and guard.action == "stop":
        stop_diverged(guard, trainer, run_dir, lambda: _save_final(model, unipelt, tokenizer, run_dir, info))

    model.eval()
    base = unipelt.base_model if unipelt is not None else model
    base.config.use_cache = True
    results = {}
    for split in ("valid", "test"):  # the same scoring as `unipelt eval` on the finished run
        if getattr(splits, split) is not None:
            results[split] = score_chats(
                model,
                tokenizer,
                getattr(splits, split),
                splits.answer_choices,
                max_length=config.max_length,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.eval_batch_size,
            )
    metric = "accuracy" if splits.answer_choices else "perplexity"
    result = {
        "task": config.train_file,
        "task_type": "causal-lm",
        "method": config.method,
        "k": config.k,
        "seed": config.seed,
        "metric": metric,
        "answer_choices": splits.answer_choices,
        "valid": results["valid"],
        "test": results.get("test", {}),
        "best_checkpoint_step": _step_of(trainer.state.best_model_checkpoint),
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 2),
        "parameters": unipelt.parameter_counts() if unipelt is not None else _ft_counts(model),
    }
    if config.retention:
        result["retention"] = _retention(config, model, unipelt, tokenizer)
    if trainer.is_world_process_zero():
        _save_final(model, unipelt, tokenizer, run_dir, info)
        _write_learning_curves(run_dir)
        write_json(run_dir / "metrics.json", result)
        write_card(run_dir)  # README.md: the Hub model card of the finished run
        if not config.keep_trainer_checkpoints:
            shutil.rmtree(trainer_dir, ignore_errors=True)
    return result


def _retention(config: TrainConfig, model: Any, unipelt: Any, tokenizer: Any) -> dict[str, Any]:
    """The finished run's retention of the facts file against its base model (the modules switched off)."""
    from unipelt.backbones import load_base_model

    facts = read_facts(facts_path(config.retention))
    base = None
    if unipelt is None:  # full fine-tuning changed the base weights: compare with a fresh copy
        base = load_base_model(config.model, "causal-lm", pad_token_id=tokenizer.pad_token_id).eval()
    return measure_retention(model, tokenizer, facts, base=base, batch_size=config.eval_batch_size)


def _save_final(model: Any, unipelt: Any, tokenizer: Any, run_dir: Path, info: dict[str, Any]) -> None:
    if unipelt is not None:
        unipelt.save_pretrained(run_dir / "checkpoint", extra=info)
    else:
        atomic_directory(run_dir / "checkpoint", lambda folder: model.save_pretrained(folder))
    atomic_directory(run_dir / "tokenizer", lambda folder: tokenizer.save_pretrained(folder))


def _step_of(checkpoint: str | None) -> int | None:
    try:
        return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else None
    except ValueError:
        return None


def _ft_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_with_prefix_mlp": total, "total_without_prefix_mlp": total}


def _write_learning_curves(run_dir: Path) -> None:
    from unipelt.analysis import plot_learning_curves

    if (run_dir / "log.jsonl").is_file():
        plot_learning_curves(run_dir / "log.jsonl", run_dir / "learning_curves.png")
