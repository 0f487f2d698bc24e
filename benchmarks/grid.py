"""The paper's low-resource GLUE grid (Table 1 layout) with unipelt, resumable and shardable.

Each cell (task, K, method, seed) is one ``unipelt.training.train`` run into
OUT/<task>/k<K>/<method>/seed-<S>; a cell whose metrics.json exists is skipped, so the script can be stopped and
restarted at will, and ``--shard i/n`` splits the cells over n processes (or machines sharing OUT). ``--report``
only gathers what has finished into OUT/results.jsonl, OUT/table.md (per task, average, std of the average over
seeds), OUT/seeds.md (every seed's score per cell) and OUT/table.png.

Methods come from the library's own list (``unipelt.training.METHODS``); by default every method that has a
default learning rate, others need one from ``--hyper``. Every cell is checked before the first one runs.

Cells run seed-major (every cell with seed 1 first), so a grid cut short still covers every task and method.

    python -m benchmarks.grid --out benchmarks/out/grid --k 100 --seeds 1,2,3 --data-dir ../shared/data/glue
    python -m benchmarks.grid --out benchmarks/out/grid --report
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import statistics
import sys
import time
from pathlib import Path

from unipelt.training.config import DEFAULT_LR, METHODS

TASKS = ["rte", "mrpc", "stsb", "cola", "sst2"]
# Row titles of the table (the paper's names); a method without one is shown by its own name.
LABELS = {
    "ft": "Fine-tune",
    "adapter": "Adapter",
    "prefix": "Prefix",
    "lora": "LoRA",
    "unipelt-ap": "UniPELT (AP)",
    "unipelt": "UniPELT (APL)",
    "unipelt-router": "UniPELT (router)",
    "ap-nogate": "AP without gates",
    "majority": "Majority class",
}
TASK_TITLES = {"rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "cola": "CoLA", "sst2": "SST-2"}


def cells(tasks, ks, methods, seeds):
    for seed in seeds:
        for k in ks:
            for task in tasks:
                for method in methods:
                    yield task, k, method, seed


def cell_dir(out: Path, task: str, k: int, method: str, seed: int) -> Path:
    return out / task / f"k{k}" / method / f"seed-{seed}"


def kshot_config(
    args: argparse.Namespace, folder: Path, task: str, method: str, k: int, seed: int, **overrides
):
    """The TrainConfig of one K-shot cell from the script's flags (shared with tune.py)."""
    from unipelt.training import TrainConfig

    config = TrainConfig(
        output_dir=str(folder),
        model=args.model,
        method=method,
        task=task,
        data_dir=args.data_dir,
        k=k,
        n_valid=args.n_valid,
        seed=seed,
        epochs=args.epochs,
        patience=args.patience,
        logging_steps=50,
        batch_size=getattr(args, "batch_size", 16),
        max_length=getattr(args, "max_length", 128),
        threads=getattr(args, "threads", None),
    )
    return dataclasses.replace(config, **overrides)


def read_hyper(paths: list[str]) -> dict[str, dict]:
    """Overrides per ``method`` or ``task/method`` from hyper.json files and ``unipelt tune``'s best.json files.

    A best.json (it has a ``tuning`` entry) gives the TrainConfig fields its search chose, under the key
    ``task/method`` of its own run; later files win over earlier ones.
    """
    hyper: dict[str, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "tuning" in data:
            task = data.get("task") or Path(data["train_file"]).stem
            key = f"{task}/{data['method']}"
            hyper[key] = {**hyper.get(key, {}), **data["tuning"]["overrides"]}
        else:
            for key, overrides in data.items():
                hyper[key] = {**hyper.get(key, {}), **overrides}
    return hyper


def cell_overrides(hyper: dict[str, dict], task: str, method: str) -> dict:
    """A cell's TrainConfig overrides from ``read_hyper``: ``task/method`` over ``method``."""
    return {**hyper.get(method, {}), **hyper.get(f"{task}/{method}", {})}


@contextlib.contextmanager
def claim(folder: Path):
    """Yield whether this process holds the cell: an exclusive, non-blocking flock on folder/.claim.

    Several workers can then walk the same cell list (``--shard`` splits it statically instead): each trains the
    first cell nobody holds, and the kernel drops a dead worker's lock, so its cell is resumed by the next one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".claim", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def same_rate(a: float, b: float) -> bool:
    """Whether two learning rates are the same one (rates pass through ``:g`` folder names and JSON)."""
    return abs(a - b) <= 1e-12 + 1e-6 * b


def set_aside_if_stale(folder: Path, rate: float, out: Path) -> None:
    """Move a finished cell trained at another rate than the chosen one (the choice changed after it ran) to
    OUT/stale/, so that it is trained again at the chosen rate and the old run stays for comparison."""
    trained = json.loads((folder / "config.json").read_text()).get("lr")
    if trained is not None and same_rate(trained, rate):
        return
    target = out / "stale" / folder.relative_to(out).parent / f"{folder.name}-lr-{trained:g}"
    with claim(folder) as mine:
        if mine and (folder / "metrics.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, target)
            print(f"{folder}: trained at {trained:g}, the chosen rate is now {rate:g}; moved to {target}")


def run_grid(args: argparse.Namespace) -> None:
    from unipelt.training import train

    hyper = read_hyper(args.hyper or [])
    for method in args.methods:  # --set applies to every cell, over the --hyper files
        hyper[method] = {**hyper.get(method, {}), **dict(args.set or [])}
    todo = list(cells(args.tasks, args.k, args.methods, args.seeds))
    index, count = args.shard
    mine = [cell for i, cell in enumerate(todo) if i % count == index]

    def tuned_rates() -> dict[str, dict]:
        return read_hyper([str(args.tuned)]) if args.tuned and args.tuned.is_file() else {}

    def config_of(task: str, k: int, method: str, seed: int, tuned: dict[str, dict] | None = None):
        overrides = {**cell_overrides(hyper, task, method), **cell_overrides(tuned or {}, task, method)}
        folder = cell_dir(args.out, task, k, f"{method}-{args.tag}" if args.tag else method, seed)
        return kshot_config(args, folder, task, method, k, seed, **overrides)

    for cell in mine:  # a bad method, task or override fails here, before hours of other cells
        config_of(*cell).validate()
    start, failed = time.time(), []
    for n, (task, k, method, seed) in enumerate(mine, 1):
        tuned = tuned_rates()  # read again per cell: grid_tune.py workers add to it while this one runs
        config = config_of(task, k, method, seed, tuned)
        done = Path(config.output_dir) / "metrics.json"
        if done.is_file() and args.tuned and f"{task}/{method}" in tuned:
            set_aside_if_stale(Path(config.output_dir), config.lr, args.out)
        if done.is_file():
            continue
        if args.tuned and f"{task}/{method}" not in tuned:
            print(f"{task} k={k} {method} seed={seed}: deferred, its rate is not chosen yet ({args.tuned})")
            continue
        with claim(Path(config.output_dir)) as mine_now:
            if not mine_now or done.is_file():  # another worker is training it, or has just finished it
                continue
            try:
                result = train(config, resume=True)
            except Exception as error:  # one broken cell must not stop hours of others; said, then exit 1
                failed.append(f"{task} k={k} {method} seed={seed}: {type(error).__name__}: {error}")
                print(f"FAILED {failed[-1]}", flush=True)
                continue
        print(
            f"[{n}/{len(mine)} {time.time() - start:.0f}s] {task} k={k} {method} seed={seed}: "
            f"test {result['metric']} {100 * result['test'][result['metric']]:.2f}",
            flush=True,
        )
    if failed:
        raise SystemExit("failed cells:\n" + "\n".join(failed))


def gather(out: Path) -> list[dict]:
    """One row per finished cell, plus one ``majority`` row per (task, K, seed): the score of always answering the
    commonest training label (every cell of that sample records the same one), the floor a method must clear."""
    rows, majority = [], {}
    for path in sorted(out.glob("*/k*/*/seed-*/metrics.json")):
        metrics = json.loads(path.read_text())
        config = json.loads((path.parent / "config.json").read_text())
        task, k, method = path.parts[-5], int(path.parts[-4][1:]), path.parts[-3]
        rows.append(
            {
                "task": task,
                "k": k,
                "method": method,
                "seed": metrics["seed"],
                "metric": metrics["metric"],
                "test": metrics["test"].get(metrics["metric"]),
                "valid": metrics["valid"].get(metrics["metric"]),
                "train_seconds": metrics["train_seconds"],
                "steps": metrics["steps"],
                "lr": config.get("lr"),
            }
        )
        floor = (metrics.get("majority_class") or {}).get("test", {}).get(metrics["metric"])
        if floor is not None:
            majority[(task, k, metrics["seed"])] = {
                **rows[-1],
                "method": "majority",
                "test": floor,
                "valid": None,
                "train_seconds": 0.0,
                "steps": 0,
                "lr": None,
            }
    return rows + list(majority.values())


def table(rows: list[dict], tasks: list[str], methods: list[str]) -> str:
    """Mean test score over seeds per task; Avg = mean over tasks; (std of the per-seed averages), as in Table 1."""
    lines = []
    for k in sorted({r["k"] for r in rows}):
        header = "| K | method | " + " | ".join(TASK_TITLES[t] for t in tasks) + " | Avg | seeds |"
        lines += [header, "|" + "---|" * (len(tasks) + 4)]
        for method in methods:
            mine = [r for r in rows if r["k"] == k and r["method"] == method]
            if not mine:
                continue
            cells_ = []
            for task in tasks:
                scores = [100 * r["test"] for r in mine if r["task"] == task]
                cells_.append(f"{statistics.fmean(scores):.2f}" if scores else "–")
            seeds = sorted({r["seed"] for r in mine})
            per_seed = []
            for seed in seeds:
                scores = {r["task"]: 100 * r["test"] for r in mine if r["seed"] == seed}
                if all(t in scores for t in tasks):
                    per_seed.append(statistics.fmean(scores[t] for t in tasks))
            if len(per_seed) == len(seeds) and per_seed:
                spread = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
                avg = f"{statistics.fmean(per_seed):.2f} ({spread:.1f})"
            else:
                avg = "–"
            lines.append(
                f"| {k} | {LABELS.get(method, method)} | " + " | ".join(cells_) + f" | {avg} | {len(seeds)} |"
            )
        lines.append("")
    return "\n".join(lines)


METRIC_TITLES = {"mrpc": " (F1)", "stsb": " (Spearman)", "cola": " (Matthews)"}


def _seed_cell(scores: dict[int, float], bold: bool = False, with_mean: bool = True) -> str:
    """ "s1 / s2 / s3: mean (std)" of one cell's test scores x 100, so a reader sees each sample, not only the mean;
    without the mean (the majority class) one value stands for seeds that agree."""
    values = [scores[seed] for seed in sorted(scores)]
    if not with_mean:
        return f"{values[0]:.2f}" if len(set(values)) == 1 else " / ".join(f"{v:.2f}" for v in values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    mean = f"{statistics.fmean(values):.2f}"
    return " / ".join(f"{v:.2f}" for v in values) + f": {f'**{mean}**' if bold else mean} ({spread:.2f})"


def _best(means: dict[str, dict[int, float]]) -> str | None:
    """The method with the best mean over its seeds (ties: the first)."""
    means = {m: statistics.fmean(v.values()) for m, v in means.items() if v}
    return max(means, key=means.get) if means else None


def seed_table(rows: list[dict], tasks: list[str], methods: list[str]) -> str:
    """Tasks down, methods across, every seed's test score and then mean (std over seeds); the best mean of each
    row in bold, the majority class last. The Avg row is each seed's mean over the tasks (only for a method with
    every task on that seed), so its std is the spread of the whole protocol over samples, as in Table 1."""
    lines = []
    for k in sorted({r["k"] for r in rows}):
        at_k = [r for r in rows if r["k"] == k]
        shown = [m for m in methods if any(r["method"] == m for r in at_k)]
        trained = [m for m in shown if m != "majority"]
        lines += [f"K = {k}, test x 100, seeds s1 / s2 / s3: mean (std over seeds)", ""]
        lines += [
            "| task | " + " | ".join(LABELS.get(m, m) for m in shown) + " |",
            "|---" * (len(shown) + 1) + "|",
        ]
        per_seed: dict[str, dict[int, list[float]]] = {m: {} for m in trained}
        for task in tasks:
            scores = {
                m: {r["seed"]: 100 * r["test"] for r in at_k if r["task"] == task and r["method"] == m}
                for m in shown
            }
            for m in trained:
                for seed, value in scores[m].items():
                    per_seed[m].setdefault(seed, []).append(value)
            best = _best({m: scores[m] for m in trained})
            cells_ = [
                _seed_cell(scores[m], bold=m == best, with_mean=m != "majority") if scores[m] else "–"
                for m in shown
            ]
            lines.append(f"| {TASK_TITLES[task]}{METRIC_TITLES.get(task, '')} | " + " | ".join(cells_) + " |")
        averages = {
            m: {seed: statistics.fmean(v) for seed, v in by_seed.items() if len(v) == len(tasks)}
            for m, by_seed in per_seed.items()
        }
        best = _best(averages)
        cells_ = [_seed_cell(averages[m], bold=m == best) if averages.get(m) else "" for m in shown]
        lines += ["| **Avg**, per seed | " + " | ".join(cells_) + " |", ""]
    return "\n".join(lines)


def plot(rows: list[dict], tasks: list[str], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(1, len(ks), figsize=(1.6 * len(tasks) + 3, 4), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for ax, k in zip(axes[0], ks):
        for i, method in enumerate(methods):
            means, errors = [], []
            for task in tasks:
                scores = [
                    100 * r["test"]
                    for r in rows
                    if r["k"] == k and r["method"] == method and r["task"] == task
                ]
                means.append(statistics.fmean(scores) if scores else float("nan"))
                errors.append(statistics.stdev(scores) if len(scores) > 1 else 0.0)
            positions = [j + (i - len(methods) / 2 + 0.5) * width for j in range(len(tasks))]
            ax.bar(positions, means, width, yerr=errors, label=LABELS.get(method, method), capsize=1.5)
        ax.set_xticks(range(len(tasks)), [TASK_TITLES[t] for t in tasks])
        ax.set_title(f"K = {k}")
        ax.set_ylabel("test score (mean over seeds)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    rows = gather(args.out)
    if not rows:
        print(f"no finished cells under {args.out}")
        return
    with open(args.out / "results.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    tasks = [t for t in args.tasks if any(r["task"] == t for r in rows)]
    methods = [m for m in [*args.methods, "majority"] if any(r["method"] == m for r in rows)]
    text = table(rows, tasks, methods)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "seeds.md").write_text(seed_table(rows, tasks, methods) + "\n")
    plot(rows, tasks, methods, args.out / "table.png")
    hours = sum(r["train_seconds"] for r in rows) / 3600
    trained = sum(r["method"] != "majority" for r in rows)
    print(text)
    print(
        f"{trained} cells, {hours:.2f} h of training time; table.md, table.png, results.jsonl in {args.out}"
    )


def _setting(text: str) -> tuple[str, object]:
    """KEY=VALUE of ``--set``: the value read as JSON when it parses (numbers, booleans), else as a string."""
    key, _, value = text.partition("=")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Time: a MiniLM cell takes 1-10 min on 2 CPU cores (K = 100: ~1-2 min, K = 1000 with 10 epochs: "
        "5-10 min); a full row of Table 1 (5 tasks x 4 methods x 3 seeds) is several hours.",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/grid"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=os.environ.get("UNIPELT_DATA_DIR"))
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=TASKS)
    parser.add_argument(
        "--methods", type=lambda s: s.split(","), default=[m for m in METHODS if m in DEFAULT_LR]
    )
    parser.add_argument("--k", type=lambda s: [int(x) for x in s.split(",")], default=[100])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--n-valid", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--hyper",
        nargs="+",
        help="JSON files of per-method (or 'task/method') TrainConfig overrides, or best.json files of "
        "unipelt tune (each applies to its own task and method)",
    )
    parser.add_argument(
        "--tuned",
        type=Path,
        help="grid_tune.py's tuned_rates.json: train only cells whose rate it has chosen, at that rate",
    )
    parser.add_argument(
        "--shard",
        type=lambda s: tuple(int(x) for x in s.split("/")),
        default=(0, 1),
        help="i/n: run every n-th cell starting at i",
    )
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        metavar="KEY=VALUE",
        help="a TrainConfig field for every cell, e.g. --set backbone_dropout=0 or --set latency_weight=3",
    )
    parser.add_argument(
        "--tag", help="cells go to <method>-<tag>/ folders (variants of a method side by side)"
    )
    parser.add_argument("--report", action="store_true", help="only gather finished cells into tables")
    args = parser.parse_args(argv)
    if args.report:
        report(args)
    else:
        run_grid(args)
        report(args)


if __name__ == "__main__":
    sys.exit(main())
