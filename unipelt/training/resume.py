"""Resuming a killed run: which Trainer checkpoint is complete enough to continue from.

The Trainer writes a checkpoint as several files in turn (our added weights, then optimizer, scheduler, RNG
state and trainer_state.json) straight into RUN/trainer/checkpoint-N, and on resume takes the folder with the
highest N. A kill in the middle of a save therefore leaves a half-written folder that is taken as the latest.
So every checkpoint gets a completion mark once all of its files are on disk: a JSON list of its files with
their sizes and SHA-256 digests, written last and atomically. On resume a checkpoint counts only when the mark
is there and every file still matches it; newer checkpoints that do not are removed (a later save of the same
step would otherwise mix old and new files) and the user is told which checkpoint the run continues from.

The files are only hashed here, never unpickled: the Trainer's own resume path loads them, with
``weights_only`` loading.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from unipelt.checkpoint import write_json

COMPLETE_NAME = "unipelt_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# what the Trainer needs to continue exactly where it stopped (scaler.pt only with fp16, so not required)
REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_NAME)


def mark_complete(folder: str | Path, progress: dict[str, float] | None = None) -> None:
    """Flush every file of a finished checkpoint to disk, then record them (size, digest) in its mark, with
    the run's ``progress`` up to this checkpoint (training seconds, summed step losses) for a resume."""
    folder = Path(folder)
    files = {}
    for path in _files(folder):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": _digest(path)}
    write_json(folder / COMPLETE_NAME, {"files": files, **({"progress": progress} if progress else {})})


def read_progress(checkpoint: str | Path) -> dict[str, float]:
    """The run's progress recorded in a checkpoint's completion mark (empty for a mark without one)."""
    try:
        mark = json.loads((Path(checkpoint) / COMPLETE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    progress = mark.get("progress") if isinstance(mark, dict) else None
    if not isinstance(progress, dict):
        return {}
    return {
        k: float(v) for k, v in progress.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from (None when it can): no mark, or files that changed."""
    folder = Path(folder)
    mark = folder / COMPLETE_NAME
    if not mark.is_file():
        present = ", ".join(str(p.relative_to(folder)) for p in _files(folder)) or "nothing"
        return f"incomplete, its save was interrupted (holds {present})"
    try:
        files = json.loads(mark.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its {COMPLETE_NAME} is damaged ({error})"
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, {expected.get('bytes')} were written"
        if _digest(path) != expected.get("sha256"):
            return f"{name} was changed after it was written"
    return None


def checkpoints(trainer_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-N folder, newest first."""
    trainer_dir = Path(trainer_dir)
    if not trainer_dir.is_dir():
        return []
    found = []
    for path in trainer_dir.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def resume_checkpoint(trainer_dir: str | Path, log: Any = None, remove: bool = True) -> Path | None:
    """The newest complete checkpoint (None when there is none); incomplete or damaged ones are removed.

    Each decision is printed (to ``log``, standard error by default; nothing when ``log`` is False) with the
    checkpoint it concerns.
    """
    log = sys.stderr if log is None else log
    chosen = None
    for _, folder in checkpoints(trainer_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            if chosen is None:
                chosen = folder
            continue
        if log:
            print(f"unipelt: skipping {folder}: {problem}; removing it", file=log)
        if remove:
            shutil.rmtree(folder, ignore_errors=True)
    if log and chosen is not None:
        print(f"unipelt: resuming from {chosen}", file=log)
    elif log and Path(trainer_dir).is_dir():
        print(f"unipelt: no complete checkpoint in {trainer_dir}; starting from the beginning", file=log)
    return chosen


def prepare_resume(run_dir: Path, trainer_dir: Path, main_process: bool = True) -> Path | None:
    """Everything ``--resume`` does before training continues; returns the checkpoint to continue from.

    The main process removes what a kill left half-written (incomplete checkpoints, temporary files of atomic
    writes) and the log records of steps the run will redo; other processes of a data-parallel run only
    choose the same checkpoint.
    """
    if not main_process:
        return resume_checkpoint(trainer_dir, log=False, remove=False)
    remove_stale_temporaries(run_dir)
    chosen = resume_checkpoint(trainer_dir)
    trim_log(run_dir / "log.jsonl", step_of(chosen) or 0)
    return chosen


def finished_run(run_dir: Path, config: Any) -> dict[str, Any]:
    """``--resume`` of a run that already wrote metrics.json (it may have been killed while cleaning up): its
    metrics, with the Trainer checkpoints it no longer needs removed."""
    from unipelt.training.run_files import read_json

    metrics = read_json(run_dir / "metrics.json", "metrics of the finished run")
    if not isinstance(metrics, dict):
        from unipelt.errors import UniPELTError

        raise UniPELTError(f"{run_dir / 'metrics.json'} is not a metrics object; the file was edited")
    if not getattr(config, "keep_trainer_checkpoints", False):
        shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    remove_stale_temporaries(run_dir)
    print(f"unipelt: {run_dir} has already finished; nothing to resume", file=sys.stderr)
    return metrics


def stopped_early(checkpoint: str | Path) -> bool:
    """Whether training had already been told to stop at this checkpoint (early stopping, or the divergence
    guard): a resume from it must not train on. The Trainer restores that flag only after its loop has begun,
    so an early-stopped run killed during its final writes would otherwise train one more epoch."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        control = state["stateful_callbacks"]["TrainerControl"]["args"]
        return bool(control.get("should_training_stop"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def step_of(checkpoint: str | Path | None) -> int | None:
    match = _CHECKPOINT.match(Path(checkpoint).name) if checkpoint else None
    return int(match.group(1)) if match else None


def _end_of_run(record: dict[str, Any]) -> bool:
    """The records a run writes once, when training ends: the Trainer's summary and the final evaluations."""
    return "train_runtime" in record or any(key.startswith(("valid_", "test_")) for key in record)


def trim_log(log_file: str | Path, last_step: int) -> None:
    """Drop the log records written after ``last_step`` and the end-of-run records: the resumed run logs
    those again, so a run's log holds each step and one summary."""
    log_file = Path(log_file)
    if not log_file.is_file():
        return
    kept = []
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if (
            isinstance(record, dict)
            and isinstance(record.get("step"), int)
            and record["step"] <= last_step
            and not _end_of_run(record)
        ):
            kept.append(line)
    from unipelt.checkpoint import atomic_write_text

    atomic_write_text(log_file, "".join(line + "\n" for line in kept))


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Remove the temporary folders and files of atomic writes that a kill interrupted (``.NAME.tmp-*``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for path in run_dir.glob(".*"):
        if ".tmp-" in path.name or ".old-" in path.name:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        elif path.is_file() and re.match(r"^\.[^.].*\.[A-Za-z0-9_]{8}$", path.name):
            path.unlink(missing_ok=True)  # atomic_file's mkstemp sibling, e.g. .metrics.json.k3j9_x2a


def continue_advice(run_dir: str | Path, code: int) -> str:
    """What to do after saving failed on a full (``code`` ENOSPC/EDQUOT) or read-only (EROFS) disk: which
    complete checkpoint is intact, and that ``--resume`` continues from it."""
    action = "make the file system writable" if code == errno.EROFS else "free some space"
    for _, folder in checkpoints(Path(run_dir) / "trainer"):
        if checkpoint_problem(folder) is None:
            return (
                f"the last complete checkpoint, {folder}, is intact: {action} and run the same command with "
                "--resume to continue from it"
            )
    return f"no checkpoint was complete yet: {action} and run the same command again"
