"""Reading a run folder's JSON files back (config.json, labels.json) with one clear error per damaged file.

A run folder outlives the process that wrote it: it is copied, synced, cut short by a full disk, or opened and
"fixed" by hand. Whatever the damage (missing, empty, truncated, not JSON, JSON of the wrong shape, a field of
the wrong type), the user gets one :class:`~unipelt.errors.UniPELTError` naming the file and what is wrong with
it, never a ``KeyError`` or ``TypeError`` from deep inside.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from unipelt.errors import UniPELTError
from unipelt.training.config import TrainConfig

CONFIG_NAME = "config.json"
LABELS_NAME = "labels.json"


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in ``path`` (``what`` says what the file is, for the message)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UniPELTError(f"{path} not found: the {what} is missing") from None
    except IsADirectoryError:
        raise UniPELTError(f"{path} is a folder, not the {what}") from None
    except OSError as error:
        raise UniPELTError(f"cannot read {path} ({error.strerror or error})") from None
    if not raw.strip():
        raise UniPELTError(f"{path} is empty: the {what} was cut short or overwritten")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UniPELTError(
            f"{path} is not valid JSON ({error}): the {what} is truncated or was edited"
        ) from None


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field's type hint (int counts as float; bool is not an int)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    return True  # a type this check does not know: leave it to the code that uses it


def check_fields(data: dict[str, Any], cls: type, path: Path) -> None:
    """Refuse values whose JSON type does not fit the dataclass field (e.g. ``"epochs": "x"``)."""
    hints = typing.get_type_hints(cls)
    wrong = [
        f"{f.name}={data[f.name]!r} (expected {getattr(hints[f.name], '__name__', hints[f.name])})"
        for f in dataclasses.fields(cls)
        if f.name in data and not _matches(data[f.name], hints[f.name])
    ]
    if wrong:
        raise UniPELTError(
            f"{path} has fields of the wrong type: {'; '.join(wrong[:4])}; the file was edited"
        )


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """RUN/config.json as a checked :class:`TrainConfig`."""
    path = Path(run_dir) / CONFIG_NAME
    data = read_json(path, "run configuration")
    if not isinstance(data, dict) or "method" not in data or "model" not in data:
        raise UniPELTError(
            f"{path} is not a unipelt run configuration (a JSON object with method, model, ...); it was "
            "replaced or edited"
        )
    check_fields(data, TrainConfig, path)
    config = TrainConfig.from_dict(data)
    if "lr_prefix" not in data:  # written before the prefix had its own rate: it learnt at the modules' rate
        config = dataclasses.replace(config, lr_prefix=config.learning_rates()["added"])
    try:
        config.validate()
    except UniPELTError as error:
        raise UniPELTError(f"{path}: {error}") from None
    return config


def read_labels(run_dir: str | Path) -> dict[str, Any]:
    """RUN/labels.json, checked: ``labels`` (a list of names, or null for regression), ``regression``,
    ``metric_kind``."""
    path = Path(run_dir) / LABELS_NAME
    data = read_json(path, "label map")
    shape = 'a JSON object {"labels": [...], "regression": false, "metric_kind": "..."}'
    if not isinstance(data, dict) or not {"labels", "regression", "metric_kind"} <= set(data):
        raise UniPELTError(f"{path} is not a unipelt label map ({shape}); it was replaced or edited")
    labels, regression = data["labels"], data["regression"]
    if not isinstance(regression, bool) or not isinstance(data["metric_kind"], str):
        raise UniPELTError(f"{path}: regression must be true or false and metric_kind a name ({shape})")
    if regression and labels is not None:
        raise UniPELTError(f"{path}: a regression run has no label names, but labels is {labels!r}")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise UniPELTError(f"{path}: labels must be a list of class names, not {labels!r}")
    if not regression and data["metric_kind"] != "causal-lm" and not labels:
        raise UniPELTError(f"{path}: a classification run needs its class names in labels, not {labels!r}")
    return data
