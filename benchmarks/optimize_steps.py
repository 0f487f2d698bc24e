"""What each step of ``unipelt optimize`` saves in inference time, measured in CPU time on one thread.

For each optimized run folder given (``unipelt optimize RUN --out OPT``), the step models of its report
(``optimize.json``: trained, prune, fold, shorten) are rebuilt from the original run and timed against the base
model at 1 x 128 and 32 x 128: round-robin in one process, the order rotated each round, each call's *thread CPU
time* (``time.thread_time``) with torch on one thread, so time the machine gives to other processes does not
count; the median per model. Prints a Markdown table (ratio to the base model per step) and writes JSON.

    OMP_NUM_THREADS=1 nice -n 10 python -m benchmarks.optimize_steps OPT_SST2 OPT_STSB --rounds 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from unipelt.autopelt.latency import random_batch
from unipelt.autopelt.steps import step_models
from unipelt.backbones import load_base_model
from unipelt.inference import Run
from unipelt.plan import Plan

SHAPES = ((1, 128), (32, 128))


@torch.inference_mode()
def cpu_medians(models: dict[str, torch.nn.Module], inputs: dict, rounds: int, warmup: int = 2) -> dict:
    """Median thread-CPU seconds of one forward per model, interleaved with the order rotated each round."""
    names = list(models)
    for _ in range(warmup):
        for name in names:
            models[name](**inputs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.thread_time()
            models[name](**inputs)
            samples[name].append(time.thread_time() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(folder: Path, rounds: int) -> dict:
    report = json.loads((folder / "optimize.json").read_text())
    run = Run(report["run"])
    model, _ = run.load()
    name = next(iter(model.tasks))
    steps = [(row["step"], Plan.from_dict(row["plan"])) for row in report["steps"]]
    models = {"base": load_base_model(run.config.model, run.kind.head, labels=run.labels).eval()}
    models.update(step_models(model, name, steps))
    result = {"run": report["run"], "metric": report["metric"], "steps": {}}
    for batch, length in SHAPES:
        shape = f"{batch}x{length}"
        inputs = random_batch(int(models["base"].config.vocab_size), batch, length)
        times = cpu_medians(models, inputs, rounds if batch == 1 else max(5, rounds // 3))
        for step, _ in steps:
            result["steps"].setdefault(step, {})[shape] = round(times[step] / times["base"], 4)
        result.setdefault("base_ms", {})[shape] = round(1000 * times["base"], 2)
    for row in report["steps"]:
        result["steps"][row["step"]].update(
            valid=row["valid"][report["metric"]], parameters=row["parameters"], prefix=row["prefix_length"]
        )
    result["test"] = {k: report["test"][k].get(report["metric"]) for k in ("before", "after")}
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| run | step | valid | added parameters | prefix P | CPU 1 x 128 | CPU 32 x 128 |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        label = Path(result["run"]).name
        for step, row in result["steps"].items():
            lines.append(
                f"| {label} | {step} | {100 * row['valid']:.2f} | {row['parameters']:,} | {row['prefix']} "
                f"| {row['1x128']:.3f}x | {row['32x128']:.3f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="optimized run folders (with optimize.json)")
    parser.add_argument(
        "--rounds", type=int, default=30, help="timed rounds at 1 x 128 (a third at 32 x 128)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [measure(folder, args.rounds) for folder in args.folders]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
