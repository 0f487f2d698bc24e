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
    from unipelt.errors import UniPELTError
    from unipelt.inference import Run
    from unipelt.inference.generation import is_chat_run

    where = placement_of(args)
    if is_chat_run(args.run):
        if args.compile:
            raise UniPELTError("--compile applies to classification, regression and tagging runs")
        return _retention(args, where) if args.retention else _evaluate_chat_run(args, where)
    if args.retention:
        raise UniPELTError(f"--retention measures chat models; {args.run} is not a causal-lm run")
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


def _retention(args: argparse.Namespace, where: Any) -> int:
    """How many facts the base model answers correctly the run still answers correctly; kept in metrics.json."""
    from pathlib import Path

    from unipelt.backbones import load_base_model
    from unipelt.checkpoint import write_json
    from unipelt.inference.generation import ChatRun
    from unipelt.running.retention import facts_path, measure_retention, read_facts, retention_line

    facts = read_facts(facts_path(args.retention))
    trained = ChatRun(args.run, where)
    model, tokenizer = trained.load()
    base = None
    if not hasattr(model, "disabled"):  # full fine-tuning: the base is a fresh copy of the model
        base = load_base_model(trained.config.model, "causal-lm", pad_token_id=tokenizer.pad_token_id).eval()
    result = measure_retention(
        model, tokenizer, facts, base=base, task=trained.check_task(args.task), batch_size=16
    )
    result = {"file": str(facts_path(args.retention)), **result}
    metrics_file = Path(args.run) / "metrics.json"
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
