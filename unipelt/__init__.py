"""unipelt: gated LoRA, prefix-tuning and bottleneck adapters (UniPELT, Mao et al. 2022) for Transformers.

Imports are lazy so that light modules (data, metrics) can be used without loading torch/transformers.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "UniPELTConfig": "unipelt.config",
    "PRESETS": "unipelt.config",
    "UniPELTModel": "unipelt.model",
    "add_unipelt": "unipelt.model",
    "load_unipelt": "unipelt.model",
    "UniPELTError": "unipelt.errors",
    "UnsupportedModelError": "unipelt.errors",
    "CheckpointMismatchError": "unipelt.errors",
    "DataError": "unipelt.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unipelt' has no attribute {name!r}")
