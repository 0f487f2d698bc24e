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
    if labels is not None:
        twice = sorted({name for name in labels if labels.count(name) > 1})
        if twice:
            raise UniPELTError(
                f"{path}: the label names {', '.join(map(repr, twice))} appear more than once; every class "
                "needs its own name (the file was edited)"
            )
    _check_metric_kind(path, data["metric_kind"])
    return data


def _check_metric_kind(path: Path, kind: str) -> None:
    from unipelt.metrics import metric_names

    if kind == "causal-lm":
        return
    try:
        metric_names(kind)
    except UniPELTError:
        raise UniPELTError(
            f"{path}: unknown metric_kind {kind!r}; it is classification, regression, token-classification, "
            "causal-lm or a GLUE task name (the file was edited)"
        ) from None


def checkpoint_outputs(checkpoint: Path) -> int | None:
    """How many outputs the head of a run's checkpoint has, read from its config files only (None for a
    causal-lm checkpoint, whose head is the vocabulary)."""
    from unipelt.checkpoint import read_checkpoint_config, task_info

    if (checkpoint / "unipelt_config.json").is_file():
        meta = read_checkpoint_config(checkpoint)
        info = task_info(meta, (meta.get("base") or {}).get("kind", "classification"))
        return None if info["kind"] == "causal-lm" else info["num_labels"]
    config = read_json(checkpoint / "config.json", "fine-tuned model's configuration")
    if not isinstance(config, dict):
        raise UniPELTError(
            f"{checkpoint / 'config.json'} is not a model configuration; it was replaced or edited"
        )
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, dict) else config.get("num_labels")


def check_run_folder(run_dir: str | Path, labels: dict[str, Any]) -> None:
    """Check a run folder's parts against each other when it is opened, each problem one line naming the file:
    labels.json has as many names as the checkpoint's head has outputs (one for regression), the tokenizer
    folder is there (a run folder is local: it is never looked up on the Hub), and metrics.json, when
    present, is a metrics object."""
    run_dir = Path(run_dir)
    expected = (
        1 if labels["regression"] else (len(labels["labels"]) if labels["labels"] is not None else None)
    )
    outputs = checkpoint_outputs(run_dir / "checkpoint")
    if expected is not None and outputs is not None and outputs != expected:
        raise UniPELTError(
            f"{run_dir / LABELS_NAME} names {expected} label(s) but the head in {run_dir / 'checkpoint'} has "
            f"{outputs} outputs; labels.json was edited or comes from another run"
        )
    tokenizer = run_dir / "tokenizer"
    if not tokenizer.is_dir() or not any(tokenizer.iterdir()):
        raise UniPELTError(
            f"{tokenizer} is missing or empty: the run's tokenizer folder was deleted; copy it back from a copy "
            "of the run (or save the base model's tokenizer there)"
        )
    if (run_dir / "metrics.json").exists():
        metrics = read_json(run_dir / "metrics.json", "metrics of the finished run")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("valid", {}), dict):
            raise UniPELTError(f"{run_dir / 'metrics.json'} is not a metrics object; the file was edited")
