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

The step then searches in two stages, each a binary search for the most it can take with the validation
metric at or above the budget's floor, as the prune and fold steps do: first it empties whole layers, lowest
total score first (a layer without prefix is where the time goes: its attention runs without the extra keys,
the mask and the concatenation); then it shortens the prefix of the layers left to ``P'`` positions each, every
layer keeping its own highest-scoring ones, so the prefix keeps one (layers, 2, P', width) form that loading,
export and serving already handle.

A parallel prefix (a gated prefix on a decoder, :mod:`unipelt.modules.prefix`) has a softmax of its own: its
mass is its share of that softmax, what dropping it changes the same formula applied to the prefix's own
output, scaled by the gate; the ranking is the same.

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


def _live_layers(score: torch.Tensor) -> list[int]:
    """Layers with a prefix (a row of scores), lowest total score first."""
    live = [i for i in range(score.shape[0]) if not bool(score[i].isnan().any())]
    return sorted(live, key=lambda i: (float(score[i].sum()), i))


def shortened(plan: Plan, score: torch.Tensor, emptied: int, length: int) -> Plan:
    """``plan`` with the prefix of the ``emptied`` lowest-scoring layers pruned and every other layer keeping
    its ``length`` highest-scoring positions (``plan`` itself when that changes nothing)."""
    live = _live_layers(score)
    gone = {Unit(i, "prefix") for i in live[:emptied]}
    if not gone and length >= score.shape[1]:
        return plan
    positions = {}
    if length < score.shape[1]:
        for i in live[emptied:]:
            ranked = sorted(range(score.shape[1]), key=lambda p, i=i: (-float(score[i, p]), p))
            positions[i] = tuple(sorted(ranked[:length]))
    fold = {unit: value for unit, value in plan.fold.items() if unit not in gone}
    return Plan(plan.prune | gone, fold, positions)


def shorten(
    plan: Plan, score: torch.Tensor, evaluate: Callable[[Plan], float], floor: float
) -> tuple[Plan, dict[str, int]]:
    """The most shortened ``plan`` whose ``evaluate`` stays at or above ``floor`` (positions ranked by
    ``score``), with how many layers it empties and the prefix length it leaves; each distinct plan is
    evaluated once."""
    seen: dict[str, float] = {}

    def ok(candidate: Plan) -> bool:
        if candidate is plan:
            return True
        key = json.dumps(candidate.to_dict(), sort_keys=True)
        if key not in seen:
            seen[key] = evaluate(candidate)
        return seen[key] >= floor

    full = score.shape[1]
    live = len(_live_layers(score))
    emptied = largest(live, lambda n: ok(shortened(plan, score, n, full)))
    if emptied == live:
        return shortened(plan, score, emptied, full), {"layers_emptied": emptied, "length": 0}
    cut = largest(full - 1, lambda d: ok(shortened(plan, score, emptied, full - d)))
    return shortened(plan, score, emptied, full - cut), {"layers_emptied": emptied, "length": full - cut}
