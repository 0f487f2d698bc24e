"""Choose each method's learning rate on the validation split only (never on the test split).

For every method and candidate learning rate, train the K-shot protocol on the given tasks and seed and read
the validation score of the best checkpoint; the rate with the best mean validation score wins. Writes
OUT/tuning.jsonl (every trial) and OUT/hyper.json (the chosen values, in the format grid.py --hyper reads).

By default one rate per method is chosen on the mean validation score over --tasks (key ``method``). With
--per-task each task gets its own rate (key ``task/method``, which grid.py applies on top of ``method``):
a regression head on STS-B, whose labels sit in [0, 5], needs a different rate than SST-2's classifier.
Choices are merged into an existing OUT/hyper.json, so a per-task run keeps the earlier per-method rates.

    python benchmarks/tune.py --out benchmarks/out/tune --tasks sst2,rte --k 100 --seed 1
    python benchmarks/tune.py --out benchmarks/out/tune --tasks stsb --per-task --lrs 5e-4,1e-3,3e-3,1e-2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from grid import kshot_config

from unipelt.training.config import DEFAULT_LR, METHODS

# Per method: its default learning rate and one larger one (x3 for the 1e-3 methods, x4 for the others).
CANDIDATES = {method: [lr, lr * (3 if lr >= 1e-3 else 4)] for method, lr in DEFAULT_LR.items()}


def main() -> None:
    from unipelt.training import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/tune"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=os.environ.get("UNIPELT_DATA_DIR"))
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=["sst2"])
    parser.add_argument(
        "--methods", type=lambda s: s.split(","), default=[m for m in METHODS if m in CANDIDATES]
    )
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-valid", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument(
        "--lrs",
        type=lambda s: [float(x) for x in s.split(",")],
        help="candidate learning rates for every method (default: the per-method CANDIDATES)",
    )
    parser.add_argument("--per-task", action="store_true", help="choose a rate per (task, method)")
    args = parser.parse_args()

    def candidates(method: str) -> list[float]:
        return args.lrs or CANDIDATES[method]

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    untuned = [m for m in args.methods if not args.lrs and m not in CANDIDATES]
    if untuned:
        parser.error(f"no default learning rate, so no candidates, for {', '.join(untuned)}: pass --lrs")

    trials = []
    for method in args.methods:
        for lr in candidates(method):
            scores = []
            for task in args.tasks:
                folder = args.out / task / method / f"lr{lr:g}"
                if (folder / "metrics.json").is_file():
                    result = json.loads((folder / "metrics.json").read_text())
                else:
                    config = kshot_config(args, folder, task, method, args.k, args.seed, lr=lr)
                    result = train(config, resume=True)
                scores.append(result["valid"][result["metric"]])
                trials.append({"method": method, "lr": lr, "task": task, "valid": scores[-1]})
                print(json.dumps(trials[-1]), flush=True)
    log_path = args.out / "tuning.jsonl"  # every trial so far, one line per (method, lr, task)
    logged = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    merged = {(t["method"], t["lr"], t["task"]): t for t in logged + trials}
    log_path.write_text("".join(json.dumps(t) + "\n" for t in merged.values()))
    hyper_path = args.out / "hyper.json"
    chosen = json.loads(hyper_path.read_text()) if hyper_path.is_file() else {}
    for method in args.methods:
        for key, tasks in (
            [(f"{task}/{method}", [task]) for task in args.tasks] if args.per_task else [(method, args.tasks)]
        ):
            by_lr = {
                lr: statistics.fmean(
                    t["valid"]
                    for t in trials
                    if t["method"] == method and t["lr"] == lr and t["task"] in tasks
                )
                for lr in candidates(method)
            }
            chosen[key] = {"lr": max(by_lr, key=by_lr.get)}
    hyper_path.write_text(json.dumps(chosen, indent=2) + "\n")
    print(json.dumps(chosen, indent=2))


if __name__ == "__main__":
    main()
