"""Class imbalance on a skewed SST-2 slice: macro-F1 without help, with class weights, with oversampling.

The slice keeps every positive example it draws and cuts the negatives to 10 % of the positives (train and
validation drawn from SST-2 train, disjoint, with a fixed seed); the test set is the whole, balanced SST-2 dev
set, so a model that leans to the majority class loses macro-F1 there. Each setting trains MiniLM with the same
method for several seeds; runs are resumable (a run with a metrics.json is not trained again) and the table is
printed as Markdown at the end.

    nice -n 10 .venv/bin/python -m benchmarks.imbalance --out benchmarks/out/imbalance --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np

from unipelt.data import DATA_DIR_ENV
from unipelt.training import TrainConfig, train

SETTINGS = {
    "none": {"class_weights": "none", "oversample": False},
    "weights": {"class_weights": "balanced", "oversample": False},
    "oversample": {"class_weights": "none", "oversample": True},
}


def write_slice(glue: Path, out: Path, positives: int, valid_positives: int, ratio: float, seed: int) -> None:
    """train.tsv and valid.tsv (sentence, label) with negatives cut to ``ratio`` of the positives; dev.tsv."""
    with open(glue / "SST-2" / "train.tsv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    rng = np.random.default_rng(seed)
    by_label = {label: [r for r in rows if r[1] == label] for label in ("0", "1")}
    pos = [by_label["1"][i] for i in rng.permutation(len(by_label["1"]))]
    neg = [by_label["0"][i] for i in rng.permutation(len(by_label["0"]))]
    n_train_neg, n_valid_neg = round(positives * ratio), round(valid_positives * ratio)
    parts = {
        "train": pos[:positives] + neg[:n_train_neg],
        "valid": pos[positives : positives + valid_positives] + neg[n_train_neg : n_train_neg + n_valid_neg],
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        order = rng.permutation(len(part))
        with open(out / f"{name}.tsv", "w", encoding="utf-8") as handle:
            handle.write("sentence\tlabel\n")
            for i in order:
                handle.write(f"{part[i][0]}\t{part[i][1]}\n")
    dev = (glue / "SST-2" / "dev.tsv").read_text(encoding="utf-8")
    (out / "dev.tsv").write_text(dev, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        epilog="Time: about 30 min (several training runs).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="benchmarks/out/imbalance")
    parser.add_argument("--data-dir", default=None, help=f"GLUE folder (default ${DATA_DIR_ENV})")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--method", default="unipelt")
    parser.add_argument("--positives", type=int, default=300)
    parser.add_argument("--valid-positives", type=int, default=100)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()

    import os

    glue = Path(args.data_dir or os.environ.get(DATA_DIR_ENV) or "../shared/data/glue")
    out = Path(args.out)
    data = out / "data"
    if not (data / "train.tsv").is_file():
        write_slice(glue, data, args.positives, args.valid_positives, args.ratio, seed=0)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {}
    started = time.time()
    for setting in args.settings.split(","):
        for seed in seeds:
            run = out / f"{setting}-s{seed}"
            if not (run / "metrics.json").is_file():
                config = TrainConfig(
                    output_dir=str(run),
                    model=args.model,
                    method=args.method,
                    task=None,
                    train_file=str(data / "train.tsv"),
                    valid_file=str(data / "valid.tsv"),
                    test_file=str(data / "dev.tsv"),
                    text_columns=["sentence"],
                    label_column="label",
                    seed=seed,
                    epochs=args.epochs,
                    max_length=args.max_length,
                    threads=args.threads,
                    **SETTINGS[setting],
                )
                train(config, resume=(run / "config.json").is_file())
            results.setdefault(setting, []).append(json.loads((run / "metrics.json").read_text()))
    table = [
        "| setting | test macro-F1 (mean ± std) | test accuracy | F1 per seed | train examples | train s / run |",
        "|---|---|---|---|---|---|",
    ]
    for setting, runs in results.items():
        f1 = [100 * r["test"]["f1_macro"] for r in runs]
        acc = [100 * r["test"]["accuracy"] for r in runs]
        table.append(
            f"| {setting} | {statistics.mean(f1):.2f} ± {statistics.pstdev(f1):.2f} | "
            f"{statistics.mean(acc):.2f} ± {statistics.pstdev(acc):.2f} | "
            f"{', '.join(f'{v:.1f}' for v in f1)} | {runs[0].get('train_examples')} | "
            f"{statistics.mean(r['train_seconds'] for r in runs):.0f} |"
        )
    text = "\n".join(table)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"wall time of this invocation: {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
