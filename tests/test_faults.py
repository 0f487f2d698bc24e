"""Faults a real run meets: SIGKILL at any moment (then --resume), a diverging loss, damaged run folders.

The kill test runs the real ``unipelt train`` in child processes that SIGKILL themselves at named points
(``UNIPELT_TEST_KILL_AT``, see unipelt/training/faults.py), chained in one run folder: inside a checkpoint save,
after a checkpoint's files but before its completion mark, inside the final writes, after metrics.json.
Every ``--resume`` must skip what the kill left half-written, and the end must equal an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import tiny_run_config

from unipelt.training import train
from unipelt.training.faults import KILL_ENV
from unipelt.training.resume import COMPLETE_NAME, checkpoint_problem

pytestmark = pytest.mark.slow
WEIGHTS = Path("checkpoint") / "unipelt_weights.safetensors"


_config = partial(tiny_run_config, epochs=3)  # 2 steps an epoch: checkpoints 2, 4, 6


def _cli(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    command = [sys.executable, "-m", "unipelt.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _train_args(model: Path, glue: Path, out: Path) -> list[str]:
    # the same run as _config (lr and patience given, the rest are the command's defaults or set here)
    return [
        "train", "--model", str(model), "--data-dir", str(glue), "--task", "rte", "--method", "unipelt",
        "--k", "16", "--n-valid", "16", "--epochs", "3", "--batch-size", "8", "--max-length", "64",
        "--threads", "1", "--patience", "10", "--lr", "1e-2", "--out", str(out),
    ]  # fmt: skip


def test_sigkill_at_any_point_then_resume_ends_like_an_uninterrupted_run(tiny_model_dir, glue_dir, tmp_path):
    straight = train(_config(tiny_model_dir, glue_dir, tmp_path / "straight"))
    out = tmp_path / "killed"
    trainer = out / "trainer"
    args = _train_args(tiny_model_dir, glue_dir, out)

    # 1. killed inside the save of checkpoint 4: only its added weights are written
    killed = _cli(args, kill_at="checkpoint-save:4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (trainer / "checkpoint-4" / "unipelt").is_dir()
    assert not (trainer / "checkpoint-4" / "trainer_state.json").exists()
    assert "incomplete" in checkpoint_problem(trainer / "checkpoint-4")
    assert checkpoint_problem(trainer / "checkpoint-2") is None

    # 2. resumed (from 2, checkpoint 4 skipped), killed after checkpoint 6's files, before its mark
    killed = _cli([*args, "--resume"], kill_at="checkpoint-complete:6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert f"skipping {trainer / 'checkpoint-4'}" in killed.stderr
    assert f"resuming from {trainer / 'checkpoint-2'}" in killed.stderr
    assert (trainer / "checkpoint-6" / "trainer_state.json").is_file()
    assert not (trainer / "checkpoint-6" / COMPLETE_NAME).exists()

    # 3. resumed (from 2: saving 6 rotated 4 away, 2 is kept as the best), killed in the final writes:
    # RUN/checkpoint is written, the reports and metrics are not
    killed = _cli([*args, "--resume"], kill_at="final-checkpoint")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert f"skipping {trainer / 'checkpoint-6'}" in killed.stderr
    assert f"resuming from {trainer / 'checkpoint-2'}" in killed.stderr
    assert (out / WEIGHTS).is_file() and not (out / "metrics.json").exists()

    # 4. resumed (from 6, the last step: nothing left to train), killed after metrics.json
    killed = _cli([*args, "--resume"], kill_at="final-metrics")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert f"resuming from {trainer / 'checkpoint-6'}" in killed.stderr
    assert (out / "metrics.json").is_file() and trainer.is_dir()

    # 5. the last resume only tidies up
    done = _cli([*args, "--resume"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already finished" in done.stderr and not trainer.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["steps"] == straight["steps"] == 6
    assert resumed["best_checkpoint_step"] == straight["best_checkpoint_step"]
    for split in ("valid", "test"):
        for name, value in straight[split].items():
            assert resumed[split][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (split, name)
    a, b = load_file(str(tmp_path / "straight" / WEIGHTS)), load_file(str(out / WEIGHTS))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), "log records of redone steps must not appear twice"


def test_a_changed_checkpoint_file_is_not_resumed_from(tiny_model_dir, glue_dir, tmp_path, capsys):
    config = _config(tiny_model_dir, glue_dir, tmp_path / "run", epochs=2, keep_trainer_checkpoints=True)
    train(config)
    trainer = tmp_path / "run" / "trainer"
    optimizer = trainer / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # cut short after the save, e.g. by a full disk
    assert "optimizer.pt has 1000 bytes" in checkpoint_problem(trainer / "checkpoint-4")
    (tmp_path / "run" / "metrics.json").unlink()
    capsys.readouterr()
    resumed = train(config, resume=True)
    err = capsys.readouterr().err
    assert (
        f"skipping {trainer / 'checkpoint-4'}" in err and f"resuming from {trainer / 'checkpoint-2'}" in err
    )
    assert resumed["steps"] == 4


def test_resume_of_an_early_stopped_run_does_not_train_on(tiny_model_dir, glue_dir, tmp_path):
    from transformers import TrainerCallback

    class CrashAtEnd(TrainerCallback):  # dies after the loop, before the final writes
        def on_train_end(self, args, state, control, **kwargs):
            raise RuntimeError("simulated crash")

    fields = dict(epochs=8, patience=1)
    straight = train(_config(tiny_model_dir, glue_dir, tmp_path / "straight", **fields))
    assert straight["steps"] < 16  # early stopping ended it
    config = _config(tiny_model_dir, glue_dir, tmp_path / "crashed", **fields)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, callbacks=[CrashAtEnd()])
    resumed = train(config, resume=True)
    assert resumed["steps"] == straight["steps"]
    assert resumed["valid"] == straight["valid"] and resumed["test"] == straight["test"]
