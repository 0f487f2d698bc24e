"""Gates that decide, per layer and per input, how much each sub-module contributes.

Two forms (Mao et al. 2022, section 3):

- ``SigmoidGate``: the paper's gate, sigmoid(Linear(d, n)(x)), one output per site. With ``pooling="mean"``
  the per-token gate is averaged over the real tokens of each example (the reference code averages over
  padding too, so a padded batch changes the gate; we use the attention mask). With ``pooling="token"``
  every token keeps its own gate, which is what a causal decoder needs: a token's gate must not depend
  on later tokens, and KV-cached generation then matches uncached decoding exactly.
- ``SoftmaxRouter``: an MLP (d -> hidden -> ReLU -> n) on the mask-pooled input, softmax with a temperature
  over the enabled sub-modules, so they compete for one unit of weight.

Both return ``{site: tensor}`` with shape (B,) for pooled gates or (B, T) for per-token gates.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the token axis of x (B, T, ...) counting only positions where mask (B, T) is non-zero."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class SigmoidGate(nn.Module):
    """One sigmoid gate per site, all sites of a layer in one Linear so they cost one matmul."""

    def __init__(self, hidden_size: int, sites: list[str]) -> None:
        super().__init__()
        self.sites = list(sites)
        self.linear = nn.Linear(hidden_size, len(self.sites))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> dict[str, torch.Tensor]:
        gates = torch.sigmoid(self.linear(x))  # (B, T, n)
        if pooling == "mean":
            gates = masked_mean(gates, mask)  # (B, n)
        return {site: gates[..., i] for i, site in enumerate(self.sites)}


class SoftmaxRouter(nn.Module):
    """Per-layer router: weights over (lora, prefix, adapter) that sum to one."""

    def __init__(
        self, hidden_size: int, sites: list[str], hidden: int = 64, temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.sites = list(sites)
        self.temperature = temperature
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden), nn.ReLU(), nn.Linear(hidden, len(self.sites))
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> dict[str, torch.Tensor]:
        pooled = masked_mean(x, mask) if pooling == "mean" else x
        weights = torch.softmax(self.mlp(pooled) / self.temperature, dim=-1)
        return {site: weights[..., i] for i, site in enumerate(self.sites)}


def broadcastable(gate: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float:
    """Shape a (B,) or (B, T) gate to multiply a (B, T, d) activation; 1.0 when ungated."""
    if gate is None:
        return 1.0
    gate = gate.to(like.dtype)
    return gate.view(-1, 1, 1) if gate.dim() == 1 else gate.unsqueeze(-1)
