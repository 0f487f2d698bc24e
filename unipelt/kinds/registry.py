"""The one registry of task kinds: ``--task-type NAME`` looks its object up here, ``auto`` asks each kind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unipelt.errors import UniPELTError
from unipelt.kinds.base import TaskKind

if TYPE_CHECKING:
    from unipelt.training.config import TrainConfig

_KINDS: dict[str, TaskKind] = {}
DEFAULT = "classification"  # the kind of data no kind detects: sentence tables and GLUE tasks


def register_kind(kind: TaskKind, replace: bool = False) -> TaskKind:
    """Make ``kind`` available as ``--task-type kind.name`` (and to ``auto`` through its ``detect``)."""
    if kind.name in _KINDS and not replace:
        raise UniPELTError(f"a task kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    _KINDS.pop(name, None)


def get_kind(name: str) -> TaskKind:
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise UniPELTError(f"task_type must be one of auto, {', '.join(_KINDS)}, not {name!r}") from None


def kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def resolve_kind(config: TrainConfig) -> TaskKind:
    """The kind that reads a run's data: ``--task-type`` unless ``auto``; then regression with
    ``--regression``, else the first registered kind that recognises the data, else classification (whose
    reader makes GLUE's STS-B a regression)."""
    if config.task_type != "auto":
        if config.regression and config.task_type != "regression":
            raise UniPELTError(f"--regression contradicts --task-type {config.task_type}")
        return get_kind(config.task_type)
    if config.regression:
        return get_kind("regression")
    for kind in _KINDS.values():
        if kind.detect(config):
            return kind
    return get_kind(DEFAULT)


def load_splits(config: TrainConfig) -> Any:
    """A run's data (:class:`~unipelt.kinds.Splits`), read and checked by the kind that reads it."""
    return resolve_kind(config).read_splits(config)


def kind_of_run(info: dict[str, Any]) -> TaskKind:
    """The kind of a finished run from its labels.json (``task_type`` where written, else ``metric_kind``)."""
    name = info.get("task_type") or info.get("metric_kind")
    if name in _KINDS:
        return _KINDS[name]
    return get_kind("regression" if info.get("regression") else DEFAULT)
