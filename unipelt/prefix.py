"""Prefix-tuning (Li & Liang 2021): P trainable key/value vectors per layer that every query attends to.

Training goes through the reparameterisation the paper uses, embedding (P, d) -> Linear(d, 512) -> tanh
-> Linear(512, 2 * layers * kv_dim), which is far more stable than learning the vectors directly; one MLP
serves all layers and runs once per forward (and once per parameter update in evaluation, thanks to a
cache). After training, :meth:`PrefixEncoder.eject` computes the vectors once and keeps only them: the
MLP's ~10 M parameters leave the checkpoint, the outputs stay bit-identical.

How the vectors enter attention, without touching position ids or the KV cache, is in :mod:`unipelt.attention`.
"""

from __future__ import annotations

import torch
from torch import nn


class PrefixEncoder(nn.Module):
    def __init__(
        self, num_layers: int, length: int, kv_dim: int, hidden_size: int, reparam: bool, mlp_hidden: int
    ):
        super().__init__()
        self.num_layers, self.length, self.kv_dim = num_layers, length, kv_dim
        if reparam:
            self.embedding = nn.Embedding(length, hidden_size)
            self.mlp = nn.Sequential(
                nn.Linear(hidden_size, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, 2 * num_layers * kv_dim)
            )
            self.prefix = None
        else:
            self.embedding = None
            self.mlp = None
            self.prefix = nn.Parameter(torch.randn(num_layers, 2, length, kv_dim) * 0.02)
        self._cache: tuple[tuple[int, ...], torch.Tensor] | None = None

    @property
    def reparameterised(self) -> bool:
        return self.mlp is not None

    def _compute(self) -> torch.Tensor:
        hidden = self.mlp(self.embedding.weight)  # (P, 2 * L * kv_dim)
        return hidden.view(self.length, self.num_layers, 2, self.kv_dim).permute(1, 2, 0, 3)

    def forward(self) -> torch.Tensor:
        """All prefixes as (layers, 2 [key, value], P, kv_dim)."""
        if self.prefix is not None:
            return self.prefix
        if torch.is_grad_enabled():
            self._cache = None
            return self._compute()
        # Without gradients the MLP output only changes when a parameter does: reuse it until then.
        key = tuple(p._version for p in self.parameters()) + tuple(p.data_ptr() for p in self.parameters())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._compute())
        return self._cache[1]

    @torch.no_grad()
    def eject(self) -> None:
        """Replace the reparameterisation MLP by the prefix tensor it produces (identical outputs)."""
        if self.prefix is not None:
            return
        self.prefix = nn.Parameter(self._compute().detach().clone().contiguous())
        self.embedding = None
        self.mlp = None
        self._cache = None

    def num_prefix_values(self) -> int:
        """Size of the prefix itself (what inference needs), whichever way it is stored."""
        return self.num_layers * 2 * self.length * self.kv_dim
