"""Load test of `unipelt serve` on loopback: latency against offered load, and memory, for three ways to serve
three MiniLM tasks (RTE, SST-2, STS-B):

- ``multi``: one server, one backbone, three tasks, dynamic batching (mixed-task forwards);
- ``multi-nobatch``: the same server with ``--no-batching`` (one forward per request);
- ``single-x3``: one single-task server per task (three processes, three backbones), each request sent to
  its task's server;
- ``single``: one single-task server (SST-2) alone under the same total load of its task only: the reference
  for "at a QPS the single-task server sustains, multi-task p95 within 1.2x of it".

Arrivals are open-loop (Poisson, seeded): a request is sent at its scheduled time whether or not earlier ones
have been answered, and its latency counts from that time. Each load level is bounded in time and count.
Every server runs with ``--threads 1``. Results are JSON lines (one per configuration and load level, resumable:
finished pairs are skipped), plus a PNG of p95 latency against offered QPS and the peak RSS of each server.

    flock /tmp/unipelt-bench.lock .venv/bin/python -m benchmarks.serve_load
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "serve"
TASKS = ("rte", "sst2", "stsb")
GLUE_FILES = {"rte": ("RTE", 1, 2), "sst2": ("SST-2", 0, None), "stsb": ("STS-B", 7, 8)}
CONFIGS = ("multi", "multi-nobatch", "single-x3", "single")


def train_runs(runs_dir: Path, data_dir: Path) -> dict[str, Path]:
    """The three quick MiniLM runs (K=100, 5 epochs), trained once and reused."""
    runs = {}
    for task in TASKS:
        out = runs_dir / task
        if not (out / "metrics.json").is_file():
            command = [
                str(ROOT / ".venv/bin/unipelt"),
                "train",
                "--model",
                "minilm",
                "--data-dir",
                str(data_dir),
            ]
            command += [
                "--task",
                task,
                "--method",
                "unipelt",
                "--k",
                "100",
                "--n-valid",
                "100",
                "--epochs",
                "5",
            ]
            command += ["--seed", "1", "--threads", "1", "--out", str(out)]
            subprocess.run(command, check=True)
        runs[task] = out
    return runs


def texts(data_dir: Path, task: str, limit: int = 200) -> list:
    """Real dev-set inputs of a task: a text, or [text_a, text_b] for pair tasks."""
    folder, a, b = GLUE_FILES[task]
    with open(data_dir / folder / "dev.tsv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : limit + 1]
    return [row[a] if b is None else [row[a], row[b]] for row in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `unipelt serve` process on a free loopback port."""

    def __init__(self, runs: list[Path], *extra: str) -> None:
        import httpx

        self.port = free_port()
        command = [str(ROOT / ".venv/bin/unipelt"), "serve", *map(str, runs), "--port", str(self.port)]
        command += ["--threads", "1", *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode())
            if time.time() > deadline:
                raise RuntimeError("server did not start in 300 s")
            time.sleep(0.5)
        self.idle_rss_mb = self.memory()["rss_mb"]

    def memory(self) -> dict[str, float]:
        """Current and peak resident memory of the server process, MB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return {"rss_mb": round(fields["VmRSS"], 1), "peak_rss_mb": round(fields["VmHWM"], 1)}

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def open_loop(
    routes: dict[str, str],
    inputs: dict[str, list],
    mix: list[str],
    qps: float,
    seconds: float,
    max_requests: int,
    seed: int,
) -> dict[str, float]:
    """Send Poisson arrivals at ``qps`` for ``seconds`` (at most ``max_requests``); latency from scheduled time."""
    import httpx

    rng = random.Random(seed)
    schedule, t = [], 0.0
    while t < seconds and len(schedule) < max_requests:
        t += rng.expovariate(qps)
        task = rng.choice(mix)
        schedule.append((t, task, rng.choice(inputs[task])))
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        start = time.perf_counter()

        async def one(at: float, task: str, text) -> None:
            nonlocal errors
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await client.post(
                    f"{routes[task]}/v1/predict", json={"task": task, "inputs": [text]}
                )
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - (start + at))
            else:
                errors += 1

        await asyncio.gather(*(one(*item) for item in schedule))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "offered_qps": qps,
        "requests": len(schedule),
        "completed": len(latencies),
        "errors": errors,
        "achieved_qps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
    }


def start_servers(
    config: str, runs: dict[str, Path], max_batch: int, max_wait_ms: float
) -> tuple[list[Server], dict]:
    batching = ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    if config == "multi":
        server = Server([runs[t] for t in TASKS], *batching)
        return [server], dict.fromkeys(TASKS, server.url)
    if config == "multi-nobatch":
        server = Server([runs[t] for t in TASKS], "--no-batching")
        return [server], dict.fromkeys(TASKS, server.url)
    if config == "single-x3":
        servers = [Server([runs[t]], *batching) for t in TASKS]
        return servers, {t: s.url for t, s in zip(TASKS, servers)}
    server = Server([runs["sst2"]], *batching)
    return [server], {"sst2": server.url}


def load_done(path: Path) -> set[tuple[str, float]]:
    if not path.is_file():
        return set()
    return {(r["config"], r["offered_qps"]) for r in map(json.loads, path.read_text().splitlines()) if r}


def plot(path: Path, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for config in CONFIGS:
        rows = sorted((r for r in records if r["config"] == config), key=lambda r: r["offered_qps"])
        if not rows:
            continue
        qps = [r["offered_qps"] for r in rows]
        axes[0].plot(qps, [r["p95_ms"] for r in rows], marker="o", label=config)
        axes[1].plot(qps, [r["achieved_qps"] for r in rows], marker="o", label=config)
    axes[0].set(xlabel="offered QPS", ylabel="p95 latency (ms)", yscale="log", title="p95 latency vs load")
    axes[1].set(xlabel="offered QPS", ylabel="achieved QPS", title="throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        "unipelt serve, MiniLM, 3 GLUE tasks, loopback, --threads 1 per server (shared 2-core machine)"
    )
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)


def table(path: Path) -> str:
    """The JSON lines as a markdown table, and the two targets (memory ratio, p95 ratio at equal load)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| configuration | offered QPS | achieved QPS | p50 ms | p95 ms | p99 ms | errors | peak RSS MB (per server) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for config in CONFIGS:
        for r in sorted((r for r in records if r["config"] == config), key=lambda r: r["offered_qps"]):
            rss = " + ".join(f"{m:.0f}" for m in r["peak_rss_mb"])
            lines.append(
                f"| {config} | {r['offered_qps']:g} | {r['achieved_qps']} | {r['p50_ms']} | {r['p95_ms']} | "
                f"{r['p99_ms']} | {r['errors']} | {rss} |"
            )
    peak = {
        c: max((r["peak_rss_total_mb"] for r in records if r["config"] == c), default=None) for c in CONFIGS
    }
    if peak["multi"] and peak["single"]:
        lines.append(
            f"\nmemory, 3 tasks on one backbone / one single-task server: {peak['multi'] / peak['single']:.3f}x"
        )
    if peak["single-x3"] and peak["multi"]:
        lines.append(
            f"memory, three single-task servers / one 3-task server: {peak['single-x3'] / peak['multi']:.2f}x"
        )
    for reference in ("single", "single-x3"):
        by_qps = {r["offered_qps"]: r for r in records if r["config"] == reference}
        for r in sorted((r for r in records if r["config"] == "multi"), key=lambda r: r["offered_qps"]):
            base = by_qps.get(r["offered_qps"])
            if base and base["completed"] == base["requests"]:
                ratio = r["p95_ms"] / base["p95_ms"]
                lines.append(f"p95 at {r['offered_qps']:g} QPS, multi / {reference}: {ratio:.2f}x")
    return "\n".join(lines)


def memory_only(runs: dict[str, Path], inputs: dict[str, list], out: Path, requests: int = 30) -> None:
    """Peak RSS of each configuration's servers after ``requests`` sequential requests per task: no timing, so
    it may run while the benchmark lock is held by someone else."""
    import httpx

    for config in ("multi", "single"):
        servers, routes = start_servers(config, runs, 32, 5.0)
        try:
            for task, url in routes.items():
                for text in inputs[task][:requests]:
                    httpx.post(
                        f"{url}/v1/predict", json={"task": task, "inputs": [text]}, timeout=60
                    ).raise_for_status()
            memory = [s.memory() for s in servers]
            record = {
                "config": config,
                "memory_only": True,
                "tasks": list(routes),
                "requests_per_task": requests,
                "idle_rss_mb": [s.idle_rss_mb for s in servers],
                "peak_rss_mb": [m["peak_rss_mb"] for m in memory],
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        finally:
            for server in servers:
                server.close()
        print(json.dumps(record), flush=True)
        with open(out, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        epilog="Time: 5-10 min (starts servers on 127.0.0.1, offers load for a few seconds per level).",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    p.add_argument("--runs-dir", type=Path, default=OUT / "runs")
    p.add_argument("--qps", default="2,5,10,20,40", help="offered loads, comma-separated")
    p.add_argument("--seconds", type=float, default=15.0, help="arrivals per load level last this long")
    p.add_argument("--max-requests", type=int, default=600, help="and are at most this many")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=OUT / "load.jsonl")
    p.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "figures" / "serve_latency.png")
    p.add_argument("--table", action="store_true", help="only print the results so far as a markdown table")
    p.add_argument(
        "--memory-only", action="store_true", help="peak RSS of the multi and single servers, no timing"
    )
    args = p.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    runs = train_runs(args.runs_dir, args.data_dir)
    inputs = {t: texts(args.data_dir, t) for t in TASKS}
    if args.memory_only:
        memory_only(runs, inputs, args.out.with_name("memory.jsonl"))
        return 0
    done = load_done(args.out)
    levels = [float(q) for q in args.qps.split(",")]
    for config in args.configs.split(","):
        todo = [q for q in levels if (config, q) not in done]
        if not todo:
            continue
        servers, routes = start_servers(config, runs, args.max_batch, args.max_wait_ms)
        try:
            for qps in todo:
                mix = list(routes)
                result = asyncio.run(
                    open_loop(routes, inputs, mix, qps, args.seconds, args.max_requests, seed=1)
                )
                memory = [s.memory() for s in servers]
                record = {
                    "config": config,
                    **result,
                    "servers": len(servers),
                    "tasks": mix,
                    "idle_rss_mb": [s.idle_rss_mb for s in servers],
                    "peak_rss_mb": [m["peak_rss_mb"] for m in memory],
                    "peak_rss_total_mb": round(sum(m["peak_rss_mb"] for m in memory), 1),
                    "max_batch": args.max_batch if config != "multi-nobatch" else 1,
                    "max_wait_ms": args.max_wait_ms if config != "multi-nobatch" else 0,
                    "load_avg": os.getloadavg()[0],
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                print(json.dumps(record), flush=True)
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                if result["completed"] < 0.5 * result["requests"] or result["p95_ms"] > 10_000:
                    break  # saturated: higher loads only queue up
        finally:
            for server in servers:
                server.close()
    if args.out.is_file():
        plot(args.out, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
