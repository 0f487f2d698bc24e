"""A resumed run reports the whole run: one end-of-training summary in log.jsonl whose mean training loss is the
uninterrupted run's, and train_seconds that add up over the sessions (real `unipelt train` processes killed
with the test hook of unipelt/training/faults.py, then resumed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import tiny_run_config

from unipelt.training import train
from unipelt.training.faults import KILL_ENV

pytestmark = pytest.mark.slow


def _cli(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "unipelt.cli", *args], capture_output=True, text=True, env=env
    )


def _args(model: Path, glue: Path, out: Path) -> list[str]:
    return [
        "train", "--model", str(model), "--data-dir", str(glue), "--task", "rte", "--method", "unipelt",
        "--k", "16", "--n-valid", "16", "--epochs", "3", "--batch-size", "8", "--max-length", "64",
        "--threads", "1", "--patience", "10", "--lr", "1e-2", "--out", str(out),
    ]  # fmt: skip


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _summaries(run: Path) -> list[dict]:
    return [r for r in _log(run) if "train_runtime" in r]


@pytest.fixture(scope="module")
def straight(tiny_model_dir, glue_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_run_config(tiny_model_dir, glue_dir, out, epochs=3))
    return out


@pytest.mark.parametrize("kill_at", ["checkpoint-save:4", "final-checkpoint"])
def test_a_resumed_run_has_one_summary_and_whole_run_totals(
    straight, tiny_model_dir, glue_dir, tmp_path, kill_at
):
    out = tmp_path / "run"
    args = _args(tiny_model_dir, glue_dir, out)
    killed = _cli(args, kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    marks = sorted((out / "trainer").glob("checkpoint-*/unipelt_complete.json"))
    carried = max(json.loads(m.read_text())["progress"]["train_seconds"] for m in marks)
    resumed = _cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    (summary,) = _summaries(out)  # one per run, whatever was written before the kill
    (expected,) = _summaries(straight)
    assert (
        summary["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5) and summary["train_loss"] > 0
    )
    log = _log(out)
    for prefix in ("valid_", "test_"):
        assert sum(1 for r in log if any(k.startswith(prefix) for k in r)) == 1, prefix
    metrics = json.loads((out / "metrics.json").read_text())
    # the training time of the sessions before the resume is counted, not only the resumed session's
    assert metrics["train_seconds"] >= round(carried, 2) > 0
    assert summary["train_runtime"] >= carried
