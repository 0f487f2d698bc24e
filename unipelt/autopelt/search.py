"""Choosing what to prune and fold: from given thresholds, or the most under a validation-metric budget.

Thresholds (flags): units whose contribution is below ``threshold`` are pruned; of the rest, units whose gate
spread is below ``epsilon`` are frozen to their mean gate and folded.

Search (``max_drop``): units are ranked by contribution and by spread. A binary search finds the most
low-contribution units that can be pruned with the validation metric at most ``max_drop`` points below the
unoptimized model's; then, with those pruned, a second binary search finds the most low-spread units that can
be folded within the same budget. Each step evaluates the candidate model on the validation split, so the
search costs about ``2 * log2(units)`` evaluations. The metric is not exactly monotone in the number of pruned
units, so the search returns a good plan within budget, not the largest possible one; every evaluation is
kept in the trace of the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unipelt.autopelt.measure import UnitStats
from unipelt.plan import Plan, Unit


@dataclass
class Choice:
    plan: Plan
    threshold: float
    epsilon: float
    score: float  # validation metric of the chosen plan (fraction, e.g. 0.85)
    trace: list[dict[str, Any]] = field(default_factory=list)


def plan_from_thresholds(
    stats: list[UnitStats], threshold: float, epsilon: float, gated: bool = True
) -> Plan:
    """Prune units with contribution < threshold; fold the remaining ones whose gate spread < epsilon."""
    prune = {s.unit for s in stats if s.contribution < threshold}
    fold = {}
    if gated:
        fold = {
            s.unit: s.gate_mean
            for s in stats
            if s.unit not in prune and not math.isnan(s.gate_std) and s.gate_std < epsilon
        }
    return Plan(prune, fold)


def _between(low: float | None, high: float | None) -> float:
    """A threshold strictly above ``low`` and at most ``high`` (the two neighbouring sorted scores)."""
    if low is None:
        return 0.0 if high is None else min(0.0, high)
    if high is None:
        return math.nextafter(low, math.inf)
    return (low + high) / 2 if high > low else math.nextafter(low, math.inf)


def largest(count: int, ok: Callable[[int], bool]) -> int:
    """Largest n in [0, count] with ok(n), assuming ok is (roughly) monotone and ok(0) holds."""
    low, high = 0, count
    while low < high:
        middle = (low + high + 1) // 2
        if ok(middle):
            low = middle
        else:
            high = middle - 1
    return low


def search(
    stats: list[UnitStats],
    evaluate: Callable[[Plan], float],
    baseline: float,
    max_drop: float,
    gated: bool = True,
    fold_filter: Callable[[Plan], Plan] | None = None,
) -> Choice:
    """The plan that prunes, then folds, the most units with ``evaluate(plan) >= baseline - max_drop / 100``."""
    floor = baseline - max_drop / 100.0
    trace: list[dict[str, Any]] = []
    cache: dict[tuple, float] = {}

    def score(plan: Plan, step: str) -> float:
        key = (frozenset(plan.prune), frozenset(plan.fold))
        if key not in cache:
            cache[key] = evaluate(plan)
            trace.append(
                {"step": step, "pruned": len(plan.prune), "folded": len(plan.fold), "score": cache[key]}
            )
        return cache[key]

    by_contribution = sorted(stats, key=lambda s: s.contribution)

    def pruned(n: int) -> set[Unit]:
        return {s.unit for s in by_contribution[:n]}

    n_prune = largest(len(stats), lambda n: score(Plan(pruned(n), {}), "prune") >= floor)
    prune = pruned(n_prune)
    kept = [s for s in stats if s.unit not in prune]
    foldable = sorted((s for s in kept if gated and not math.isnan(s.gate_std)), key=lambda s: s.gate_std)

    def folded(n: int) -> Plan:
        plan = Plan(set(prune), {s.unit: s.gate_mean for s in foldable[:n]})
        return fold_filter(plan) if fold_filter else plan

    n_fold = largest(len(foldable), lambda n: score(folded(n), "fold") >= floor)
    plan = folded(n_fold)
    contributions = [s.contribution for s in by_contribution]
    threshold = _between(
        contributions[n_prune - 1] if n_prune else None,
        contributions[n_prune] if n_prune < len(contributions) else None,
    )
    spreads = [s.gate_std for s in foldable]
    epsilon = _between(
        spreads[n_fold - 1] if n_fold else None, spreads[n_fold] if n_fold < len(spreads) else None
    )
    return Choice(plan, threshold, epsilon, score(plan, "final"), trace)
