"""``unipelt predict``: a finished run's answers for new inputs, with PyTorch or from an ONNX export.

What is read and answered is the run's task kind's: texts (a table with the run's text columns, a plain file of
one text, or two tab-separated, per line, or standard input) answered with labels and probabilities or scores;
sentences answered with tags and entity spans; image files answered with labels. Records go to standard output
as JSON lines or a short table.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unipelt.cli.common import add_compile_flag, add_device_flags, placement_of


def run(args: argparse.Namespace) -> int:
    trained, encoding, task = _open(args)
    kind = trained.kind
    examples = kind.prediction_inputs(args.input, trained.input_columns, encoding, task, trained.tag_column)
    for record in trained.predict(examples, progress=args.input != "-" and len(examples) > 256):
        print(
            json.dumps(record) if args.format == "jsonl" else kind.prediction_line(record, trained.max_length)
        )
    return 0


def _open(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """(the run or export to predict with, the encoding of --input, the task's name for messages)."""
    from unipelt.errors import UniPELTError
    from unipelt.inference import Run
    from unipelt.inference.onnx_runtime import is_export, open_export

    if args.runtime == "onnx":
        if args.compile:
            raise UniPELTError("--compile applies to the torch runtime, not to --runtime onnx")
        trained = open_export(args.run)
        task = str(trained.info.get("task") or "").upper() or None
        return trained, args.encoding or "utf-8", task
    if is_export(args.run):
        raise UniPELTError(f"{args.run} is an ONNX export; predict from it with --runtime onnx")
    trained = Run(args.run, placement_of(args), compile=args.compile)
    task = trained.config.task.upper() if trained.config.task else None
    return trained, args.encoding or trained.config.encoding, task


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
