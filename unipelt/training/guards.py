"""The divergence guard: stop a run whose training loss is no longer a number or has exploded.

A learning rate a few orders too high makes the loss climb to millions (or NaN) while the Trainer carries on,
evaluates a broken model and writes metrics as if nothing happened. The guard watches every optimizer step's
loss (the trainer passes it each micro-batch's loss) and calls the run diverged when

* the loss is not finite (NaN or infinite), or
* the mean loss of the last :data:`WINDOW` steps is more than :data:`FACTOR` times the loss of the first step
  (the loss of the model as it started, before any update).

Comparing a short running mean, not single steps, keeps one unlucky batch from stopping a healthy run. With
``action="stop"`` the run stops at that step with no further evaluation or checkpoint (a diverged model must
not become the best one); with ``"continue"`` the event is only recorded and the run goes on. Either way the
event is written to RUN/divergence.json.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from pathlib import Path
from typing import Any

from unipelt.checkpoint import write_json

FACTOR = 10.0
WINDOW = 5
ACTIONS = ("stop", "continue")
DIVERGENCE_NAME = "divergence.json"


def make_divergence_guard(
    run_dir: str | Path, action: str = "stop", factor: float = FACTOR, window: int = WINDOW
) -> DivergenceGuard:
    """A :class:`DivergenceGuard` that is also a Trainer callback (made here so that importing this module does
    not import transformers)."""
    from transformers import TrainerCallback

    class DivergenceGuardCallback(DivergenceGuard, TrainerCallback):
        pass

    return DivergenceGuardCallback(run_dir, action, factor, window)


class DivergenceGuard:
    """Watches the training loss; records divergence in RUN/divergence.json and, by default, stops the run.

    The Trainer callback methods are here; :func:`make_divergence_guard` adds the rest of the callback
    interface."""

    def __init__(
        self, run_dir: str | Path, action: str = "stop", factor: float = FACTOR, window: int = WINDOW
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
        self.run_dir = Path(run_dir)
        self.action = action
        self.factor = factor
        self.window = window
        self.start: float | None = None
        self.recent: deque[float] = deque(maxlen=window)
        self.pending: list[Any] = []  # this optimizer step's micro-batch losses (tensors: no sync per batch)
        self.event: dict[str, Any] | None = None

    def observe(self, loss: Any) -> None:
        """One micro-batch's loss, as the trainer's training step returns it."""
        self.pending.append(loss.detach() if hasattr(loss, "detach") else loss)

    def _step_loss(self) -> float | None:
        if not self.pending:
            return None
        import torch

        values = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()) for v in self.pending])
        self.pending = []
        value = values.mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process must take the same decision, or the others would wait for it forever
            torch.distributed.all_reduce(value)
            value = value / torch.distributed.get_world_size()
        return float(value)

    def on_step_end(self, args, state, control, **kwargs):
        loss = self._step_loss()
        if loss is None or (self.event is not None and self.action == "continue"):
            return control
        if self.event is not None:
            return self._stop(control)
        reason = None
        if not math.isfinite(loss):
            reason = f"the training loss is {loss}"
        else:
            if self.start is None:
                self.start = loss
            self.recent.append(loss)
            mean = sum(self.recent) / len(self.recent)
            if self.start > 0 and mean > self.factor * self.start:
                reason = (
                    f"the training loss rose to {mean:.4g} (mean of the last {len(self.recent)} steps), over "
                    f"{self.factor:g} times its start {self.start:.4g}"
                )
        if reason is None:
            return control
        self.event = {
            "step": state.global_step,
            "epoch": state.epoch,
            "loss": loss if math.isfinite(loss) else str(loss),
            "start_loss": self.start,
            "factor": self.factor,
            "window": self.window,
            "reason": reason,
            "action": self.action,
            "best_checkpoint": state.best_model_checkpoint,
            "best_metric": state.best_metric,
        }
        if state.is_world_process_zero:
            write_json(self.run_dir / DIVERGENCE_NAME, self.event)
        if self.action == "continue":
            print(
                f"unipelt: warning: training diverged at step {state.global_step}: {reason}; continuing as "
                f"--on-divergence continue asks (recorded in {self.run_dir / DIVERGENCE_NAME})",
                file=sys.stderr,
            )
            return control
        return self._stop(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.event is not None and self.action == "stop":
            return self._stop(control)
        return control

    def broken(self, valid_loss: float | None) -> str | None:
        """Why a checkpoint with this validation loss is itself diverged (None when it looks sound): a loss
        that is not a number, or more than ``factor`` times the training loss the run started at."""
        if valid_loss is None:
            return None
        if not math.isfinite(valid_loss):
            return f"its validation loss is {valid_loss}"
        if self.start is not None and self.start > 0 and valid_loss > self.factor * self.start:
            return (
                f"its validation loss {valid_loss:.4g} is over {self.factor:g} times the loss at the start "
                f"({self.start:.4g})"
            )
        return None

    @staticmethod
    def _stop(control):
        # no evaluation or checkpoint of the diverged model: it must not become the best checkpoint
        control.should_training_stop = True
        control.should_evaluate = False
        control.should_save = False
        return control

    def message(self, kept: Path | None, best_step: int | None, kept_loss: float | None = None) -> str:
        """The one-line account of a stopped run for the user; ``kept_loss`` is the kept checkpoint's
        validation loss, which may show that it was already broken."""
        assert self.event is not None
        kept_text = (
            f"the best checkpoint so far (step {best_step}) is kept in {kept}"
            if kept is not None
            else "no checkpoint had been evaluated before, so none is kept"
        )
        broken = self.broken(kept_loss) if kept is not None else None
        if broken:
            kept_text += f", but it is broken too: {broken}, so do not use it"
        return (
            f"training diverged at step {self.event['step']}: {self.event['reason']}. The run stopped; {kept_text}; "
            f"details in {self.run_dir / DIVERGENCE_NAME}. Lower the learning rate (--lr), or pass "
            "--on-divergence continue to train on regardless"
        )


def stop_diverged(guard: DivergenceGuard, trainer: Any, run_dir: Path, save_best: Any) -> None:
    """End a run the guard stopped: keep the best checkpoint so far (the Trainer has loaded it back) as
    RUN/checkpoint/, drop the Trainer checkpoints and raise the user's one-line error."""
    import shutil

    from unipelt.errors import TrainingDivergedError
    from unipelt.training.resume import step_of

    best = trainer.state.best_model_checkpoint
    best_step = step_of(best)
    kept_loss = _valid_loss(trainer.state.log_history, best_step)
    kept = run_dir / "checkpoint" if best else None
    if trainer.is_world_process_zero():
        if best:
            save_best()
        # the Trainer checkpoints are removed below: name the kept copy, not trainer/checkpoint-N
        event = {
            **guard.event,
            "best_checkpoint": str(kept) if kept else None,
            "best_checkpoint_step": best_step,
        }
        event.update(kept=str(kept) if kept else None, kept_valid_loss=_json_number(kept_loss))
        event["kept_broken"] = guard.broken(kept_loss) if kept else None
        write_json(run_dir / DIVERGENCE_NAME, event)
        shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    raise TrainingDivergedError(guard.message(kept, best_step, kept_loss))


def _valid_loss(history: list[dict[str, Any]], step: int | None) -> float | None:
    """The validation loss the Trainer logged at ``step`` (None when it logged none there)."""
    for record in history:
        if record.get("step") == step and "eval_loss" in record:
            return float(record["eval_loss"])
    return None


def _json_number(value: float | None) -> float | str | None:
    return value if value is None or math.isfinite(value) else str(value)
