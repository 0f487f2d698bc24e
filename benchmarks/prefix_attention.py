"""How much of each layer's attention a trained run's prefix takes, and whether its outputs still depend on the input.

For each run folder (a ``unipelt train`` output with a ``checkpoint/``), on the first ``--rows`` rows of the
task's GLUE dev split: per layer, the share of attention (gated, exactly as the model computes it: eager
attention returns the weights over [prefix; tokens]) that real tokens give to the prefix, and the mean norm of
the prefix keys; then the spread of the model's outputs over the inputs. A run whose prefix took most of the
attention gives every input about the same output (benchmarks/RESULTS.md, "The prefix that captures attention").

    python -m benchmarks.prefix_attention benchmarks/out/grid_k1000_uncapped/stsb/k1000/unipelt/seed-2 --task stsb
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def measure(run: Path, task: str, data_dir: str, rows: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from unipelt import load_unipelt
    from unipelt.data import load_glue
    from unipelt.inference.onnx_runtime import encode_batches
    from unipelt.pretrained import resolve_model

    config = json.loads((run / "config.json").read_text())
    path = resolve_model(config.get("model", "minilm"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_glue(task, data_dir, "dev")
    examples = data.examples[:rows]
    # one padded batch of all rows, truncated as training truncates
    batch = {
        k: torch.from_numpy(v)
        for k, v in next(encode_batches(examples, tokenizer, 128, len(examples))).items()
    }
    labels = 1 if data.regression else len(data.label_list)
    base = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=labels, attn_implementation="eager"
    )
    model = load_unipelt(base.eval(), run / "checkpoint").eval()
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
        prefix = model.prefix
        length = prefix.length
        real = batch["attention_mask"].bool()  # (B, Q): the queries that are tokens, not padding
        shares, key_norms = [], []
        for layer, weights in enumerate(out.attentions):  # (B, H, Q, P + K)
            on_prefix = weights[..., :length].sum(-1).mean(1)  # (B, Q), averaged over heads
            shares.append(float(on_prefix[real].mean()))
            key_norms.append(float(prefix.layer_prefix(layer)[0].norm(dim=-1).mean()))
    logits = out.logits.float()
    spread = float(logits.std(0).mean())
    return {
        "run": str(run),
        "attention_on_prefix": shares,
        "prefix_key_norm": key_norms,
        "output_std": spread,
    }


def main() -> None:
    parser = argparse.ArgumentParser(epilog="Time: under a minute.", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--task", default="stsb")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    results = [measure(run, args.task, args.data_dir, args.rows) for run in args.runs]
    layers = len(results[0]["attention_on_prefix"])
    header = " | ".join(f"layer {i}" for i in range(layers))
    print(f"| run | output std | attention on the prefix, {header} | prefix key norm, {header} |")
    print("|---|---|" + "---|" * (2 * layers))
    for r in results:
        shares = " | ".join(f"{100 * s:.0f} %" for s in r["attention_on_prefix"])
        norms = " | ".join(f"{n:.0f}" for n in r["prefix_key_norm"])
        print(f"| {r['run']} | {r['output_std']:.3f} | {shares} | {norms} |")


if __name__ == "__main__":
    main()
