"""Per-forward state shared by the hooks of one UniPELT model.

The frozen model is called exactly as before; hooks on it need three facts that its modules do not pass
to each other: which tokens are padding (for mask-aware gate pooling), the prefix keys/values of this
forward (computed once for all layers), and whether the added modules are switched on. They live here,
in one small object per UniPELT model, and are cleared at the end of each forward so that no tensor, and
no autograd graph, outlives the step that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Runtime:
    pooling: str = "mean"
    enabled: bool = True
    token_mask: torch.Tensor | None = None
    prefix: torch.Tensor | None = None  # (layers, 2, P, kv_dim) for the current forward
    # Latest gate values per layer and site, detached: readable after the forward, replaced by the next.
    latest_gates: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    record_gates: bool = True
    # When a loss needs the gates (sparsity/entropy penalty), keep this forward's live (non-detached) values.
    keep_live: bool = False
    live: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    _prefix_heads: tuple[torch.Tensor, torch.Tensor] | None = None

    def prefix_heads(self, kv_heads: int, head_dim: int) -> torch.Tensor:
        """The prefix split into heads, (layers, 2, kv_heads, P, head_dim), reshaped once per forward."""
        if self._prefix_heads is None or self._prefix_heads[0] is not self.prefix:
            layers, _, length, _ = self.prefix.shape
            heads = self.prefix.view(layers, 2, length, kv_heads, head_dim).transpose(2, 3)
            self._prefix_heads = (self.prefix, heads)
        return self._prefix_heads[1]

    def mask_for(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The padding mask aligned with ``hidden`` (B, T, d): its last T columns (a KV cache adds earlier ones)."""
        mask = self.token_mask
        if mask is None or mask.dim() != 2 or mask.shape[0] != hidden.shape[0]:
            return None
        return mask[:, -hidden.shape[1] :]

    def record(self, layer: int, site: str, value: torch.Tensor) -> None:
        if self.record_gates:
            self.latest_gates.setdefault(layer, {})[site] = value.detach()
        if self.keep_live:
            self.live.append((site, value))

    def end_forward(self) -> None:
        self.token_mask = None
        self.prefix = None
        self._prefix_heads = None
