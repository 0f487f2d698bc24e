"""The paper's gate (Mao et al. 2022, section 3): sigmoid(Linear(d, n)(x)), one output per site.

With ``pooling="mean"`` the per-token gate is averaged over the real tokens of each example (see
:func:`unipelt.gates.pooling.masked_mean`). With ``pooling="token"`` every token keeps its own gate, which is
what a causal decoder needs: a token's gate must not depend on later tokens, and KV-cached generation then
matches uncached decoding exactly. All sites of a layer share one Linear, so they cost one matmul.

``normalise=True`` makes the gate read the RMS-normalised state and start with logits of a fixed small spread
(see :mod:`unipelt.gates.normalise`): what pre-norm decoders need; False is the paper's gate.
"""

from __future__ import annotations

import torch
from torch import nn

from unipelt.gates.normalise import init_normalised_linear, rms_normalise
from unipelt.gates.pooling import masked_mean


class SigmoidGate(nn.Module):
    def __init__(self, hidden_size: int, sites: list[str], normalise: bool = False) -> None:
        super().__init__()
        self.sites = list(sites)
        self.normalise = normalise
        self.linear = nn.Linear(hidden_size, len(self.sites))
        if normalise:
            init_normalised_linear(self.linear)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """The state the gate's Linear reads: ``x`` itself, or ``x`` divided by its per-token RMS."""
        return rms_normalise(x) if self.normalise else x

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> dict[str, torch.Tensor]:
        return self.named(self.values(self.linear(self.view(x)), mask, pooling))

    # A gate reading the raw state is one more linear map of it, so a layer computes its logits in the same
    # matmul as other projections of that state (LoRA's down projections, the adapter's) and hands them to
    # ``values``. A normalised gate reads another tensor (the state over its RMS) and runs on its own.

    @property
    def joinable(self) -> bool:
        """Whether the logits are W x + b of the raw state (not normalised), so they can share a matmul."""
        return not self.normalise

    def values(self, logits: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
        """Gate values (B, T, n), or pooled (B, n), from the logits W x + b."""
        gates = torch.sigmoid(logits)
        return masked_mean(gates, mask) if pooling == "mean" else gates

    def named(self, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.sites, gates.unbind(-1)))  # one operation for all sites

    def subset(self, sites: list[str]) -> SigmoidGate:
        """The same gate computing only ``sites`` (independent sigmoids: the others' values are unchanged)."""
        rows = [self.sites.index(site) for site in sites]
        gate = SigmoidGate(self.linear.in_features, list(sites), self.normalise).to(self.linear.weight.device)
        with torch.no_grad():
            gate.linear.weight.copy_(self.linear.weight[rows])
            gate.linear.bias.copy_(self.linear.bias[rows])
        return gate
