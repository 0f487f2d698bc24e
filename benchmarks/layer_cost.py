"""Inference cost per method against the frozen base model, eager and compiled, as this thread's CPU time.

On a machine shared with other work, wall-clock latency measures the other processes as much as the model;
the CPU time of the one thread that runs torch (``--threads 1``) is far less sensitive to them. Every model is
called in turn (interleaved rounds), medians are reported, and the compiled twins (``torch.compile`` of the
base model, ``UniPELTModel.compile`` of ours) are timed against the compiled base.

    python -m benchmarks.layer_cost --batches 1,32 --rounds 20 --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks import cost_protocol
from unipelt.cli.common import add_compile_flag
from unipelt.model import add_unipelt


def build(load, methods: list[str], backend: str | None) -> dict[str, torch.nn.Module]:
    models: dict[str, torch.nn.Module] = {"base": load().eval()}
    for method in methods:
        model = add_unipelt(load(), method)
        model.eject_prefix_mlp()
        models[method] = model.eval()
    if backend:
        models["base+compile"] = torch.compile(load().eval(), backend=backend)
        for method in methods:
            model = add_unipelt(load(), method)
            model.eject_prefix_mlp()
            models[f"{method}+compile"] = model.eval().compile(backend=backend)
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--methods", default="unipelt,lora,adapter")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    add_compile_flag(parser, help="also time compiled twins (METHOD+compile) of the base and of each method")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, load = cost_protocol.model_loader(cost_protocol.resolve_model_dir(args.model), False, 0)
    models = build(load, args.methods.split(","), args.compile)
    generator = torch.Generator().manual_seed(0)
    results = {}
    for batch in map(int, args.batches.split(",")):
        ids = torch.randint(1000, 20000, (batch, args.seq_len), generator=generator)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        times: dict[str, list[float]] = {name: [] for name in models}
        with torch.inference_mode():
            for model in models.values():  # warm-up, compiles the compiled twins for this shape
                model(**inputs)
                model(**inputs)
            for _ in range(max(3, args.rounds if batch == 1 else args.rounds // 4)):
                for name, model in models.items():
                    start = time.thread_time()
                    model(**inputs)
                    times[name].append(time.thread_time() - start)
        for name, values in times.items():
            reference = "base+compile" if name.endswith("+compile") else "base"
            ratio = statistics.median(values) / statistics.median(times[reference])
            results[f"{name}@{batch}x{args.seq_len}"] = {
                "cpu_ms": 1e3 * statistics.median(values),
                "ratio": ratio,
            }
            print(
                f"{batch:3d}x{args.seq_len}  {name:18s} {1e3 * statistics.median(values):9.2f} ms CPU  "
                f"{ratio:.3f}x {reference}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
