"""What every verb of the ``unipelt`` command shares: argument types, and one-line errors for the user's mistakes.

Every error a user can fix (bad path, bad data, unsupported model, mismatched checkpoint) is raised as
:class:`~unipelt.errors.UniPELTError` and printed by :func:`run_verb` as one ``unipelt: error:`` line with exit
status 2; only real bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from unipelt.atomic import DISK_ERRNOS
from unipelt.data import GLUE_TASKS
from unipelt.errors import DiskFullError, UniPELTError

GLUE_HELP = f"GLUE task: {', '.join(GLUE_TASKS)}"


def int_list(text: str) -> list[int]:
    """``1,2,3`` as a list of integers (for ``--seeds``)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, booleans, lists), else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def add_device_flags(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--device``, ``--threads`` and (where a model may be cast) ``--dtype`` of a verb that loads a model."""
    parser.add_argument(
        "--device",
        default="auto",
        help="where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    if dtype:
        parser.add_argument(
            "--dtype",
            choices=["fp32", "bf16", "fp16"],
            default=None,
            help="cast the model to this dtype (default: as saved, float32)",
        )


def placement_of(args: argparse.Namespace) -> Any:
    """The :class:`~unipelt.devices.Placement` of a verb's device flags; sets the CPU threads. A device this
    machine does not have is a one-line error before any model loads."""
    from unipelt.devices import placement  # late: torch loads only once a verb runs, not for --help

    return placement(args.device, getattr(args, "dtype", None), args.threads)


def add_compile_flag(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--compile [BACKEND]``: run the model's single-task forwards through ``torch.compile`` (see
    unipelt.compiling); the value is the backend name, ``inductor`` when the flag is given alone. ``help``
    replaces the verbs' help text (the benchmarks time compiled twins instead)."""
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help=help
        or "compile the model with torch.compile (backend: inductor unless named; the first batches of "
        "each shape take longer; mixed-task batches stay eager)",
    )


def run_verb(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one verb and return its exit status: 2 with one line on stderr for a user's error, 130 on Ctrl-C."""
    try:
        return func(args)
    except UniPELTError as error:
        print(f"unipelt: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head or similar
        sys.stderr.close()
        return 0
    except OSError as error:  # a full or read-only disk under a write that no verb explains further
        if error.errno not in DISK_ERRNOS:
            raise
        print(f"unipelt: error: {DiskFullError.writing(error.filename, error.errno)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unipelt: interrupted", file=sys.stderr)
        return 130
