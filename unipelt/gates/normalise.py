"""The view of the hidden state that a gate reads: raw, or RMS-normalised (no parameters).

The paper's gates read a post-LayerNorm BERT state, whose norm is about sqrt(d) in every layer, so a gate's
logits start small and move smoothly. A pre-norm decoder (LLaMA, GPT-2, ...) never normalises its residual
stream, and the states a gate can read there (a feed-forward block's output, or the layer input scaled by a
norm's learnt weights) reach norms in the thousands in deep layers: a gate reading them saturates at 0 or 1
per token before training starts. Dividing each token's state by its root mean square gives every gate an
input of norm sqrt(d) on any architecture, any layer and any residual scale; a gate is then a function of
the direction of the state, which is what the sigmoid of a linear projection can use anyway.

``gate_input`` in the config chooses: ``"raw"`` (the paper's gate, as encoders and older checkpoints use it)
or ``"rms"``; ``"auto"`` means ``"rms"`` for the architectures marked ``pre_norm`` in the table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6
# Initial spread of a normalised gate's logit (std over random inputs): 0.2 keeps sigmoid gates of any
# width in about [0.35, 0.65] at the start (|logit| < 3 std), near their initial value 0.5, and still
# input-dependent.
INIT_LOGIT_STD = 0.2


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """x / rms(x) over the last axis, computed in float32 so a half-precision state cannot overflow."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), eps=EPS)  # one operation
    return F.rms_norm(x.float(), (x.shape[-1],), eps=EPS).to(x.dtype)


def init_normalised_linear(linear: nn.Linear) -> None:
    """Weights N(0, INIT_LOGIT_STD / sqrt(d)) and zero bias: on an input of rms 1 the logit's std is
    INIT_LOGIT_STD whatever the width d, and its mean 0 (the gate's initial value)."""
    with torch.no_grad():
        nn.init.normal_(linear.weight, 0.0, INIT_LOGIT_STD / math.sqrt(linear.in_features))
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
