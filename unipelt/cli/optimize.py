"""``unipelt optimize``: prune and fold a trained run's sub-modules into a new, cheaper run folder."""

from __future__ import annotations

import argparse
from typing import Any

from unipelt.cli.common import add_device_flags, placement_of


def run(args: argparse.Namespace) -> int:
    where = placement_of(args)
    if args.restore:
        from unipelt.autopelt.optimize import restore_run

        print(f"restored run written to {restore_run(args.run, args.out)}")
        return 0
    from unipelt.autopelt.optimize import optimize_run
    from unipelt.inference import Run

    optimize_run(
        Run(args.run, where),
        args.out,
        max_drop=args.max_drop,
        threshold=args.threshold,
        epsilon=args.epsilon,
        timing=not args.no_timing,
        shorten_prefix=not args.no_shorten,
    )
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "optimize",
        help="prune low-contribution sub-modules and fold constant gates of a trained run (new run folder)",
        description="Measure every sub-module of a trained run on its validation split (mean gate, spread, "
        "contribution = gate x ||output|| / ||hidden||), prune those below a threshold, freeze near-constant "
        "gates and fold them into the weights, drop the prefix positions that take the least attention, and write a new run folder that loads like any run.",
    )
    p.add_argument(
        "run", help="a run folder written by `unipelt train` (or an optimized one, with --restore)"
    )
    p.add_argument("--out", help="the new run folder (default: RUN-optimized, or RUN-restored)")
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="validation metric points the search and the prefix step may lose (default 0.5); with "
        "--threshold only the prefix step's budget",
    )
    p.add_argument("--threshold", type=float, help="prune units whose contribution is below this (e.g. 0.01)")
    p.add_argument(
        "--epsilon", type=float, help="fold gates whose spread over inputs is below this (e.g. 0.02)"
    )
    p.add_argument(
        "--restore", action="store_true", help="write a copy of an optimized run with every module back"
    )
    p.add_argument(
        "--no-shorten",
        action="store_true",
        help="keep every prefix position (skip the step that drops those taking the least attention)",
    )
    p.add_argument("--no-timing", action="store_true", help="skip the inference-ratio timing")
    add_device_flags(p, dtype=False)
    p.set_defaults(func=run)
    return p
