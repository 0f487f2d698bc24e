"""IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning"): learned vectors that rescale the keys, the values and the feed-forward intermediate activation.

The vectors start at one, so the model is the base model at initialisation. Ungated, the key output is
multiplied by ``l_k`` (likewise values), and the input of the feed-forward output projection by ``l_ff``.
Gated (as a member of a UniPELT mix), the scale is ``1 + g * (l - 1)``: the gate interpolates between the base
model (g = 0) and full IA3 (g = 1), so a closed gate is an exact no-op like for the other modules. Ungated IA3
folds exactly into the frozen weights: rows of W_k, W_v (and their biases) and columns of the feed-forward
output projection.
"""

from __future__ import annotations

import torch
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.gates import broadcastable
from unipelt.inject.architectures import Architecture
from unipelt.modules.base import BuildSpec, PeftModule, RowGroup, register
from unipelt.modules.projections import (
    locate,
    on_slice,
    projection_features,
    scale_input_columns,
    scale_output_rows,
    slice_width,
)

TARGETS = ("key", "value", "ffn")


@register
class IA3(PeftModule):
    kind = "ia3"
    title = "IA3 vectors"
    order = 50
    options = {"ia3_targets": ["key", "value", "ffn"]}

    def __init__(self, sizes: dict[str, int], slots: dict[str, tuple[int, int]], gate: str) -> None:
        super().__init__()
        self.gate = gate
        self.slots = slots
        for target, size in sizes.items():
            self.register_parameter(target, nn.Parameter(torch.ones(size)))

    @classmethod
    def build(cls, spec: BuildSpec, index: int | None) -> IA3:
        layer = spec.layers[index]
        sizes, slots = {}, {}
        for target in spec.option("ia3_targets"):
            if target not in TARGETS:
                raise UniPELTError(f"unknown IA3 target {target!r}; use: {', '.join(TARGETS)}")
            if target == "ffn":
                sizes[target] = projection_features(layer.get_submodule(spec.arch.ffn_output))[0]
                slots[target] = (0, 1)
            else:
                module, part, parts = locate(layer, spec.arch, target)
                sizes[target] = slice_width(module, parts)
                slots[target] = (part, parts)
        return cls(sizes, slots, spec.gate)

    def vectors(self) -> dict[str, nn.Parameter]:
        return dict(self.named_parameters())

    def gate_sites(self, gate: str) -> list[str]:
        return [] if gate == "none" else ["ia3"]

    def sites(self) -> list[tuple[str, str]]:
        return [("ffn_output", "input") if t == "ffn" else (t, "output") for t in self.slots]

    def _scale(self, vector: torch.Tensor, like: torch.Tensor, group: RowGroup) -> torch.Tensor:
        if self.gate == "none":
            return vector.to(like.dtype)
        gate = broadcastable(group.gates.get("ia3"), like)
        return 1 + gate * (vector.to(like.dtype) - 1)

    def apply(self, role: str, x: torch.Tensor, out: torch.Tensor | None, group: RowGroup) -> torch.Tensor:
        if role == "ffn_output":
            return x * self._scale(self.ffn, x, group)
        part, parts = self.slots[role]
        vector = getattr(self, role)
        return on_slice(out, part, parts, lambda piece: piece * self._scale(vector, piece, group))

    def mergeable(self) -> bool:
        return self.gate == "none"

    def merge(self, layer: nn.Module, arch: Architecture) -> None:
        if not self.mergeable():
            raise UniPELTError("a gated IA3 cannot be merged: its scale depends on each input")
        for target, vector in self.vectors().items():
            if target == "ffn":
                scale_input_columns(layer.get_submodule(arch.ffn_output), vector.detach())
            else:
                module, part, parts = locate(layer, arch, target)
                scale_output_rows(module, part, parts, vector.detach())
