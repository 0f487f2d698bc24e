"""``unipelt export``: one run as an ONNX graph (task modules, gates and head inside), checked against PyTorch.

The folder written holds model.onnx (dynamic batch and sequence axes), tokenizer/, labels.json and export.json
(the parity figures); ``--quantize int8`` adds model.int8.onnx and reports its accuracy change and speed.
``unipelt predict OUT --runtime onnx`` and ``unipelt serve OUT --runtime onnx`` answer from it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unipelt.cli.common import add_device_flags, placement_of
from unipelt.errors import UniPELTError


def run(args: argparse.Namespace) -> int:
    if args.format == "peft":
        return run_peft(args)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise UniPELTError(
            f"`unipelt export` needs the onnx extra: pip install 'unipelt[onnx]' ({error})"
        ) from error
    from unipelt.inference.export import export_run
    from unipelt.training.model_card import write_card

    where = placement_of(args)
    report = export_run(
        args.run,
        args.out,
        quantize=args.quantize,
        data=args.data,
        tolerance=args.tolerance,
        max_examples=args.max_examples,
        threads=args.threads,
        placement=where,
    )
    write_card(args.run, args.out)  # README.md: the run's Hub model card beside the export
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"exported {args.run} to {args.out}/model.onnx ({report['export_seconds']} s)")
    print(
        f"parity with PyTorch on {report['examples']} test inputs: max |diff| {report['parity_max_abs_diff']:.2e}"
    )
    int8 = report.get("int8")
    if int8:
        if "metric" in int8:
            print(
                f"int8: {int8['metric']} {int8['fp32']:.4f} -> {int8['int8']:.4f} ({int8['change']:+.4f}); "
                f"latency 1x128 {int8['latency_1x128_ms']['fp32']} -> {int8['latency_1x128_ms']['int8']} ms "
                f"(x{int8['latency_1x128_ratio_int8_over_fp32']}), test set x{int8['test_set_latency_ratio_int8_over_fp32']}"
            )
        print(f"sizes: {int8['bytes']}")
    return 0


def run_peft(args: argparse.Namespace) -> int:
    """``--format peft``: adapter_config.json + adapter_model.safetensors + README.md (unipelt.interop)."""
    from unipelt.inference.peft_run import export_peft_run

    report = export_peft_run(args.run, args.out)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"exported {args.run} to {report['folder']} as PEFT ({', '.join(report['files'])})")
    print(
        f"adapter weights: {report['peft_bytes']:,} bytes (unipelt checkpoint: {report['unipelt_bytes']:,} bytes)"
    )
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a run to ONNX (parity-checked; optional int8)")
    p.add_argument("run")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "peft"],
        help="onnx: a parity-checked graph; peft: a PEFT adapter folder (LoRA, IA3, prefix) with a model card",
    )
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--quantize", choices=["int8"], default=None, help="also write a dynamic int8 model")
    p.add_argument(
        "--data", default=None, help="labelled file for the parity check (default: the run's test set)"
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |logit difference|")
    p.add_argument("--max-examples", type=int, default=None, help="check parity on the first N test inputs")
    add_device_flags(p, dtype=False)  # the graph is float32; --threads also sizes ONNX Runtime's sessions
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)
    return p
