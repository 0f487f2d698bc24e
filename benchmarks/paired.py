"""Paired comparison of a grid's cells: does UniPELT (APL) beat the best single method and fine-tuning, seed by seed?

Reads the finished cells of one or more ``grid.py`` output folders (their metrics.json, through ``grid.gather``)
and prints, per task and K: every method's test mean and std over seeds, then for APL against each rival (the
best single method, fine-tuning, UniPELT (AP) and the peer) the per-seed differences on the seeds both have
(same seed = same K-shot sample, so the difference removes the sample's luck), their mean and std, and how many
seeds APL won. "Best single method" is, per task, the one of adapter / prefix / LoRA with the best mean over the
seeds APL also has (chosen with hindsight, which favours the rival). ``--peer`` adds AdapterHub ``adapters``'
UniPELT (``peer_accuracy.py`` JSON lines, same samples) as one more rival. Output is Markdown tables.

    python -m benchmarks.paired benchmarks/out/grid_k1000 --peer benchmarks/out/peer_accuracy_k1000_tuned.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.grid import LABELS, TASK_TITLES, TASKS, gather

SINGLE = ("adapter", "prefix", "lora")
APL = "unipelt"
PEER = "adapters-unipelt"
TITLES = {**LABELS, PEER: "adapters' UniPELT"}
# Rivals compared on every task and on the average besides the best single method: full fine-tuning (the paper's
# claim), UniPELT without LoRA (the paper's AP ablation: what LoRA's gate adds) and the peer library's UniPELT.
FIXED_RIVALS = (("fine-tune", "ft"), ("UniPELT (AP)", "unipelt-ap"), (TITLES[PEER], PEER))


def peer_rows(path: Path) -> list[dict]:
    """``peer_accuracy.py``'s UniPELT runs as grid rows (test = its main metric on the same GLUE dev split)."""
    rows = []
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("method") == "unipelt":
            rows.append(
                {
                    **{key: record[key] for key in ("task", "k", "seed")},
                    "method": PEER,
                    "test": record["test_main"],
                }
            )
    return rows


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def scores(rows: list[dict]) -> dict[tuple[str, int, str], dict[int, float]]:
    """(task, K, method) -> {seed: test score x 100}."""
    table: dict[tuple[str, int, str], dict[int, float]] = {}
    for row in rows:
        if row["test"] is not None:
            table.setdefault((row["task"], row["k"], row["method"]), {})[row["seed"]] = 100 * row["test"]
    return table


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[list[int], list[float]]:
    seeds = sorted(set(a) & set(b))
    return seeds, [a[s] - b[s] for s in seeds]


def best_single(table, task: str, k: int, seeds: set[int]) -> str | None:
    means = {}
    for method in SINGLE:
        cell = table.get((task, k, method), {})
        common = [cell[s] for s in sorted(seeds) if s in cell]
        if common and len(common) == len(seeds):
            means[method] = statistics.fmean(common)
    return max(means, key=means.get) if means else None


def report(rows: list[dict]) -> str:
    table = scores(rows)
    lines = []
    for k in sorted({key[1] for key in table}):
        lines += [
            f"### K = {k}",
            "",
            "| task | method | test, per seed | mean | std |",
            "|---|---|---|---|---|",
        ]
        for task in TASKS:
            for method in TITLES:
                cell = table.get((task, k, method))
                if not cell:
                    continue
                per_seed = " / ".join(f"{cell[s]:.2f}" for s in sorted(cell))
                values = list(cell.values())
                lines.append(
                    f"| {TASK_TITLES[task]} | {TITLES[method]} | {per_seed} (seeds {sorted(cell)}) | "
                    f"{statistics.fmean(values):.2f} | {_std(values):.2f} |"
                )
        lines += [
            "",
            "| task | APL vs | seeds | APL - rival, per seed | mean diff | std diff | APL wins |",
            "|---|---|---|---|---|---|---|",
        ]
        for task in TASKS:
            apl = table.get((task, k, APL))
            if not apl:
                continue
            rivals = [("best single: " + m, m) for m in [best_single(table, task, k, set(apl))] if m]
            rivals += FIXED_RIVALS
            for title, method in rivals:
                seeds, diffs = paired(apl, table.get((task, k, method), {}))
                if not diffs:
                    continue
                lines.append(
                    f"| {TASK_TITLES[task]} | {title} | {seeds} | {' / '.join(f'{d:+.2f}' for d in diffs)} | "
                    f"{statistics.fmean(diffs):+.2f} | {_std(diffs):.2f} | {sum(d > 0 for d in diffs)}/{len(diffs)} |"
                )
        lines += ["", *average_rows(table, k), ""]
    return "\n".join(lines)


def per_seed_average(table, k: int, method: str) -> dict[int, float]:
    """{seed: mean test score over the five tasks}, for the seeds on which the method has every task."""
    cells = [table.get((task, k, method), {}) for task in TASKS]
    seeds = set.intersection(*(set(cell) for cell in cells))
    return {seed: statistics.fmean(cell[seed] for cell in cells) for seed in sorted(seeds)}


def average_rows(table, k: int) -> list[str]:
    """The claim on the five-task average: APL against the single method with the best average, and against
    fine-tuning, paired by seed (a seed's average over the tasks is one sample of the whole protocol)."""
    apl = per_seed_average(table, k, APL)
    if not apl:
        return [f"(no seed has all five tasks for APL at K = {k}, so no paired five-task average yet)"]
    singles = {m: per_seed_average(table, k, m) for m in SINGLE}
    singles = {m: avg for m, avg in singles.items() if set(apl) <= set(avg)}
    rivals = []
    if singles:
        best = max(singles, key=lambda m: statistics.fmean(singles[m][s] for s in apl))
        rivals.append(("best single on average: " + best, best))
    rivals += FIXED_RIVALS
    lines = [
        "| five-task average | APL vs | seeds | APL - rival, per seed | mean diff | std diff | APL wins |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, method in rivals:
        seeds, diffs = paired(apl, per_seed_average(table, k, method))
        if diffs:
            lines.append(
                f"| Avg | {title} | {seeds} | {' / '.join(f'{d:+.2f}' for d in diffs)} | "
                f"{statistics.fmean(diffs):+.2f} | {_std(diffs):.2f} | {sum(d > 0 for d in diffs)}/{len(diffs)} |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        epilog="Time: seconds (reads finished run folders).", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--peer", type=Path, help="peer_accuracy.py JSON lines (adapters' UniPELT)")
    args = parser.parse_args()
    rows = [row for folder in args.folders for row in gather(folder)]
    rows += peer_rows(args.peer) if args.peer else []
    if not rows:
        print("no finished cells")
        return 1
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
