"""What serving several tasks from one backbone costs: one mixed-task batch vs one batch per task, and memory.

Measured on MiniLM (packaged) with 4 UniPELT (APL) tasks, inference in the deployable form (prefix MLP ejected):

- time: one forward of a mixed batch (4 tasks x 8 examples, rows interleaved) against 4 forwards of 8 examples,
  one per task, and against one single-task forward of 32 (what the mixed batch would cost with no routing);
  interleaved in one process, medians of wall time (:mod:`timing`) and of this thread's CPU-time ratios;
- memory: peak RSS of a fresh process that loads the model and runs one 32 x 128 forward, for 1 task, 4 tasks
  on one backbone, and 4 separate single-task models.

    python -m benchmarks.multitask_cost --out benchmarks/out/multitask_cost.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from benchmarks import machine, timing

TASKS = ("a", "b", "c", "d")


def build(tasks: int, models: int = 1) -> list:
    """``models`` MiniLM copies, each with ``tasks`` APL tasks of random (non-zero) weights, ready to serve."""
    from unipelt import UniPELTModel
    from unipelt.backbones import load_base_model

    out = []
    for _ in range(models):
        model = UniPELTModel(load_base_model("minilm", "classification", num_labels=2))
        for name in TASKS[:tasks]:
            model.add_task(name, "unipelt")
            model.eject_prefix_mlp(name)
        with torch.no_grad():
            for name, parameter in model.tasks.named_parameters():
                if "lora_B" in name or ".up." in name:
                    parameter.normal_(std=0.02)
        out.append(model.eval())
    return out


def child(kind: str, seq_len: int) -> None:
    """One memory measurement in this (fresh) process: load, then one forward of 32 x seq_len."""
    before = machine.current_rss_mb()
    setups = {"one_task": (1, 1), "four_tasks_one_backbone": (4, 1), "four_models": (1, 4)}
    tasks, models = setups[kind]
    built = build(tasks, models)
    batch = timing.make_batch(32, seq_len, built[0].config.vocab_size)

    def forward() -> None:
        with torch.inference_mode():
            for model in built:
                names = [TASKS[i % tasks] for i in range(32)]
                model(**batch, task=names if tasks > 1 else None)

    forward()
    machine.emit_child_result(
        {"measure": "memory", "setup": kind, "rss_start_mb": before, "peak_rss_mb": machine.peak_rss_mb()}
    )


def _cpu_timed(name: str, fn, cpu: dict[str, list[float]]):
    """``fn`` that also appends this thread's CPU seconds per call to ``cpu[name]``."""

    def run() -> None:
        start = time.thread_time()
        fn()
        cpu.setdefault(name, []).append(time.thread_time() - start)

    return run


def _latency_records(times: dict[str, list[float]], cpu: dict[str, list[float]]) -> list[dict]:
    """Wall medians and ratios, and the medians over rounds of this thread's CPU-time ratios (which other
    processes on the machine disturb far less)."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    records = []
    for name, value in medians.items():
        per_round = zip(cpu[name], cpu["separate_4x8"], cpu["single_task_32"])
        ratios = [(mine / separate, mine / single) for mine, separate, single in per_round]
        records.append(
            {
                "measure": "latency",
                "setup": name,
                "median_s": value,
                "ratio_to_separate": value / medians["separate_4x8"],
                "ratio_to_single_task_32": value / medians["single_task_32"],
                "cpu_median_s": statistics.median(cpu[name]),
                "cpu_ratio_to_separate": statistics.median(r[0] for r in ratios),
                "cpu_ratio_to_single_task_32": statistics.median(r[1] for r in ratios),
                "n": len(times[name]),
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        epilog="Time: about 5 min.", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="JSON-lines output file (overwritten)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.seq_len)
        return 0
    records = [{"measure": "machine", **machine.machine_info(("transformers",))}]
    (model,) = build(len(TASKS))
    vocab = model.config.vocab_size
    per_task = timing.make_batch(8, args.seq_len, vocab, seed=1)
    mixed = timing.make_batch(32, args.seq_len, vocab, seed=1)
    names = [TASKS[i % len(TASKS)] for i in range(32)]  # rows interleaved: the worst case for grouping

    def run_mixed() -> None:
        model(**mixed, task=names)

    def run_separate() -> None:
        for name in TASKS:
            model(**per_task, task=name)

    def run_single() -> None:
        model(**mixed, task="a")

    cpu: dict[str, list[float]] = {}
    runs = {"mixed_4x8": run_mixed, "separate_4x8": run_separate, "single_task_32": run_single}
    with torch.inference_mode():
        times = timing.time_interleaved(
            {name: _cpu_timed(name, fn, cpu) for name, fn in runs.items()}, repeats=args.repeats, warmup=2
        )
    records += _latency_records(times, {name: values[2:] for name, values in cpu.items()})
    for kind in ("one_task", "four_tasks_one_backbone", "four_models"):
        argv_child = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            kind,
            "--seq-len",
            str(args.seq_len),
        ]
        records.append(machine.run_json_child(argv_child, timeout=900))
    one = next(r["peak_rss_mb"] for r in records if r.get("setup") == "one_task")
    for record in records:
        if record.get("measure") == "memory":
            record["ratio_to_one_task"] = record["peak_rss_mb"] / one
    lines = [json.dumps(record) for record in records]
    print("\n".join(lines))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
