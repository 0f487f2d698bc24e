"""A softmax router: the enabled sub-modules of a layer compete for one unit of weight.

An MLP (d -> hidden -> ReLU -> n) on the mask-pooled layer input, softmax with a temperature. It is our
extension of the paper's independent sigmoid gates; the site names are the module kinds (``lora``,
``prefix``, ``adapter``, ...), so every LoRA projection of a layer shares the ``lora`` weight. With
``normalise=True`` it reads the RMS-normalised state (see :mod:`unipelt.gates.normalise`).
"""

from __future__ import annotations

import torch
from torch import nn

from unipelt.gates.normalise import init_normalised_linear, rms_normalise
from unipelt.gates.pooling import masked_mean


class SoftmaxRouter(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        sites: list[str],
        hidden: int = 64,
        temperature: float = 1.0,
        normalise: bool = False,
    ) -> None:
        super().__init__()
        self.sites = list(sites)
        self.normalise = normalise
        self.temperature = temperature
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden), nn.ReLU(), nn.Linear(hidden, len(self.sites))
        )
        if normalise:  # outputs start near uniform (1/n each) at any width
            init_normalised_linear(self.mlp[2])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> dict[str, torch.Tensor]:
        if self.normalise:
            x = rms_normalise(x)
        pooled = masked_mean(x, mask) if pooling == "mean" else x
        weights = torch.softmax(self.mlp(pooled) / self.temperature, dim=-1)
        return {site: weights[..., i] for i, site in enumerate(self.sites)}
