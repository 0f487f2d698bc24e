"""Errors that the command line turns into one clear message instead of a traceback."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class UniPELTError(Exception):
    """Base class for every error a user can fix: a bad path, an unsupported model, bad data, a bad config."""


class UnsupportedModelError(UniPELTError):
    """The base model's architecture has no row in the architecture table."""


class CheckpointMismatchError(UniPELTError):
    """A checkpoint was made for a base model of another shape or type."""


class DataError(UniPELTError):
    """A data file is missing, empty, badly encoded, or lacks a column or label."""


class InputError(UniPELTError):
    """A request a server cannot answer: ``status`` is the HTTP status that says why (400, 404, 413, 422)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class DiskFullError(UniPELTError):
    """Saving failed because the disk is full, over quota or read-only (see :func:`unipelt.atomic.writing`)."""

    @classmethod
    def writing(cls, path: str | Path | None, code: int, advice: str = "") -> DiskFullError:
        """The one line for a failed write of ``path``: why, and the space left where it was written;
        ``advice`` (from a caller that knows how to continue) is appended."""
        reason = {errno.EDQUOT: "the disk quota is used up", errno.EROFS: "the file system is read-only"}
        where = Path(path) if path else Path.cwd()
        return cls(
            f"{reason.get(code, 'no space left on the device')} while writing {where} ({_free_space(where)} "
            f"free there){'; ' + advice if advice else ''}"
        )


def _free_space(path: Path) -> str:
    """Free space on the file system of ``path`` (or its nearest existing parent), e.g. ``12.5 MB``."""
    for folder in (path, *path.parents):
        try:
            free = float(shutil.disk_usage(folder).free)
        except OSError:
            continue
        for unit in ("bytes", "kB", "MB", "GB"):
            if free < 1000 or unit == "GB":
                return f"{free:.0f} bytes" if unit == "bytes" else f"{free:.1f} {unit}"
            free /= 1000
    return "an unknown amount"


class TrainingDivergedError(UniPELTError):
    """The training loss became non-finite or exploded, and the run was stopped (``--on-divergence stop``)."""


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 column``, ``2 columns``: a count with its noun, for messages."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"
