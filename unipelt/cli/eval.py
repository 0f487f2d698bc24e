"""``unipelt eval``: score a finished run on its own test set, another GLUE task's dev set, or a labelled file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from unipelt.cli.common import GLUE_HELP


def run(args: argparse.Namespace) -> int:
    from unipelt.inference import Run

    trained = Run(args.run)
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


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a trained run (its test set, or --task / --data)")
    p.add_argument("run")
    p.add_argument("--task", help=GLUE_HELP)
    p.add_argument("--data-dir")
    p.add_argument("--data", help="a labelled file with the run's columns")
    p.add_argument("--encoding", help="text encoding of --data (default: the run's --encoding, else utf-8)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
    return p
