"""``unipelt predict``: labels with probabilities (or regression scores) of a finished run for new texts.

Texts come from a table with the run's text columns, from a plain file (one text, or two tab-separated, per
line) or from standard input; records go to standard output as JSON lines or a short table.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unipelt.cli.common import add_compile_flag, add_device_flags, placement_of


def run(args: argparse.Namespace) -> int:
    from unipelt.errors import UniPELTError
    from unipelt.inference import Run, read_inputs
    from unipelt.inference.onnx_runtime import is_export

    where = placement_of(args)
    if args.runtime == "onnx":
        if args.compile:
            raise UniPELTError("--compile applies to the torch runtime, not to --runtime onnx")
        from unipelt.inference.onnx_runtime import open_export

        trained = open_export(args.run)
        if trained.is_tagger:
            from unipelt.inference.tagging import print_tagged

            return print_tagged(
                trained, args.input, args.format, args.encoding or "utf-8", trained.tag_column
            )
        text_columns = trained.info.get("text_columns") or (
            ["text_a", "text_b"] if trained.pair else ["text"]
        )
        encoding, task = args.encoding or "utf-8", str(trained.info.get("task") or "").upper() or None
    elif is_export(args.run):
        raise UniPELTError(f"{args.run} is an ONNX export; predict from it with --runtime onnx")
    else:
        trained = Run(args.run, where, compile=args.compile)
        if trained.is_tagger:  # token classification: sentences in, tags and entity spans out
            from unipelt.inference.tagging import print_tagged

            encoding = args.encoding or trained.config.encoding
            return print_tagged(trained, args.input, args.format, encoding, trained.config.tag_column)
        text_columns = trained.input_columns
        encoding, task = args.encoding or trained.config.encoding, trained.config.task
        task = task.upper() if task else None
    max_length = trained.max_length if args.runtime == "onnx" else trained.config.max_length
    if args.runtime == "onnx":
        examples = read_inputs(args.input, text_columns, encoding, task)
    else:
        examples = trained.kind.prediction_inputs(args.input, text_columns, encoding, task)
    for record in trained.predict(examples, progress=args.input != "-" and len(examples) > 256):
        if args.format == "jsonl":
            print(json.dumps(record))
        else:
            value = (
                f"{record['score']:.4f}"
                if "score" in record
                else (f"{record['label']}\t{record['probabilities'][record['label']]:.4f}")
            )
            cut = (
                f"\t(truncated: {record['tokens']} tokens, the first {max_length} read)"
                if "truncated" in record
                else ""
            )
            print(f"{value}\t{record.get('text', record.get('image', ''))[:80]}{cut}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="labels and probabilities (or scores) for new texts")
    p.add_argument("run", help="run folder (or export folder with --runtime onnx)")
    p.add_argument(
        "--input", required=True, help="file (.csv/.tsv/.jsonl with the run's text columns, or lines) or -"
    )
    p.add_argument("--format", default="jsonl", choices=["jsonl", "table"])
    p.add_argument("--encoding", help="text encoding of --input (default: the run's --encoding, else utf-8)")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnx"],
        help="onnx: onnxruntime on an export folder (a run folder is exported first)",
    )
    add_device_flags(p)
    add_compile_flag(p)
    p.set_defaults(func=run)
    return p
