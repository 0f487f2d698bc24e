"""Turning per-token gate values into what a sub-module multiplies: mask-aware means and broadcast shapes."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the token axis of x (B, T, ...) counting only positions where mask (B, T) is non-zero.

    The UniPELT reference code averages over padding too, so adding padding to a batch changes every gate;
    averaging over real tokens only keeps a gate a property of the example, not of the batch it is in.
    """
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def broadcastable(gate: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float:
    """Shape a (B,) or (B, T) gate to multiply a (B, T, d) activation; 1.0 when ungated."""
    if gate is None:
        return 1.0
    if gate.dtype != like.dtype:
        gate = gate.to(like.dtype)
    return gate.view(-1, 1, 1) if gate.dim() == 1 else gate.unsqueeze(-1)
