"""The prefix step of ``unipelt optimize``: drop the prefix positions that take the least attention.

A kept prefix adds P keys and values to every attention call of its layers. Prefix vectors carry no position,
so a position that no query attends to can go without changing anything: if a query gives weight ``m`` to a
prefix position with value ``v``, dropping the position turns its output ``o`` into ``(o - m v) / (1 - m)``.
The *attention mass* of a position in a layer is that weight, averaged over the heads, the real (not padded)
query tokens and the validation rows, measured on the model with the earlier steps' plan applied (gates
folded into the vectors, so the mass is what the deployed model computes). What dropping it changes is about
``m (v - o)``, and prefix values are often far larger than the real tokens' (a prefix taking 5 % of the
attention can move the output by half its norm), so positions are ranked by their *score*: the mass times the
norm of the value vector times the layer's mean prefix gate, what the position adds to the attention output.

The step ranks the (layer, position) pairs of all layers together by score and drops the ``n`` lowest; a
layer left with no position loses its prefix (that is where the time goes: its attention runs without the
extra keys, the mask and the concatenation), and the other layers keep their own heaviest ``P'`` positions,
``P'`` the most any layer kept, so the prefix keeps one (layers, 2, P', width) form that loading, export and
serving already handle. A binary search finds the largest ``n`` whose validation metric stays at or above the
budget's floor, as the prune and fold steps do.

The mass is read from the attention weights, which only the eager attention returns: it is measured on a copy
of the model switched to it (models whose attention runs through a seam, MPNet and DeBERTa, skip the step).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import torch

from unipelt.autopelt.search import largest
from unipelt.inject.attention import interface_name
from unipelt.plan import Plan, Unit, planned_copy
from unipelt.running.loop import forward_batches


def can_shorten(model: Any, name: str, plan: Plan) -> bool:
    """Whether task ``name`` has a prefix that ``plan`` keeps somewhere and the model's attention can report
    where it goes."""
    task = model.tasks[name]
    if task.prefix is None or model.arch.seam != "interface":
        return False
    return any(Unit(i, "prefix") not in plan.prune for i in range(len(task.layers)))


def _accumulate(sums: torch.Tensor, counts: torch.Tensor, index: int, length: int, mask: list) -> Callable:
    """A forward hook adding each real query token's attention to the ``length`` prefix columns (``mask[0]``:
    the current batch's attention mask)."""

    def hook(module: Any, args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            return
        per_query = weights[..., :length].float().mean(dim=1)  # (B, Q, P): heads averaged
        real = mask[0]
        if real is not None and real.shape == per_query.shape[:2]:
            per_query = per_query * real[..., None].to(per_query.device, per_query.dtype)
            tokens = float(real.sum())
        else:
            tokens = float(per_query.shape[0] * per_query.shape[1])
        sums[index] += per_query.sum(dim=(0, 1)).cpu()
        counts[index] += tokens

    return hook


def _gate_means(clone: Any, layers: int, totals: torch.Tensor) -> None:
    """Add the latest forward's mean prefix gate per layer to ``totals`` (sum, batches); no gate counts 1."""
    values = clone.gate_values()
    for index in range(layers):
        gate = values.get(index, {}).get("prefix")
        totals[index, 0] += 1.0 if gate is None else float(gate.float().mean())
        totals[index, 1] += 1


def prefix_mass(
    model: Any, name: str, plan: Plan, batches: Iterable[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """With ``plan`` applied: the (layers, P) mean attention mass of each prefix position, and its score, the
    mass times the norm of the position's value vector times the layer's mean prefix gate (how much it adds to
    the attention output); NaN in layers the plan prunes the prefix of."""
    clone = planned_copy(model, name, plan)
    encoder = clone.tasks[name].prefix
    layers = len(clone.tasks[name].layers)
    length = model.tasks[name].prefix.length
    sums, counts, gates = torch.zeros(layers, length), torch.zeros(layers), torch.zeros(layers, 2)
    clone.base_model.set_attn_implementation(interface_name("eager"))
    live = [] if encoder is None else [i for i in range(layers) if i not in encoder.pruned_layers]
    mask: list = [None]
    handles = [
        clone.injector.layers[i]
        .get_submodule(clone.arch.attention)
        .register_forward_hook(_accumulate(sums, counts, i, length, mask))
        for i in live
    ]
    try:
        with clone.task(name):
            for batch in batches:
                mask[0] = batch.get("attention_mask")
                next(forward_batches(clone, [batch]))
                _gate_means(clone, layers, gates)
    finally:
        for handle in handles:
            handle.remove()
    mass = sums / counts.clamp_min(1)[:, None]
    mass[counts == 0] = float("nan")
    score = torch.full_like(mass, float("nan"))
    for i in live:
        values = encoder.layer_prefix(i)[1].detach().float().cpu()  # (P, width), folded gates included
        score[i] = mass[i] * values.norm(dim=-1) * gates[i, 0] / gates[i, 1].clamp_min(1)
    return mass, score


def shortened(plan: Plan, score: torch.Tensor, dropped: int) -> Plan:
    """``plan`` with the ``dropped`` lowest-scoring (layer, position) pairs of ``score`` gone (see the module
    doc)."""
    layers, length = score.shape
    live = [
        (float(score[i, p]), i, p) for i in range(layers) for p in range(length) if not score[i, 0].isnan()
    ]
    gone = [i for _, i, _ in sorted(live)[:dropped]]
    left = {i: length - gone.count(i) for i in {i for _, i, _ in live}}
    emptied = {Unit(i, "prefix") for i, n in left.items() if n == 0}
    keep = max(left.values(), default=0)
    if not emptied and keep == length:
        return plan
    fold = {unit: value for unit, value in plan.fold.items() if unit not in emptied}
    positions = {}
    if keep < length:
        for i, n in left.items():
            if n:
                heaviest = sorted(range(length), key=lambda p, i=i: (-float(score[i, p]), p))[:keep]
                positions[i] = tuple(sorted(heaviest))
    return Plan(plan.prune | emptied, fold, positions)


def shorten(
    plan: Plan, score: torch.Tensor, evaluate: Callable[[Plan], float], floor: float
) -> tuple[Plan, int]:
    """The most shortened ``plan`` whose ``evaluate`` stays at or above ``floor`` (positions ranked by
    ``score``), and how many (layer, position) pairs its model has no more; each distinct plan is evaluated
    once."""
    pairs = int((~score.isnan()).sum())
    seen: dict[str, float] = {}

    def ok(n: int) -> bool:
        candidate = shortened(plan, score, n)
        if candidate is plan:
            return True
        key = json.dumps(candidate.to_dict(), sort_keys=True)
        if key not in seen:
            seen[key] = evaluate(candidate)
        return seen[key] >= floor

    best = shortened(plan, score, largest(pairs, ok))
    if best is plan:
        return plan, 0
    layers_left = len(best.positions) or sum(
        1 for i in range(score.shape[0]) if not score[i, 0].isnan() and Unit(i, "prefix") not in best.prune
    )
    length = len(next(iter(best.positions.values()))) if best.positions else score.shape[1]
    return best, pairs - layers_left * length
