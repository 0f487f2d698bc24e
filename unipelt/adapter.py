"""Bottleneck adapter (Houlsby et al. 2019) after the feed-forward block: h + g * up(act(down(h))).

It sits on the output of the feed-forward block's last projection, before dropout, the residual sum and
layer norm, which is where the UniPELT reference code places it. ``up`` starts at zero, so the adapter is
the identity at initialisation. Its sigmoid gate, when used, reads the adapter's own input, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from unipelt.gates import SigmoidGate, broadcastable

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden_size: int, bottleneck: int, activation: str = "relu", gated: bool = False):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.gate = SigmoidGate(hidden_size, ["adapter"]) if gated else None

    def own_gate(self, h: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor | None:
        """The adapter's sigmoid gate from its own input, or None when the gate comes from elsewhere."""
        return None if self.gate is None else self.gate(h, mask, pooling)["adapter"]

    def forward(self, h: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return h + broadcastable(gate, h) * self.up(self.act(self.down(h)))
