"""PEFT and AdapterHub interop: the max |logit difference| of every export / import pair the tests check, and
the size of a PEFT export against the unipelt checkpoint of the same task.

The pairs are the tests' own (tests/test_peft_interop.py, tests/test_adapterhub_import.py: tiny BERT, LLaMA and
Mistral configs from tests/tiny_models.py and the packaged MiniLM), measured here on the same inputs and
printed as one table; the sizes are of MiniLM tasks with the presets' defaults (LoRA r = 8 on query and value,
IA3 on key, value and feed-forward) and their heads.

    python -m benchmarks.interop [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_adapterhub_import as hub  # noqa: E402  (the tests' helpers and fixture)
import test_peft_interop as pi  # noqa: E402

from unipelt.model import UniPELTModel, add_unipelt  # noqa: E402


def export_rows(folder: Path) -> list[dict]:
    rows = []
    for arch, method in pi.CASES:
        preset, overrides = pi.METHODS[method]
        model = pi.trained(arch, preset, **overrides)
        sample = pi.inputs(arch)
        with torch.no_grad():
            ours = model(**sample).logits
        out = model.save_peft("default", folder / f"export-{arch}-{method}")
        diff = (ours - pi.peft_logits(arch, out, sample)).abs().max().item()
        rows.append({"pair": "unipelt -> peft", "model": arch, "adapter": method, "max_abs_diff": diff})
    return rows


def import_rows(folder: Path) -> list[dict]:
    rows = []
    for arch, kind in [
        ("bert", "lora"),
        ("bert", "ia3"),
        ("llama", "lora"),
        ("llama", "ia3"),
        ("llama", "prefix"),
    ]:
        made = pi.peft_made(arch, pi.IMPORTS[kind](arch))
        made.save_pretrained(str(folder / f"peft-{arch}-{kind}"))
        sample = pi.inputs(arch)
        model = UniPELTModel(pi.base(arch))
        model.load_task("t", folder / f"peft-{arch}-{kind}")
        with torch.no_grad():
            diff = (model(**sample, task="t").logits - made(**sample).logits).abs().max().item()
        rows.append({"pair": "peft -> unipelt", "model": arch, "adapter": kind, "max_abs_diff": diff})
    for name in ("unipelt", "lora", "prefix", "bottleneck"):
        for batch in ("unpadded", "padded"):
            ours, theirs = hub.logits(name, batch)
            diff = (ours - theirs).abs().max().item()
            rows.append(
                {
                    "pair": f"adapters -> unipelt ({batch})",
                    "model": "bert",
                    "adapter": name,
                    "max_abs_diff": diff,
                }
            )
    return rows


def size_rows(folder: Path) -> list[dict]:
    rows = []
    for method in ("lora", "ia3"):
        model = add_unipelt(pi.base("minilm"), method)
        ours = model.save_task("default", folder / f"ckpt-{method}") / "unipelt_weights.safetensors"
        theirs = model.save_peft("default", folder / f"peft-size-{method}") / "adapter_model.safetensors"
        rows.append(
            {
                "model": "minilm",
                "adapter": method,
                "unipelt_checkpoint_bytes": ours.stat().st_size,
                "peft_export_bytes": theirs.stat().st_size,
                "ratio": round(theirs.stat().st_size / ours.stat().st_size, 4),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {"logits": export_rows(folder) + import_rows(folder), "sizes": size_rows(folder)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| pair | model | adapter | max abs logit diff |\n|---|---|---|---|")
    for row in result["logits"]:
        print(f"| {row['pair']} | {row['model']} | {row['adapter']} | {row['max_abs_diff']:.1e} |")
    print(
        "\n| model | adapter | unipelt checkpoint (bytes) | PEFT export (bytes) | PEFT / unipelt |\n|---|---|---|---|---|"
    )
    for row in result["sizes"]:
        print(
            f"| {row['model']} | {row['adapter']} | {row['unipelt_checkpoint_bytes']:,} | "
            f"{row['peft_export_bytes']:,} | {row['ratio']} |"
        )


if __name__ == "__main__":
    main()
