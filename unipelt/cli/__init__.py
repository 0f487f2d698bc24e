"""The ``unipelt`` command line: params, train, eval, predict, gates.

Every error a user can fix (bad path, bad data, unsupported model, mismatched checkpoint) is printed as
one line and exits with status 2; only real bugs show a traceback.

Each verb is one module of this package with ``add_parser(subparsers)`` (its sub-parser, whose ``func`` is the
module's ``run``) and ``run(args)``; :data:`VERBS` is the one list that registers them. Verb modules import the
heavy parts (torch, transformers) inside ``run``, so ``unipelt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib

from unipelt.cli.common import run_verb

VERBS = ("params", "train", "eval", "predict", "generate", "gates", "optimize", "serve", "export", "tune")
"""The verb modules, in the order ``unipelt --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unipelt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        importlib.import_module(f"{__name__}.{verb}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_verb(args.func, args)
