"""Turn the cost JSON lines of every library into one markdown table (ratios measured in-process).

    python -m benchmarks.report benchmarks/out/cost_minilm.jsonl benchmarks/out/peer_cost_minilm.jsonl \
        benchmarks/out/peer_peft_cost_minilm.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def cost_table(records: list[dict]) -> str:
    rows: dict[tuple[str, str, str], dict] = defaultdict(dict)
    shapes = sorted({(r["batch"], r["seq_len"]) for r in records if r.get("measure") == "infer_latency"})
    for r in records:
        if "method" not in r:
            continue
        key = (r["library"], r["model"], r["method"])
        measure = r["measure"]
        if measure == "params":
            rows[key]["trainable"] = r.get("trainable")
            rows[key]["added"] = r.get("added_at_inference")
        elif measure == "infer_latency":
            rows[key][f"infer_{r['batch']}x{r['seq_len']}"] = (r.get("ratio"), r.get("median_s"))
        elif measure == "train_step":
            rows[key]["train"] = (r.get("ratio"), r.get("median_s"))
        elif measure == "peak_memory":
            rows[key][f"mem_{r.get('phase')}"] = r.get("ratio")
    shape_cols = [f"infer {b}x{s}" for b, s in shapes]
    header = [
        "library",
        "model",
        "method",
        "trainable",
        "added at inference",
        *shape_cols,
        "train step",
        "peak mem infer",
        "peak mem train",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (library, model, method), row in sorted(rows.items()):
        cells = [
            library,
            model,
            method,
            f"{row['trainable']:,}" if row.get("trainable") else "–",
            f"{row['added']:,}" if row.get("added") is not None else "–",
        ]
        for b, s in shapes:
            ratio, seconds = row.get(f"infer_{b}x{s}", (None, None))
            cells.append(f"{_fmt(ratio)}x ({_fmt(seconds and seconds * 1000, 1)} ms)" if ratio else "–")
        ratio, seconds = row.get("train", (None, None))
        cells.append(f"{_fmt(ratio)}x ({_fmt(seconds, 2)} s)" if ratio else "–")
        cells += [_fmt(row.get("mem_infer"), suffix="x"), _fmt(row.get("mem_train"), suffix="x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peer_table(grid_rows: list[dict], peer: list[dict], method: str = "unipelt") -> str:
    """Ours vs adapters' UniPELT per task: mean test score over the seeds each side has (same K, seeds, data)."""
    tasks = ["rte", "mrpc", "stsb", "cola", "sst2"]
    lines = [
        "| task (metric) | unipelt: UniPELT (APL) | seeds | adapters 1.3.0: UniPELTConfig | seeds |",
        "|---|---|---|---|---|",
    ]
    for task in tasks:
        ours = {r["seed"]: 100 * r["test"] for r in grid_rows if r["task"] == task and r["method"] == method}
        theirs = {
            r["seed"]: 100 * r["test_main"] for r in peer if r["task"] == task and r["method"] == "unipelt"
        }
        metric = next((r["metric"] for r in grid_rows if r["task"] == task), None) or next(
            (r["main_metric"] for r in peer if r["task"] == task), ""
        )

        def cell(scores: dict) -> str:
            if not scores:
                return "–"
            values = list(scores.values())
            mean = sum(values) / len(values)
            spread = (
                (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
            )
            return f"{mean:.2f} ± {spread:.2f}"

        lines.append(
            f"| {task} ({metric}) | {cell(ours)} | {sorted(ours)} | {cell(theirs)} | {sorted(theirs)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(epilog="Time: seconds.", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="cost JSON-lines files")
    parser.add_argument(
        "--grid", type=Path, help="grid output folder (with results.jsonl from grid.py --report)"
    )
    parser.add_argument("--peer", type=Path, help="peer_accuracy.py JSON lines")
    args = parser.parse_args()
    if args.files:
        print(cost_table(load(args.files)))
    if args.grid and args.peer:
        print(peer_table(load([args.grid / "results.jsonl"]), load([args.peer])))


if __name__ == "__main__":
    main()
