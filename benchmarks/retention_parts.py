"""Which part of a trained chat run makes it forget: retention with one part switched off at inference.

A part is switched off by zeroing what it adds: the adapter's up projection, LoRA's B matrices, the prefix's
values (after folding its reparameterisation MLP into stored vectors). Retention is measured on a facts file
(default: the packaged one) exactly as ``unipelt eval RUN --retention`` does, each variant on a fresh load.

    python -m benchmarks.retention_parts RUN --parts none,adapter,prefix,lora,adapter+prefix+lora
"""

from __future__ import annotations

import argparse
import json

import torch

from unipelt.inference.generation import ChatRun
from unipelt.modules import BottleneckAdapter, PrefixEncoder
from unipelt.running.retention import facts_path, measure_retention, read_facts


def switch_off(model: torch.nn.Module, parts: set[str]) -> None:
    """Zero what each named part adds to the model's output (in place)."""
    if "prefix" in parts:
        model.eject_prefix_mlp()
    with torch.no_grad():
        for name, module in model.named_modules():
            if "adapter" in parts and isinstance(module, BottleneckAdapter):
                module.up.weight.zero_()
                module.up.bias.zero_()
            if "lora" in parts and name.endswith("lora_B"):
                module.weight.zero_()
            if "prefix" in parts and isinstance(module, PrefixEncoder):
                for layer in range(module.num_layers):
                    module.prefix[layer][1].zero_()  # a layer's (2, P, width): index 1 holds the values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--parts", default="none,adapter,prefix,lora", help="variants; '+' joins parts")
    parser.add_argument("--facts", default="facts", help="facts file ('facts': the packaged one)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    facts = read_facts(facts_path(args.facts))
    print("| parts off | facts kept | of (base model right) |\n|---|---|---|")
    for variant in args.parts.split(","):
        model, tokenizer = ChatRun(args.run).load()
        switch_off(model.eval(), set() if variant == "none" else set(variant.split("+")))
        result = measure_retention(model, tokenizer, facts)
        print(f"| {variant} | {result['kept']} | {result['base_correct']} |", flush=True)
        lost = [(item["prompt"], item["run"][:60]) for item in result["lost"]]
        print(f"<!-- lost: {json.dumps(lost)} -->", flush=True)


if __name__ == "__main__":
    main()
