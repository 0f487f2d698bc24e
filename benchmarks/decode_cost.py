"""Per-token cost of cached greedy decoding on a causal LM: the frozen base model against each method.

One base model is loaded; each method wraps its own deep copy, so every model holds the same weights. All
models decode the same prompt (a prefill of ``--prompt`` tokens, then ``--tokens`` single-token steps with the
KV cache), taking turns step by step; the time per step excludes the prefill. Ratios are medians over rounds
of method / base per-step time, measured both as wall time and as this thread's CPU time (less sensitive to
other processes on a shared machine). ``ops/step`` counts the tensor operations a step calls from Python. Modules are freshly initialised and moved off their identity start, which
costs what trained ones cost.

    python -m benchmarks.decode_cost --model smollm2 --batches 1,8 --rounds 5
    python -m benchmarks.decode_cost --model smollm2 --methods unipelt --profile   # per-op profile of a step
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from unipelt.backbones import load_base_model
from unipelt.model import add_unipelt


def _move_off_identity(model: torch.nn.Module, seed: int = 0) -> None:
    """Zero-started weights (LoRA B, adapter up) get small random values so every module changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or ".up." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)


def decode_steps(models: dict[str, torch.nn.Module], ids: torch.Tensor, tokens: int) -> dict[str, tuple]:
    """(wall, CPU) seconds per cached decoding step of each model after a prefill of ``ids``.

    The models take turns step by step, so a change in the machine's load falls on all of them alike."""
    state, spent = {}, {name: [0.0, 0.0] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            state[name] = (out.past_key_values, out.logits[:, -1:].argmax(-1), torch.ones_like(ids))
        for _ in range(tokens):
            for name, model in models.items():
                cache, step, mask = state[name]
                mask = torch.cat([mask, torch.ones_like(step)], dim=1)
                wall, cpu = time.perf_counter(), time.thread_time()
                out = model(input_ids=step, attention_mask=mask, past_key_values=cache, use_cache=True)
                spent[name][0] += time.perf_counter() - wall
                spent[name][1] += time.thread_time() - cpu
                state[name] = (out.past_key_values, out.logits[:, -1:].argmax(-1), mask)
    return {name: (wall / tokens, cpu / tokens) for name, (wall, cpu) in spent.items()}


def step_ops(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Tensor operations called from Python (not from inside another operator) in one cached decoding step."""
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        mask = torch.ones(ids.shape[0], ids.shape[1] + 1, dtype=torch.long)
        step = {"input_ids": out.logits[:, -1:].argmax(-1), "past_key_values": out.past_key_values}
        model(**step, attention_mask=mask, use_cache=True)  # a first step makes what later steps keep
        mask = torch.cat([mask, mask[:, :1]], dim=1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(**step, attention_mask=mask, use_cache=True)
    return sum(
        1
        for event in prof.events()
        if event.name.startswith("aten::")
        and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::"))
    )


def measure(
    models: dict[str, torch.nn.Module], ids: torch.Tensor, rounds: int, tokens: int
) -> dict[str, dict]:
    """Per-step times and ratios to the base model (medians over rounds) and operations per step, printed."""
    batch, results = ids.shape[0], {}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    decode_steps(models, ids, 2)  # warm-up
    for _ in range(rounds):
        for name, spent in decode_steps(models, ids, tokens).items():
            times[name].append(spent)
    layers = models["base"].config.num_hidden_layers
    for name, values in times.items():
        ratio_wall = statistics.median(t[0] / b[0] for t, b in zip(values, times["base"]))
        ratio_cpu = statistics.median(t[1] / b[1] for t, b in zip(values, times["base"]))
        wall = statistics.median(t[0] for t in values)
        cpu = statistics.median(t[1] for t in values)
        ops = step_ops(models[name], ids)
        results[f"{name}@{batch}"] = {
            "wall_ms": 1e3 * wall,
            "cpu_ms": 1e3 * cpu,
            "ratio_wall": ratio_wall,
            "ratio_cpu": ratio_cpu,
            "ops_per_step": ops,
        }
        print(
            f"batch {batch:2d}  {name:10s} {1e3 * wall:8.2f} ms/token wall {ratio_wall:.3f}x  "
            f"{1e3 * cpu:8.2f} ms CPU {ratio_cpu:.3f}x  {ops} ops/step ({ops / layers:.1f} per layer)",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--methods", default="unipelt,lora,adapter,prefix")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (prefill)")
    parser.add_argument("--tokens", type=int, default=32, help="decoding steps timed per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print a torch profile of the first method")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_base_model(args.model, "causal-lm").eval()
    base.config.use_cache = True
    models = {"base": base}
    for method in args.methods.split(","):
        model = add_unipelt(copy.deepcopy(base), method)
        _move_off_identity(model)
        model.eject_prefix_mlp()
        models[method] = model.eval()
    generator = torch.Generator().manual_seed(0)
    results: dict[str, dict] = {}
    for batch in map(int, args.batches.split(",")):
        ids = torch.randint(100, 40000, (batch, args.prompt), generator=generator)
        results.update(measure(models, ids, args.rounds, args.tokens))
    if args.profile:
        name = args.methods.split(",")[0]
        ids = torch.randint(100, 40000, (1, args.prompt), generator=generator)
        for who in ("base", name):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                decode_steps({who: models[who]}, ids, 8)
            print(who)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
