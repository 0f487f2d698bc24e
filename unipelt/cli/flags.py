"""Command-line flags made from a config dataclass's fields, as Transformers' ``HfArgumentParser`` does.

Each field of :class:`~unipelt.training.TrainConfig` carries its flag's help, choices and metavar in its
``metadata``; the type comes from the annotation (``bool`` is a switch, ``list[str]`` a comma-separated value,
``dict`` repeated ``FIELD=VALUE`` pairs). Every flag defaults to ``argparse.SUPPRESS``, so the parsed
namespace holds exactly the flags that were given: that is how ``--config FILE`` is overridden by a flag and
by nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from unipelt.cli.common import override


def _flag(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def _base_type(hint: Any) -> Any:
    """``float`` for ``float | None``; the origin (``list``, ``dict``) for generics."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint


def _comma_list(text: str) -> list[str]:
    return text.split(",")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of ``cls`` whose metadata does not say ``cli=False``."""
    from unipelt.training.config import choices_of

    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if not item.metadata.get("cli", True):
            continue
        kind = _base_type(hints[item.name])
        options: dict[str, Any] = {
            "dest": item.name,
            "default": argparse.SUPPRESS,
            "help": item.metadata["help"],
        }
        if item.metadata.get("metavar"):
            options["metavar"] = item.metadata["metavar"]
        if kind is bool:
            options["action"] = "store_true"
        elif kind is dict:
            options.update(action="append", type=override)
        else:
            options["type"] = {list: _comma_list, int: int, float: float}.get(kind, str)
            choices = choices_of(item)
            if choices:
                options["choices"] = list(choices)
        parser.add_argument(_flag(item), **options)


def given_fields(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` set by the flags that were given (repeated ``FIELD=VALUE`` pairs as a dict)."""
    hints = typing.get_type_hints(cls)
    return {
        item.name: dict(vars(args)[item.name])
        if _base_type(hints[item.name]) is dict
        else vars(args)[item.name]
        for item in dataclasses.fields(cls)
        if item.name in vars(args)
    }
