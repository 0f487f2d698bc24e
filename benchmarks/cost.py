"""Cost of unipelt's methods next to the frozen base model and full fine-tuning.

Methods: every preset of :data:`unipelt.config.PRESETS`, plus ``lora_merged`` (the ungated LoRA merged into the
weights). Same protocol, inputs and output format as the peer scripts (:mod:`cost_protocol`): trainable
parameters (with and without the prefix MLP), inference latency at 1 x 128 and 32 x 128 (ratio to the base
model), one training step (ratio to full fine-tuning), and peak memory per method in a fresh subprocess.
Inference uses the deployable form (prefix MLP ejected; ``lora_merged`` also merged).

    python -m benchmarks.cost --model minilm --out benchmarks/out/cost_minilm.jsonl
    python -m benchmarks.cost --model mpnet --device cuda --out benchmarks/out/cost_mpnet_gpu.jsonl
"""

from __future__ import annotations

import argparse
import sys

import torch

import unipelt  # noqa: E402
from benchmarks import cost_protocol
from benchmarks.cost_protocol import Method
from unipelt.cli.common import add_compile_flag
from unipelt.config import PRESETS  # noqa: E402


def make_builders(model_dir: str, random_init: bool, seed: int, compile: str | None = None) -> list[Method]:
    """The references (frozen base, full fine-tuning), every preset, and the merged ungated LoRA; with
    ``compile`` (a torch.compile backend) also ``base+compile`` and ``<preset>+compile`` for inference."""
    from unipelt.model import add_unipelt

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
    if compile:
        methods += compiled_methods(methods, compile)
    return methods


def compiled_methods(methods: list[Method], backend: str) -> list[Method]:
    """Inference-only twins of the base model and of every preset, compiled with ``backend``: the base through
    ``torch.compile(model)``, ours through ``UniPELTModel.compile`` (the single-task graph)."""

    def compiled(build):
        def build_compiled(mode: str) -> torch.nn.Module:
            model = build(mode)
            if hasattr(model, "injector"):
                return model.compile(backend=backend)
            return torch.compile(model, backend=backend)

        return build_compiled

    return [
        Method(f"{m.name}+compile", compiled(m.build), train=False, note=f"{m.note}, torch.compile {backend}")
        for m in methods
        if m.infer and m.name != "lora_merged"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        epilog="Time: about 5 min for three methods on MiniLM (longer with memory children and more repeats).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cost_protocol.add_cli_args(parser)
    add_compile_flag(
        parser, help="also time compiled twins (METHOD+compile) of the base and of each preset for inference"
    )
    args = parser.parse_args(argv)
    cost_protocol.run_for_model(
        lambda model_dir: make_builders(model_dir, args.random_init, args.seed, args.compile),
        args,
        library="unipelt",
        library_version=unipelt.__version__,
        head_names=("classifier", "score", "pooler"),
        packages=("transformers",),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
