"""The run folder's lock and the refusal of folders that hold a run, with real ``unipelt train`` processes.

A second writer on the same ``--out`` is refused in one line naming the folder and the first writer's PID; a
lock left by a SIGKILLed run does not block ``--resume``; a folder with an unfinished or diverged run is refused
without ``--resume``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_runs import tiny_run_config

from unipelt.errors import UniPELTError
from unipelt.training import train
from unipelt.training.faults import KILL_ENV
from unipelt.training.run_folder import LOCK_NAME, RunFolder, RunLockedError


def _env(kill_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return env


def _train_command(model: Path, glue: Path, out: Path, epochs: int = 3) -> list[str]:
    return [
        sys.executable, "-m", "unipelt.cli", "train", "--model", str(model), "--data-dir", str(glue),
        "--task", "rte", "--method", "unipelt", "--k", "16", "--n-valid", "16", "--epochs", str(epochs),
        "--batch-size", "8", "--max-length", "64", "--threads", "1", "--patience", "10", "--lr", "1e-2",
        "--out", str(out),
    ]  # fmt: skip


def test_a_second_lock_on_a_held_folder_names_the_holder(tmp_path):
    with RunFolder(tmp_path / "run") as first:
        first.create()
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(
            RunLockedError, match=rf"run is being written by another run \(PID {os.getpid()}\)"
        ):
            RunFolder(tmp_path / "run").__enter__()
    with RunFolder(tmp_path / "run") as again:  # released on exit: the folder can be locked again
        assert again.path.is_dir()


@pytest.mark.slow
def test_two_train_processes_on_one_folder_the_second_is_refused(tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        _train_command(tiny_model_dir, glue_dir, out, epochs=4),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        lock = out / LOCK_NAME
        deadline = time.time() + 300
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.time() < deadline, "the first run never locked its folder"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock taken, while the second one starts
        second = subprocess.run(
            _train_command(tiny_model_dir, glue_dir, out),
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(),
        )
        first.send_signal(signal.SIGCONT)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [line for line in second.stderr.splitlines() if line.startswith("unipelt: error:")]
        assert lines == [
            f"unipelt: error: {out} is being written by another run (PID {first.pid}); wait for it to end, or "
            "give another --out"
        ]
        _, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr[-2000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8  # the first run's 4 epochs of 2 steps, untouched by the refused one
    assert json.loads((out / "config.json").read_text())["epochs"] == 4


@pytest.mark.slow
def test_a_killed_runs_lock_does_not_block_resume_and_its_folder_needs_resume(
    tiny_model_dir, glue_dir, tmp_path
):
    out = tmp_path / "run"
    command = _train_command(tiny_model_dir, glue_dir, out)
    killed = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=_env("checkpoint-complete:4")
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / LOCK_NAME).is_file()  # the dead writer's PID is still in the file; its lock died with it

    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    assert again.returncode == 2
    assert (
        f"unipelt: error: {out} holds an unfinished run (no metrics.json); continue it with --resume"
        in again.stderr
    )

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


def test_a_diverged_runs_folder_is_refused_without_resume(tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "divergence.json").write_text('{"step": 3}')
    config = tiny_run_config(tiny_model_dir, glue_dir, out)
    with pytest.raises(
        UniPELTError, match=r"holds a run that diverged .* another --out .* --resume trains it again"
    ):
        train(config)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "divergence.json", LOCK_NAME]
