"""LoRA (Hu et al. 2021): a trainable low-rank update B·A added to a frozen projection.

The frozen projection is not replaced or wrapped; the injector calls :meth:`LoRALayer.apply` on its output,
which adds ``gate * B(A(x))``, so the base model's parameter names and code stay untouched. B starts at zero,
so the model is exactly the base model at initialisation. Ungated, the update is scaled by alpha / rank;
gated, the gate replaces that scaling, as in the UniPELT reference code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.gates import broadcastable
from unipelt.inject.architectures import Architecture
from unipelt.modules.base import BuildSpec, PeftModule, RowGroup, few_rows, register
from unipelt.modules.projections import locate, on_slice, output_slice, projection_features

# Projections that read the self-attention module's own input: their down projections can be computed before
# attention, in the layer gate's matmul (see PeftModule.attention_input_projections).
ATTENTION_INPUT_ROLES = ("query", "key", "value")


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


@torch.no_grad()
def merge_into(module: nn.Module, delta: torch.Tensor, index: int, parts: int) -> None:
    """Add a dense (out_slice, in) update into a Linear or Conv1D weight, in place."""
    weight, _ = output_slice(module, index, parts)
    weight += (delta if isinstance(module, nn.Linear) else delta.T).to(weight.dtype)


@register
class LoRALayer(PeftModule):
    """One layer's LoRA pairs, one child per target projection (``query``, ``value`` by default)."""

    kind = "lora"
    title = "LoRA"
    order = 10

    def __init__(self, targets: dict[str, tuple[int, int, int, int]], config) -> None:
        super().__init__()
        self.gate = config.gate
        self.slots: dict[str, tuple[int, int]] = {}
        for target, (in_features, out_features, part, parts) in targets.items():
            self.add_module(
                target,
                LoRA(in_features, out_features, config.lora_rank, config.lora_alpha, config.lora_dropout),
            )
            self.slots[target] = (part, parts)

    @classmethod
    def build(cls, spec: BuildSpec, index: int | None) -> LoRALayer:
        layer = spec.layers[index]
        targets = {}
        for target in spec.config.lora_targets:
            if target not in spec.arch.projections:
                raise UniPELTError(
                    f"unknown LoRA target {target!r}; use one of: {', '.join(spec.arch.projections)}"
                )
            module, part, parts = locate(layer, spec.arch, target)
            in_features, out_features = projection_features(module)
            targets[target] = (in_features, out_features // parts, part, parts)
        return cls(targets, spec.config)

    def pairs(self) -> dict[str, LoRA]:
        return dict(self.named_children())

    def gate_sites(self, gate: str) -> list[str]:
        if gate == "softmax":
            return ["lora"]
        return [f"lora_{target}" for target in self.slots] if gate in ("sigmoid", "concrete") else []

    def sites(self) -> list[tuple[str, str]]:
        return [(target, "output") for target in self.slots]

    def attention_input_projections(self) -> list[tuple[str, torch.Tensor]]:
        found = []
        for target in self.slots:
            lora: LoRA = getattr(self, target)
            dropping = isinstance(lora.dropout, nn.Dropout) and lora.dropout.training
            if target in ATTENTION_INPUT_ROLES and not dropping:  # dropout draws its own mask per projection
                found.append((f"lora_{target}", lora.lora_A.weight))
        return found

    def apply(self, role: str, x: torch.Tensor, out: torch.Tensor, group: RowGroup) -> torch.Tensor:
        lora: LoRA = getattr(self, role)
        part, parts = self.slots[role]
        mid = group.prepared.get(f"lora_{role}")
        if mid is None:
            mid = lora.down(x)
        # None: the gate was folded into B by a plan, nothing to scale
        scale = lora.scaling if self.gate == "none" else group.gates.get(self._site(role))
        if parts == 1 and few_rows(out):
            delta = F.linear(mid, lora.lora_B.weight)
            if scale is None or isinstance(scale, float):
                return out.add_(delta, alpha=1.0 if scale is None else scale)
            return out.addcmul_(delta, broadcastable(scale, delta))
        # Scale in the rank-r bottleneck, then one addmm adds B(.) into the output: no full-width temporaries.
        if scale is not None:
            mid = mid * (scale if isinstance(scale, float) else broadcastable(scale, mid))
        mid = mid.reshape(-1, mid.shape[-1])
        if parts == 1:
            flat = out.view(-1, out.shape[-1])
            if torch.is_grad_enabled():
                return torch.addmm(flat, mid, lora.lora_B.weight.t()).view(out.shape)
            flat.addmm_(mid, lora.lora_B.weight.t())  # inference: accumulate into the fresh projection output
            return out
        delta = (mid @ lora.lora_B.weight.t()).view(*out.shape[:-1], -1)
        return on_slice(out, part, parts, lambda piece: piece + delta)

    def reads_input(self, role: str, group: RowGroup) -> bool:
        return f"lora_{role}" not in group.prepared  # its down projection was made before attention

    def _site(self, role: str) -> str:
        return "lora" if self.gate == "softmax" else f"lora_{role}"

    def mergeable(self) -> bool:
        return self.gate == "none"

    def merge(self, layer: nn.Module, arch: Architecture) -> None:
        if not self.mergeable():
            raise UniPELTError(
                f"cannot merge a gated LoRA (gate={self.gate!r}): its scale depends on each input, so no "
                "single weight matrix reproduces it. Only an ungated LoRA (gate='none', e.g. the 'lora' "
                "preset) can be merged; keep this model unmerged for inference."
            )
        for target, lora in self.pairs().items():
            module, part, parts = locate(layer, arch, target)
            merge_into(module, lora.delta_weight(), part, parts)
