"""Cost of unipelt's methods next to the frozen base model and full fine-tuning, one process, interleaved.

Same protocol, inputs and output format as the peer scripts (``cost_protocol.py``): trainable parameters
(with and without the prefix MLP), inference latency at 1 x 128 and 32 x 128 (ratio to the base model), one
training step at --train-batch x 128 (ratio to full fine-tuning), and peak memory per method in a fresh
subprocess. Inference uses the deployable form (prefix MLP ejected; ungated LoRA merged for ``lora_merged``).

    python benchmarks/cost.py --model minilm --out benchmarks/out/cost_minilm.jsonl
    python benchmarks/cost.py --model mpnet --device cuda --out benchmarks/out/cost_mpnet_gpu.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cost_protocol  # noqa: E402
from cost_protocol import Method  # noqa: E402

import unipelt  # noqa: E402
from unipelt.model import add_unipelt  # noqa: E402
from unipelt.pretrained import resolve_model  # noqa: E402

PRESETS = ["unipelt", "unipelt-ap", "unipelt-router", "ap-nogate", "lora", "adapter", "prefix"]


def make_builders(model_dir: str, random_init: bool, seed: int) -> list[Method]:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir, num_labels=2)

    def load() -> torch.nn.Module:
        torch.manual_seed(seed)
        if random_init:
            return AutoModelForSequenceClassification.from_config(config)
        return AutoModelForSequenceClassification.from_pretrained(model_dir, config=config)

    def plain(train_all: bool):
        def build(mode: str) -> torch.nn.Module:
            model = load()
            for parameter in model.parameters():
                parameter.requires_grad = train_all and mode == "train"
            return model.train() if mode == "train" else model.eval()

        return build

    def ours(preset: str, merge: bool = False):
        def build(mode: str) -> torch.nn.Module:
            model = add_unipelt(load(), preset)
            if mode == "train":
                return model.train()
            model.eject_prefix_mlp()
            if merge:
                model.merge_lora()
            return model.eval()

        return build

    methods = [
        Method("base", plain(False), train=False, note="plain transformers model, frozen"),
        Method("full_ft", plain(True), infer=False, note="all parameters trained"),
    ]
    methods += [
        Method(f"unipelt_{p}" if p != "unipelt" else "unipelt", ours(p), note=f"preset {p}") for p in PRESETS
    ]
    methods.append(
        Method("unipelt_lora_merged", ours("lora", merge=True), train=False, note="ungated LoRA merged")
    )
    return methods


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm", help="minilm, mpnet or a model folder")
    parser.add_argument("--random-init", action="store_true", help="random weights from the model's config")
    cost_protocol.add_cli_args(parser)
    args = parser.parse_args(argv)
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_dir = resolve_model(args.model)
    cost_protocol.main(
        make_builders(model_dir, args.random_init, args.seed),
        args,
        library="unipelt",
        library_version=unipelt.__version__,
        model_name=args.model,
        vocab_size=AutoConfig.from_pretrained(model_dir).vocab_size,
        head_names=("classifier", "score", "pooler"),
        packages=("transformers",),
        extra_meta={"model_dir": model_dir, "random_init": args.random_init},
    )


if __name__ == "__main__":
    main()
