"""``unipelt gates``: redraw the gate heatmap (and learning curves) of a finished run, or compare several runs
side by side in one picture."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from unipelt.analysis import gates_command

    path = gates_command(args.runs, args.output)
    print(f"gate heatmap: {path}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "gates", help="redraw gate heatmaps of one run, or compare several side by side"
    )
    p.add_argument("runs", nargs="+")
    p.add_argument("--output", help="PNG path when comparing several runs")
    p.set_defaults(func=run)
    return p
