"""Bottleneck adapter (Houlsby et al. 2019) after the feed-forward block: h + g * up(act(down(h))).

It sits on the output of the feed-forward block's last projection, before dropout, the residual sum and
layer norm, which is where the UniPELT reference code places it. ``up`` starts at zero, so the adapter is
the identity at initialisation. Its sigmoid gate, when used, reads the adapter's own input, as in the paper
(RMS-normalised on pre-norm decoders, whose feed-forward outputs reach norms in the thousands);
under the softmax router it takes the router's ``adapter`` weight instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unipelt.gates import SigmoidGate, broadcastable
from unipelt.modules.base import BuildSpec, PeftModule, RowGroup, register
from unipelt.modules.projections import projection_features

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@register
class BottleneckAdapter(PeftModule):
    kind = "adapter"
    title = "adapter"
    order = 30

    def __init__(
        self,
        hidden_size: int,
        bottleneck: int,
        activation: str = "relu",
        gated: bool = False,
        pooling: str = "mean",
        normalise_gate: bool = False,
    ):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.gate = SigmoidGate(hidden_size, ["adapter"], normalise_gate) if gated else None
        self.pooling = pooling
        self.routed = False  # True under the softmax router: the weight comes from the layer's router

    @classmethod
    def build(cls, spec: BuildSpec, index: int | None) -> BottleneckAdapter:
        site = spec.layers[index].get_submodule(spec.arch.ffn_output)
        _, out_features = projection_features(site)
        config = spec.config
        adapter = cls(
            out_features,
            config.adapter_bottleneck(out_features),  # this layer's width (staged models widen per stage)
            config.adapter_activation,
            gated=config.gate == "sigmoid",
            pooling=config.resolved_pooling(spec.arch),
            normalise_gate=config.resolved_gate_input(spec.arch) == "rms",
        )
        adapter.routed = config.gate in ("softmax", "concrete")  # its weight comes from the layer's gate
        return adapter

    def gate_sites(self, gate: str) -> list[str]:
        return ["adapter"] if gate in ("softmax", "concrete") else []

    def sites(self) -> list[tuple[str, str]]:
        return [("ffn_output", "output")]

    def apply(self, role: str, x: torch.Tensor, out: torch.Tensor, group: RowGroup) -> torch.Tensor:
        gate = z = None
        if self.gate is not None:
            z, gate = self._down_and_gate(out, group.mask_for(out))
            group.gates["adapter"] = gate
        elif self.routed:
            gate = group.gates.get("adapter")
        return self(out, gate, z)

    def _down_and_gate(self, h: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """act(down(h)) and the adapter's own gate value, from one matmul of h with both weights."""
        gate, width = self.gate, self.down.out_features
        gate_bias = gate.projection_bias()
        weight = torch.cat([self.down.weight, gate.linear.weight])
        if gate_bias is not None:
            y = F.linear(h, weight, torch.cat([self.down.bias, gate_bias]))
            z = y[..., :width]
        else:
            y = F.linear(h, weight)
            z = y[..., :width] + self.down.bias
        values = gate.values(y[..., width:], h, mask, self.pooling, biased=gate_bias is not None)
        return self.act(z), values[..., 0]

    def forward(
        self, h: torch.Tensor, gate: torch.Tensor | None = None, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """h + g * up(act(down(h))), computed as one fused GEMM over the full-width tensor.

        The gate is applied in the narrow bottleneck and the up bias rides along as an extra input column
        ([g*z, g] times [W_up, b_up]), so the wide (tokens x hidden) activation is read and written once,
        by addmm, instead of once each for the bias, the gate product and the residual sum. ``z`` is
        act(down(h)) when the caller computed it already.
        """
        if z is None:
            z = self.act(self.down(h))
        if gate is None:
            column = z.new_ones(*z.shape[:-1], 1)
        else:
            g = broadcastable(gate, z).expand(*z.shape[:-1], 1)
            z, column = z * g, g
        z = torch.cat([z, column], dim=-1)
        weight = torch.cat([self.up.weight, self.up.bias[:, None]], dim=1)
        flat, z = h.reshape(-1, h.shape[-1]), z.reshape(-1, z.shape[-1])
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling() and h.is_contiguous():
            return flat.addmm_(z, weight.t()).view(h.shape)  # inference: accumulate into h (flat is a view)
        return torch.addmm(flat, z, weight.t()).view(h.shape)  # training: down(h) saved h for backward

    def parameter_counts(self) -> dict[str, int]:
        gate = sum(p.numel() for p in self.gate.parameters()) if self.gate is not None else 0
        return {"adapter": sum(p.numel() for p in self.parameters()) - gate, "gates": gate}
