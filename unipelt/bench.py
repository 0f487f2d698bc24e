"""`unipelt bench` (methods: the preset names, plus lora_merged): parameters, latency and training-step cost of unipelt's methods, next to the frozen base
model and full fine-tuning, measured interleaved in one process (protocol: :mod:`unipelt.benchmarking.cost_protocol`).

Inference uses the deployable form (prefix MLP ejected; the ungated LoRA also merged as ``lora_merged``).
"""

from __future__ import annotations

import argparse

import torch

import unipelt
from unipelt.benchmarking import cost_protocol
from unipelt.benchmarking.cost_protocol import Method
from unipelt.config import PRESETS
from unipelt.model import add_unipelt


def make_builders(model_dir: str, random_init: bool, seed: int) -> list[Method]:
    _, load = cost_protocol.model_loader(model_dir, random_init, seed)

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

    methods = cost_protocol.reference_methods(load)
    methods += [Method(preset, ours(preset), note=f"preset {preset}") for preset in PRESETS]
    methods.append(Method("lora_merged", ours("lora", merge=True), train=False, note="ungated LoRA merged"))
    return methods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cost_protocol.add_cli_args(parser)


def bench_command(args: argparse.Namespace) -> int:
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_dir = cost_protocol.resolve_model_dir(args.model, args.model_dir)
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
    return 0
