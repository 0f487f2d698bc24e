"""Is a low score a bad ranking or a bad threshold? For each finished classification cell of a ``grid.py`` folder:
its best checkpoint's predictions on the test split (GLUE dev), as the share of each label it predicts, the
recall of the rarer label, the reported metric, and the ROC AUC of the rarer label's probability.

Matthews correlation (CoLA) and accuracy reward a model only for the labels it commits to; AUC measures how well
its scores order the examples whatever the threshold. Two methods with the same AUC but different Matthews
differ in where they put the decision, not in what they learned. Binary tasks only.

    python -m benchmarks.decision_balance benchmarks/out/grid_k1000 --task cola
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from benchmarks.grid import LABELS, TASK_TITLES
from unipelt.metrics import accuracy, auc, matthews  # noqa: E402


def balance(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Decision and ranking statistics of binary logits against gold labels (0/1), the rarer label as positive."""
    rare = int(np.bincount(labels, minlength=2).argmin())
    predicted = logits.argmax(axis=1)
    # log-odds of the rarer label: a softmax-free score with the same order as its probability
    score = logits[:, rare] - logits[:, 1 - rare]
    return {
        "rare": rare,
        "gold_rare": float(np.mean(labels == rare)),
        "predicted_rare": float(np.mean(predicted == rare)),
        "recall_rare": float(np.mean(predicted[labels == rare] == rare)),
        "accuracy": accuracy(predicted, labels),
        "matthews": matthews(predicted, labels),
        "auc": auc(score, labels == rare),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        epilog="Time: seconds to a minute (reads finished run folders).", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", type=Path, help="grid.py output folder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", default="../shared/data/glue")
    args = parser.parse_args()

    from unipelt.data import load_glue
    from unipelt.inference import Run

    test = load_glue(args.task, args.data_dir, "dev")
    labels = np.array([e.label for e in test.examples])
    rows = []
    for metrics_path in sorted(args.out.glob(f"{args.task}/k*/*/seed-*/metrics.json")):
        cell = metrics_path.parent
        logits = Run(cell).logits(test.examples, progress=False)
        rows.append({"method": cell.parts[-2], "seed": cell.name, **balance(labels, logits)})
    if not rows:
        print(f"no finished {args.task} cells under {args.out}")
        return 1
    title = TASK_TITLES.get(args.task, args.task)
    print(
        f"{title} test split: {len(labels)} rows, rarer label = {test.label_list[rows[0]['rare']]} "
        f"({100 * rows[0]['gold_rare']:.1f} %)\n"
    )
    print("| method | seed | predicted rarer label | recall of rarer label | accuracy | Matthews | AUC |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {LABELS.get(r['method'], r['method'])} | {r['seed']} | {100 * r['predicted_rare']:.1f} % | "
            f"{100 * r['recall_rare']:.1f} % | {100 * r['accuracy']:.2f} | {100 * r['matthews']:.2f} | "
            f"{100 * r['auc']:.2f} |"
        )
    print("\n| method | mean Matthews | mean AUC | mean predicted rarer label |")
    print("|---|---|---|---|")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        print(
            f"| {LABELS.get(method, method)} | {100 * statistics.fmean(r['matthews'] for r in mine):.2f} | "
            f"{100 * statistics.fmean(r['auc'] for r in mine):.2f} | "
            f"{100 * statistics.fmean(r['predicted_rare'] for r in mine):.1f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
