"""Gate initialisation with a chosen spread, a hyper-parameter the UniPELT paper leaves implicit.

PyTorch's default Linear init gives gate logits whose spread grows with the hidden size; drawing the gate
weights from N(0, std) with zero biases starts every sigmoid gate near 0.5 and a softmax router near uniform,
and ``std`` sets how far the inputs move them at the first step (``TrainConfig.gate_init_std``).
"""

from __future__ import annotations

import torch
from torch import nn

from unipelt.gates import GATE_TYPES


def init_gate_weights(model: nn.Module, std: float) -> int:
    """Re-draw the weights of every gate of ``model`` from N(0, std), biases zero; returns the gates touched."""
    touched = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, GATE_TYPES):
                continue
            touched += 1
            for linear in (m for m in module.modules() if isinstance(m, nn.Linear)):
                nn.init.normal_(linear.weight, 0.0, std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
    return touched
