"""Load test of generation with `unipelt serve`: SmolLM2 with three causal-LM tasks (LoRA, adapter, UniPELT runs)
on one backbone, driven by the official ``openai`` client over loopback.

Two servers run side by side (an idle one costs no CPU) and are measured in turn at every client count, so
the ratios compare runs taken under the same machine load:

- ``continuous``: continuous batching (``--max-running-rows 16``), the three tasks mixed round-robin;
- ``continuous-1task``: the same server, every request for one task (UniPELT);
- ``one-at-a-time``: ``--max-running-rows 1`` (each request generates alone), the three tasks mixed.

Clients are closed-loop: each sends a streamed chat completion, waits for its end, sends the next. Every
request asks for exactly ``--max-tokens`` tokens (``ignore_eos``) of a review prompt from SST-2 (prompts of
different lengths), greedy. Reported per level: output tokens/s, time to first token (TTFT) p50/p95, time per
output token after the first (TPOT) p50/p95, and the 1-minute load average before and after.

    python -m benchmarks.generation_load --runs lora=RUN adapter=RUN gated=RUN
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "generation"


def prompts(data_dir: Path, count: int = 64) -> list[str]:
    """Review prompts of varied length (SST-2 training sentences)."""
    with open(data_dir / "SST-2" / "train.tsv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    sentences = [r["sentence"].strip() for r in rows[2000 : 2000 + count]]
    return [f"Is the sentiment of this review positive or negative?\nReview: {s}" for s in sentences]


class Server:
    """One `unipelt serve` process on a free loopback port."""

    def __init__(self, specs: list[str], *extra: str) -> None:
        from benchmarks.serve_load import free_port, wait_until_up

        self.port = free_port()
        command = [sys.executable, "-m", "unipelt.cli", "serve", *specs, "--port", str(self.port), *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_up(self.url, self.process, lambda: self.process.stderr.read().decode())

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    """Send one streamed chat completion; its TTFT, total time and output tokens."""
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - start, "total": end - start, "tokens": tokens}


def level(
    url: str, models: list[str], texts: list[str], clients: int, per_client: int, max_tokens: int
) -> dict:
    """``clients`` closed-loop clients, ``per_client`` requests each; models round-robin over the requests."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    counter = iter(range(10**9))
    lock = threading.Lock()
    results: list[dict] = []

    def run_client(_: int) -> None:
        for _ in range(per_client):
            with lock:
                n = next(counter)
            result = one_request(client, models[n % len(models)], texts[n % len(texts)], max_tokens)
            with lock:
                results.append(result)

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run_client, range(clients)))
    elapsed = time.perf_counter() - start
    ttft = np.array([r["ttft"] for r in results]) * 1000
    tpot = np.array([(r["total"] - r["ttft"]) / max(r["tokens"] - 1, 1) for r in results]) * 1000
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "output_tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 2),
        "ttft_p50_ms": round(float(np.percentile(ttft, 50)), 1),
        "ttft_p95_ms": round(float(np.percentile(ttft, 95)), 1),
        "tpot_p50_ms": round(float(np.percentile(tpot, 50)), 1),
        "tpot_p95_ms": round(float(np.percentile(tpot, 95)), 1),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def agreement(
    batched: str, alone: str, models: list[str], texts: list[str], count: int, max_tokens: int
) -> dict:
    """Greedy answers of ``count`` concurrent mixed-task requests on the batching server against the same
    requests on the one-at-a-time server: how many are identical."""
    import openai

    def ask(url: str, n: int) -> str:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        answer = client.chat.completions.create(
            model=models[n % len(models)],
            messages=[{"role": "user", "content": texts[n % len(texts)]}],
            max_tokens=max_tokens,
            temperature=0,
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(count) as pool:
        together = list(pool.map(lambda n: ask(batched, n), range(count)))
    one_by_one = [ask(alone, n) for n in range(count)]
    same = sum(a == b for a, b in zip(together, one_by_one))
    return {"config": "agreement", "requests": count, "identical": same, "max_tokens": max_tokens}


def table(path: Path) -> str:
    """The results so far as a markdown table, plus the ratios the targets are about."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| config | clients | requests | tokens/s | TTFT p50 / p95 (ms) | TPOT p50 / p95 (ms) | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if r["config"] == "agreement":
            continue
        lines.append(
            f"| {r['config']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']} | "
            f"{r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f} | {r['tpot_p50_ms']:.0f} / {r['tpot_p95_ms']:.0f} | "
            f"{r['load_before']:.1f}-{r['load_after']:.1f} |"
        )
    checks = [r for r in records if r["config"] == "agreement"]
    records = [r for r in records if r["config"] != "agreement"]
    by = {(r["config"], r["clients"]): r for r in records}
    for clients in sorted({r["clients"] for r in records}):
        cont, alone = by.get(("continuous", clients)), by.get(("one-at-a-time", clients))
        single = by.get(("continuous-1task", clients))
        parts = []
        if cont and alone:
            parts.append(
                f"continuous / one-at-a-time tokens/s {cont['tokens_per_s'] / alone['tokens_per_s']:.2f}x"
            )
        if cont and single:
            parts.append(f"1 task / 3 tasks tokens/s {single['tokens_per_s'] / cont['tokens_per_s']:.2f}x")
        if parts:
            lines.append(f"\n{clients} clients: " + ", ".join(parts))
    for check in checks:
        lines.append(
            f"\ngreedy answers of {check['requests']} concurrent mixed-task requests identical to one-at-a-time: "
            f"{check['identical']} of {check['requests']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Time: about 10-20 min on 2 busy cores."
    )
    p.add_argument(
        "--runs", nargs=3, required=True, metavar="NAME=RUN", help="three causal-LM runs of one base"
    )
    glue = os.environ.get("UNIPELT_DATA_DIR", ROOT.parent / "shared" / "data" / "glue")
    p.add_argument("--data-dir", type=Path, default=glue, help="GLUE folder (default $UNIPELT_DATA_DIR)")
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--requests", type=int, default=16, help="requests per level (at least one per client)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    p.add_argument("--configs", default="continuous,continuous-1task,one-at-a-time")
    p.add_argument("--out", type=Path, default=OUT / "load.jsonl")
    p.add_argument("--check", type=int, default=16, help="requests of the greedy agreement check (0: none)")
    p.add_argument("--table", action="store_true", help="only print the results so far")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.out))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    names = [spec.partition("=")[0] for spec in args.runs]
    texts = prompts(args.data_dir)
    common = ["--threads", str(args.threads), "--max-step-tokens", "512"]
    configs = args.configs.split(",")
    batched = Server(args.runs, "--max-running-rows", "16", *common)
    alone = Server(args.runs, "--max-running-rows", "1", *common) if "one-at-a-time" in configs else None
    try:
        level(batched.url, names, texts[:2], 2, 1, 4)  # warm-up of both servers
        if alone is not None:
            level(alone.url, names, texts[:2], 2, 1, 4)
        for clients in [int(c) for c in args.clients.split(",")]:
            per_client = max(1, args.requests // clients)
            for config in configs:
                url = alone.url if config == "one-at-a-time" else batched.url
                models = names[-1:] if config == "continuous-1task" else names
                record = {"config": config, **level(url, models, texts, clients, per_client, args.max_tokens)}
                record["max_tokens"] = args.max_tokens
                print(json.dumps(record), flush=True)
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
        if alone is not None and args.check:
            record = agreement(batched.url, alone.url, names, texts, args.check, args.max_tokens)
            print(json.dumps(record), flush=True)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(record) + "\n")
    finally:
        batched.close()
        if alone is not None:
            alone.close()
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
