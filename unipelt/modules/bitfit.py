"""BitFit (Ben Zaken et al. 2022): fine-tune only bias terms.

The frozen biases are not touched; each target projection gets a trainable bias *delta*, zero at
initialisation, added to its output (so a projection without a bias, as in LLaMA, gets one too). Targets are
roles of the architecture table: by default the attention q/k/v/o projections and both feed-forward
projections. Gated (in a UniPELT mix) the delta is scaled by the layer's ``bitfit`` gate. Ungated deltas fold
into the base biases exactly, where the base projection has a bias.
"""

from __future__ import annotations

import torch
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.gates import broadcastable
from unipelt.inject.architectures import ROLES, Architecture
from unipelt.modules.base import BuildSpec, PeftModule, RowGroup, register
from unipelt.modules.projections import locate, on_slice, output_slice, slice_width


@register
class BitFit(PeftModule):
    kind = "bitfit"
    title = "BitFit biases"
    order = 40
    options = {"bitfit_targets": list(ROLES)}

    def __init__(self, sizes: dict[str, int], slots: dict[str, tuple[int, int]], gate: str) -> None:
        super().__init__()
        self.gate = gate
        self.slots = slots
        for target, size in sizes.items():
            self.register_parameter(target, nn.Parameter(torch.zeros(size)))

    @classmethod
    def build(cls, spec: BuildSpec, index: int | None) -> BitFit:
        layer = spec.layers[index]
        sizes, slots = {}, {}
        for target in spec.option("bitfit_targets"):
            if target not in ROLES:
                raise UniPELTError(f"unknown BitFit target {target!r}; use: {', '.join(ROLES)}")
            module, part, parts = locate(layer, spec.arch, target)
            sizes[target] = slice_width(module, parts)
            slots[target] = (part, parts)
        return cls(sizes, slots, spec.gate)

    def gate_sites(self, gate: str) -> list[str]:
        return [] if gate == "none" else ["bitfit"]

    def sites(self) -> list[tuple[str, str]]:
        return [(target, "output") for target in self.slots]

    def apply(self, role: str, x: torch.Tensor, out: torch.Tensor | None, group: RowGroup) -> torch.Tensor:
        part, parts = self.slots[role]
        bias = getattr(self, role)

        def add(piece: torch.Tensor) -> torch.Tensor:
            delta = bias.to(piece.dtype)
            if self.gate != "none":
                delta = broadcastable(group.gates.get("bitfit"), piece) * delta
            return piece + delta

        return on_slice(out, part, parts, add)

    def mergeable(self) -> bool:
        return self.gate == "none"

    def merge(self, layer: nn.Module, arch: Architecture) -> None:
        if not self.mergeable():
            raise UniPELTError("a gated BitFit cannot be merged: its scale depends on each input")
        for target, delta in self.named_parameters():
            module, part, parts = locate(layer, arch, target)
            _, bias = output_slice(module, part, parts)
            if bias is None:
                raise UniPELTError(
                    f"cannot merge BitFit into the {target} projection: the base model's projection has no "
                    "bias to add it to; keep the model unmerged"
                )
            with torch.no_grad():
                bias += delta.detach().to(bias.dtype)
