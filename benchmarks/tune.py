"""Choose each method's learning rate on the validation split only (never on the test split).

For every method and candidate learning rate, train the K-shot protocol on the given tasks and seed and read
the validation score of the best checkpoint; the rate with the best mean validation score wins. Writes
OUT/tuning.jsonl (every trial) and OUT/hyper.json (the chosen values, in the format grid.py --hyper reads).

    python benchmarks/tune.py --out benchmarks/out/tune --tasks sst2,rte --k 100 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from grid import METHODS, kshot_config

CANDIDATES = {
    "ft": [5e-5, 2e-4],
    "adapter": [1e-3, 3e-3],
    "lora": [1e-3, 3e-3],
    "prefix": [1e-3, 3e-3],
    "unipelt-ap": [5e-4, 2e-3],
    "unipelt": [5e-4, 2e-3],
    "unipelt-router": [5e-4, 2e-3],
    "ap-nogate": [5e-4, 2e-3],
}


def main() -> None:
    from unipelt.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/tune"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=os.environ.get("UNIPELT_DATA_DIR"))
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=["sst2"])
    parser.add_argument("--methods", type=lambda s: s.split(","), default=METHODS)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-valid", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--patience", type=int, default=3)
    args = parser.parse_args()

    trials = []
    for method in args.methods:
        for lr in CANDIDATES[method]:
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
    with open(args.out / "tuning.jsonl", "w") as handle:
        handle.writelines(json.dumps(t) + "\n" for t in trials)
    chosen = {}
    for method in args.methods:
        by_lr = {
            lr: statistics.fmean(t["valid"] for t in trials if t["method"] == method and t["lr"] == lr)
            for lr in CANDIDATES[method]
        }
        chosen[method] = {"lr": max(by_lr, key=by_lr.get)}
    (args.out / "hyper.json").write_text(json.dumps(chosen, indent=2) + "\n")
    print(json.dumps(chosen, indent=2))


if __name__ == "__main__":
    main()
