"""One training run, for every kind of task and every method: prepare -> build -> fit -> score -> finalise.

The task kind (:mod:`unipelt.kinds`) reads, tokenises, batches and scores the data; the method
(:mod:`unipelt.methods`) builds the model, its optimizer groups, its callbacks and its finish step. What every
run shares is written here once: the saved configuration on ``--resume``, the finished-run check, the run-folder
lock and the refusal of unfinished folders (:mod:`unipelt.training.run_folder`), seeds, RANK, the divergence
guard, the run folder's files and the clean-up. A run leaves:

    RUN/config.json          resolved run configuration
    RUN/labels.json          label names (or regression) of the head, what scores the run
    RUN/checkpoint/          best model: added weights + head (or the full model for ``ft``)
    RUN/tokenizer/           tokenizer of the base model
    RUN/log.jsonl            one line per logging / evaluation step
    RUN/metrics.json         validation and test metrics of the best checkpoint, wall time
    RUN/gates.json|csv|png   gate mean and spread per layer and sub-module (gated methods)
    RUN/learning_curves.png
    RUN/run.lock             the writer's lock (its PID); released when it exits
    RUN/tensorboard/         TensorBoard events (when tensorboard is installed)
    RUN/trainer/             Trainer checkpoints, for ``--resume`` (removed when the run ends)
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unipelt.atomic import DISK_ERRNOS
from unipelt.checkpoint import atomic_directory, write_json
from unipelt.errors import DiskFullError, UniPELTError
from unipelt.kinds import Splits, load_splits, resolve_kind
from unipelt.methods import MethodRun, RunContext, get_method
from unipelt.training.config import TrainConfig
from unipelt.training.data_report import data_report
from unipelt.training.faults import kill_point
from unipelt.training.guards import DIVERGENCE_NAME, make_divergence_guard, stop_diverged
from unipelt.training.model_card import write_card
from unipelt.training.model_init import (
    enable_gradient_checkpointing,
    init_regression_bias,
    regression_output_layer,
    set_backbone_dropout,
)
from unipelt.training.resume import continue_advice, finished_run, prepare_resume, step_of
from unipelt.training.run_files import read_run_config
from unipelt.training.run_folder import FINISHED, RunFolder, main_process
from unipelt.training.trainer import make_trainer_class, run_callbacks, training_arguments, training_device

log = logging.getLogger("unipelt")


def train(
    config: TrainConfig, resume: bool = False, callbacks: Sequence[Any] = (), evaluate_test: bool = True
) -> dict[str, Any]:
    """Train one run into ``config.output_dir`` and return its metrics (also written to metrics.json).

    ``evaluate_test=False`` neither tokenises nor evaluates the test split (hyper-parameter search chooses on
    validation data only); the gate report then uses the validation split. A full, over-quota or read-only
    disk while saving is one :class:`DiskFullError` naming what was being written, the space left and the
    complete checkpoint that ``--resume`` continues from.
    """
    try:
        return _train(config, resume, callbacks, evaluate_test)
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        advice = continue_advice(config.output_dir, error.errno)
        raise DiskFullError.writing(error.filename, error.errno, advice) from error


def _train(
    config: TrainConfig, resume: bool, callbacks: Sequence[Any], evaluate_test: bool
) -> dict[str, Any]:
    """prepare -> build -> fit -> score -> finalise, under the run folder's lock."""
    config = prepare(config, resume)
    with RunFolder(config.output_dir, lock=main_process()) as folder:
        if folder.state() == FINISHED and resume:
            return finished_run(folder.path, config)
        if not resume:
            folder.refuse_without_resume()
        splits = load_splits(config)  # bad data fails here, before the run folder exists
        from transformers import set_seed

        set_seed(config.seed)
        context = build(config, splits, folder.path, evaluate_test)
        folder.create()
        resume_from = start_folder(context, resume)
        trainer, method_run, seconds = fit(context, callbacks, resume_from)
        return finalise(context, trainer, method_run, score(context, trainer, method_run, seconds))


def prepare(config: TrainConfig, resume: bool) -> TrainConfig:
    """The run's configuration: the saved one on ``--resume``, checked, with its task kind resolved."""
    run_dir = Path(config.output_dir)
    if resume and (run_dir / "config.json").is_file():
        config = dataclasses.replace(read_run_config(run_dir), output_dir=config.output_dir)
    config.validate()
    kind = resolve_kind(config)
    if config.task_type == "auto" and kind.name == "causal-lm":
        log.info("%s holds chats: training a causal-lm run", config.train_file)
        config = dataclasses.replace(config, task_type=kind.name)
    training_device(config)  # a device this machine lacks fails here, before anything is read (sets threads)
    from unipelt.backbones import check_model

    check_model(config.model, kind.head)  # a bad path or a model of another kind fails here, before any data
    return config


def build_model(config: TrainConfig, splits: Splits | None = None) -> tuple[torch.nn.Module, Any, Any]:
    """(model, the UniPELT model or None for a method that trains the base model, tokenizer): the base model
    with a fresh head sized from the data, as the method makes it."""
    from unipelt.pretrained import resolve_model

    kind = splits.kind if splits is not None else resolve_kind(config)
    method = get_method(config.method)
    tokenizer = kind.load_preprocessor(resolve_model(config.model))
    kind.check_tokenizer(tokenizer)
    base = kind.base_model(config, splits, tokenizer)
    if config.backbone_dropout is not None:  # before wrapping: the added modules keep their own dropout
        set_backbone_dropout(base, config.backbone_dropout)
    model, unipelt = method.build(base, config)
    if splits is not None and splits.regression and method.regression_start(config) == "label-mean":
        labels = [float(example.label) for example in splits.train.examples]
        init_regression_bias(regression_output_layer(model, unipelt), labels)
    if unipelt is not None and config.gate_init_std is not None:
        from unipelt.gates.init import init_gate_weights

        init_gate_weights(unipelt, config.gate_init_std)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, unipelt, tokenizer


def build(config: TrainConfig, splits: Splits, run_dir: Path, evaluate_test: bool) -> RunContext:
    """The model, its tokenised data, the collator and the metrics of one run."""
    from unipelt.kinds.imbalance import class_weights

    kind = splits.kind
    model, unipelt, tokenizer = build_model(config, splits)
    weights = class_weights(config, splits.train)
    if unipelt is not None and weights is not None:  # saved with the task in its checkpoint
        unipelt.tasks[unipelt.active_task].class_weights = torch.tensor(weights)
    datasets, cuts = kind.datasets(splits, tokenizer, config, evaluate_test)
    return RunContext(
        config=config,
        run_dir=run_dir,
        model=model,
        unipelt=unipelt,
        tokenizer=tokenizer,
        kind=kind,
        splits=splits,
        datasets=datasets,
        collate=kind.collator(tokenizer),
        compute_metrics=kind.compute_metrics(splits),
        class_weights=weights,
        cuts=cuts,
        evaluate=kind.eval_datasets(datasets),
    )


def start_folder(context: RunContext, resume: bool) -> Path | None:
    """Write config.json and labels.json; on ``--resume`` clean up after the kill and return the checkpoint
    to continue from. Under torchrun only rank 0 writes."""
    run_dir, writer = context.run_dir, main_process()
    resume_from = prepare_resume(run_dir, run_dir / "trainer", writer) if resume else None
    if writer:
        if not resume_from:
            (run_dir / "log.jsonl").unlink(missing_ok=True)
        (run_dir / DIVERGENCE_NAME).unlink(missing_ok=True)  # a new attempt: the old event no longer holds
        resolved = context.unipelt.unipelt_config.to_dict() if context.unipelt is not None else None
        write_json(run_dir / "config.json", {**context.config.to_dict(), "resolved_unipelt": resolved})
        write_json(run_dir / "labels.json", context.kind.run_info(context.splits))
    return resume_from


def fit(
    context: RunContext, callbacks: Sequence[Any], resume_from: Path | None
) -> tuple[Any, MethodRun, float]:
    """Train with the Trainer; returns (trainer, the method's part of the run, training seconds)."""
    config, kind, run_dir = context.config, context.kind, context.run_dir
    method_run = get_method(config.method).attach(context)
    args = training_arguments(config, run_dir / "trainer", kind.checkpoint_metric(context.splits))
    args.greater_is_better = kind.greater_is_better
    kind.configure_trainer(args)
    guard = make_divergence_guard(run_dir, config.on_divergence)
    evaluate = context.evaluate
    trainer = make_trainer_class()(
        model=context.model,
        args=args,
        train_dataset=context.datasets["train"],
        eval_dataset=evaluate["valid"],
        data_collator=context.collate,
        compute_metrics=context.compute_metrics,
        callbacks=[
            *run_callbacks(config, run_dir, context.unipelt),
            guard,
            *method_run.callbacks,
            *callbacks,
        ],
        run_config=config,
        divergence_guard=guard,
    )
    trainer.class_weights = context.class_weights  # for ft, whose loss is the base model's own
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except ValueError as error:
        if resume_from is None or "parameter groups" not in str(error):
            raise
        raise UniPELTError(
            f"{resume_from} was saved with other optimizer groups than this run's configuration makes (was "
            f"{run_dir / 'config.json'} edited?); start the run again without --resume"
        ) from error
    seconds = trainer.train_seconds  # over every session of a resumed run
    if guard.event is not None and guard.action == "stop":
        stop_diverged(guard, trainer, run_dir, lambda: save_final(context))
    return trainer, method_run, seconds


def score(context: RunContext, trainer: Any, method_run: MethodRun, seconds: float) -> dict[str, Any]:
    """The metrics of the best checkpoint, as metrics.json holds them."""
    config, kind, splits = context.config, context.kind, context.splits
    scores = kind.score(context, trainer, context.evaluate)
    return {
        "task": config.task or config.train_file,
        "task_type": kind.name,
        "method": config.method,
        "k": config.k,
        "seed": config.seed,
        "metric": kind.main_metric(splits),
        "valid": scores.get("valid", {}),
        "test": scores.get("test", {}),
        "best_checkpoint_step": step_of(trainer.state.best_model_checkpoint),
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 2),
        "parameters": get_method(config.method).parameter_counts(context.model),
        "data": data_report(splits),  # classes found, label spellings merged, empty texts
        "class_weights": context.class_weights,
        **kind.result_extra(splits, context.cuts),
        **({"retention": scores["retention"]} if "retention" in scores else {}),
    }


def save_final(context: RunContext) -> None:
    """RUN/checkpoint (as the method saves it, with the kind's run info) and RUN/tokenizer."""
    info = context.kind.run_info(context.splits)
    get_method(context.config.method).save(context.model, context.run_dir / "checkpoint", info)
    atomic_directory(context.run_dir / "tokenizer", lambda folder: context.tokenizer.save_pretrained(folder))


def finalise(
    context: RunContext, trainer: Any, method_run: MethodRun, result: dict[str, Any]
) -> dict[str, Any]:
    """Save the best model, let the method finish (autopelt prunes and folds), write the reports and
    metrics.json, and remove the Trainer checkpoints."""
    if not trainer.is_world_process_zero():
        return result
    run_dir = context.run_dir
    save_final(context)
    result = method_run.finish(result)
    kill_point("final-checkpoint")
    report_data = context.kind.gate_report_data(context.evaluate)
    if context.unipelt is not None and report_data is not None:
        _write_gate_report(context.unipelt, trainer, report_data, run_dir)
    _write_learning_curves(run_dir)
    write_json(run_dir / "metrics.json", result)
    write_card(run_dir)  # README.md: the Hub model card of the finished run
    kill_point("final-metrics")
    if not context.config.keep_trainer_checkpoints:
        shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    return result


def _write_gate_report(unipelt: Any, trainer: Any, dataset: Any, run_dir: Path) -> None:
    from unipelt.analysis import collect_gate_stats, plot_gate_heatmap

    if not unipelt.gate_parameters():
        return  # ungated method: nothing to show
    stats = collect_gate_stats(unipelt, trainer.get_eval_dataloader(dataset))
    stats.save(run_dir)
    plot_gate_heatmap(stats, run_dir / "gates.png")


def _write_learning_curves(run_dir: Path) -> None:
    from unipelt.analysis import plot_learning_curves

    if (run_dir / "log.jsonl").is_file():
        plot_learning_curves(run_dir / "log.jsonl", run_dir / "learning_curves.png")
