"""Training and evaluation on GLUE or on the user's own files, built on the Hugging Face Trainer.

The Trainer does what it already does well (the loop, progress bar, schedules, clipping, mixed precision,
DDP under ``torchrun``/``accelerate launch``, checkpoints, exact resume, early stopping, TensorBoard); this
package adds what UniPELT needs on top of it, one concern per module:

* :mod:`~unipelt.training.config`: the method list, default learning rates and :class:`TrainConfig`;
* :mod:`~unipelt.training.trainer`: the Trainer subclass (per-group learning rates, gate penalties,
  added-weights-only checkpoints), its settings and callbacks;
* :mod:`~unipelt.training.run`: one run, from data to a finished run folder (:func:`train`);
* :mod:`~unipelt.training.seeds`: several seeds and their mean and spread (:func:`train_seeds`).

Names are imported on first use, like the package root's: the command line reads the method list to build its
parser without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unipelt.training.config import DEFAULT_LR, METHODS, TrainConfig
    from unipelt.training.run import train
    from unipelt.training.seeds import summarise, train_seeds

_EXPORTS = {
    "DEFAULT_LR": "unipelt.training.config",
    "METHODS": "unipelt.training.config",
    "TrainConfig": "unipelt.training.config",
    "train": "unipelt.training.run",
    "summarise": "unipelt.training.seeds",
    "train_seeds": "unipelt.training.seeds",
}

__all__ = ["DEFAULT_LR", "METHODS", "TrainConfig", "summarise", "train", "train_seeds"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unipelt.training' has no attribute {name!r}")
