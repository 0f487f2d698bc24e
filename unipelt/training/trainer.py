"""The Hugging Face Trainer as UniPELT needs it: settings, optimizer groups, gate penalties, callbacks.

The Trainer already does the loop, schedules, clipping, mixed precision, DDP, checkpoints, exact resume and
early stopping; what is added here is what it cannot know about: separate learning rates for added modules,
gates, head and backbone, the gate warm-up and gate penalties, checkpoints that hold only the added weights, a
JSON-lines log in the run folder, and TensorBoard events in that run's own folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unipelt.atomic import writing
from unipelt.devices import placement
from unipelt.errors import UniPELTError
from unipelt.methods import get_method
from unipelt.training.config import TrainConfig
from unipelt.training.faults import kill_point
from unipelt.training.resume import mark_complete, read_progress, step_of, stopped_early

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments


def _precision_flags(precision: str) -> dict[str, bool]:
    if precision == "auto":
        if not torch.cuda.is_available():
            return {}
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_device(config: TrainConfig) -> torch.device:
    """The device a run trains on (``config.device``), checked to exist here; sets the CPU threads too.

    The Trainer puts a run on the first visible GPU (or on the GPU of its rank under torchrun), so ``cuda:N``
    other than ``cuda:0`` is refused with how to choose another GPU."""
    device = placement(config.device, None, config.threads).device
    if device.type == "cuda" and device.index not in (None, 0):
        raise UniPELTError(
            f"--device {config.device}: training uses the first visible GPU; pick GPU {device.index} with "
            f"CUDA_VISIBLE_DEVICES={device.index} and --device cuda"
        )
    return device


def training_arguments(config: TrainConfig, trainer_dir: Path, metric: str) -> TrainingArguments:
    """The Trainer's settings for one run: evaluate and save every epoch, keep the best by ``metric``.

    Reporting integrations are off here: TensorBoard, when installed, is added by :func:`run_callbacks` with
    this run's own folder.
    """
    from transformers import TrainingArguments

    return TrainingArguments(
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
        restore_callback_states_from_checkpoint=True,  # early stopping's patience count survives a resume
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        logging_steps=config.logging_steps,
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=training_device(config).type == "cuda",
        use_cpu=training_device(config).type == "cpu",  # also what lets torchrun on CPU run DDP over gloo
        disable_tqdm=False,
        save_only_model=False,
        ddp_find_unused_parameters=False,
        **_precision_flags(config.precision),
    )


def _gate_penalty(live: list[torch.Tensor], kind: str) -> torch.Tensor | None:
    if not live:
        return None
    values = torch.cat([value.reshape(-1) for value in live]).clamp(1e-6, 1 - 1e-6)
    if kind == "sparsity":
        return values.mean()
    return -(values * values.log() + (1 - values) * (1 - values).log()).mean()  # binary entropy


def make_trainer_class() -> type[Trainer]:
    """The Trainer subclass, made on first use so that importing this module does not import transformers."""
    from transformers import Trainer

    from unipelt.model import UniPELTModel

    class UniPELTTrainer(_RateGroups, _GatedLoss, _AddedCheckpoints, _RunTotals, Trainer):
        """Trainer with per-group learning rates, gate penalties and added-weights-only checkpoints."""

        def __init__(
            self, *args: Any, run_config: TrainConfig, divergence_guard: Any = None, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.run_config = run_config
            self.divergence_guard = divergence_guard  # a guards.DivergenceGuard that sees every step's loss
            self.unipelt = self.model if isinstance(self.model, UniPELTModel) else None

    return UniPELTTrainer


# The parts of the Trainer subclass: mixins placed before transformers' Trainer in its bases, so that their
# ``super()`` calls reach the Trainer while this module stays importable without transformers.


class _RateGroups:
    """Per-group learning rates: the method's optimizer groups, and its groups that keep a constant rate."""

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        rates = self.run_config.learning_rates()
        method = get_method(self.run_config.method)
        param_groups = method.optimizer_groups(self.model, rates, self.args.weight_decay)
        param_groups = [g for g in param_groups if g["params"]]
        self.optimizer = torch.optim.AdamW(param_groups, lr=rates["added"])
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The usual schedule, except for the method's groups that keep a constant rate (autopelt's
        on/off gates: under a decay to zero they move too little to close; RESULTS.md, "AutoPELT")."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        constant = get_method(self.run_config.method).constant_rate_groups
        if constant and hasattr(scheduler, "lr_lambdas"):
            for index, group in enumerate(scheduler.optimizer.param_groups):
                if group.get("name") in constant:
                    scheduler.lr_lambdas[index] = _constant_rate
        return scheduler


class _GatedLoss:
    """The loss with the gate penalty (``--gate-penalty``), or class-weighted for a fully fine-tuned model."""

    class_weights: list[float] | None = None  # for ft, set by the run (a UniPELT task holds its own)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.unipelt is None and self.class_weights is not None and "labels" in inputs:
            return self._weighted_loss(model, inputs, return_outputs)
        if self.unipelt is None or self.run_config.gate_penalty == "none":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # The gates of this forward, live (with their graph), collected for this call only.
        with self.unipelt.collect_gates() as live:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        penalty = _gate_penalty(live, self.run_config.gate_penalty)
        if penalty is None:
            return result
        extra = self.run_config.gate_penalty_weight * penalty
        if return_outputs:
            return result[0] + extra, result[1]
        return result + extra

    def _weighted_loss(self, model, inputs, return_outputs):
        """The class-weighted cross-entropy (``--class-weights``) of a fully fine-tuned model."""
        from unipelt.heads import task_loss

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weights = torch.tensor(self.class_weights)
        loss = task_loss("classification", outputs.logits, labels, weights)
        return (loss, outputs) if return_outputs else loss


class _AddedCheckpoints:
    """Checkpoints of a UniPELT model that hold only its added weights, each marked complete when written."""

    def _save(self, output_dir=None, state_dict=None):
        if self.unipelt is None:
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:  # every rank may get here under DDP; one writes
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.unipelt.save_pretrained(Path(output_dir) / "unipelt")
        kill_point(f"checkpoint-save:{self.state.global_step}")

    def _save_checkpoint(self, model, trial):
        # The Trainer writes the checkpoint's files one after another; the mark written last says that
        # all of them are there (see unipelt.training.resume). A full disk while writing any of them is
        # reported naming this checkpoint.
        step = self.state.global_step
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{step}"
        with writing(folder):
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                kill_point(f"checkpoint-complete:{step}")
                mark_complete(folder, self.progress())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.unipelt is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_added(Path(resume_from_checkpoint) / "unipelt")

    def _load_best_model(self):
        if self.unipelt is None:
            return super()._load_best_model()
        self._load_added(Path(self.state.best_model_checkpoint) / "unipelt")

    def _load_added(self, folder: Path) -> None:
        from unipelt.checkpoint import read_weights

        self.unipelt.load_added_state_dict(read_weights(folder), source=str(folder))


class _RunTotals:
    """The whole run's training time and step losses over resumed sessions; each step's loss shown to the divergence guard."""

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any):
        resuming = isinstance(resume_from_checkpoint, (str, os.PathLike))
        if resuming and stopped_early(resume_from_checkpoint):
            self.args.max_steps = step_of(resume_from_checkpoint)  # finished there: no step more
        # what the sessions before this one did: their training time and summed step losses
        self.carried = read_progress(resume_from_checkpoint) if resuming else {}
        self.session_start = time.time()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def progress(self) -> dict[str, float]:
        """The whole run's training seconds and summed step losses so far, over every resumed session:
        kept in each checkpoint's completion mark, so a resumed run reports the totals."""
        pending = getattr(self, "_tr_loss", None)  # the steps' losses not yet logged
        session_loss = self._total_loss_scalar + (float(pending) if pending is not None else 0.0)
        return {
            "train_seconds": self.carried.get("train_seconds", 0.0) + time.time() - self.session_start,
            "loss_sum": self.carried.get("loss_sum", 0.0) + session_loss,
        }

    @property
    def train_seconds(self) -> float:
        """Training wall time of the whole run, over every resumed session."""
        return self.progress()["train_seconds"]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "train_loss" in logs and "train_runtime" in logs and self.carried:
            # the end-of-training summary: the Trainer counts this session only (a resume from the last
            # checkpoint trained no step: loss 0); report the run's mean step loss and its whole time
            total = self.carried.get("loss_sum", 0.0) + self._total_loss_scalar
            logs = {
                **logs,
                "train_loss": total / max(self.state.global_step, 1),
                "train_runtime": round(self.carried.get("train_seconds", 0.0) + logs["train_runtime"], 4),
            }
        super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.divergence_guard is not None:
            self.divergence_guard.observe(loss)
        return loss


def run_callbacks(config: TrainConfig, run_dir: Path, unipelt: Any) -> list[Any]:
    """Callbacks of every run: RUN/log.jsonl, early stopping, the gate warm-up, TensorBoard when installed."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    class JsonlLog(TrainerCallback):
        """Append every log record (training loss, evaluation metrics) to RUN/log.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, **logs}
                with writing(run_dir / "log.jsonl"), open(run_dir / "log.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")

    class GateWarmup(TrainerCallback):
        """Hold the gates at their initial values for the first N optimizer steps (their gradients are zeroed)."""

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step < config.gate_warmup(state.max_steps):
                for parameter in unipelt.gate_parameters():
                    parameter.grad = None

    callbacks: list = [JsonlLog(), EarlyStoppingCallback(early_stopping_patience=config.patience)]
    # always there for UniPELT models: a no-op unless config.gate_warmup() (which knows each method's default) gives steps
    if unipelt is not None:
        callbacks.append(GateWarmup())
    return callbacks + _tensorboard(run_dir)


def _tensorboard(run_dir: Path) -> list[Any]:
    """TensorBoard events into RUN/tensorboard/, when tensorboard is installed.

    The folder is set on this run's own callback. The TENSORBOARD_LOGGING_DIR variable that the callback reads
    by default belongs to the whole process, so every later run in it (``--seeds``, the grid, tuning) would log
    into the first run's folder.
    """
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return []
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(run_dir / "tensorboard")  # read when the writer is made, on rank 0 only
    return [callback]


def padding_collator(tokenizer: Any) -> Any:
    """Pads each batch to its own longest row (nothing is padded when tokenising)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


def _constant_rate(step: int) -> float:
    return 1.0
