"""What a training run does to a freshly built model before its first step.

Two things, both decided by the run's :class:`~unipelt.training.TrainConfig`:

- ``regression_bias="label-mean"``: a regression head's output bias starts at the training labels' mean (every
  method, ``ft`` included) instead of at zero, so the head does not start 2.7 away from STS-B's labels. Measured
  on STS-B at K = 100 with the tuned rates it was *worse* (APL 30.9 vs 48.4, adapter 28.9 vs 37.8 Spearman,
  seed 1; benchmarks/RESULTS.md): with the offset gone the loss can only fall through the input-dependent part,
  whose gradient is scaled by the head's tiny initial weights, while the zero start's large error grows the head
  first. So it is opt-in; the default is ``zero`` (at K = 1000 it changed nothing beyond seed noise either),
  except for ``--method autopelt``, whose runs leave the mean more often with it, and ``--method prefix``, whose
  only path to the zero start's constant offset is a prefix that takes the attention (their method objects'
  ``label_mean_start``, :mod:`unipelt.methods`).
- ``backbone_dropout``: the dropout probability of the frozen base model (hidden, attention and its own
  classifier dropout). The base model's dropout RNG is a quarter of a CPU training step; the added modules
  (LoRA dropout, the prefix MLP) keep their own settings, since they are built by UniPELT after this runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.heads import find_head_paths, head_key, output_layer


def regression_output_layer(model: nn.Module, unipelt: nn.Module | None) -> nn.Linear:
    """The one-output Linear of the run's regression head: the task's private head copy under UniPELT, the
    model's own head for full fine-tuning."""
    if unipelt is not None:
        head = unipelt._task().head
    else:
        from unipelt.inject.architectures import architecture_for

        paths = find_head_paths(model, list(architecture_for(model).head), explicit=False)
        head = nn.ModuleDict({head_key(path): model.get_submodule(path) for path in paths})
    found = output_layer(head, 1)
    if found is None:
        raise UniPELTError("cannot find the one-output layer of the regression head to set its bias")
    return found[2]


def init_regression_bias(layer: nn.Linear, labels: Sequence[float]) -> float:
    """Set the output bias to the mean of ``labels`` and return that mean."""
    if layer.bias is None:
        raise UniPELTError("the regression head's output layer has no bias to start at the label mean")
    if not labels:
        raise UniPELTError("no training labels to start the regression head at")
    mean = float(sum(float(label) for label in labels) / len(labels))
    with torch.no_grad():
        layer.bias.fill_(mean)
    return mean


# Config fields that hold the base model's dropout probabilities, across the architectures we support.
DROPOUT_CONFIG_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "seq_classif_dropout",
)


def set_backbone_dropout(model: nn.Module, probability: float) -> int:
    """Set every dropout module of the (not yet wrapped) base model to ``probability``, and the config fields
    that describe them, so a saved full model says what it trained with. Returns how many modules changed.

    Attention dropout in Transformers reads ``self.dropout.p`` (or the config) at call time, so setting the
    module covers the attention-function path too."""
    if not 0.0 <= probability < 1.0:
        raise UniPELTError(f"backbone dropout must be in [0, 1), got {probability}")
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
            changed += 1
    config = getattr(model, "config", None)
    for name in DROPOUT_CONFIG_FIELDS:
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, probability)
    return changed


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing of a base model or a UniPELT model (gates and prefix see the recomputed
    forward exactly as the first one: the per-call state lives in context variables)."""
    from unipelt.model import UniPELTModel

    if isinstance(model, UniPELTModel):
        model.gradient_checkpointing_enable({"use_reentrant": False})
    elif getattr(model, "supports_gradient_checkpointing", False):
        enable = getattr(
            model, "activation_checkpointing_enable", None
        )  # the newer name in transformers 5.2x
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise UniPELTError(f"{type(model).__name__} does not support gradient checkpointing")
