"""What each unit does on real inputs: its mean gate, the gate's spread over inputs, and its contribution.

The contribution of a unit on one example is ``||delta|| / ||h||``: the norm of what the unit adds to the
tensor it acts on (gate included) relative to that tensor, over the example's real tokens. For LoRA ``h`` is
the projection's output and ``delta = g * B(A(x))``; for the adapter ``h`` is the feed-forward output and
``delta = g * up(act(down(h)))``; for the prefix ``h`` is the attention output without the prefix and
``delta`` the change the gated prefix makes to it. The score is the mean over examples.

Why this score and not ``gate x gradient norm``: it needs one forward pass and no labels, it measures how much
the unit moves the hidden state the next layer sees (a unit with an open gate but a negligible output is as
redundant as a closed one, and the gate alone cannot tell them apart), and being relative to ``h`` it
compares across layers and kinds. A gradient score is zero for a saturated gate whatever the module does,
and it ranks by the loss of the training labels rather than by what the deployed forward computes.

Measuring goes through the injector's observer hook (``model.observe``), which is scoped to the calling thread:
other threads calling the same model meanwhile are neither measured nor slowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from unipelt.inject.context import Observer
from unipelt.plan import Unit, gate_site, task_units
from unipelt.running.loop import forward_batches

if TYPE_CHECKING:
    from unipelt.model import UniPELTModel


@dataclass
class UnitStats:
    """Per unit over a data set: gate mean and spread (population std), contribution, examples seen."""

    layer: int
    site: str
    gate_mean: float
    gate_std: float
    contribution: float
    examples: int

    @property
    def unit(self) -> Unit:
        return Unit(self.layer, self.site)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Sums:
    def __init__(self) -> None:
        self.values: dict[Unit, list[torch.Tensor]] = {}

    def add(self, unit: Unit, per_example: torch.Tensor) -> None:
        self.values.setdefault(unit, []).append(per_example.detach().float().reshape(-1).cpu())

    def get(self, unit: Unit) -> torch.Tensor:
        parts = self.values.get(unit)
        return torch.cat(parts) if parts else torch.empty(0)


def _relative(delta: torch.Tensor, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per example ||delta|| / ||h|| over real tokens; tensors are (B, T, ...) with mask (B, T)."""
    delta, h = delta.float(), h.float()
    if mask is not None and mask.shape[:2] == h.shape[:2]:
        weights = mask.to(h.dtype).reshape(*mask.shape, *([1] * (h.dim() - 2)))
        delta, h = delta * weights, h * weights
    num = delta.flatten(1).norm(dim=1)
    return num / h.flatten(1).norm(dim=1).clamp_min(1e-12)


def _recorder(sums: _Sums) -> Observer:
    """An observer (``model.observe``) that records each unit's per-example contribution."""

    def record(
        layer: int, kind: str, role: str, before: torch.Tensor, after: torch.Tensor, mask: Any
    ) -> None:
        if kind in ("lora", "adapter", "prefix"):
            site = f"lora_{role}" if kind == "lora" else kind
            sums.add(Unit(layer, site), _relative(after - before, before, mask))

    return record


@torch.inference_mode()
def measure_units(
    model: UniPELTModel, name: str, batches: Iterable[dict[str, torch.Tensor]]
) -> list[UnitStats]:
    """Gate mean, spread and contribution of every unit of task ``name`` over ``batches`` (eval mode)."""
    task = model.tasks[name]
    units = task_units(task)
    gate = task.config.gate
    contributions, gates = _Sums(), _Sums()
    was_training = model.training
    model.eval()
    try:
        with model.observe(_recorder(contributions)), model.task(name):
            for _ in forward_batches(model, batches):
                values = model.gate_values()  # of the batch just run
                for unit in units:
                    value = values.get(unit.layer, {}).get(gate_site(unit, gate))
                    if value is not None:
                        gates.add(unit, value)
    finally:
        model.train(was_training)
    stats = []
    for unit in units:
        g, c = gates.get(unit), contributions.get(unit)
        ungated = g.numel() == 0
        stats.append(
            UnitStats(
                layer=unit.layer,
                site=unit.site,
                gate_mean=1.0 if ungated else float(g.double().mean()),
                gate_std=math.nan if ungated else float(g.double().std(unbiased=False)),
                contribution=float(c.double().mean()) if c.numel() else 0.0,
                examples=int(c.numel()),
            )
        )
    return stats
