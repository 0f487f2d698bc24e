"""Training-step time with the frozen backbone's dropout on (the model's own 0.1) and off (``--backbone-dropout 0``),
against a full fine-tuning step with dropout on, MiniLM, interleaved in one process.

The models are built the way ``unipelt train`` builds them (``unipelt.training.run.build_model`` semantics:
``set_backbone_dropout`` on the base model before UniPELT wraps it, so the added modules keep their dropout).
Each step is forward + loss + backward + AdamW step on the trainable parameters (``timing.train_step_fn``);
the methods run round-robin with the order rotated each round (``timing.time_until_clean``), so drifts of a
shared machine hit every method alike. Run it under ``flock /tmp/unipelt-bench.lock``.

    flock /tmp/unipelt-bench.lock .venv/bin/python -m benchmarks.dropout_step --batch 16 --seq 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import timing
from benchmarks.cost_measures import make_optimizer


def build(method: str, dropout: float | None):
    from unipelt.backbones import load_base_model
    from unipelt.config import UniPELTConfig
    from unipelt.model import UniPELTModel
    from unipelt.training.model_init import set_backbone_dropout

    model = load_base_model("minilm", "classification", num_labels=2)
    if dropout is not None:
        set_backbone_dropout(model, dropout)
    if method != "ft":
        model = UniPELTModel(model, UniPELTConfig.from_preset(method))
    model.train()
    return model


def main() -> int:
    parser = argparse.ArgumentParser(epilog="Time: about 2 min.", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-rounds", type=int, default=20)
    parser.add_argument("--methods", default="unipelt,lora,adapter")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/dropout_step.jsonl"))
    args = parser.parse_args()
    import torch

    timing.set_threads(args.threads)
    torch.manual_seed(0)
    batch = timing.make_batch(args.batch, args.seq, 30522, num_labels=2)
    variants = {"ft (dropout 0.1)": ("ft", None), "ft (dropout 0)": ("ft", 0.0)}
    for method in args.methods.split(","):
        variants[f"{method} (dropout 0.1)"] = (method, None)
        variants[f"{method} (dropout 0)"] = (method, 0.0)
    fns = {}
    for name, (method, dropout) in variants.items():
        model = build(method, dropout)
        fns[name] = timing.train_step_fn(model, batch, make_optimizer(model, 1e-4))
    times, clean = timing.time_until_clean(fns, args.repeats, warmup=2, max_rounds=args.max_rounds)
    reference = timing.median(times["ft (dropout 0.1)"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"batch {args.batch} x {args.seq}, {args.threads} thread(s); median s/step and x of ft with dropout"
    )
    with open(args.out, "a") as handle:
        for name in variants:
            row = {
                "variant": name,
                "batch": args.batch,
                "seq": args.seq,
                "threads": args.threads,
                **timing.summarize(times[name]),
                "clean_calls": sum(clean[name]),
                "x_ft_dropout": timing.median(times[name]) / reference,
            }
            handle.write(json.dumps(row) + "\n")
            print(
                f"{name:24s} {row['median']:.3f} s  [{row['p25']:.3f}, {row['p75']:.3f}]  "
                f"{row['x_ft_dropout']:.2f}x  ({row['clean_calls']}/{row['n']} clean)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
