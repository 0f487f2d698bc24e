"""Where a method's extra inference time goes, per transformer layer: a torch profile split by hook and module.

Every hook the injector registered on the model is wrapped (on this instance, for this script only) in a
``torch.profiler.record_function`` scope named after what it does, and so is every added module's ``apply``,
every layer gate and the prefix's attention function. One torch thread; the profile is taken over
``--calls`` forward passes after a warm-up. For each scope the table gives the inclusive CPU time per layer
per forward (ms) and how much of it is aten operators (the rest is Python: the hook's own work, argument
handling, context look-ups). The last lines compare the whole forward (this thread's CPU time, interleaved
with the base model, no profiler) so the scopes can be read against the total extra cost.

    python -m benchmarks.layer_profile --model minilm --method unipelt --batch 1
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import AttentionInterface

from benchmarks import cost_protocol
from unipelt.gates import GATE_TYPES
from unipelt.inject import attention
from unipelt.model import add_unipelt
from unipelt.modules import PeftModule


def _scoped(name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with record_function(name):
            return function(*args, **kwargs)

    return wrapper


def _hook_name(hook) -> str:
    function = getattr(hook, "func", hook)
    return getattr(function, "__name__", type(function).__name__).lstrip("_")


def instrument(model: torch.nn.Module) -> None:
    """Wrap every hook, module ``apply``, gate and the prefix attention in a named profiler scope."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key, hook in list(hooks.items()):
                hooks[key] = _scoped(f"hook:{_hook_name(hook)}", hook)
        if isinstance(module, PeftModule):
            module.apply = _scoped(f"module:{module.kind}", module.apply)
        if isinstance(module, GATE_TYPES):
            module.forward = _scoped(f"gate:{type(module).__name__}", module.forward)
    for name in ("unipelt_sdpa", "unipelt_eager"):
        function = getattr(attention, name)
        AttentionInterface.register(name, _scoped("prefix:attention", function))


def cpu_ms(model: torch.nn.Module, inputs: dict, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        model(**inputs)
        times.append(1e3 * (time.thread_time() - start))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--method", default="unipelt")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timed rounds without profiler")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _, load = cost_protocol.model_loader(cost_protocol.resolve_model_dir(args.model), False, 0)
    base = load().eval()
    model = add_unipelt(load(), args.method)
    model.eject_prefix_mlp()
    model.eval()
    layers = len(model.injector.layers)
    ids = torch.randint(1000, 20000, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        for _ in range(3):
            base(**inputs)
            model(**inputs)
        times: dict[str, list[float]] = {"base": [], args.method: []}
        for _ in range(args.rounds):
            times["base"] += cpu_ms(base, inputs, 1)
            times[args.method] += cpu_ms(model, inputs, 1)
        instrument(model)
        model(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.calls):
                model(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as base_prof:
            for _ in range(args.calls):
                base(**inputs)
    scopes: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0])
    for event in prof.events():
        name = event.name
        if ":" not in name or name.startswith("aten::"):
            continue
        inner = sum(c.cpu_time_total for c in _scopes_under(event)) / 1e3
        entry = scopes[name]
        entry[0] += event.cpu_time_total / 1e3 - inner
        entry[1] += _aten_ms(event)
        entry[2] += 1
        entry[3] += sum(c.name.startswith("aten::") for c in event.cpu_children)
    per = args.calls * layers
    print(f"{args.method} on {args.model}, {args.batch}x{args.seq_len}, {layers} layers, one thread")
    print(
        f"{'scope (without inner scopes)':28s} {'ms/layer':>9s} {'aten ms':>8s} {'python':>8s} "
        f"{'calls/layer':>11s} {'ops/layer':>9s}"
    )
    for name, (total, aten, count, ops) in sorted(scopes.items(), key=lambda item: -item[1][0]):
        print(
            f"{name:28s} {total / per:9.3f} {aten / per:8.3f} {(total - aten) / per:8.3f} {count / per:11.1f} "
            f"{ops / per:9.1f}"
        )
    attention_ms = sum(
        e.cpu_time_total for e in base_prof.events() if e.name == "aten::scaled_dot_product_attention"
    )
    print(
        f"base model's own attention (SDPA) under the profiler: {attention_ms / 1e3 / per:.3f} ms per layer"
    )
    base_ms, ours_ms = statistics.median(times["base"]), statistics.median(times[args.method])
    print(
        f"forward without profiler (CPU ms, median of {args.rounds} interleaved): base {base_ms:.2f}, "
        f"{args.method} {ours_ms:.2f} ({ours_ms / base_ms:.3f}x), extra {(ours_ms - base_ms) / layers:.3f} "
        "ms per layer"
    )
    return 0


def _scopes_under(event) -> list:
    """The outermost named scopes under ``event`` (a module's ``apply`` inside a hook)."""
    found = []
    for child in event.cpu_children:
        if child.name.startswith("aten::"):
            continue
        found.extend([child] if ":" in child.name else _scopes_under(child))
    return found


def _aten_ms(event) -> float:
    """CPU time of the aten operators ``event`` calls itself, not through an inner named scope."""
    return sum(c.cpu_time_total for c in event.cpu_children if c.name.startswith("aten::")) / 1e3


if __name__ == "__main__":
    raise SystemExit(main())
