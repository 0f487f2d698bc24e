"""``unipelt eval``: score a finished run on its own test set, another GLUE task's dev set, or a labelled file.

A causal-LM run (``--task-type causal-lm``) is scored on chats: its test file or ``--data``; with
``--retention`` it is instead asked a file of facts, and compared with its base model
(:mod:`unipelt.running.retention`); the result is also stored in the run's metrics.json.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unipelt.cli.common import GLUE_HELP, add_compile_flag, add_device_flags, placement_of


def run(args: argparse.Namespace) -> int:
    from unipelt.inference import Run

    trained = Run(args.run, placement_of(args), compile=args.compile)
    if args.retention:
        return _retention(args, trained)
    data = trained.data(task=args.task, data_dir=args.data_dir, path=args.data, encoding=args.encoding)
    metrics = trained.evaluate(data, task=args.task if args.data else None)
    if args.json:
        print(json.dumps({"data": data.source, "examples": len(data), **metrics}, indent=2))
        return 0
    print(f"{data.source}: {len(data)} {trained.kind.example_noun}")
    for name, value in metrics.items():
        print(f"  {name:<12}{_shown(name, value)}")
    return 0


def _shown(name: str, value: float) -> str:
    """A metric as ``eval`` prints it: counts whole, losses as they are, rates in percent."""
    if name.startswith("support_") or name == "words_cut":
        return f"{int(value):8d}"
    if name in ("loss", "perplexity"):
        return f"{value:8.4f}"
    return f"{100 * value:8.2f}"


def _retention(args: argparse.Namespace, trained: Any) -> int:
    """How many facts the base model answers correctly the run still answers correctly; kept in metrics.json."""
    from unipelt.checkpoint import write_json
    from unipelt.running.retention import retention_line

    result = trained.retention(args.retention, args.task)
    metrics_file = trained.folder / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        if isinstance(metrics, dict):
            write_json(metrics_file, {**metrics, "retention": result})
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(retention_line(result))
    for lost in result["lost"]:
        print(f"  lost: {lost['prompt']!r}: base {lost['base']!r}, run {lost['run']!r}")
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
    p.add_argument(
        "--retention",
        nargs="?",
        const="facts",
        metavar="FACTS.jsonl",
        help="causal-lm: ask JSON lines of {prompt, answer} facts and report how many the base model answers "
        "correctly that the run still answers correctly (also written to metrics.json); without a file, "
        "the packaged facts",
    )
    p.add_argument("--json", action="store_true")
    add_device_flags(p)
    add_compile_flag(p)
    p.set_defaults(func=run)
    return p
