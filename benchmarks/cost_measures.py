"""The single measurements the cost protocol is made of: an interleaved timing loop and the statistics of its
calls, one method's parameter counts, and one method's peak memory in a fresh process.

:mod:`cost_protocol` strings them together over all methods and writes the records; these functions only measure.
Like the protocol, they import only torch, the standard library and the modules in this folder.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from benchmarks import machine, timing

if TYPE_CHECKING:
    from benchmarks.cost_protocol import Method


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def timed_loop(fns, repeats: int, warmup: int, sync, args) -> tuple[dict, dict, dict]:
    """Interleaved timing until each method has ``repeats`` clean calls (see timing.time_until_clean), plus
    how busy the machine was meanwhile (other processes, hypervisor steal)."""
    quiet = machine.wait_for_quiet(args.wait_quiet, window_s=1.0) if args.wait_quiet > 0 else None
    t0, st0, fo0 = time.perf_counter(), machine.cpu_steal_s(), machine.foreign_cpu_s()
    max_rounds = max(repeats, int(round(args.max_rounds_factor * repeats)))
    times, clean = timing.time_until_clean(
        fns, repeats, warmup, max_rounds=max_rounds, max_foreign_cores=args.clean_threshold, sync=sync
    )
    wall = time.perf_counter() - t0
    foreign = _delta(machine.foreign_cpu_s(), fo0)
    ctx = {
        "loop_wall_s": wall,
        "loop_steal_s": _delta(machine.cpu_steal_s(), st0),
        "loop_foreign_cpu_s": foreign,
        "loop_foreign_cores": foreign / wall if foreign is not None else None,
        "foreign_cores_before": quiet,
        "rounds": len(next(iter(times.values()))) if times else 0,
    }
    return times, clean, ctx


def _sample(ts: list[float], cl: list[bool], min_clean: int = 3) -> tuple[list[float], bool]:
    """The clean calls if there are at least ``min_clean`` of them, else all calls."""
    clean = [t for t, c in zip(ts, cl) if c]
    return (clean, True) if len(clean) >= min_clean else (list(ts), False)


def timing_stats(name: str, times: dict, clean: dict, ref_name: str, min_clean: int) -> dict:
    """One method's timings: statistics of the clean sample (``*_s``), of all calls (``median_all_s``), and
    ``ratio`` (medians) / ``ratio_min`` (minima) against ``ref_name``."""
    ts, used_clean = _sample(times[name], clean[name], min_clean)
    s = timing.summarize(ts)
    out = {
        "median_s": s["median"],
        "p25_s": s["p25"],
        "p75_s": s["p75"],
        "min_s": s["min"],
        "n": s["n"],
        "n_clean": sum(clean[name]),
        "n_all": len(times[name]),
        "clean_sample": used_clean,
        "median_all_s": timing.median(times[name]),
    }
    if ref_name in times:
        ref, _ = _sample(times[ref_name], clean[ref_name], min_clean)
        out["ratio"] = s["median"] / timing.median(ref)
        out["ratio_min"] = min(times[name]) / min(times[ref_name])
        out["ratio_all"] = timing.median(times[name]) / timing.median(times[ref_name])
    return out


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only, as every method trains."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameter")
    return torch.optim.AdamW(params, lr=lr)


def memory_child(
    methods: dict[str, Method], args: argparse.Namespace, vocab_size: int, num_labels: int
) -> None:
    """In a fresh process (``--child METHOD:PHASE``): peak memory of two forwards or two training steps."""
    name, phase = args.child.split(":")
    device = resolve_device(args.device)
    timing.set_threads(args.threads)
    torch.manual_seed(args.seed)
    method = methods[name]
    model = method.build(phase).to(device)
    if phase == "infer":
        bs = max(int(b) for b in args.infer_batches.split(","))
        batch = timing.make_batch(bs, args.seq_len, vocab_size, seed=args.seed, device=device)
        run = timing.inference_fn(model, batch)

        def workload():
            run()
            run()
    else:
        bs = args.train_batch
        batch = timing.make_batch(
            bs, args.seq_len, vocab_size, seed=args.seed, num_labels=num_labels, device=device
        )
        step = timing.train_step_fn(model, batch, make_optimizer(model, args.lr))

        def workload():
            step()
            step()

    res = machine.measure_peak(workload, device)
    res.update({"method": name, "phase": phase, "batch": bs, "seq_len": args.seq_len})
    machine.emit_child_result(res)


def param_record(method: Method, base_total: int | None, head_names: Sequence[str]) -> dict:
    """Parameter counts of one method: trainable (with and without the head) and added at inference."""
    rec: dict = {}
    if method.train:
        m = method.build("train")
        c = timing.count_params(m)
        rec["trainable"] = c["trainable"]
        rec["trainable_without_head"] = timing.count_params(m, exclude=head_names)["trainable"]
        rec["total_train_form"] = c["total"]
        del m
    if method.infer:
        m = method.build("infer")
        total = timing.count_params(m)["total"]
        rec["total_infer_form"] = total
        if base_total is not None:
            rec["added_at_inference"] = total - base_total
        del m
    return rec
