"""The configuration of a tiny training run, shared by the tests that train end to end.

A few optimizer steps on 16 RTE examples with the tiny BERT folder of ``conftest.tiny_model_dir``: enough to write
checkpoints, logs and metrics in seconds. Tests override what they exercise.
"""

from __future__ import annotations

from pathlib import Path

from unipelt.training import TrainConfig


def tiny_run_config(model_dir: Path | str, glue_dir: Path | str, out: Path | str, **overrides) -> TrainConfig:
    fields = dict(
        model=str(model_dir),
        task="rte",
        data_dir=str(glue_dir),
        method="unipelt",
        k=16,
        n_valid=16,
        epochs=2,  # 2 steps an epoch
        batch_size=8,
        max_length=64,
        threads=1,
        patience=10,
        lr=1e-2,
        output_dir=str(out),
    )
    return TrainConfig(**{**fields, **overrides})
