"""Training and evaluation on GLUE or on the user's own files, built on the Hugging Face Trainer.

The Trainer does what it already does well (the loop, progress bar, schedules, clipping, mixed precision,
DDP under ``torchrun``/``accelerate launch``, checkpoints, exact resume, early stopping, TensorBoard); this
module adds what UniPELT needs on top of it: separate learning rates for added modules / gates / head /
backbone, gate warm-up and gate penalties, checkpoints that hold only the added weights, the paper's
K-shot protocol, and a run folder that says what happened:

    RUN/config.json          resolved run configuration
    RUN/labels.json          label names (or regression) of the head
    RUN/checkpoint/          best model: added weights + head (or the full model for ``ft``)
    RUN/tokenizer/           tokenizer of the base model
    RUN/log.jsonl            one line per logging / evaluation step
    RUN/metrics.json         validation and test metrics of the best checkpoint, wall time
    RUN/gates.json|csv|png   gate mean and spread per layer and sub-module on the test set
    RUN/learning_curves.png
    RUN/trainer/             Trainer checkpoints, for ``--resume`` (removed when the run ends)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipelt.checkpoint import atomic_directory, write_json
from unipelt.config import PRESETS, UniPELTConfig
from unipelt.data import (
    TaskData,
    glue_task,
    is_glue_task,
    k_shot_split,
    load_glue,
    load_table,
    tokenize_examples,
)
from unipelt.errors import UniPELTError
from unipelt.metrics import compute_task_metrics, main_metric

logger = logging.getLogger(__name__)

METHODS = ("ft", *PRESETS)
# Learning rates that worked on MiniLM/BERT-sized models in low-resource GLUE (chosen on validation data).
DEFAULT_LR = {
    "ft": 5e-5,
    "adapter": 1e-3,
    "lora": 1e-3,
    "prefix": 1e-3,
    "unipelt-ap": 5e-4,
    "unipelt": 5e-4,
    "unipelt-router": 5e-4,
    "ap-nogate": 5e-4,
}


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as RUN/config.json and reloaded by ``--resume`` and ``eval``."""

    output_dir: str = "runs/rte-unipelt"
    model: str = "minilm"
    method: str = "unipelt"
    unipelt: dict[str, Any] = field(default_factory=dict)  # overrides of UniPELTConfig fields
    # data: a GLUE task, or the user's files
    task: str | None = "rte"
    data_dir: str | None = None
    train_file: str | None = None
    valid_file: str | None = None
    test_file: str | None = None
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    regression: bool = False
    # the paper's low-resource protocol
    k: int | None = None
    n_valid: int = 1000
    seed: int = 1
    max_length: int = 128
    # optimisation
    epochs: float = 20.0
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float | None = None
    lr_gates: float | None = None
    lr_head: float | None = None
    lr_backbone: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    patience: int = 5
    gate_warmup_steps: int = 0
    gate_penalty: str = "none"  # none | sparsity | entropy
    gate_penalty_weight: float = 0.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    max_steps: int = -1
    logging_steps: int = 10
    threads: int | None = None
    keep_trainer_checkpoints: bool = False

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UniPELTError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.task is None and self.train_file is None:
            raise UniPELTError("give a GLUE task (--task rte) or your own data (--train FILE)")
        if self.task is not None and not is_glue_task(self.task):
            raise UniPELTError(f"unknown GLUE task {self.task!r}; for your own data use --train FILE")
        if self.gate_penalty not in ("none", "sparsity", "entropy"):
            raise UniPELTError(f"gate_penalty must be none, sparsity or entropy, not {self.gate_penalty!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UniPELTError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if self.method != "ft":
            UniPELTConfig.from_preset(self.method, **self.unipelt)  # raises on unknown fields

    def learning_rates(self) -> dict[str, float]:
        base = self.lr if self.lr is not None else DEFAULT_LR[self.method]
        return {
            "added": base,
            "gates": self.lr_gates if self.lr_gates is not None else base,
            "head": self.lr_head if self.lr_head is not None else base,
            "backbone": self.lr_backbone if self.lr_backbone is not None else base,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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


def _subset(data: TaskData, examples: list) -> TaskData:
    return dataclasses.replace(data, examples=examples)


def load_splits(config: TrainConfig) -> Splits:
    """Read and check all data before anything is written, so bad data leaves no half-made run behind."""
    if config.task is not None:
        train = load_glue(config.task, config.data_dir, "train")
        test = load_glue(config.task, config.data_dir, "dev")
        kind = glue_task(config.task).name
        valid = None
    else:
        train = load_table(
            config.train_file, config.text_columns, config.label_column, regression=config.regression
        )
        labels = train.label_list

        def table(path: str) -> TaskData:
            return load_table(
                path, config.text_columns, config.label_column, labels, regression=config.regression
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
    return Splits(train=train, valid=valid, test=test, metric_kind=kind)


def _precision_flags(precision: str) -> dict[str, bool]:
    if precision == "auto":
        if not torch.cuda.is_available():
            return {}
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def build_model(config: TrainConfig, splits: Splits):
    """The base model with a fresh head sized from the data, wrapped by UniPELT unless ``ft``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from unipelt.architectures import architecture_for
    from unipelt.model import UniPELTModel
    from unipelt.pretrained import resolve_model

    path = resolve_model(config.model)
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected: that is the head we train
    tokenizer = AutoTokenizer.from_pretrained(path)
    labels = splits.label_list
    kwargs: dict[str, Any] = {"num_labels": 1 if splits.regression else len(labels)}
    if splits.regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {name: i for i, name in enumerate(labels)}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, ignore_mismatched_sizes=True, **kwargs
        )
    except (OSError, ValueError) as error:
        raise UniPELTError(f"cannot load model {config.model!r} from {path}: {error}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if config.method == "ft":
        architecture_for(model)  # same supported set for the baseline, so comparisons are like for like
        return model, None, tokenizer
    unipelt = UniPELTModel(model, UniPELTConfig.from_preset(config.method, **config.unipelt))
    return unipelt, unipelt, tokenizer


def _gate_penalty(live: list[tuple[str, torch.Tensor]], kind: str) -> torch.Tensor | None:
    if not live:
        return None
    values = torch.cat([value.reshape(-1) for _, value in live]).clamp(1e-6, 1 - 1e-6)
    if kind == "sparsity":
        return values.mean()
    return -(values * values.log() + (1 - values) * (1 - values).log()).mean()  # binary entropy


def _make_trainer_class():
    from transformers import Trainer

    from unipelt.model import UniPELTModel

    class UniPELTTrainer(Trainer):
        """Trainer with per-group learning rates, gate penalties and added-weights-only checkpoints."""

        def __init__(self, *args: Any, run_config: TrainConfig, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.run_config = run_config
            self.unipelt = self.model if isinstance(self.model, UniPELTModel) else None
            if self.unipelt is not None and run_config.gate_penalty != "none":
                self.unipelt.runtime.keep_live = True

        def create_optimizer(self, model=None):
            if self.optimizer is not None:
                return self.optimizer
            rates = self.run_config.learning_rates()
            decay = self.args.weight_decay
            if self.unipelt is not None:
                groups = self.unipelt.parameter_groups()
                param_groups = [
                    {"params": groups["added"], "lr": rates["added"], "weight_decay": decay},
                    {"params": groups["gates"], "lr": rates["gates"], "weight_decay": 0.0},
                    {"params": groups["head"], "lr": rates["head"], "weight_decay": decay},
                ]
            else:
                from unipelt.architectures import architecture_for

                head_names = architecture_for(
                    self.model
                ).head  # the same head modules UniPELT keeps trainable
                head, backbone = [], []
                for name, parameter in self.model.named_parameters():
                    (head if any(part in head_names for part in name.split(".")) else backbone).append(
                        parameter
                    )
                param_groups = [
                    {"params": backbone, "lr": rates["backbone"], "weight_decay": decay},
                    {"params": head, "lr": rates["head"], "weight_decay": decay},
                ]
            param_groups = [g for g in param_groups if g["params"]]
            self.optimizer = torch.optim.AdamW(param_groups, lr=rates["added"])
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.unipelt is None or self.run_config.gate_penalty == "none":
                return result
            runtime = self.unipelt.runtime
            penalty = _gate_penalty(runtime.live, self.run_config.gate_penalty)
            runtime.live = []
            if penalty is None:
                return result
            extra = self.run_config.gate_penalty_weight * penalty
            if return_outputs:
                return result[0] + extra, result[1]
            return result + extra

        def _save(self, output_dir=None, state_dict=None):
            if self.unipelt is None:
                return super()._save(output_dir, state_dict)
            if not self.args.should_save:  # every rank may get here under DDP; one writes
                return
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            self.unipelt.save_pretrained(Path(output_dir) / "unipelt")

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if self.unipelt is None:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            self._load_added(Path(resume_from_checkpoint) / "unipelt")

        def _load_best_model(self):
            if self.unipelt is None:
                return super()._load_best_model()
            self._load_added(Path(self.state.best_model_checkpoint) / "unipelt")

        def _load_added(self, folder: Path) -> None:
            from safetensors.torch import load_file

            from unipelt.checkpoint import WEIGHTS_NAME

            self.unipelt.load_added_state_dict(load_file(str(folder / WEIGHTS_NAME)), source=str(folder))

    return UniPELTTrainer


def _callbacks(config: TrainConfig, run_dir: Path, unipelt) -> list:
    from transformers import EarlyStoppingCallback, TrainerCallback

    class JsonlLog(TrainerCallback):
        """Append every log record (training loss, evaluation metrics) to RUN/log.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, **logs}
                with open(run_dir / "log.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")

    class GateWarmup(TrainerCallback):
        """Hold the gates at their initial values for the first N optimizer steps (their gradients are zeroed)."""

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step < config.gate_warmup_steps:
                for parameter in unipelt.gate_parameters():
                    parameter.grad = None

    callbacks: list = [JsonlLog(), EarlyStoppingCallback(early_stopping_patience=config.patience)]
    if unipelt is not None and config.gate_warmup_steps > 0:
        callbacks.append(GateWarmup())
    return callbacks


def _collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


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


def train(config: TrainConfig, resume: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one run into ``config.output_dir`` and return its metrics (also written to metrics.json)."""
    from transformers import TrainingArguments, set_seed

    run_dir = Path(config.output_dir)
    if resume and (run_dir / "config.json").is_file():
        saved = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        config = dataclasses.replace(saved, output_dir=config.output_dir)
    config.validate()
    if (run_dir / "metrics.json").is_file() and not resume:
        raise UniPELTError(f"{run_dir} already holds a finished run; choose another --out or delete it")
    if config.threads:
        torch.set_num_threads(config.threads)
    from unipelt.pretrained import resolve_model

    resolve_model(config.model)  # a bad model path fails here, before any data is read
    splits = load_splits(config)  # bad data fails here, before the run folder exists
    set_seed(config.seed)
    model, unipelt, tokenizer = build_model(config, splits)
    datasets = {
        name: tokenize_examples(data.examples, tokenizer, config.max_length)
        for name, data in (("train", splits.train), ("valid", splits.valid), ("test", splits.test))
        if data is not None
    }
    trainer_dir = run_dir / "trainer"
    resume_from = resume and trainer_dir.is_dir() and any(trainer_dir.glob("checkpoint-*"))
    run_dir.mkdir(parents=True, exist_ok=True)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run folder
    if main_process and not resume_from:
        (run_dir / "log.jsonl").unlink(missing_ok=True)
    if main_process:
        write_json(
            run_dir / "config.json",
            {**config.to_dict(), "resolved_unipelt": unipelt.unipelt_config.to_dict() if unipelt else None},
        )
        _write_labels(run_dir, splits)

    metric = main_metric(splits.metric_kind)
    try:
        import tensorboard  # noqa: F401

        report_to = ["tensorboard"]
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    except ImportError:
        report_to = []
    args = TrainingArguments(
        output_dir=str(trainer_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        learning_rate=config.learning_rates()["added"],
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=config.scheduler,
        max_grad_norm=config.max_grad_norm,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        logging_steps=config.logging_steps,
        report_to=report_to,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what lets torchrun on CPU run DDP over gloo
        disable_tqdm=False,
        save_only_model=False,
        ddp_find_unused_parameters=False,
        **_precision_flags(config.precision),
    )

    def compute_metrics(prediction) -> dict[str, float]:
        return compute_task_metrics(splits.metric_kind, prediction.predictions, prediction.label_ids)

    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["valid"],
        data_collator=_collator(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[*_callbacks(config, run_dir, unipelt), *callbacks],
        run_config=config,
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=True if resume_from else None)
    train_seconds = time.time() - start

    valid_metrics = trainer.evaluate(datasets["valid"], metric_key_prefix="valid")
    test_metrics = trainer.evaluate(datasets["test"], metric_key_prefix="test") if "test" in datasets else {}
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
    }
    if trainer.is_world_process_zero():
        _save_final(model, unipelt, tokenizer, run_dir, splits)
        if unipelt is not None:
            _write_gate_report(unipelt, trainer, datasets.get("test") or datasets["valid"], run_dir)
        _write_learning_curves(run_dir)
        write_json(run_dir / "metrics.json", result)
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
    from unipelt.gate_analysis import collect_gate_stats, plot_gate_heatmap

    if not any(
        m.gate is not None or (m.adapter is not None and m.adapter.gate is not None) for m in unipelt.layers
    ):
        return  # ungated method: nothing to show
    loader = trainer.get_eval_dataloader(dataset)
    stats = collect_gate_stats(unipelt, loader)
    stats.save(run_dir)
    plot_gate_heatmap(stats, run_dir / "gates.png")


def _write_learning_curves(run_dir: Path) -> None:
    from unipelt.gate_analysis import plot_learning_curves

    if (run_dir / "log.jsonl").is_file():
        plot_learning_curves(run_dir / "log.jsonl", run_dir / "learning_curves.png")


def train_seeds(config: TrainConfig, seeds: Sequence[int], resume: bool = False) -> dict[str, Any]:
    """Run each seed into OUT/seed-S (skipping finished ones) and summarise mean and std of the test scores."""
    root = Path(config.output_dir)
    runs = []
    for seed in seeds:
        run_dir = root / f"seed-{seed}"
        if (run_dir / "metrics.json").is_file():
            logger.info("seed %s already finished in %s, skipped", seed, run_dir)
            runs.append(json.loads((run_dir / "metrics.json").read_text()))
            continue
        runs.append(train(dataclasses.replace(config, seed=seed, output_dir=str(run_dir)), resume=resume))
    summary = summarise(runs)
    write_json(root / "summary.json", summary)
    return summary


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and (sample) standard deviation over seeds of every test and validation metric."""

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    out: dict[str, Any] = {"runs": len(runs), "seeds": [r["seed"] for r in runs], "metric": runs[0]["metric"]}
    for split in ("test", "valid"):
        keys = (
            set.intersection(*(set(r[split]) for r in runs))
            if runs and all(r[split] for r in runs)
            else set()
        )
        out[split] = {
            k: spread([r[split][k] for r in runs])
            for k in sorted(keys)
            if all(math.isfinite(r[split][k]) for r in runs)
        }
    out["train_seconds"] = sum(r["train_seconds"] for r in runs)
    return out
