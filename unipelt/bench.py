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
    cost_protocol.run_for_model(
        lambda model_dir: make_builders(model_dir, args.random_init, args.seed),
        args,
        library="unipelt",
        library_version=unipelt.__version__,
        head_names=("classifier", "score", "pooler"),
        packages=("transformers",),
    )
    return 0
