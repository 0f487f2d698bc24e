"""Evaluation time with the rows in file order against length order (``unipelt.data.in_length_order``).

``unipelt train`` scores validation and test in length order, so each padded batch holds rows of about one
length. This script measures what that saves: MiniLM with a classification head, GLUE dev of each task (up to
``--rows`` rows), batches of 64 (the Trainer's eval batch), one forward per batch, the two orders alternated
``--repeats`` times so that drifts of a shared machine hit both. It prints the padded tokens and the median
seconds of each order, and their ratio.

    .venv/bin/python -m benchmarks.eval_order --tasks rte,mrpc,stsb,cola,sst2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time


def seconds(model, collate, rows: list[dict], batch_size: int) -> tuple[float, int]:
    """(wall seconds of one pass over ``rows`` in the given order, padded tokens in that pass)."""
    import torch

    start, padded = time.perf_counter(), 0
    with torch.inference_mode():
        for first in range(0, len(rows), batch_size):
            batch = collate(rows[first : first + batch_size])
            batch.pop("labels", None)
            padded += batch["input_ids"].numel()
            model(**batch)
    return time.perf_counter() - start, padded


def main() -> None:
    parser = argparse.ArgumentParser(
        epilog="Time: a few minutes (re-evaluates finished runs).", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tasks", default="rte,mrpc,stsb,cola,sst2")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from unipelt.data import in_length_order, load_glue, tokenize_examples
    from unipelt.pretrained import resolve_model

    torch.set_num_threads(args.threads)
    path = resolve_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    collate = DataCollatorWithPadding(tokenizer)
    print("| task | rows | padded tokens, file order / length order | s, file order / length order | ratio |")
    print("|---|---|---|---|---|")
    for task in args.tasks.split(","):
        examples = load_glue(task, args.data_dir, "dev").examples[: args.rows]
        dataset = tokenize_examples(examples, tokenizer)
        orders = {"file": list(dataset), "length": list(in_length_order(dataset))}
        times: dict[str, list[float]] = {name: [] for name in orders}
        tokens = {}
        for _ in range(args.repeats):
            for name, rows in orders.items():
                elapsed, tokens[name] = seconds(model, collate, rows, args.batch_size)
                times[name].append(elapsed)
        file_s, length_s = (statistics.median(times[name]) for name in ("file", "length"))
        print(
            f"| {task} | {len(dataset)} | {tokens['file']} / {tokens['length']} | {file_s:.2f} / {length_s:.2f} "
            f"| {file_s / length_s:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
