"""Cell-by-cell comparison of two grid folders run with one setting changed (e.g. the regression head's start, or
the backbone's dropout): for every (task, K, method, seed) finished in both, the test scores, their difference
and the training wall time; then per (task, K, method) the mean difference over the seeds both have.

Same seed = same K-shot sample and same initialisation, so the difference is the setting's effect on that cell.
``--split valid`` compares the best validation scores instead: the split a default may be chosen on.

    python -m benchmarks.compare_runs benchmarks/out/stsb_bias/zero benchmarks/out/stsb_bias/label-mean \
        --names "zero start,label-mean start"
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchmarks.grid import LABELS, TASK_TITLES, gather


def index(folder: Path, split: str = "test") -> dict[tuple, dict]:
    return {(r["task"], r["k"], r["method"], r["seed"]): r for r in gather(folder) if r[split] is not None}


def compare(a: dict[tuple, dict], b: dict[tuple, dict], names: tuple[str, str], split: str = "test") -> str:
    common = sorted(set(a) & set(b))
    lines = [
        f"| task | K | method | seed | {names[0]} | {names[1]} | difference | wall s ({names[0]} / {names[1]}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[float]] = {}
    for key in common:
        task, k, method, seed = key
        x, y = 100 * a[key][split], 100 * b[key][split]
        groups.setdefault((task, k, method), []).append(y - x)
        lines.append(
            f"| {TASK_TITLES.get(task, task)} | {k} | {LABELS.get(method, method)} | {seed} | {x:.2f} | {y:.2f} | "
            f"{y - x:+.2f} | {a[key]['train_seconds']:.0f} / {b[key]['train_seconds']:.0f} |"
        )
    lines += ["", f"| task | K | method | seeds | mean of {names[1]} - {names[0]} |", "|---|---|---|---|---|"]
    for (task, k, method), diffs in groups.items():
        lines.append(
            f"| {TASK_TITLES.get(task, task)} | {k} | {LABELS.get(method, method)} | {len(diffs)} | "
            f"{statistics.fmean(diffs):+.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        epilog="Time: seconds (reads finished run folders).", description=__doc__.splitlines()[0]
    )
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--names", default="first,second", help="two column titles, comma-separated")
    parser.add_argument("--split", choices=("test", "valid"), default="test", help="which score to compare")
    args = parser.parse_args()
    names = tuple(args.names.split(",", 1))
    a, b = index(args.first, args.split), index(args.second, args.split)
    if not set(a) & set(b):
        print("no cell finished in both folders")
        return 1
    print(compare(a, b, names, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
