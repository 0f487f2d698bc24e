"""Cost of Hugging Face PEFT LoRA (0.21.2) next to the frozen base and full fine-tuning.

Runs in our own venv (transformers 5.x; ``pip install peft==0.21.2`` if missing)::

    .venv/bin/python -m benchmarks.peer_peft_cost --out benchmarks/out/peer_peft_cost_minilm.jsonl

Methods (all on ``AutoModelForSequenceClassification`` with a 2-label head):

* ``base``: the plain transformers model, frozen (reference for inference ratios);
* ``full_ft``: every parameter trained (reference for training ratios);
* ``peft_lora``: ``LoraConfig(r=8, lora_alpha=8, target_modules=query+value, task_type=SEQ_CLS)``
  (the head is trained through PEFT's ``modules_to_save``), inference unmerged;
* ``peft_lora_merged``: inference only, after ``merge_and_unload()`` (LoRA folded into the weights).

Parameter counts: PEFT keeps the original head next to its trained copy (``modules_to_save``), so the unmerged
model's ``added_at_inference`` includes one head (770 parameters on MiniLM) besides LoRA's.

PEFT has no UniPELT, no bottleneck adapter and cannot mix prefix-tuning with LoRA, so LoRA is its only
comparable method here.  Protocol and output format: ``cost_protocol.py``.
"""

from __future__ import annotations

import argparse

import peft  # noqa: E402
import torch
from peft import LoraConfig, TaskType, get_peft_model  # noqa: E402

from benchmarks import cost_protocol
from benchmarks.cost_protocol import Method

# query/value projection names per model type
QV_MODULES = {"bert": ["query", "value"], "mpnet": ["q", "v"]}


def make_builders(model_dir: str, random_init: bool, seed: int, r: int = 8) -> list[Method]:
    config, load = cost_protocol.model_loader(model_dir, random_init, seed)
    targets = QV_MODULES.get(config.model_type, ["query", "value"])

    def lora(merge_at_inference: bool):
        def build(mode: str) -> torch.nn.Module:
            cfg = LoraConfig(
                r=r, lora_alpha=r, lora_dropout=0.0, target_modules=targets, task_type=TaskType.SEQ_CLS
            )
            m = get_peft_model(load(), cfg)
            if mode == "train":
                return m.train()
            if merge_at_inference:
                m = m.merge_and_unload()
            for p in m.parameters():
                p.requires_grad = False
            return m.eval()

        return build

    return cost_protocol.reference_methods(load) + [
        Method("peft_lora", lora(False), note=f"LoraConfig(r={r}, alpha={r}, {'+'.join(targets)}), unmerged"),
        Method(
            "peft_lora_merged", lora(True), train=False, note="LoRA merged into the weights for inference"
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        epilog="Time: about 5 min.", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--r", type=int, default=8, help="LoRA rank")
    cost_protocol.add_cli_args(p)
    args = p.parse_args(argv)
    cost_protocol.run_for_model(
        lambda model_dir: make_builders(model_dir, args.random_init, args.seed, args.r),
        args,
        library="peft",
        library_version=peft.__version__,
        packages=("transformers", "peft"),
        head_names=("classifier", "score", "modules_to_save", "original_module"),
    )


if __name__ == "__main__":
    main()
