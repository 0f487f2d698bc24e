"""What the token-budget batcher costs a request, without HTTP: the same Poisson arrivals of real rows (three
MiniLM tasks on one backbone) go through the token-budget batcher and through no batching, on one engine in one
process, in alternating blocks, and each request's latency (from its scheduled time to its answer) is compared
with its own latency under the other policy.

A lone request costs the same under both if the paired difference is about zero; batching pays where it is
negative. Idle gaps between arrivals are capped (``--max-gap``): a longer one changes nothing but the run time.

    python -m benchmarks.serve_batcher --runs-dir RUNS --qps 2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.serve_load import ROOT, TASKS, texts


def arrivals(engine, inputs: dict[str, list], qps: float, count: int, max_gap: float, seed: int) -> list:
    """(time, rows of one request) for ``count`` Poisson arrivals at ``qps``, each a random dev input."""
    rng = random.Random(seed)
    schedule, t = [], 0.0
    for _ in range(count):
        t += min(rng.expovariate(qps), max_gap)
        task = rng.choice(TASKS)
        schedule.append((t, engine.tasks[task].encode([rng.choice(inputs[task])])))
    return schedule


def replay(batcher, schedule: list, latencies: list, offset: int) -> None:
    """Submit each request at its time (relative to the block's first) and record its latency."""
    done = threading.Event()
    left = [len(schedule)]
    lock = threading.Lock()
    start = time.perf_counter() + 0.05 - schedule[0][0]

    def answered(index: int, due: float) -> None:
        latencies[index] = time.perf_counter() - due
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    for j, (at, rows) in enumerate(schedule):
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        future = batcher.submit(rows)
        future.add_done_callback(lambda _, i=offset + j, due=start + at: answered(i, due))
    done.wait(120)


def measure(engine, schedule: list, block: int) -> dict[str, np.ndarray]:
    from unipelt.inference.batching import DynamicBatcher, TokenBatcher

    batchers = {
        "tokens": TokenBatcher(engine.forward),
        "none": DynamicBatcher(engine.forward, batching=False),
    }
    latencies = {name: [0.0] * len(schedule) for name in batchers}
    try:
        for batcher in batchers.values():  # the first forwards of each task and shape: not measured
            for _, rows in schedule[:20]:
                batcher.submit(rows).result(60)
        for n, first in enumerate(range(0, len(schedule), block)):
            order = list(batchers) if n % 2 == 0 else list(batchers)[::-1]
            for name in order:
                replay(batchers[name], schedule[first : first + block], latencies[name], first)
                time.sleep(0.3)
    finally:
        for batcher in batchers.values():
            batcher.close()
    return {name: np.array(values) * 1000 for name, values in latencies.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", type=Path, required=True, help="the rte, sst2 and stsb runs of serve_load")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("UNIPELT_DATA_DIR", ROOT.parent / "shared" / "data" / "glue")),
    )
    p.add_argument("--qps", default="2,4,8")
    p.add_argument("--requests", type=int, default=200, help="per rate and policy")
    p.add_argument("--block", type=int, default=25, help="requests per turn of a policy")
    p.add_argument("--max-gap", type=float, default=0.3, help="longest idle gap between arrivals, s")
    args = p.parse_args(argv)
    import torch

    from unipelt.inference.engine import TorchEngine

    torch.set_num_threads(1)
    engine = TorchEngine([args.runs_dir / t for t in TASKS])
    inputs = {t: texts(args.data_dir, t) for t in TASKS}
    for qps in (float(q) for q in args.qps.split(",")):
        schedule = arrivals(engine, inputs, qps, args.requests, args.max_gap, seed=1)
        got = measure(engine, schedule, args.block)
        tokens, none = got["tokens"], got["none"]
        print(
            json.dumps(
                {
                    "qps": qps,
                    "requests": len(schedule),
                    "p50_ms": {k: round(float(np.percentile(v, 50)), 1) for k, v in got.items()},
                    "p95_ms": {k: round(float(np.percentile(v, 95)), 1) for k, v in got.items()},
                    "p95_ratio": round(float(np.percentile(tokens, 95) / np.percentile(none, 95)), 3),
                    "paired_difference_ms": {
                        "median": round(float(np.median(tokens - none)), 2),
                        "mean": round(float((tokens - none).mean()), 2),
                    },
                    "loadavg": [round(x, 2) for x in os.getloadavg()],
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
