"""A hard-concrete gate (Louizos et al. 2018): a relaxed binary switch per site, learnt to be open or closed.

Unlike the sigmoid gate it does not read the input: each site (one sub-module of one layer) has a learnt
``log_alpha``. Training draws ``s = sigmoid((log u - log(1 - u) + log_alpha) / temperature)`` with
``u ~ U(0, 1)`` per example and site, stretches it to ``(gamma, zeta) = (-0.1, 1.1)`` and clips to [0, 1],
so a gate is exactly 0 or exactly 1 with non-zero probability and the sample is still differentiable in
``log_alpha``. The temperature is annealed from soft to sharp by the training schedule (``--method autopelt``).
Evaluation uses the deterministic gate ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``, which is
exactly 0 (closed: the unit can be pruned) or a constant (the unit's gate can be folded into its weights).

``probability_open()`` is ``P(z > 0)``, differentiable, the expected number of open units (the expected L0
norm); the AutoPELT loss weighs it by each unit's measured latency and adds its mean as the sparsity term.
"""

from __future__ import annotations

import math

import torch
from torch import nn

GAMMA, ZETA = -0.1, 1.1


class HardConcreteGate(nn.Module):
    def __init__(self, sites: list[str], init_log_alpha: float = 2.5, temperature: float = 2 / 3) -> None:
        super().__init__()
        self.sites = list(sites)
        self.log_alpha = nn.Parameter(torch.full((len(self.sites),), float(init_log_alpha)))
        self.temperature = temperature  # set by the training schedule (unipelt.autopelt.training)
        # False: the deterministic gate in training too; the schedule turns sampling off for its warm-up
        self.sampling = True

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> dict[str, torch.Tensor]:
        shape = x.shape[:2] if pooling == "token" else x.shape[:1]
        if self.training and self.sampling:
            u = torch.rand(*shape, len(self.sites), device=x.device).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / self.temperature)
        else:
            s = torch.sigmoid(self.log_alpha).expand(*shape, len(self.sites))
        z = (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0).to(x.dtype)
        return {site: z[..., i] for i, site in enumerate(self.sites)}

    def deterministic(self) -> torch.Tensor:
        """The evaluation gate per site: exactly 0 when closed."""
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def probability_open(self) -> torch.Tensor:
        """P(z > 0) per site under the current temperature (the expected L0 norm of the gate)."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log(-GAMMA / ZETA))

    def subset(self, sites: list[str]) -> HardConcreteGate:
        rows = [self.sites.index(site) for site in sites]
        gate = HardConcreteGate(list(sites), temperature=self.temperature).to(self.log_alpha.device)
        with torch.no_grad():
            gate.log_alpha.copy_(self.log_alpha[rows])
        return gate
