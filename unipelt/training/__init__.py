"""Training and evaluation on GLUE or on the user's own files, built on the Hugging Face Trainer.

The Trainer does what it already does well (the loop, progress bar, schedules, clipping, mixed precision,
DDP under ``torchrun``/``accelerate launch``, checkpoints, exact resume, early stopping, TensorBoard); this
package adds what UniPELT needs on top of it, one concern per module:

* :mod:`~unipelt.training.config`: the method list, default learning rates and :class:`TrainConfig`;
* :mod:`~unipelt.training.trainer`: the Trainer subclass (per-group learning rates, gate penalties,
  added-weights-only checkpoints), its settings and callbacks;
* :mod:`~unipelt.training.run`: one run, from data to a finished run folder (:func:`train`);
* :mod:`~unipelt.training.seeds`: several seeds and their mean and spread (:func:`train_seeds`).
"""

from unipelt.training.config import DEFAULT_LR, METHODS, TrainConfig
from unipelt.training.run import train
from unipelt.training.seeds import summarise, train_seeds

__all__ = ["DEFAULT_LR", "METHODS", "TrainConfig", "summarise", "train", "train_seeds"]
