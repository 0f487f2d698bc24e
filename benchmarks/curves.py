"""Why a grid cell ended where it did: its learning curve and, for gated methods, its gates.

For every finished cell of a ``grid.py`` folder: the rate, how many epochs ran, the epoch of the best
validation score (the checkpoint that is scored on test), the validation score and loss at that epoch and at the
last one (a rising loss after the best epoch is over-fitting; a best epoch at the end means the run was still
learning when it stopped), and for UniPELT the spread of its gates over test inputs (per-site mean range and the
median per-input std; a std near 0 means the gates no longer depend on the input). Markdown to stdout; with
``--plot`` one figure per task of the validation curves (mean over seeds, one line per method).

    python -m benchmarks.curves benchmarks/out/grid_k1000 --plot benchmarks/figures/k1000_curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from benchmarks.grid import LABELS, TASK_TITLES, TASKS

COLLAPSED_STD = 0.005  # per-input gate std below this: the gate is a constant


def evaluations(cell: Path, metric: str) -> list[dict]:
    """Per-epoch validation records of a cell's log.jsonl: epoch, score, loss."""
    rows = []
    for line in (cell / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if f"eval_{metric}" in record:
            rows.append(
                {"epoch": record["epoch"], "score": record[f"eval_{metric}"], "loss": record["eval_loss"]}
            )
    return rows


def gate_rows(cell: Path) -> list[dict]:
    """The cell's gates.csv (layer, site, mean, std over test inputs); empty for a method without gates."""
    path = cell / "gates.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))


def site_means(cell: Path) -> dict[str, float]:
    """Each gate site's mean over layers: which module the model leans on, layer by layer averaged."""
    by_site: dict[str, list[float]] = {}
    for row in gate_rows(cell):
        by_site.setdefault(row["site"], []).append(float(row["mean"]))
    return {site: statistics.fmean(values) for site, values in by_site.items()}


def gate_summary(cell: Path) -> str:
    rows = gate_rows(cell)
    if not rows:
        return ""
    means = [float(r["mean"]) for r in rows]
    stds = [float(r["std"]) for r in rows]
    median_std = statistics.median(stds)
    flag = " collapsed" if median_std < COLLAPSED_STD else ""
    return f"{min(means):.2f}-{max(means):.2f}, std {median_std:.3f}{flag}"


def cell_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("*/k*/*/seed-*/metrics.json")):
        cell = path.parent
        metrics = json.loads(path.read_text())
        curve = evaluations(cell, metrics["metric"])
        if not curve:
            continue
        best = max(curve, key=lambda r: r["score"])  # first of equals, as the Trainer keeps it
        rows.append(
            {
                "task": path.parts[-5],
                "k": int(path.parts[-4][1:]),
                "method": path.parts[-3],
                "seed": metrics["seed"],
                "lr": json.loads((cell / "config.json").read_text())["lr"],
                "curve": curve,
                "best": best,
                "last": curve[-1],
                "test": 100 * metrics["test"][metrics["metric"]],
                "gates": gate_summary(cell),
                "sites": site_means(cell),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| task | method | seed | lr | epochs | best epoch | valid best / last | valid loss best / last | test "
        "| gates: mean range, median std |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {t: i for i, t in enumerate(TASKS)}
    methods = {m: i for i, m in enumerate(LABELS)}
    for r in sorted(
        rows, key=lambda r: (r["k"], order.get(r["task"], 99), methods.get(r["method"], 99), r["seed"])
    ):
        best, last = r["best"], r["last"]
        lines.append(
            f"| {TASK_TITLES.get(r['task'], r['task'])} | {LABELS.get(r['method'], r['method'])} | {r['seed']} | "
            f"{r['lr']:g} | {last['epoch']:.0f} | {best['epoch']:.0f} | {100 * best['score']:.2f} / "
            f"{100 * last['score']:.2f} | {best['loss']:.3f} / {last['loss']:.3f} | {r['test']:.2f} | {r['gates']} |"
        )
    return "\n".join(lines)


SINGLE = ("adapter", "prefix", "lora")


def lean_table(rows: list[dict]) -> str:
    """Per task, the gated method's mean gate per module (over layers and seeds) next to how the single methods
    did on test: do the gates open the module that wins alone? (Hindsight, for the analysis only.)"""
    gated = [r for r in rows if r["sites"]]
    sites = sorted({site for r in gated for site in r["sites"]})
    lines = [
        "| task | method | seeds | "
        + " | ".join(f"gate {s}" for s in sites)
        + " | single methods on test (mean) |",
        "|---|---|---|" + "---|" * len(sites) + "---|",
    ]
    order = {t: i for i, t in enumerate(TASKS)}
    for key in sorted(
        {(r["k"], r["task"], r["method"]) for r in gated}, key=lambda k: (k[0], order.get(k[1], 99))
    ):
        mine = [r for r in gated if (r["k"], r["task"], r["method"]) == key]
        gates = [
            f"{statistics.fmean(r['sites'][s] for r in mine if s in r['sites']):.2f}"
            if any(s in r["sites"] for r in mine)
            else ""
            for s in sites
        ]
        singles = []
        for method in SINGLE:
            tests = [r["test"] for r in rows if (r["k"], r["task"], r["method"]) == (key[0], key[1], method)]
            if tests:
                singles.append((statistics.fmean(tests), LABELS.get(method, method)))
        ranking = ", ".join(f"{name} {score:.2f}" for score, name in sorted(singles, reverse=True))
        lines.append(
            f"| {TASK_TITLES.get(key[1], key[1])} | {LABELS.get(key[2], key[2])} | {len(mine)} | "
            + " | ".join(gates)
            + f" | {ranking} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for index, method in enumerate(LABELS):
            mine = [r["curve"] for r in rows if r["task"] == task and r["method"] == method]
            if not mine:
                continue
            epochs = max(len(c) for c in mine)
            means = [statistics.fmean(c[e]["score"] for c in mine if len(c) > e) * 100 for e in range(epochs)]
            ax.plot(
                range(1, epochs + 1),
                means,
                marker=".",
                color=f"C{index % 10}",
                label=f"{LABELS[method]} ({len(mine)})",
            )
        ax.set_title(TASK_TITLES[task])
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("validation score (mean over seeds)")
    for ax in axes[0]:  # each panel its own legend: a method can be missing from a task
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        epilog="Time: seconds (reads finished run folders).", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG of the validation curves per task")
    args = parser.parse_args()
    rows = cell_rows(args.out)
    if not rows:
        print(f"no finished cells under {args.out}")
        return 1
    print(table(rows))
    if any(r["sites"] for r in rows):
        print("\nGates per module (mean over layers, test inputs and seeds):\n")
        print(lean_table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"\n{args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
