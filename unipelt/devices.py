"""Where a model runs: the device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), its dtype and the number
of CPU threads, read from the command line's ``--device``, ``--dtype`` and ``--threads`` or a run's config.

``auto`` is the first CUDA device when torch sees one, else the CPU. Asking for a device this machine does not
have is one clear error, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unipelt.errors import UniPELTError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | None = "auto") -> torch.device:
    """The torch device for ``spec``; a UniPELTError naming what is available when it is not there."""
    name = (spec or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise UniPELTError("--device mps: this machine has no Apple MPS device; use --device cpu or auto")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UniPELTError(
                f"--device {spec}: no CUDA device is available on this machine; use --device cpu or auto"
            )
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= count):
            raise UniPELTError(
                f"--device {spec}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return torch.device(name)
    raise UniPELTError(f"--device {spec!r} is not a device; choose one of {', '.join(DEVICES)}")


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype of ``fp32`` / ``bf16`` / ``fp16``; None keeps the model's own."""
    if name is None:
        return None
    try:
        return DTYPES[name]
    except KeyError:
        raise UniPELTError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}") from None


@dataclass(frozen=True)
class Placement:
    """A device and an optional dtype for a model (None: keep the dtype it was loaded in)."""

    device: torch.device
    dtype: torch.dtype | None = None

    def place(self, model: nn.Module) -> nn.Module:
        """Move (and cast) ``model`` in place and return it."""
        return model.to(device=self.device, dtype=self.dtype)


def placement(device: str | None = "auto", dtype: str | None = None, threads: int | None = None) -> Placement:
    """Check the device and dtype asked for, set the CPU threads, and return where models should go."""
    if threads is not None:
        if threads < 1:
            raise UniPELTError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return Placement(resolve_device(device), resolve_dtype(dtype))
