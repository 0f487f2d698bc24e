"""``unipelt eval``: score a finished run on its own test set, another GLUE task's dev set, or a labelled file.

A causal-LM run (``--task-type causal-lm``) is scored on chats: its test file or ``--data``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unipelt.cli.common import GLUE_HELP, add_compile_flag, add_device_flags, placement_of


def run(args: argparse.Namespace) -> int:
    from unipelt.errors import UniPELTError
    from unipelt.inference import Run
    from unipelt.inference.generation import is_chat_run

    where = placement_of(args)
    if is_chat_run(args.run):
        if args.compile:
            raise UniPELTError("--compile applies to classification, regression and tagging runs")
        return _evaluate_chat_run(args, where)
    trained = Run(args.run, where, compile=args.compile)
    data = trained.data(task=args.task, data_dir=args.data_dir, path=args.data, encoding=args.encoding)
    metrics = trained.evaluate(data)
    if args.json:
        print(json.dumps({"data": data.source, "examples": len(data), **metrics}, indent=2))
    else:
        print(f"{data.source}: {len(data)} examples")
        for name, value in metrics.items():
            if name.startswith("support_") or name == "words_cut":  # counts, not rates
                print(f"  {name:<12}{int(value):8d}")
            else:
                print(f"  {name:<12}{100 * value:8.2f}")
    return 0


def _evaluate_chat_run(args: argparse.Namespace, where: Any) -> int:
    """A causal-LM run on its test chats or --data: loss and perplexity, and accuracy when it has answer choices."""
    from unipelt.errors import UniPELTError
    from unipelt.inference.generation import ChatRun

    if args.data_dir or (args.task and not args.data):
        raise UniPELTError(
            f"{args.run} is a causal-lm run: evaluate it on chats with --data FILE.jsonl (GLUE tasks do not apply)"
        )
    trained = ChatRun(args.run, where)
    conversations = trained.data(args.data)
    metrics = trained.evaluate(conversations, task=args.task if args.data else None)
    source = args.data or trained.config.test_file
    if args.json:
        print(json.dumps({"data": source, "examples": len(conversations), **metrics}, indent=2))
        return 0
    print(f"{source}: {len(conversations)} conversations")
    for name, value in metrics.items():
        shown = f"{value:8.4f}" if name in ("loss", "perplexity") else f"{100 * value:8.2f}"
        print(f"  {name:<12}{shown}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a trained run (its test set, or --task / --data)")
    p.add_argument("run")
    p.add_argument(
        "--task", help=GLUE_HELP + "; for a multi-task causal-lm run with --data: whose modules run"
    )
    p.add_argument("--data-dir")
    p.add_argument(
        "--data", help="a labelled file with the run's columns (a causal-lm run: chats, JSON lines)"
    )
    p.add_argument("--encoding", help="text encoding of --data (default: the run's --encoding, else utf-8)")
    p.add_argument("--json", action="store_true")
    add_device_flags(p)
    add_compile_flag(p)
    p.set_defaults(func=run)
    return p
