"""Errors that the command line turns into one clear message instead of a traceback."""


class UniPELTError(Exception):
    """Base class for every error a user can fix: a bad path, an unsupported model, bad data, a bad config."""


class UnsupportedModelError(UniPELTError):
    """The base model's architecture has no row in the architecture table."""


class CheckpointMismatchError(UniPELTError):
    """A checkpoint was made for a base model of another shape or type."""


class DataError(UniPELTError):
    """A data file is missing, empty, badly encoded, or lacks a column or label."""


class TrainingDivergedError(UniPELTError):
    """The training loss became non-finite or exploded, and the run was stopped (``--on-divergence stop``)."""


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 column``, ``2 columns``: a count with its noun, for messages."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"
