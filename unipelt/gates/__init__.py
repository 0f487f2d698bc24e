"""Gates decide, per layer and per input, how much each sub-module contributes.

- :class:`SigmoidGate`: the paper's independent sigmoid gates, one per site.
- :class:`SoftmaxRouter`: a softmax over the enabled sub-modules of a layer.
- :class:`HardConcreteGate`: a learnt relaxed binary switch per site, input-independent (AutoPELT).

Both return ``{site: tensor}`` with shape (B,) for pooled gates or (B, T) for per-token gates.
"""

from __future__ import annotations

from torch import nn

from unipelt.gates.concrete import HardConcreteGate
from unipelt.gates.normalise import rms_normalise
from unipelt.gates.pooling import broadcastable, masked_mean
from unipelt.gates.router import SoftmaxRouter
from unipelt.gates.sigmoid import SigmoidGate

GATE_TYPES = (SigmoidGate, SoftmaxRouter, HardConcreteGate)


def build_layer_gate(
    kind: str, hidden_size: int, sites: list[str], config, normalise: bool = False
) -> nn.Module | None:
    """The gate of one layer for ``sites``; None when ungated or when no module asks for a gate.

    ``normalise``: the gate reads the RMS-normalised state (``config.resolved_gate_input(arch) == "rms"``).
    """
    if kind == "none" or not sites:
        return None
    if kind == "softmax":
        return SoftmaxRouter(
            hidden_size, sites, config.router_hidden, config.router_temperature, normalise=normalise
        )
    if kind == "concrete":
        return HardConcreteGate(sites)
    return SigmoidGate(hidden_size, sites, normalise=normalise)


__all__ = [
    "GATE_TYPES",
    "HardConcreteGate",
    "SigmoidGate",
    "SoftmaxRouter",
    "broadcastable",
    "build_layer_gate",
    "masked_mean",
    "rms_normalise",
]
