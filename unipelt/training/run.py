"""One training run on GLUE or on the user's own files, from data to a finished run folder.

:func:`train` reads and checks all data first (bad data leaves no half-made run behind), builds the base model
with a head sized from the data (wrapped by UniPELT unless ``ft``), trains it with the Trainer of
:mod:`unipelt.training.trainer`, and leaves a run folder that says what happened:

    RUN/config.json          resolved run configuration
    RUN/labels.json          label names (or regression) of the head
    RUN/checkpoint/          best model: added weights + head (or the full model for ``ft``)
    RUN/tokenizer/           tokenizer of the base model
    RUN/log.jsonl            one line per logging / evaluation step
    RUN/metrics.json         validation and test metrics of the best checkpoint, wall time
    RUN/gates.json|csv|png   gate mean and spread per layer and sub-module on the test set
    RUN/learning_curves.png
    RUN/tensorboard/         TensorBoard events (when tensorboard is installed)
    RUN/trainer/             Trainer checkpoints, for ``--resume`` (removed when the run ends)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipelt.atomic import DISK_ERRNOS
from unipelt.checkpoint import atomic_directory, write_json
from unipelt.data import TaskData, glue_task, in_length_order, k_shot_split, load_glue, load_table
from unipelt.errors import DiskFullError, UniPELTError
from unipelt.metrics import main_metric
from unipelt.training.baseline import majority_class_scores
from unipelt.training.config import TrainConfig
from unipelt.training.data_report import data_report
from unipelt.training.faults import kill_point
from unipelt.training.guards import make_divergence_guard, stop_diverged
from unipelt.training.model_card import write_card
from unipelt.training.model_init import (
    init_regression_bias,
    regression_output_layer,
    set_backbone_dropout,
    wrap_base,
)
from unipelt.training.resume import continue_advice, finished_run, prepare_resume
from unipelt.training.run_files import read_run_config
from unipelt.training.task_setup import class_weights, collator, metrics_function, tokenize_split
from unipelt.training.trainer import make_trainer_class, run_callbacks, training_arguments, training_device

log = logging.getLogger("unipelt")


@dataclass
class Splits:
    train: TaskData
    valid: TaskData
    test: TaskData | None
    metric_kind: str  # a GLUE task name, "classification" or "regression"

    @property
    def label_list(self) -> list[str] | None:
        return self.train.label_list

    @property
    def regression(self) -> bool:
        return self.train.regression

    @property
    def task_kind(self) -> str:
        """The kind of head the data needs: token-classification, regression or classification."""
        if self.metric_kind == "token-classification":
            return self.metric_kind
        return "regression" if self.regression else "classification"


def _subset(data: TaskData, examples: list) -> TaskData:
    return dataclasses.replace(data, examples=examples)


def load_splits(config: TrainConfig) -> Splits:
    """Read and check all data before anything is written, so bad data leaves no half-made run behind."""
    from unipelt.training.task_setup import TOKEN, apply_oversampling, load_token_splits, resolve_task_type

    if resolve_task_type(config) == TOKEN:
        train, valid, test = load_token_splits(config)
        return Splits(train=apply_oversampling(config, train), valid=valid, test=test, metric_kind=TOKEN)
    if config.task is not None:
        train = load_glue(config.task, config.data_dir, "train")
        test = load_glue(config.task, config.data_dir, "dev")
        kind = glue_task(config.task).name
        valid = None
    else:
        train = load_table(
            config.train_file,
            config.text_columns,
            config.label_column,
            regression=config.regression,
            encoding=config.encoding,
        )
        labels = train.label_list

        def table(path: str) -> TaskData:
            return load_table(
                path,
                config.text_columns,
                config.label_column,
                labels,
                regression=config.regression,
                encoding=config.encoding,
            )

        valid = table(config.valid_file) if config.valid_file else None
        test = table(config.test_file) if config.test_file else None
        kind = "regression" if train.regression else "classification"
    if config.k is not None:
        train_examples, valid_examples = k_shot_split(train.examples, config.k, config.seed, config.n_valid)
        valid = _subset(train, valid_examples)
        train = _subset(train, train_examples)
    elif valid is None:
        if config.task is not None:
            valid = test  # full-data GLUE: the dev set is both model selection and report, as in the paper's Table 3
        else:
            n_valid = min(config.n_valid, max(1, len(train) // 10))
            order = np.random.default_rng(config.seed).permutation(len(train))
            valid = _subset(train, [train.examples[i] for i in sorted(order[:n_valid])])
            train = _subset(train, [train.examples[i] for i in sorted(order[n_valid:])])
    return Splits(train=apply_oversampling(config, train), valid=valid, test=test, metric_kind=kind)


def build_model(config: TrainConfig, splits: Splits) -> tuple[torch.nn.Module, Any, Any]:
    """(model, the UniPELT wrapper or None for ``ft``, tokenizer): the base model with a fresh head sized from
    the data, wrapped by UniPELT unless ``ft``."""
    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.inject.architectures import architecture_for
    from unipelt.pretrained import resolve_model

    tokenizer = load_tokenizer(resolve_model(config.model))
    model = load_base_model(
        config.model,
        splits.task_kind,
        labels=splits.label_list,
        pad_token_id=tokenizer.pad_token_id,
    )
    if config.backbone_dropout is not None:  # before wrapping: the added modules keep their own dropout
        set_backbone_dropout(model, config.backbone_dropout)
    if config.method == "ft":
        architecture_for(model)  # same supported set for the baseline, so comparisons are like for like
        unipelt = None
    else:
        unipelt = wrap_base(model, config.method, config.unipelt, config.init_from)
    if splits.regression and config.regression_start() == "label-mean":
        labels = [float(example.label) for example in splits.train.examples]
        init_regression_bias(regression_output_layer(model, unipelt), labels)
    return (model if unipelt is None else unipelt), unipelt, tokenizer


def _write_labels(run_dir: Path, splits: Splits) -> None:
    write_json(
        run_dir / "labels.json",
        {"labels": splits.label_list, "regression": splits.regression, "metric_kind": splits.metric_kind},
    )


def _save_final(model, unipelt, tokenizer, run_dir: Path, splits: Splits) -> None:
    extra = {"labels": splits.label_list, "regression": splits.regression, "metric_kind": splits.metric_kind}
    if unipelt is not None:
        unipelt.save_pretrained(run_dir / "checkpoint", extra=extra)
    else:
        atomic_directory(run_dir / "checkpoint", lambda folder: model.save_pretrained(folder))
    atomic_directory(run_dir / "tokenizer", lambda folder: tokenizer.save_pretrained(folder))


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
    from transformers import set_seed

    run_dir = Path(config.output_dir)
    if resume and (run_dir / "config.json").is_file():
        saved = read_run_config(run_dir)
        config = dataclasses.replace(saved, output_dir=config.output_dir)
    config.validate()
    if (run_dir / "metrics.json").is_file():
        if not resume:
            raise UniPELTError(f"{run_dir} already holds a finished run; choose another --out or delete it")
        return finished_run(run_dir, config)
    if config.task_type == "auto" and not config.regression:
        from unipelt.training.task_setup import resolve_task_type

        if resolve_task_type(config) == "causal-lm":  # a chat file: instruction tuning
            log.info("%s holds chats: training a causal-lm run", config.train_file)
            config = dataclasses.replace(config, task_type="causal-lm")
    if config.task_type == "causal-lm":  # instruction tuning on chats: its own data, loss and metrics
        from unipelt.training.causal_lm import train_causal_lm

        return train_causal_lm(config, resume, callbacks)
    training_device(config)  # a device this machine lacks fails here, before anything is read
    from unipelt.backbones import check_model

    check_model(config.model)  # a bad path or a model of another kind fails here, before any data is read
    splits = load_splits(config)  # bad data fails here, before the run folder exists
    set_seed(config.seed)
    model, unipelt, tokenizer = build_model(config, splits)
    if unipelt is not None and config.gate_init_std is not None:
        from unipelt.gates.init import init_gate_weights

        init_gate_weights(unipelt, config.gate_init_std)
    if config.gradient_checkpointing:
        from unipelt.training.causal_lm import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    weights = class_weights(config, splits.train)
    if unipelt is not None and weights is not None:  # saved with the task in its checkpoint
        unipelt.tasks[unipelt.active_task].class_weights = torch.tensor(weights)
    tokenized = {
        name: tokenize_split(splits.task_kind, data, tokenizer, config.max_length)
        for name, data in (("train", splits.train), ("valid", splits.valid), ("test", splits.test))
        if data is not None and (name != "test" or evaluate_test)
    }
    datasets = {name: dataset for name, (dataset, _) in tokenized.items()}
    # what the Trainer scores, in length order (less padding); autopelt keeps the file order for its tracking
    scored = {name: in_length_order(dataset) for name, dataset in datasets.items() if name != "train"}
    alignment = {name: report for name, (_, report) in tokenized.items() if report}
    trainer_dir = run_dir / "trainer"
    run_dir.mkdir(parents=True, exist_ok=True)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run folder
    resume_from = prepare_resume(run_dir, trainer_dir, main_process) if resume else None
    if main_process and not resume_from:
        (run_dir / "log.jsonl").unlink(missing_ok=True)
    if main_process:
        write_json(
            run_dir / "config.json",
            {**config.to_dict(), "resolved_unipelt": unipelt.unipelt_config.to_dict() if unipelt else None},
        )
        _write_labels(run_dir, splits)

    metric = main_metric(splits.metric_kind)

    compute_metrics = metrics_function(splits.metric_kind, splits.label_list)

    guard = make_divergence_guard(run_dir, config.on_divergence)
    autopelt = None
    if config.method == "autopelt":  # module selection: latency table, loss, tracking
        from unipelt.autopelt.training import Session

        if splits.regression and config.regression_start() == "zero":
            log.warning(
                "autopelt with the regression head started at zero stayed at the labels' mean in 6 of 9 "
                "3-epoch STS-B runs, with its default --regression-bias label-mean in 3 of 9 (benchmarks/"
                "RESULTS.md, AutoPELT); train long enough that validation leaves the mean"
            )

        autopelt = Session(
            config, unipelt, run_dir, datasets, collator(splits.task_kind, tokenizer), compute_metrics
        )
    trainer = make_trainer_class()(
        model=model,
        args=training_arguments(config, trainer_dir, metric),
        train_dataset=datasets["train"],
        eval_dataset=scored["valid"],
        data_collator=collator(splits.task_kind, tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[
            *run_callbacks(config, run_dir, unipelt),
            guard,
            *(autopelt.callbacks if autopelt else []),
            *callbacks,
        ],
        run_config=config,
        divergence_guard=guard,
    )
    trainer.class_weights = weights  # for ft, whose loss is the base model's own (UniPELT tasks hold theirs)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except ValueError as error:
        if resume_from is None or "parameter groups" not in str(error):
            raise
        raise UniPELTError(
            f"{resume_from} was saved with other optimizer groups than this run's configuration makes (was "
            f"{run_dir / 'config.json'} edited?); start the run again without --resume"
        ) from error
    train_seconds = trainer.train_seconds  # over every session of a resumed run
    if guard.event is not None and guard.action == "stop":
        stop_diverged(
            guard, trainer, run_dir, lambda: _save_final(model, unipelt, tokenizer, run_dir, splits)
        )

    valid_metrics = trainer.evaluate(scored["valid"], metric_key_prefix="valid")
    test_metrics = trainer.evaluate(scored["test"], metric_key_prefix="test") if "test" in scored else {}
    result = {
        "task": config.task or config.train_file,
        "method": config.method,
        "k": config.k,
        "seed": config.seed,
        "metric": metric,
        "valid": _strip(valid_metrics, "valid_"),
        "test": _strip(test_metrics, "test_"),
        "best_checkpoint_step": _step_of(trainer.state.best_model_checkpoint),
        "steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 2),
        "parameters": unipelt.parameter_counts() if unipelt is not None else _ft_counts(model),
        "majority_class": majority_class_scores(splits),  # the score of always answering the commonest class
        "data": data_report(splits),  # classes found, label spellings merged, empty texts
        "task_type": splits.task_kind,
        "train_examples": len(splits.train),  # after --oversample
        "class_weights": weights,
        **({"alignment": alignment} if alignment else {}),
    }
    if trainer.is_world_process_zero():
        _save_final(model, unipelt, tokenizer, run_dir, splits)
        # autopelt: gates made hard, the plan goes into the checkpoint, metrics are the deployed model's
        if autopelt is not None:
            result = autopelt.finish(result)
        kill_point("final-checkpoint")
        if unipelt is not None:
            _write_gate_report(unipelt, trainer, scored.get("test") or scored["valid"], run_dir)
        _write_learning_curves(run_dir)
        write_json(run_dir / "metrics.json", result)
        write_card(run_dir)  # README.md: the Hub model card of the finished run
        kill_point("final-metrics")
        if not config.keep_trainer_checkpoints:
            shutil.rmtree(trainer_dir, ignore_errors=True)
    return result


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        k.removeprefix(prefix): v for k, v in metrics.items() if not k.endswith(("runtime", "per_second"))
    }


def _step_of(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    try:
        return int(Path(checkpoint).name.split("-")[-1])
    except ValueError:
        return None


def _ft_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_with_prefix_mlp": total, "total_without_prefix_mlp": total}


def _write_gate_report(unipelt, trainer, dataset, run_dir: Path) -> None:
    from unipelt.analysis import collect_gate_stats, plot_gate_heatmap

    if not unipelt.gate_parameters():
        return  # ungated method: nothing to show
    loader = trainer.get_eval_dataloader(dataset)
    stats = collect_gate_stats(unipelt, loader)
    stats.save(run_dir)
    plot_gate_heatmap(stats, run_dir / "gates.png")


def _write_learning_curves(run_dir: Path) -> None:
    from unipelt.analysis import plot_learning_curves

    if (run_dir / "log.jsonl").is_file():
        plot_learning_curves(run_dir / "log.jsonl", run_dir / "learning_curves.png")
