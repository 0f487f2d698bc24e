"""Load test of `unipelt serve` on loopback: latency and throughput against offered load for three ways of
batching three MiniLM tasks (RTE, SST-2, STS-B) on one backbone, memory of 3 tasks against 1, and a 10 MB
request with a small one sent right after it.

- ``tokens``: token-budget batching (the default): each forward takes what is waiting, rows of one length
  bucket under ``--max-batch-tokens``, and a lone request runs at once;
- ``wait``: the first request of a batch waits ``--max-wait-ms`` for others, up to ``--max-batch`` rows of any
  lengths (the policy before token budgets);
- ``none``: one forward per request;
- ``single``: one SST-2 server (token batching), for memory only.

The three 3-task servers run side by side and each load level is offered to them in turns, so their numbers
share the machine's state of that minute. Each server is warmed up after it starts (a few requests of every
task, alone and in bursts), and every measured turn begins with ``--warmup`` seconds of arrivals that are not
counted: a server's (and a client's) first requests are slow for reasons that have nothing to do with
batching, and with a few dozen requests per level they would set its p95. Arrivals are open-loop (Poisson,
seeded): a request is sent at its scheduled time whether or not earlier ones were answered, and its latency
counts from that time. Every level is bounded in time and count (but offered long enough for
``--min-requests`` requests, so that a low rate's p95 rests on more than a handful of them), and offered in several
turns per policy (the order rotating); the last level is closed-loop (``--clients`` clients, each sending
again when answered): saturated throughput.
Every server runs with ``--threads 1`` and logs warnings only. Results are JSON lines, a markdown table with
the targets' ratios (``--table``), and a PNG of p50/p95/p99 and achieved QPS against offered QPS.

    nice python -m benchmarks.serve_load --runs-dir RUNS
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
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "serve"
TASKS = ("rte", "sst2", "stsb")
GLUE_FILES = {"rte": ("RTE", 1, 2), "sst2": ("SST-2", 0, None), "stsb": ("STS-B", 7, 8)}
CONFIGS = ("tokens", "wait", "none")
LABELS = {"tokens": "token budget", "wait": "wait 5 ms, 32 rows", "none": "no batching"}


def train_runs(runs_dir: Path, data_dir: Path) -> dict[str, Path]:
    """The three quick MiniLM runs (K=100, 5 epochs), trained once and reused."""
    runs = {}
    for task in TASKS:
        out = runs_dir / task
        if not (out / "metrics.json").is_file():
            command = [
                sys.executable,
                "-m",
                "unipelt.cli",
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


def wait_until_up(url: str, process: subprocess.Popen, log: Callable[[], str], seconds: float = 300) -> None:
    """Poll ``url``/health until the server answers 200; a process that exits raises with its log."""
    import httpx

    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(log())
        if time.time() > deadline:
            raise RuntimeError(f"server did not start in {seconds:.0f} s")
        time.sleep(0.5)


class Server:
    """One `unipelt serve` process on a free loopback port."""

    def __init__(self, runs: list[Path], *extra: str) -> None:
        import tempfile

        self.port = free_port()
        command = [sys.executable, "-m", "unipelt.cli", "serve", *map(str, runs), "--port", str(self.port)]
        command += ["--threads", "1", "--log-level", "warning", *extra]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the life of the server
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_up(self.url, self.process, self._log_text)
        self.idle_rss_mb = self.memory()["rss_mb"]

    def _log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode()

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
        self.log.close()


async def open_loop(
    routes: dict[str, str],
    inputs: dict[str, list],
    mix: list[str],
    qps: float,
    seconds: float,
    max_requests: int,
    seed: int,
    warmup: float = 0.0,
) -> dict[str, float]:
    """Send Poisson arrivals at ``qps`` for ``seconds`` (at most ``max_requests``); latency from scheduled time.

    The first ``warmup`` seconds of arrivals (at the same rate, same client) are sent but not counted: they
    open the client's connections and bring the server to that load before anything is measured."""
    import httpx

    rng = random.Random(seed)
    schedule, t, measured = [], 0.0, 0
    while t < warmup + seconds and measured < max_requests:
        t += rng.expovariate(qps)
        task = rng.choice(mix)
        schedule.append((t, task, rng.choice(inputs[task])))
        measured += t >= warmup
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
            if at < warmup:
                return
            if ok:
                latencies.append(time.perf_counter() - (start + at))
            else:
                errors += 1

        await asyncio.gather(*(one(*item) for item in schedule))
        elapsed = time.perf_counter() - start - warmup
    return {"latencies": latencies, "requests": measured, "errors": errors, "elapsed": elapsed}


def warm_up(url: str, inputs: dict[str, list], per_task: int = 8) -> None:
    """Bring a new server past its first requests (first forward of each task and of each batch shape, lazy
    set-up on both sides), one request at a time and then in concurrent bursts; nothing is measured."""
    import httpx

    with httpx.Client(timeout=120) as client:
        for task in TASKS:
            for text in inputs[task][:per_task]:
                client.post(f"{url}/v1/predict", json={"task": task, "inputs": [text]})
    bursts = {t: inputs[t][per_task : 2 * per_task] for t in TASKS}
    asyncio.run(open_loop(dict.fromkeys(TASKS, url), bursts, list(TASKS), 20.0, 2.0, 40, seed=99))


async def closed_loop(url: str, inputs: dict[str, list], clients: int, seconds: float, seed: int) -> dict:
    """``clients`` clients each sending its next request when its last is answered, for ``seconds``: the
    server is never idle, so completions per second is its saturated throughput."""
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        start = time.perf_counter()
        stop = start + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            rng = random.Random(seed * 1000 + k)
            while time.perf_counter() < stop:
                task = rng.choice(TASKS)
                began = time.perf_counter()
                try:
                    answer = await client.post(
                        f"{url}/v1/predict", json={"task": task, "inputs": [rng.choice(inputs[task])]}
                    )
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1

        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "requests": len(latencies) + errors, "errors": errors, "elapsed": elapsed}


def summary(qps: float | None, parts: list[dict]) -> dict[str, float]:
    """Latency percentiles and achieved QPS over the rounds of one load level."""
    latencies = [x for part in parts for x in part["latencies"]]
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "offered_qps": qps,
        "rounds": len(parts),
        "requests": sum(p["requests"] for p in parts),
        "completed": len(latencies),
        "errors": sum(p["errors"] for p in parts),
        "achieved_qps": round(len(latencies) / sum(p["elapsed"] for p in parts), 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
    }


def start_servers(
    runs: dict[str, Path], inputs: dict[str, list], max_batch: int, max_wait_ms: float
) -> dict[str, Server]:
    """The three 3-task servers, one per batching policy, each warmed up (:func:`warm_up`)."""
    three = [runs[t] for t in TASKS]
    flags = {
        "tokens": ["--batching", "tokens"],
        "wait": ["--batching", "wait", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)],
        "none": ["--batching", "none"],
    }
    servers: dict[str, Server] = {}
    try:
        for config in CONFIGS:
            servers[config] = Server(three, *flags[config])
            warm_up(servers[config].url, inputs)
    except BaseException:
        for server in servers.values():
            server.close()
        raise
    return servers


def loads(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(records: list[dict], figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records if r["offered_qps"] is not None]  # the open-loop levels
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {"tokens": "tab:green", "wait": "tab:red", "none": "tab:blue"}
    for config in CONFIGS:
        rows = sorted((r for r in records if r["config"] == config), key=lambda r: r["offered_qps"])
        if not rows:
            continue
        qps = [r["offered_qps"] for r in rows]
        for key, style in (("p50_ms", ":"), ("p95_ms", "-"), ("p99_ms", "--")):
            axes[0 if key != "p99_ms" else 1].plot(
                qps, [r[key] for r in rows], style, marker="o", color=colours[config],
                label=f"{LABELS[config]} {key[:3]}",
            )  # fmt: skip
        axes[2].plot(
            qps, [r["achieved_qps"] for r in rows], marker="o", color=colours[config], label=LABELS[config]
        )
    axes[0].set(xlabel="offered QPS", ylabel="latency (ms)", yscale="log", xscale="log", title="p50 and p95")
    axes[1].set(xlabel="offered QPS", ylabel="latency (ms)", yscale="log", xscale="log", title="p99")
    axes[2].set(xlabel="offered QPS", ylabel="achieved QPS", xscale="log", title="throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    load = ", ".join(f"{r['loadavg'][0]:.1f}" for r in records[:1])
    fig.suptitle(
        f"unipelt serve, MiniLM, 3 GLUE tasks, one backbone, loopback, 1 thread (load avg at start {load})"
    )
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)


def table(records: list[dict]) -> str:
    """The load levels as a markdown table, then the targets: batched p95 / unbatched p95 at every open-loop
    level, and saturated (closed-loop) throughput / unbatched."""
    lines = [
        "| batching | offered QPS | achieved QPS | p50 ms | p95 ms | p99 ms | errors | load avg (1 min) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    load = [r for r in records if r.get("config") in CONFIGS]
    levels = sorted({r["offered_qps"] for r in load if r["offered_qps"] is not None}) + [None]
    by = {(r["config"], r["offered_qps"]): r for r in load}
    for qps in levels:
        for config in CONFIGS:
            r = by.get((config, qps))
            if r:
                offered = f"{qps:g}" if qps is not None else f"saturated ({r['clients']} clients)"
                lines.append(
                    f"| {LABELS[config]} | {offered} | {r['achieved_qps']} | {r['p50_ms']} | {r['p95_ms']} | "
                    f"{r['p99_ms']} | {r['errors']} | {r['loadavg'][0]:.1f} |"
                )
    lines.append("")
    for qps in levels[:-1]:
        base = by.get(("none", qps))
        ratios = [
            f"{LABELS[c]} {by[(c, qps)]['p95_ms'] / base['p95_ms']:.2f}x"
            for c in ("tokens", "wait")
            if base and (c, qps) in by
        ]
        if ratios:
            lines.append(f"- p95 / unbatched p95 at {qps:g} QPS: {', '.join(ratios)}")
    base = by.get(("none", None))
    for config in ("tokens", "wait"):
        if base and (config, None) in by:
            ratio = by[(config, None)]["achieved_qps"] / base["achieved_qps"]
            lines.append(f"- saturated throughput, {LABELS[config]} / unbatched: {ratio:.2f}x")
    for r in records:
        if r.get("kind") == "memory":
            lines.append(
                f"- peak RSS after {r['requests']} requests: 3 tasks {r['three_mb']} MB, 1 task {r['one_mb']} MB "
                f"({r['three_mb'] / r['one_mb']:.3f}x); load avg {r['loadavg'][0]:.1f}"
            )
        if r.get("kind") == "big":
            lines.append(
                f"- {r['body_mb']} MB request ({r['limits']}): {r['big_status']} in {r['big_ms']} ms; a small "
                f"request sent 50 ms after it: {r['small_status']} in {r['small_ms']} ms; load avg {r['loadavg'][0]:.1f}"
            )
    return "\n".join(lines)


async def big_then_small(url: str, body_mb: float, task: str, text) -> dict:
    """A body of ``body_mb`` MB holding one text, and a small request sent 50 ms after it starts."""
    import httpx

    big = json.dumps({"task": "sst2", "inputs": ["word " * int(body_mb * 1e6 / 5)]}).encode()
    async with httpx.AsyncClient(timeout=300) as client:
        start = time.perf_counter()

        async def send_big():
            answer = await client.post(
                f"{url}/v1/predict", content=big, headers={"content-type": "application/json"}
            )
            return answer.status_code, time.perf_counter() - start

        async def send_small():
            await asyncio.sleep(0.05)
            began = time.perf_counter()
            answer = await client.post(f"{url}/v1/predict", json={"task": task, "inputs": [text]})
            return answer.status_code, time.perf_counter() - began

        (big_status, big_s), (small_status, small_s) = await asyncio.gather(send_big(), send_small())
    return {
        "body_mb": round(len(big) / 1e6, 1),
        "big_status": big_status,
        "big_ms": round(big_s * 1000, 1),
        "small_status": small_status,
        "small_ms": round(small_s * 1000, 1),
    }


def memory(runs: dict[str, Path], inputs: dict[str, list], requests: int = 30) -> dict:
    """Peak RSS of a 3-task and a 1-task (SST-2) server after ``requests`` sequential SST-2 requests each."""
    import httpx

    peaks = {}
    for name, folders in (("three_mb", [runs[t] for t in TASKS]), ("one_mb", [runs["sst2"]])):
        server = Server(folders)
        try:
            for text in inputs["sst2"][:requests]:
                httpx.post(f"{server.url}/v1/predict", json={"task": "sst2", "inputs": [text]}, timeout=60)
            peaks[name] = server.memory()["peak_rss_mb"]
        finally:
            server.close()
    return {"kind": "memory", "requests": requests, **peaks}


def record(out: Path, data: dict) -> None:
    data = {
        **data,
        "loadavg": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(data), flush=True)
    with open(out, "a") as handle:
        handle.write(json.dumps(data) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        epilog="Time: about 15 min (servers on 127.0.0.1, 20-60 s of load per level and policy).",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("UNIPELT_DATA_DIR", ROOT.parent / "shared" / "data" / "glue")),
    )
    p.add_argument("--runs-dir", type=Path, default=OUT / "runs")
    p.add_argument("--qps", default="2,4,8,12", help="offered loads (open loop), comma-separated")
    p.add_argument("--clients", type=int, default=32, help="closed-loop clients of the saturated level")
    p.add_argument("--seconds", type=float, default=20.0, help="arrivals per load level and policy, in all")
    p.add_argument("--max-requests", type=int, default=400, help="and are at most this many")
    p.add_argument(
        "--min-requests",
        type=int,
        default=120,
        help="but at least this many per level and policy (a low rate is offered for longer)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="each level is offered in this many turns per policy"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of arrivals sent but not counted before each measured turn (0: none)",
    )
    p.add_argument("--max-batch", type=int, default=32, help="the wait policy's rows per batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the wait policy's wait")
    p.add_argument("--out", type=Path, default=OUT / "load.jsonl")
    p.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "figures" / "serve_latency.png")
    p.add_argument("--table", action="store_true", help="only print the results in --out as a markdown table")
    p.add_argument("--skip-load", action="store_true", help="only the memory and 10 MB measurements")
    args = p.parse_args(argv)
    if args.table:  # and the figure again
        records = loads(args.out)
        plot([r for r in records if r.get("config") in CONFIGS], args.figure)
        print(table(records))
        return 0
    runs = train_runs(args.runs_dir, args.data_dir)
    inputs = {t: texts(args.data_dir, t) for t in TASKS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.skip_load:
        servers = start_servers(runs, inputs, args.max_batch, args.max_wait_ms)
        try:
            for qps in [*(float(q) for q in args.qps.split(",")), None]:
                # at a low rate, --seconds alone gives too few requests for a stable p95
                span = max(args.seconds, args.min_requests / qps) if qps else args.seconds
                seconds, most = span / args.rounds, max(args.max_requests, args.min_requests) // args.rounds
                parts: dict[str, list] = {config: [] for config in servers}
                for turn in range(args.rounds):  # the policies take turns, in a rotating order
                    order = list(servers)[turn % len(servers) :] + list(servers)[: turn % len(servers)]
                    for config in order:
                        url = servers[config].url
                        load = (
                            open_loop(
                                dict.fromkeys(TASKS, url),
                                inputs,
                                list(TASKS),
                                qps,
                                seconds,
                                most,
                                seed=turn,
                                warmup=args.warmup,
                            )
                            if qps is not None
                            else closed_loop(url, inputs, args.clients, seconds, seed=turn)
                        )
                        parts[config].append(asyncio.run(load))
                for config, server in servers.items():
                    extra = {"clients": args.clients} if qps is None else {}
                    result = {
                        "config": config,
                        **summary(qps, parts[config]),
                        **extra,
                        "warmup_s": args.warmup,
                    }
                    record(args.out, {**result, "peak_rss_mb": server.memory()["peak_rss_mb"]})
        finally:
            for server in servers.values():
                server.close()
    record(args.out, memory(runs, inputs))
    for limits, extra in (("defaults", []), ("--max-body-bytes 20000000", ["--max-body-bytes", "20000000"])):
        server = Server([runs[t] for t in TASKS], *extra)
        try:
            asyncio.run(big_then_small(server.url, 0.001, "sst2", inputs["sst2"][0]))  # warm up
            result = asyncio.run(big_then_small(server.url, 10, "sst2", inputs["sst2"][1]))
            record(
                args.out,
                {"kind": "big", "limits": limits, **result, "peak_rss_mb": server.memory()["peak_rss_mb"]},
            )
        finally:
            server.close()
    records = loads(args.out)
    if any(r.get("config") in CONFIGS for r in records):
        plot([r for r in records if r.get("config") in CONFIGS], args.figure)
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
