"""The run folder while a run writes it: an OS lock held by the writer, and what an existing folder holds.

The lock is ``fcntl.flock`` on RUN/run.lock, taken without waiting: a second ``unipelt train`` on the same
``--out`` is refused in one line that names the folder and the holder's PID (written into the file). The
kernel releases the lock when the holder exits in any way, ``kill -9`` included, so a lock left by a killed
run never blocks ``--resume``. The file itself stays (deleting it would let two writers lock two different
files of one name).

A folder that already holds a run is only written again on purpose: a finished run (metrics.json) or an
unfinished or diverged one is refused without ``--resume``, with what to do instead.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from unipelt.errors import UniPELTError
from unipelt.training.guards import DIVERGENCE_NAME

LOCK_NAME = "run.lock"
FRESH, FINISHED, UNFINISHED, DIVERGED = "fresh", "finished", "unfinished", "diverged"


class RunLockedError(UniPELTError):
    """Another process is writing the run folder."""


def main_process() -> bool:
    """Whether this process writes the run folder: under torchrun only rank 0 does."""
    return int(os.environ.get("RANK", "0")) == 0


class RunFolder:
    """RUN while one run writes it. ``with RunFolder(path) as folder:`` locks it when it exists already;
    :meth:`create` makes (and locks) it once the run's data has been read and checked. ``lock=False`` (ranks
    other than 0 of a data-parallel run) takes no lock: those processes share the writer's folder."""

    def __init__(self, path: str | Path, lock: bool = True) -> None:
        self.path = Path(path)
        self.use_lock = lock
        self._handle = None

    def __enter__(self) -> RunFolder:
        if self.path.is_dir():
            self._lock()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release()

    def create(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        return self.path

    def _lock(self) -> None:
        if not self.use_lock or self._handle is not None:
            return
        handle = open(self.path / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockedError(
                f"{self.path} is being written by another run (PID {holder}); wait for it to end, or give "
                "another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def state(self) -> str:
        """``fresh`` (nothing of a run yet), ``finished``, ``diverged`` or ``unfinished``."""
        if (self.path / "metrics.json").is_file():
            return FINISHED
        if (self.path / DIVERGENCE_NAME).is_file():
            return DIVERGED
        if any((self.path / name).exists() for name in ("config.json", "trainer", "checkpoint")):
            return UNFINISHED
        return FRESH

    def refuse_without_resume(self) -> None:
        """One line on what the folder holds and how to continue or start afresh (no ``--resume`` given)."""
        state = self.state()
        if state == FINISHED:
            raise UniPELTError(f"{self.path} already holds a finished run; choose another --out or delete it")
        if state == DIVERGED:
            raise UniPELTError(
                f"{self.path} holds a run that diverged (see {self.path / DIVERGENCE_NAME}); start afresh with "
                "another --out (or delete the folder), e.g. at a lower --lr; --resume trains it again with its "
                "saved configuration"
            )
        if state == UNFINISHED:
            raise UniPELTError(
                f"{self.path} holds an unfinished run (no metrics.json); continue it with --resume, or start "
                "afresh with another --out (or delete the folder)"
            )
