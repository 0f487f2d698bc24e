"""LoRA (Hu et al. 2021): a trainable low-rank update B·A added to a frozen projection.

The frozen projection is not replaced or wrapped; a forward hook adds ``gate * B(A(x))`` to its output,
so the base model's parameter names and code stay untouched. B starts at zero, so the model is exactly
the base model at initialisation. Ungated, the update is scaled by alpha / rank; gated, the gate replaces
that scaling, as in the UniPELT reference code.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRA(nn.Module):
    """The low-rank pair for one projection, or for one slice of a fused q/k/v projection."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """A(dropout(x)): the rank-r activation. The caller scales it (gate or alpha / rank) and adds B(.) into
        the projection's output with one addmm, so no full-width temporary is made."""
        return self.lora_A(self.dropout(x))

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense (out, in) matrix, scaled by alpha / rank: what merging adds to W."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def projection_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or of a GPT-2 style Conv1D (whose weight is stored transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if weight is not None and type(module).__name__ == "Conv1D":
        return weight.shape[0], weight.shape[1]
    raise TypeError(f"LoRA supports Linear and Conv1D projections, not {type(module).__name__}")


@torch.no_grad()
def merge_into(module: nn.Module, delta: torch.Tensor, index: int, parts: int) -> None:
    """Add a dense (out_slice, in) update into a Linear or Conv1D weight, in place."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        width = weight.shape[0] // parts
        weight[index * width : (index + 1) * width] += delta.to(weight.dtype)
    else:  # Conv1D keeps (in, out)
        width = weight.shape[1] // parts
        weight[:, index * width : (index + 1) * width] += delta.T.to(weight.dtype)
