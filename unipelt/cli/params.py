"""``unipelt params``: trainable parameters per sub-module of a method on a model, without loading its weights.

The model is built on the meta device (shapes only), so a folder holding only a config.json is enough and a
model of any size is counted in a second.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unipelt.cli.common import override


def format_counts(counts: dict[str, int], base: int, modules: list[str] | None = None) -> str:
    """The counts as a table with each row's share of the frozen base model.

    One row per module kind (those of ``modules`` when given, else every registered kind), titled by the
    module's own file, so a new module shows up here without an edit."""
    from unipelt.modules import MODULES

    rows = []
    for kind, cls in MODULES.items():
        if modules is None or kind in modules:
            rows.append((kind, cls.title))
            if kind == "prefix":
                rows.append(("prefix_mlp", "prefix MLP (training only)"))
    rows += [
        ("gates", "gates"),
        ("head", "task head"),
        ("total_with_prefix_mlp", "total while training"),
        ("total_without_prefix_mlp", "total at inference"),
    ]
    lines = [f"{'sub-module':<28}{'parameters':>14}{'% of base':>11}"]
    for key, title in rows:
        if key.startswith("total"):
            lines.append("-" * 53)
        lines.append(f"{title:<28}{counts[key]:>14,}{100 * counts[key] / base:>10.2f}%")
    lines.append(f"{'frozen base model':<28}{base:>14,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from unipelt.backbones import load_base_model, natural_kind
    from unipelt.config import UniPELTConfig
    from unipelt.model import UniPELTModel

    config = UniPELTConfig.from_preset(args.method, **dict(args.set or []))
    # counting needs shapes only: no memory, no init time, works for any size
    unipelt = UniPELTModel(load_base_model(args.model, natural_kind(args.model), init="meta"), config)
    counts = unipelt.parameter_counts()
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        print(
            f"{args.method} on {args.model} ({unipelt.base_model.config.model_type}, "
            f"{unipelt.dims['num_hidden_layers']} layers, hidden {unipelt.dims['hidden_size']})"
        )
        print(format_counts(counts, counts["base_model"], config.modules))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from unipelt.config import PRESETS

    p = subparsers.add_parser("params", help="count trainable parameters per sub-module")
    p.add_argument(
        "model", help="model folder (a folder with only config.json works), minilm, mpnet or Hub name"
    )
    p.add_argument("--method", default="unipelt", choices=list(PRESETS))
    p.add_argument(
        "--set", action="append", type=override, metavar="FIELD=VALUE", help="override a config field"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)
    return p
