"""Weights joined for one matmul (a gate's rows under a module's down projection), built once for inference.

Several small linear maps of the same input cost less as one matmul of their stacked weights. Stacking is
itself an operation, so inference keeps the stacked tensor on the module that owns the weights until one of
them changes (an optimizer step, ``load_state_dict``, a plan folding a gate) or moves. With gradients on,
or while ``torch.compile`` traces, the weights are stacked afresh on every call: autograd needs the parts,
and a graph does the stacking inside itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def joined(
    owner: nn.Module, name: str, sources: Sequence[torch.Tensor], build: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``build()`` (a function of ``sources`` only), cached on ``owner`` under ``name`` while no source changed."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return build()
    key = tuple((s.data_ptr(), s._version, s.shape, s.dtype, s.device) for s in sources)
    cache = owner.__dict__.setdefault("_unipelt_joined", {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = build()
    cache[name] = (key, value)
    return value
