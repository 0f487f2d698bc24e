"""Per-task learning rates for the grid, chosen on one seed's validation split, reusing the grid's own cells.

For every (task, K, method): candidate rates = the method's grid rate (``--hyper`` files, else the library
default) times each of ``--scales``; each candidate is one K-shot training on ``--seed`` (the same sample,
validation split and budget as a grid cell). The candidate at the grid's own rate *is* the grid's cell for that
seed, so it is not trained twice; the others train under OUT/tune/<task>/k<K>/<method>/lr-<rate>/seed-<S>.
The rate with the best validation score wins (ties go to the grid's rate); when it is not the grid's rate, the
two runs swap folders, so the grid's seed-S cell is always the run at the chosen rate and the other seeds can
be trained at that rate with ``grid.py --hyper ... --tuned OUT/tuned_rates.json``. The test split is never read for the
choice (the runs score it, as every grid cell does, but only ``valid`` is compared).

Why not ``unipelt tune``: it does the same search for one cell (``--space`` with ``lr: {choices: [...]}``), but
here the winner must become a grid cell, and reusing the grid's run saves one training in three. Resumable and
shared between workers like ``grid.py`` (cells are claimed with a flock).

    python -m benchmarks.grid_tune --out benchmarks/out/grid_k1000 --k 1000 --n-valid 1000 --epochs 10 \\
        --patience 3 --hyper benchmarks/rates/k100_tuned.json --tasks rte,sst2 --methods unipelt,lora
    python -m benchmarks.grid_tune --out benchmarks/out/grid_k1000 --report   # tuning.md, tuned_rates.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks.grid import (
    LABELS,
    TASK_TITLES,
    TASKS,
    cell_dir,
    cell_overrides,
    claim,
    kshot_config,
    read_hyper,
    same_rate,
)
from unipelt.checkpoint import write_json  # noqa: E402
from unipelt.training.config import DEFAULT_LR  # noqa: E402


def grid_rate(hyper: dict[str, dict], task: str, method: str) -> float:
    """The rate grid.py gives a cell: ``task/method`` over ``method`` over the library default."""
    return float(cell_overrides(hyper, task, method).get("lr", DEFAULT_LR.get(method)))


def candidate_dir(out: Path, task: str, k: int, method: str, rate: float, seed: int) -> Path:
    return out / "tune" / task / f"k{k}" / method / f"lr-{rate:g}" / f"seed-{seed}"


def run_rate(folder: Path) -> float | None:
    """The learning rate a finished run was trained with, or None when it has not finished."""
    if not (folder / "metrics.json").is_file():
        return None
    return float(json.loads((folder / "config.json").read_text())["lr"])


def find_run(out: Path, task: str, k: int, method: str, rate: float, seed: int) -> Path | None:
    """The finished run at this rate: the grid's cell if it has this rate, else the candidate folder."""
    for folder in (cell_dir(out, task, k, method, seed), candidate_dir(out, task, k, method, rate, seed)):
        found = run_rate(folder)
        if found is not None and same_rate(found, rate):
            return folder
    return None


def candidates(args: argparse.Namespace, hyper: dict, task: str, method: str) -> list[float]:
    base = grid_rate(hyper, task, method)
    rates = [base] + [float(f"{base * s:.3g}") for s in args.scales if abs(s - 1.0) > 1e-9]
    return list(dict.fromkeys(rates))


def score(folder: Path, split: str = "valid") -> float:
    metrics = json.loads((folder / "metrics.json").read_text())
    return float(metrics[split][metrics["metric"]])


def _move(source: Path, target: Path) -> None:
    """Rename a finished run and keep its config.json's output_dir truthful."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    config["output_dir"] = str(target)
    write_json(config_path, config)


def choose(args: argparse.Namespace, hyper: dict, task: str, method: str) -> dict | None:
    """Pick the winning rate of one (task, method) once every candidate has finished, and put its run in the
    grid's cell; None while candidates are missing."""
    k, seed = args.k, args.seed
    rates = candidates(args, hyper, task, method)
    runs = {rate: find_run(args.out, task, k, method, rate, seed) for rate in rates}
    if any(folder is None for folder in runs.values()):
        return None
    scores = {rate: score(folder) for rate, folder in runs.items()}
    best = max(rates, key=lambda rate: scores[rate])  # max keeps the first of equals: the grid's rate
    tests = {rate: score(folder, "test") for rate, folder in runs.items()}  # reported after the fact only
    cell = cell_dir(args.out, task, k, method, seed)
    if runs[best] != cell:
        with claim(args.out / "tune" / task / f"k{k}" / method) as mine:
            if mine and runs[best] != cell:
                held = run_rate(cell)
                if held is not None:
                    _move(cell, candidate_dir(args.out, task, k, method, held, seed))
                _move(runs[best], cell)
    return {
        "task": task,
        "k": k,
        "method": method,
        "seed": seed,
        "scores": scores,
        "tests": tests,
        "lr": best,
    }


def train_candidates(args: argparse.Namespace, hyper: dict) -> None:
    from unipelt.training import train

    for task in args.tasks:
        for method in args.methods:
            rates = candidates(args, hyper, task, method)
            for rate in rates:
                if find_run(args.out, task, args.k, method, rate, args.seed) is not None:
                    continue
                if rate == rates[0]:  # the grid's own rate: its run is the grid's seed cell
                    folder = cell_dir(args.out, task, args.k, method, args.seed)
                else:
                    folder = candidate_dir(args.out, task, args.k, method, rate, args.seed)
                overrides = {**cell_overrides(hyper, task, method), "lr": rate}
                config = kshot_config(args, folder, task, method, args.k, args.seed, **overrides)
                with claim(folder) as mine:
                    if not mine or (folder / "metrics.json").is_file():
                        continue
                    result = train(config, resume=True)
                print(
                    f"{task} k={args.k} {method} lr={rate:g}: valid {result['valid'][result['metric']]:.4f}",
                    flush=True,
                )
            choose(args, hyper, task, method)


def _per_rate(values: dict[float, float], chosen: float, mark: str) -> str:
    return " / ".join(
        f"{rate:g}: {100 * value:.2f}" + (mark if rate == chosen else "") for rate, value in values.items()
    )


def report(args: argparse.Namespace, hyper: dict) -> None:
    """tuning.md (every candidate's validation score) and tuned_rates.json (the ``--hyper`` file of winners).

    tuning.md also lists the candidates' test scores, which play no part in the choice: they show how often the
    validation split picked the rate that was best on test, per method, i.e. how much of a method's score is
    the luck of the choice.
    """
    rows, test_rows, tuned, agree = [], [], {}, {}
    for task in TASKS:
        for method in LABELS:
            if not (args.out / task / f"k{args.k}" / method).is_dir():
                continue
            chosen = choose(args, hyper, task, method)
            if chosen is None:
                continue
            tuned[f"{task}/{method}"] = {"lr": chosen["lr"]}
            title = f"| {TASK_TITLES[task]} | {LABELS[method]} |"
            rows.append(f"{title} {_per_rate(chosen['scores'], chosen['lr'], ' **chosen**')} |")
            best_test = max(chosen["tests"], key=chosen["tests"].get)
            agree.setdefault(method, []).append(best_test == chosen["lr"])
            test_rows.append(f"{title} {_per_rate(chosen['tests'], chosen['lr'], ' (chosen)')} |")
    hits = ", ".join(f"{LABELS[m]} {sum(a)}/{len(a)}" for m, a in agree.items())
    text = "\n".join(
        [
            f"Validation score per learning rate (K = {args.k}, seed {args.seed}; first = the grid's rate)",
            "",
            "| task | method | rate: validation score |",
            "|---|---|---|",
            *rows,
            "",
            "Test score of the same runs, after the fact (never used to choose)",
            "",
            "| task | method | rate: test score |",
            "|---|---|---|",
            *test_rows,
            "",
            f"Validation chose the rate that was best on test in: {hits}.",
        ]
    )
    (args.out / "tuning.md").write_text(text + "\n")
    # atomic: other workers' grid.py --tuned read it before every cell
    write_json(args.out / "tuned_rates.json", tuned)
    print(text)
    print(f"{len(tuned)} tuned; {args.out / 'tuned_rates.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Time: two extra seed-1 runs per task and method (5-10 min each for MiniLM at K = 1000 on 2 cores).",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=os.environ.get("UNIPELT_DATA_DIR"))
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=TASKS)
    parser.add_argument(
        "--methods", type=lambda s: s.split(","), default=["unipelt", "adapter", "lora", "ft"]
    )
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument(
        "--seed", type=int, default=1, help="the seed whose validation split chooses the rate"
    )
    parser.add_argument(
        "--scales", type=lambda s: [float(x) for x in s.split(",")], default=[1 / 3, 1.0, 3.0]
    )
    parser.add_argument("--n-valid", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--hyper", nargs="+", help="the grid's --hyper files: they give each cell's base rate"
    )
    parser.add_argument(
        "--report", action="store_true", help="only choose where every candidate has finished"
    )
    args = parser.parse_args(argv)
    hyper = read_hyper(args.hyper or [])
    if not args.report:
        train_candidates(args, hyper)
    report(args, hyper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
