"""Several seeds of one run, and their summary: the paper reports mean and spread over seeds.

Finished seeds are skipped, so an interrupted multi-seed run is continued by running the same command again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unipelt.checkpoint import write_json
from unipelt.training.config import TrainConfig
from unipelt.training.run import train
from unipelt.training.run_files import read_json

logger = logging.getLogger(__name__)


def train_seeds(config: TrainConfig, seeds: Sequence[int], resume: bool = False) -> dict[str, Any]:
    """Run each seed into OUT/seed-S (skipping finished ones) and summarise mean and std of the test scores."""
    root = Path(config.output_dir)
    runs = []
    for seed in seeds:
        run_dir = root / f"seed-{seed}"
        if (run_dir / "metrics.json").is_file():
            logger.info("seed %s already finished in %s, skipped", seed, run_dir)
            runs.append(read_json(run_dir / "metrics.json", "metrics of a finished seed"))
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
