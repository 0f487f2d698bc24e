"""Bottleneck adapter (Houlsby et al. 2019) after the feed-forward block: h + g * up(act(down(v(h)))).

It sits on the output of the feed-forward block's last projection, before dropout, the residual sum and
layer norm, which is where the UniPELT reference code places it. ``up`` starts at zero, so the adapter is
the identity at initialisation. ``v(h)`` is ``h`` itself (the paper's adapter) or, on pre-norm decoders whose
feed-forward outputs reach norms in the thousands, ``h`` over its per-token RMS (``adapter_input``): on the raw
state an optimizer step on ``down`` changes a deep layer's output in proportion to that norm. Its sigmoid gate,
when used, reads the adapter's own input, as in the paper (RMS-normalised on pre-norm decoders); under the
softmax router it takes the router's ``adapter`` weight instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unipelt.gates import SigmoidGate, broadcastable
from unipelt.gates.normalise import rms_normalise
from unipelt.modules.base import BuildSpec, PeftModule, RowGroup, few_rows, register
from unipelt.modules.joined import joined
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
        normalise_input: bool = False,
    ):
        super().__init__()
        self.normalise_input = normalise_input
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
            normalise_input=config.resolved_adapter_input(spec.arch) == "rms",
        )
        adapter.routed = config.gate in ("softmax", "concrete")  # its weight comes from the layer's gate
        return adapter

    def gate_sites(self, gate: str) -> list[str]:
        return ["adapter"] if gate in ("softmax", "concrete") else []

    def sites(self) -> list[tuple[str, str]]:
        return [("ffn_output", "output")]

    def reads_input(self, role: str, group: RowGroup) -> bool:
        return False  # it reads the feed-forward block's output only

    def apply(self, role: str, x: torch.Tensor, out: torch.Tensor, group: RowGroup) -> torch.Tensor:
        if isinstance(self.act, nn.ReLU):
            z, gate = self._down(out, group.mask_for(out))
            if gate is not None:
                group.gates["adapter"] = gate
            elif self.routed:
                gate = group.gates.get("adapter")
            return self._up(out, z, gate)
        gate = None
        if self.gate is not None:
            gate = self.gate(out, group.mask_for(out), self.pooling)["adapter"]
            group.gates["adapter"] = gate
        elif self.routed:
            gate = group.gates.get("adapter")
        return self(out, gate)

    def view(self, h: torch.Tensor) -> torch.Tensor:
        """What ``down`` reads: ``h``, or ``h`` over its per-token RMS (``adapter_input="rms"``)."""
        return rms_normalise(h) if self.normalise_input else h

    def _joint_gate(self) -> bool:
        """Whether the gate's logits can share ``down``'s matmul: both read the same tensor."""
        gate = self.gate
        return gate is not None and (gate.joinable or (gate.normalise and self.normalise_input))

    def _down(self, h: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """relu(down(h)) with a last column of ones, and the adapter's own gate value if it has one.

        The down weights (reading :meth:`view` of ``h``) get a zero row with bias 1 (relu(1) = 1: the column the
        up bias rides on, see :meth:`forward`) and, when the gate reads that same tensor, the gate's row: one
        matmul for all three.
        """
        gate, width = self.gate, self.down.out_features
        joint = self._joint_gate()
        sources = [self.down.weight, self.down.bias]
        if joint:
            sources += [gate.linear.weight, gate.linear.bias]
        weight, bias = joined(self, "down", sources, lambda: self._stacked_down(joint))
        y = F.linear(self.view(h), weight, bias)
        z = self.act(y[..., : width + 1])
        if gate is None:
            return z, None
        if joint:
            return z, gate.values(y[..., width + 1 :], mask, self.pooling)[..., 0]
        return z, gate(h, mask, self.pooling)["adapter"]

    def _stacked_down(self, joint: bool) -> tuple[torch.Tensor, torch.Tensor]:
        down = self.down
        weights = [down.weight, down.weight.new_zeros(1, down.in_features)]
        biases = [down.bias, down.bias.new_ones(1)]
        if joint:
            weights.append(self.gate.linear.weight)
            biases.append(self.gate.linear.bias)
        return torch.cat(weights), torch.cat(biases)

    def forward(self, h: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """h + g * up(act(down(h))), computed as one fused GEMM over the full-width tensor.

        The gate is applied in the narrow bottleneck and the up bias rides along as an extra input column
        ([g*z, g] times [W_up, b_up]), so the wide (tokens x hidden) activation is read and written once,
        by addmm, instead of once each for the bias, the gate product and the residual sum.
        """
        z = self.act(self.down(self.view(h)))
        if gate is None:
            column = z.new_ones(*z.shape[:-1], 1)
        else:
            g = broadcastable(gate, z).expand(*z.shape[:-1], 1)
            z, column = z * g, g
        return self._up(h, torch.cat([z, column], dim=-1))

    def _up(self, h: torch.Tensor, z: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """h + g * z [W_up, b_up]^T: ``z`` is the bottleneck with the ones column last, ``gate`` its gate."""
        up = self.up
        weight = joined(self, "up", [up.weight, up.bias], lambda: torch.cat([up.weight, up.bias[:, None]], 1))
        if few_rows(h):  # a decoding step: three operations
            delta = F.linear(z, weight)
            return h.add_(delta) if gate is None else h.addcmul_(delta, broadcastable(gate, delta))
        # Gated in the narrow bottleneck, so the wide activation is read and written once.
        if gate is not None:
            z = z * broadcastable(gate, z)
        flat, z = h.reshape(-1, h.shape[-1]), z.reshape(-1, z.shape[-1])
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling() and h.is_contiguous():
            return flat.addmm_(z, weight.t()).view(h.shape)  # inference: accumulate into h (flat is a view)
        return torch.addmm(flat, z, weight.t()).view(h.shape)  # training: down(h) saved h for backward

    def parameter_counts(self) -> dict[str, int]:
        gate = sum(p.numel() for p in self.gate.parameters()) if self.gate is not None else 0
        return {"adapter": sum(p.numel() for p in self.parameters()) - gate, "gates": gate}
