"""Tuned against default hyper-parameters, per task and method, with ``unipelt tune`` (Optuna) underneath.

For every task and method: an Optuna search on the K-shot validation split of --seed (the library's default
space for the method, or --space), into OUT/<task>/<method>/ (study.db, trials/, best.json, trials.md,
plots); then the best configuration and the defaults are each trained on --retrain-seeds with their test
split evaluated (OUT/<task>/<method>/retrain/ and .../defaults/). OUT/summary.md compares them: best validation
score against the defaults' on the same split, test mean and std over the seeds, wall time per trial.

Everything resumes: the study continues up to --trials, finished seeds are skipped. The best.json files feed
the grid: ``python -m benchmarks.grid --hyper OUT/*/*/best.json``.

    python -m benchmarks.tune --out benchmarks/out/tune --tasks sst2,stsb --methods unipelt --k 100 \\
        --trials 20 --retrain-seeds 1,2,3 --threads 1 --data-dir ../shared/data/glue
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from pathlib import Path

from benchmarks.grid import kshot_config
from unipelt.training.config import DEFAULT_LR, METHODS


def tune_cell(args: argparse.Namespace, task: str, method: str) -> dict:
    from unipelt.training.search_space import default_space, load_space
    from unipelt.training.seeds import train_seeds
    from unipelt.training.tuning import (
        SearchSettings,
        best_config,
        best_trial,
        default_storage,
        retrain_best,
        search,
    )
    from unipelt.training.tuning_report import write_outputs

    folder = args.out / task / method
    base = kshot_config(args, folder / "base", task, method, args.k, args.seed)
    settings = SearchSettings(
        out=folder,
        storage=default_storage(folder),
        study=f"{task}-{method}-k{args.k}",
        trials=args.trials,
        timeout=args.timeout,
        pruner=args.pruner,
        space=load_space(args.space) if args.space else default_space(method),
    )
    found = search(base, settings)
    report = write_outputs(found["study"], folder, settings.storage)
    trial = best_trial(found["study"])
    tuned = retrain_best(best_config(trial), args.retrain_seeds, folder) if args.retrain_seeds else None
    defaults = (
        train_seeds(
            dataclasses.replace(base, output_dir=str(folder / "defaults")), args.retrain_seeds, resume=True
        )
        if args.retrain_seeds
        else None
    )
    default_seed = folder / "defaults" / f"seed-{args.seed}" / "metrics.json"
    default_valid = (
        json.loads(default_seed.read_text())["valid"].get(found["metric"]) if default_seed.is_file() else None
    )
    seconds = [
        row["seconds"] for row in report["rows"] if row["state"] in ("COMPLETE", "PRUNED") and row["seconds"]
    ]
    return {
        "task": task,
        "method": method,
        "metric": found["metric"],
        "trials": sum(1 for row in report["rows"] if row["state"] in ("COMPLETE", "PRUNED")),
        "pruned": sum(1 for row in report["rows"] if row["state"] == "PRUNED"),
        "best_trial": trial.number,
        "best_valid": trial.values[0],
        "best_params": report["best"]["tuning"]["params"],
        "default_valid": default_valid,
        "seconds_per_trial": statistics.fmean(seconds) if seconds else None,
        "tuned_test": tuned["test"].get(found["metric"]) if tuned else None,
        "default_test": defaults["test"].get(found["metric"]) if defaults else None,
    }


def _score(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _spread(stat: dict | None) -> str:
    return "–" if not stat else f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def summary_table(rows: list[dict], args: argparse.Namespace) -> str:
    seeds = ",".join(map(str, args.retrain_seeds or []))
    lines = [
        f"| task | method | metric | trials (pruned) | valid: defaults | valid: best trial | "
        f"test: defaults (seeds {seeds}) | test: tuned (seeds {seeds}) | s / trial |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_trial = "–" if r["seconds_per_trial"] is None else f"{r['seconds_per_trial']:.0f}"
        lines.append(
            f"| {r['task']} | {r['method']} | {r['metric']} | {r['trials']} ({r['pruned']}) | "
            f"{_score(r['default_valid'])} | {_score(r['best_valid'])} | {_spread(r['default_test'])} | "
            f"{_spread(r['tuned_test'])} | {per_trial} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        epilog="Time: hours: every trial is a training run.", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/tune"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=os.environ.get("UNIPELT_DATA_DIR"))
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=["sst2", "stsb"])
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["unipelt"])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="the K-shot split the search runs on")
    parser.add_argument("--n-valid", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--trials", type=int, default=20, help="trials per (task, method) study")
    parser.add_argument("--timeout", type=float, help="seconds per study after which no trial starts")
    parser.add_argument("--pruner", default="median", choices=["median", "halving", "none"])
    parser.add_argument(
        "--space", help="YAML/JSON search space for every method (default: each method's own)"
    )
    parser.add_argument(
        "--retrain-seeds",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2, 3],
        help="train tuned and default configurations on these seeds (test mean and std); empty to skip",
    )
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    untuned = [m for m in args.methods if m not in DEFAULT_LR]
    if untuned:
        parser.error(f"no default learning rate to compare against for {', '.join(untuned)}")
    rows = []
    for task in args.tasks:
        for method in args.methods:
            rows.append(tune_cell(args, task, method))
            print(json.dumps(rows[-1]), flush=True)
    text = summary_table(rows, args)
    (args.out / "summary.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
