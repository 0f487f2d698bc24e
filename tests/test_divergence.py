"""The divergence guard: its rule on loss sequences, and real runs whose loss explodes or becomes NaN."""

from __future__ import annotations

import json
import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import tiny_run_config

from unipelt.errors import TrainingDivergedError
from unipelt.training import train
from unipelt.training.guards import DivergenceGuard


def _feed(guard: DivergenceGuard, losses: list[float]) -> int | None:
    """Run losses through the guard one optimizer step each; the step at which it stopped the run, if any."""
    for step, loss in enumerate(losses, start=1):
        guard.observe(torch.tensor(loss))
        state = SimpleNamespace(
            global_step=step,
            epoch=step / 10,
            best_model_checkpoint=None,
            best_metric=None,
            is_world_process_zero=True,
        )
        control = SimpleNamespace(should_training_stop=False, should_evaluate=True, should_save=True)
        guard.on_step_end(None, state, control)
        if control.should_training_stop:
            assert not control.should_evaluate and not control.should_save  # a diverged model is never saved
            return step
    return None


def test_guard_rule_on_loss_sequences(tmp_path):
    noisy = [0.7, 0.9, 1.4, 0.6, 2.5, 0.5, 0.4, 3.0, 0.3] * 3  # spikes of 4x, mean well under 10x the start
    assert _feed(DivergenceGuard(tmp_path), noisy) is None
    assert not (tmp_path / "divergence.json").exists()
    assert _feed(DivergenceGuard(tmp_path), [0.7, 0.6, float("nan"), 0.5]) == 3
    assert json.loads((tmp_path / "divergence.json").read_text())["loss"] == "nan"
    assert _feed(DivergenceGuard(tmp_path), [0.7, 0.69, float("inf")]) == 3
    # explosion: the mean of the last 5 steps passes 10 x 0.7 = 7 at the fourth step of 10s
    assert _feed(DivergenceGuard(tmp_path), [0.7, 0.6, 0.5, 0.5, 0.5, 10, 10, 10, 10, 10, 10]) == 9
    event = json.loads((tmp_path / "divergence.json").read_text())
    assert event["step"] == 9 and event["start_loss"] == pytest.approx(0.7) and "10 times" in event["reason"]
    # micro-batches of one step are averaged before the rule
    guard = DivergenceGuard(tmp_path)
    guard.observe(torch.tensor(1.0))
    guard.observe(torch.tensor(3.0))
    assert guard._step_loss() == pytest.approx(2.0)


def test_continue_records_but_does_not_stop(tmp_path):
    guard = DivergenceGuard(tmp_path, action="continue")
    assert _feed(guard, [0.7, float("nan"), float("nan"), 0.5]) is None
    event = json.loads((tmp_path / "divergence.json").read_text())
    assert event["action"] == "continue" and event["step"] == 2
    with pytest.raises(ValueError):
        DivergenceGuard(tmp_path, action="ignore")


_config = partial(tiny_run_config, epochs=3)  # 2 steps an epoch


def _poison_after_first_checkpoint():
    """A callback that makes the head's weights NaN right after the first checkpoint (step 2) is saved."""
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    for name, parameter in model.named_parameters():
                        if parameter.requires_grad and "head" in name:
                            parameter.fill_(float("nan"))

    return Poison()


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_best_checkpoint(tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as caught:
        train(_config(tiny_model_dir, glue_dir, out), callbacks=[_poison_after_first_checkpoint()])
    message = str(caught.value)
    assert "diverged at step 3" in message and "nan" in message and "step 2" in message
    assert "--on-divergence continue" in message and str(out / "checkpoint") in message
    event = json.loads((out / "divergence.json").read_text())
    # the Trainer checkpoints are gone: the event names the kept copy and the step it came from
    assert event["step"] == 3 and event["best_checkpoint"] == event["kept"] == str(out / "checkpoint")
    assert event["best_checkpoint_step"] == 2 and event["kept_broken"] is None and "broken" not in message
    assert math.isfinite(event["kept_valid_loss"])
    weights = load_file(str(out / "checkpoint" / "unipelt_weights.safetensors"))
    assert all(
        torch.isfinite(t).all() for t in weights.values()
    )  # the kept checkpoint is from before the NaN
    assert not (out / "metrics.json").exists() and not (out / "trainer").exists()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert not any(r.get("step", 0) > 2 and "eval_accuracy" in r for r in log)  # no evaluation after it


def _blow_up_before_the_first_evaluation():
    """A callback that multiplies the head's weights by 1e5 at the end of step 2, before the evaluation and the
    checkpoint of that step: the checkpoint is saved broken (finite, huge loss) and the loss explodes after."""
    from transformers import TrainerCallback

    class BlowUp(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    for name, parameter in model.named_parameters():
                        if parameter.requires_grad and "head" in name:
                            parameter.mul_(1e5)

    return BlowUp()


def test_a_kept_checkpoint_that_is_itself_broken_is_called_so(tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as caught:
        train(_config(tiny_model_dir, glue_dir, out), callbacks=[_blow_up_before_the_first_evaluation()])
    event = json.loads((out / "divergence.json").read_text())
    assert event["step"] == 3 and event["best_checkpoint_step"] == 2
    assert event["kept_valid_loss"] > 10 * event["start_loss"]
    assert event["kept_broken"].startswith(
        f"its validation loss {event['kept_valid_loss']:.4g} is over 10 times"
    )
    message = str(caught.value)
    assert f"is kept in {out / 'checkpoint'}, but it is broken too: its validation loss" in message
    assert "so do not use it" in message and "\n" not in message


@pytest.mark.slow
def test_on_divergence_continue_finishes_the_run_and_records_the_event(tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / "run"
    result = train(
        _config(tiny_model_dir, glue_dir, out, on_divergence="continue"),
        callbacks=[_poison_after_first_checkpoint()],
    )
    assert result["steps"] == 6 and (out / "metrics.json").is_file()
    event = json.loads((out / "divergence.json").read_text())
    assert event["action"] == "continue" and event["step"] == 3
    assert json.loads((out / "config.json").read_text())["on_divergence"] == "continue"


@pytest.mark.slow
def test_exploding_learning_rate_on_the_command_line(tiny_model_dir, glue_dir, tmp_path, capsys):
    from unipelt.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--data-dir", glue_dir, "--task", "rte", "--k", "16"]
    args += ["--n-valid", "16", "--epochs", "3", "--batch-size", "8", "--max-length", "64", "--threads", "1"]
    assert main([str(a) for a in [*args, "--lr", "1e6", "--out", out]]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert err.startswith("unipelt: error: training diverged at step") and "times its start" in err
    event = json.loads((out / "divergence.json").read_text())
    assert event["loss"] > 10 * event["start_loss"] and math.isfinite(event["start_loss"])
    assert not (out / "metrics.json").exists()
