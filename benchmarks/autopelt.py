"""AutoPELT numbers: APL, APL + optimize, autopelt at several latency weights, single methods, base.

Trainings are grid cells (``python -m benchmarks.grid --out OUT --methods autopelt --set latency_weight=3 --tag lw3``
and the APL cells; OUT/TASK/k1000/METHOD/seed-S). This script

1. optimizes every APL run (``unipelt optimize`` at each ``--max-drop``) into OUT/TASK/k1000/unipelt-optimized-dD/,
2. times every model against the base model at 1 x 128 and 32 x 128 (interleaved medians; run it under
   ``flock /tmp/unipelt-bench.lock`` so no other timing overlaps), single methods built with their preset
   (cost does not depend on weight values; LoRA merged, the prefix MLP ejected, as deployed),
3. writes OUT/autopelt_results.json, OUT/autopelt_table.md and the Pareto plot (test metric vs inference ratio).

Every stage skips what is done, so the script can be rerun after more trainings finish.

    flock /tmp/unipelt-bench.lock nice -n 10 .venv/bin/python -m benchmarks.autopelt --tasks sst2 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

SINGLES = ("lora", "adapter", "prefix")


def runs_of(out: Path, task: str, seeds: list[int]) -> dict[str, list[Path]]:
    """Finished run folders per method folder name (unipelt, unipelt-optimized, autopelt-lw*, singles)."""
    found: dict[str, list[Path]] = {}
    for folder in sorted((out / task / "k1000").glob("*/seed-*")):
        if (
            folder.is_dir()
            and folder.name.split("-")[1].isdigit()  # not a seed-N.claim folder
            and int(folder.name.split("-")[1]) in seeds
            and (folder / "metrics.json").is_file()
        ):
            found.setdefault(folder.parent.name, []).append(folder)
    return found


def optimize(out: Path, task: str, seeds: list[int], max_drops: list[float]) -> None:
    from unipelt.autopelt.optimize import optimize_run
    from unipelt.inference import Run

    for run in runs_of(out, task, seeds).get("unipelt", []):
        for drop in max_drops:
            target = out / task / "k1000" / f"unipelt-optimized-d{drop:g}" / run.name
            if (target / "metrics.json").is_file():
                continue
            start = time.time()
            optimize_run(Run(run), target, max_drop=drop, timing=False)
            print(f"optimized {run} (max drop {drop:g}) in {time.time() - start:.0f} s", flush=True)


def _deployed(run: Path):
    """The run's model as deployed: plans applied (Run.load), an ungated LoRA merged."""
    from unipelt.inference import Run

    model, _ = Run(run).load()
    if all(t.config.gate == "none" and t.config.modules == ["lora"] for t in model.tasks.values()):
        model.merge()
    return model


def _preset(base_name: str, method: str):
    from unipelt import add_unipelt
    from unipelt.backbones import load_base_model

    model = add_unipelt(load_base_model(base_name, "classification", num_labels=2), method).eval()
    if method == "lora":
        model.merge()
    model.eject_prefix_mlp()
    return model


def timing(out: Path, task: str, seeds: list[int], threads: int, reps: dict | None = None) -> dict:
    from unipelt.autopelt.latency import inference_ratios
    from unipelt.backbones import load_base_model

    torch.set_num_threads(threads)
    cache = out / f"autopelt_timing_{task}.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    runs = runs_of(out, task, seeds)
    models = {}
    for method in SINGLES:
        if method not in done and method not in runs:  # cost only, when the method has no trained run here
            models[method] = _preset("minilm", method)
    for method, folders in runs.items():
        for run in folders:
            key = f"{method}/{run.name}"
            if key not in done:
                models[key] = _deployed(run)
    if models:
        base = load_base_model("minilm", "classification", num_labels=2).eval()
        print(f"timing {len(models)} models against the base model: {', '.join(models)}", flush=True)
        ratios = inference_ratios(base, models, int(base.config.vocab_size), reps=reps)
        for key in models:
            done[key] = {shape: row[key] for shape, row in ratios.items()}
            done[key]["base_ms"] = {shape: row["base_ms"] for shape, row in ratios.items()}
        cache.write_text(json.dumps(done, indent=2) + "\n")
    return done


def report(out: Path, tasks: list[str], seeds: list[int], figure: Path) -> None:
    rows = []
    for task in tasks:
        times = json.loads((out / f"autopelt_timing_{task}.json").read_text())
        for method, folders in runs_of(out, task, seeds).items():
            metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
            name = metrics[0]["metric"]
            test = [100 * m["test"][name] for m in metrics]
            ratio = {s: [times[f"{method}/{f.name}"][s] for f in folders] for s in ("1x128", "32x128")}
            row = {
                "task": task,
                "method": method,
                "seeds": len(folders),
                "metric": name,
                "test": statistics.mean(test),
                "test_std": statistics.pstdev(test) if len(test) > 1 else 0.0,
                "ratio_1x128": statistics.mean(ratio["1x128"]),
                "ratio_32x128": statistics.mean(ratio["32x128"]),
            }
            if "autopelt" in metrics[0]:
                row["kept"] = metrics[0]["autopelt"]["counts"]
            if "before" in metrics[0]:
                row["gated_test"] = statistics.mean(100 * m["before"]["test"][name] for m in metrics)
            rows.append(row)
        for method in SINGLES:
            if method in times and not any(r["method"] == method and r["task"] == task for r in rows):
                rows.append(
                    {
                        "task": task,
                        "method": f"{method} (cost only)",
                        "seeds": 0,
                        "metric": "",
                        "test": None,
                        "ratio_1x128": times[method]["1x128"],
                        "ratio_32x128": times[method]["32x128"],
                    }
                )
    (out / "autopelt_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| task | method | seeds | test | inference 1x128 | inference 32x128 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        test = (
            "n/a"
            if r["test"] is None
            else f"{r['test']:.2f}" + (f" ± {r['test_std']:.2f}" if r["seeds"] > 1 else "")
        )
        lines.append(
            f"| {r['task']} | {r['method']} | {r['seeds']} | {test} | {r['ratio_1x128']:.3f}x | {r['ratio_32x128']:.3f}x |"
        )
    (out / "autopelt_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _pareto(rows, tasks, figure)


def _point(axes, row: dict, ratio_key: str) -> None:
    """One method on a Pareto plot: test metric against ``row[ratio_key]``, coloured by kind, labelled."""
    method = row["method"]
    colour = "tab:red" if method.startswith("autopelt") else "tab:grey" if method in SINGLES else "tab:blue"
    axes.scatter(row[ratio_key], row["test"], color=colour)
    axes.annotate(
        method, (row[ratio_key], row["test"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
    )


def _pareto(rows: list[dict], tasks: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(tasks), 4.2))
    for i, task in enumerate(tasks):
        axes = figure.add_subplot(1, len(tasks), i + 1)
        for r in (r for r in rows if r["task"] == task and r["test"] is not None):
            _point(axes, r, "ratio_32x128")
        singles = sorted(
            (r["ratio_32x128"], r["test"])
            for r in rows
            if r["task"] == task and r["method"] in SINGLES and r["test"] is not None
        )
        if len(singles) > 1:  # the line between the single methods that autopelt should reach
            axes.plot(*zip(*singles), color="tab:grey", ls="--", lw=1)
        axes.axvline(1.0, color="black", lw=0.8, ls=":")
        axes.set(xlabel="inference time / base model (32 x 128)", ylabel="test metric", title=task)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        epilog="Time: optimizing and timing one task's runs takes 10-30 min on 2 cores (trainings are grid cells).",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/autopelt"))
    parser.add_argument("--tasks", default="sst2")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--max-drop", default="0.5", help="comma-separated budgets, one optimized run each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", type=Path, default=Path("benchmarks/figures/autopelt_pareto.png"))
    parser.add_argument("--skip-optimize", action="store_true")
    parser.add_argument(
        "--optimize-only", action="store_true", help="stop after optimizing (timing wants a quiet machine)"
    )
    parser.add_argument("--reps-32", type=int, default=5, help="timed repetitions at 32 x 128 (1 warm-up)")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    for task in tasks:
        if not args.skip_optimize:
            optimize(args.out, task, seeds, [float(d) for d in args.max_drop.split(",")])
        if args.optimize_only:
            continue
        reps = {"32x128": (1, args.reps_32), "1x128": (3, 15)}
        timing(args.out, task, seeds, args.threads, reps)
    if not args.optimize_only:
        report(args.out, tasks, seeds, args.figure)


if __name__ == "__main__":
    main()


def estimated_ratios(out: Path, task: str, seeds: list[int]) -> dict[str, float]:
    """Inference ratio at 4 x 128 estimated from the autopelt runs' latency tables (mean per-unit costs):
    1 + the costs of every unit a run computes (a LoRA counts unless merged, i.e. folded or ungated-merged).

    A fallback when the timing stage cannot run; gate computations are not in the tables, so gated models
    are estimated slightly low."""
    from unipelt.plan import Plan

    runs = runs_of(out, task, seeds)
    tables = [
        json.loads((r / "latency.json").read_text())["measured"]
        for m, rs in runs.items()
        for r in rs
        if m.startswith("autopelt") and (r / "latency.json").is_file()
    ]
    cost = {k: statistics.mean(t[k] for t in tables) for k in ("lora", "prefix", "adapter")}
    layers, targets = 6, 2  # MiniLM-L6; LoRA on query and value
    full = {"lora": layers * targets, "prefix": layers, "adapter": layers}
    result = {
        "lora": 1.0,
        "adapter": 1 + full["adapter"] * cost["adapter"],
        "prefix": 1 + full["prefix"] * cost["prefix"],
    }
    for method, folders in runs.items():
        for run in folders:
            if method in SINGLES:
                continue
            meta = json.loads((run / "checkpoint" / "unipelt_config.json").read_text())
            plan = Plan.from_dict(meta.get("autopelt") or {})
            counted = dict(full)
            for unit in plan.prune:
                counted[unit.kind] -= 1
            for unit in plan.fold:
                if unit.kind == "lora":  # merged when the run is loaded alone
                    counted["lora"] -= 1
            result[f"{method}/{run.name}"] = 1 + sum(counted[k] * cost[k] for k in counted)
    result["per_unit_cost"] = cost
    return result


def report_estimated(out: Path, task: str, seeds: list[int], figure: Path) -> list[dict]:
    """The table and Pareto plot with the estimated ratios (see :func:`estimated_ratios`)."""
    ratios = estimated_ratios(out, task, seeds)
    rows = []
    for method, folders in runs_of(out, task, seeds).items():
        metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
        name = metrics[0]["metric"]
        rows.append(
            {
                "task": task,
                "method": method,
                "seeds": len(folders),
                "test": statistics.mean(100 * m["test"][name] for m in metrics),
                "valid": statistics.mean(100 * m["valid"][name] for m in metrics),
                "ratio_est_4x128": statistics.mean(
                    ratios[method if method in SINGLES else f"{method}/{f.name}"] for f in folders
                ),
            }
        )
    rows.sort(key=lambda r: r["ratio_est_4x128"])
    (out / f"autopelt_estimated_{task}.json").write_text(
        json.dumps({"rows": rows, "ratios": ratios}, indent=2) + "\n"
    )
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    axes = fig.add_subplot()
    singles = sorted((r["ratio_est_4x128"], r["test"]) for r in rows if r["method"] in SINGLES)
    if len(singles) > 1:
        axes.plot(*zip(*singles), color="tab:grey", ls="--", lw=1, label="line between single methods")
    for r in rows:
        _point(axes, r, "ratio_est_4x128")
    axes.axvline(1.0, color="black", lw=0.8, ls=":")
    axes.set(
        xlabel="inference time / base model (estimated, 4 x 128)",
        ylabel="test accuracy",
        title=f"{task}, K = 1000, seed 1",
    )
    axes.legend(fontsize=7)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    for r in rows:
        print(f"| {r['method']} | {r['valid']:.1f} | {r['test']:.2f} | {r['ratio_est_4x128']:.3f}x |")
    return rows
