"""Checkpoints hold only what UniPELT added: safetensors weights plus a JSON config, written atomically.

A run that dies while saving must not leave a half-written checkpoint where a good one was: the folder is
written with :func:`unipelt.atomic.atomic_directory` (a fresh sibling, flushed, renamed into place).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# The atomic writers are re-exported: run files are written through this module too.
from unipelt.atomic import atomic_directory, atomic_file, atomic_write_text, write_json  # noqa: F401
from unipelt.config import LEGACY_VALUES, UniPELTConfig
from unipelt.errors import CheckpointMismatchError, UniPELTError
from unipelt.heads import head_key
from unipelt.plan import PLAN_KEY, apply_plan, plan_from_meta

CONFIG_NAME = "unipelt_config.json"
WEIGHTS_NAME = "unipelt_weights.safetensors"


# ------------------------------------------------------------------------------------- task checkpoints
#
# A task checkpoint is a folder with unipelt_config.json (format, UniPELT config, base-model fingerprint,
# head module paths, task kind and labels) and unipelt_weights.safetensors (the task's added weights and
# head). Format 1 (single-task versions) has no "task" entry; its kind and labels are read from the base
# model and its extras. A multi-task save is a folder with tasks.json and one task checkpoint per task.

CHECKPOINT_FORMAT = 2
TASKS_INDEX = "tasks.json"


def fingerprint(model: Any, dims: dict[str, int]) -> dict[str, Any]:
    config = model.config
    return {
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        **dims,
        "num_labels": int(getattr(config, "num_labels", 0) or 0),
    }


def save_task(task: Any, base: dict[str, Any], path: str | Path, name: str, extra: dict | None) -> Path:
    planned = task.plan is not None  # a planned task saves its weights as trained, with the plan beside them
    state = task.trained_state if planned else task.added_state_dict()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "unipelt": task.config.to_dict(),
        "base": base,
        "head_modules": task.head_paths,
        "task": {"name": name, **task.metadata()},
        **(extra or {}),
    }
    if planned:
        meta[PLAN_KEY] = task.plan.to_dict()

    def write(folder: Path) -> None:
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        write_json(folder / CONFIG_NAME, meta)

    return atomic_directory(path, write)


def save_all(model: Any, path: str | Path, extra: dict | None) -> Path:
    """Every task of a model, one sub-folder each, with an index; written as one atomic folder."""
    base = model.fingerprint()

    def write(folder: Path) -> None:
        for name, task in model.tasks.items():
            save_task(task, base, folder / name, name, extra)
        write_json(
            folder / TASKS_INDEX, {"format": CHECKPOINT_FORMAT, "tasks": list(model.tasks), "base": base}
        )

    return atomic_directory(path, write)


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The JSON of a task checkpoint, checked to be one: a clear error for a missing or damaged file."""
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not path.exists():
        raise UniPELTError(f"checkpoint not found: {path}")
    if not config_file.is_file() or not (path / WEIGHTS_NAME).is_file():
        raise UniPELTError(
            f"{path} is not a unipelt checkpoint: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(written by save_pretrained or `unipelt train`)"
        )
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UniPELTError(f"{config_file} is not valid JSON ({error}); the checkpoint is damaged") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("unipelt"), dict):
        raise UniPELTError(
            f'{config_file} is not a unipelt checkpoint config (no "unipelt" object); the file was replaced '
            "or edited"
        )
    return meta


def read_weights(path: str | Path) -> dict[str, Any]:
    file = Path(path) / WEIGHTS_NAME
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise UniPELTError(
            f"{file} cannot be read ({error}); the checkpoint is truncated or damaged"
        ) from error


def check_base(meta: dict[str, Any], model: Any, dims: dict[str, int], path: str | Path) -> None:
    expected = meta.get("base", {}) if isinstance(meta.get("base"), dict) else {}
    actual = {"model_type": model.config.model_type, **dims}
    diffs = [
        f"{k}: checkpoint {expected[k]!r}, model {v!r}"
        for k, v in actual.items()
        if k in expected and expected[k] != v
    ]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {path} was made for a different base model ({'; '.join(diffs)}). "
            "Load it onto the model it was trained from."
        )


def task_info(meta: dict[str, Any], base_kind: str) -> dict[str, Any]:
    """Kind, number of labels and label names of a task checkpoint, for either format."""
    info = meta.get("task")
    if isinstance(info, dict):
        return {k: info.get(k) for k in ("kind", "num_labels", "labels", "class_weights")}
    regression = meta.get("regression")
    kind = "regression" if regression else base_kind
    num_labels = (meta.get("base") or {}).get("num_labels") or None
    if kind == "regression":
        num_labels = 1
    return {"kind": kind, "num_labels": num_labels, "labels": meta.get("labels"), "class_weights": None}


def task_settings(meta: dict[str, Any], path: str | Path, base_kind: str) -> tuple[Any, dict[str, Any], Any]:
    """(UniPELT config, task info, head module paths) of a checkpoint's JSON, each checked: a value edited to
    nonsense is one error naming the file, not a TypeError from deep inside building the task."""
    config_file = Path(path) / CONFIG_NAME
    try:
        saved = meta["unipelt"]
        if isinstance(saved, dict):  # written before a field existed: what it was trained with
            saved = {**LEGACY_VALUES, **saved}
        config = UniPELTConfig.from_dict(saved)
        config.validate()
        info = task_info(meta, base_kind)
    except UniPELTError as error:
        raise UniPELTError(f"{config_file}: {error}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise UniPELTError(
            f"{config_file} holds a value of the wrong kind ({error}); the file was edited"
        ) from None
    checks = {
        "task kind": info["kind"] is None or isinstance(info["kind"], str),
        "number of labels": info["num_labels"] is None
        or (isinstance(info["num_labels"], int) and not isinstance(info["num_labels"], bool)),
        "label names": info["labels"] is None
        or (isinstance(info["labels"], list) and all(isinstance(x, str) for x in info["labels"])),
        "class weights": info["class_weights"] is None
        or (
            isinstance(info["class_weights"], list)
            and all(isinstance(x, (int, float)) for x in info["class_weights"])
        ),
        "head module paths": meta.get("head_modules") is None
        or (isinstance(meta["head_modules"], list) and all(isinstance(x, str) for x in meta["head_modules"])),
    }
    wrong = [name for name, ok in checks.items() if not ok]
    if wrong:
        raise UniPELTError(
            f"{config_file}: the {', '.join(wrong)} are not of the right kind; the file was edited"
        )
    return config, info, meta.get("head_modules") or None


def task_folders(path: str | Path) -> dict[str, Path]:
    """Task name -> checkpoint folder: one folder (task ``default`` or its saved name) or a multi-task index."""
    path = Path(path)
    index = path / TASKS_INDEX
    if index.is_file():
        try:
            names = json.loads(index.read_text(encoding="utf-8"))["tasks"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise UniPELTError(f"{index} is not a valid task index ({error})") from error
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise UniPELTError(
                f'{index} is not a valid task index: "tasks" must be a list of task names, not {names!r}'
            )
        return {str(name): path / str(name) for name in names}
    meta = read_checkpoint_config(path)
    name = (meta.get("task") or {}).get("name") if isinstance(meta.get("task"), dict) else None
    return {name or "default": path}


def load_task_state(task: Any, state: dict[str, Any], source: str) -> None:
    """Copy a checkpoint's tensors into a task, refusing missing, unexpected or mis-shaped entries."""
    own = task.added_state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source} does not match this model's UniPELT modules: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if shapes:
        raise CheckpointMismatchError(
            f"{source} has tensors of other shapes than this model (checkpoint vs model): {'; '.join(shapes[:5])}. "
            "Was it trained with another number of labels or another base model?"
        )
    targets = dict(task.named_parameters())
    targets.update(dict(task.named_buffers()))
    keys = {path: head_key(path) for path in task.head_paths}
    with torch.no_grad():
        for key, value in state.items():
            if key.startswith("head."):
                for path, module_key in keys.items():
                    if key.startswith(f"head.{path}."):
                        key = f"head.{module_key}.{key[len(path) + 6 :]}"
                        break
            targets[key].copy_(value)


def load_into(model: Any, name: str, path: str | Path, merge_plan: bool = False) -> Any:
    """Add task ``name`` to ``model`` (a UniPELTModel) from the task checkpoint at ``path``; see its load_task.

    The checkpoint is checked against the base model before anything is built, and a task that fails half-way
    (bad weights, a plan that does not apply) is removed again, so the model is left as it was."""
    meta = read_checkpoint_config(path)
    check_base(meta, model.base_model, model.dims, path)
    config, info, head_modules = task_settings(meta, path, model.base_kind)
    try:
        task = model.add_task(
            name,
            config,
            num_labels=info["num_labels"],
            kind=info["kind"],
            labels=info["labels"],
            head_modules=head_modules,
        )
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise UniPELTError(
            f"{Path(path) / CONFIG_NAME} describes a task that cannot be built ({error}); the file was edited"
        ) from None
    if info.get("class_weights") is not None:
        task.class_weights = torch.tensor(info["class_weights"])
    try:
        model.load_added_state_dict(read_weights(path), task=name, source=str(path))
        plan = plan_from_meta(meta)
        if plan is not None:
            apply_plan(model, name, plan, merge=bool(merge_plan))
    except BaseException:
        model.remove_task(name)
        raise
    return task
