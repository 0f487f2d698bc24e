"""What each step of ``unipelt optimize`` saved: the model after each step, its validation metric, the added
parameters its forward still computes with, and its inference time as a ratio to the base model's.

The steps are cumulative plans: ``trained`` (nothing applied), ``prune`` (low-contribution units taken out),
``fold`` (constant gates folded into the weights) and ``shorten`` (the prefix positions that take the least
attention dropped, :mod:`unipelt.autopelt.prefix_step`). All step models are timed interleaved with the base
model in one loop (:func:`unipelt.autopelt.latency.inference_ratios`), so their ratios compare directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unipelt.autopelt.latency import inference_ratios
from unipelt.plan import Plan, planned_copy


def deployed_parameters(model: Any, name: str) -> int:
    """Added values task ``name``'s forward computes with: its modules, gates and head, and the prefix vectors
    of the layers that still attend to a prefix (a reparameterisation MLP counts as the vectors it yields;
    LoRA merged into the base weights counts as nothing)."""
    task = model.tasks[name]
    encoder = task.prefix
    total = sum(p.numel() for key, p in task.named_parameters() if not key.startswith("prefix."))
    if encoder is not None:
        live = [i for i in range(encoder.num_layers) if i not in encoder.pruned_layers]
        total += 2 * encoder.length * sum(encoder.kv_dims[i] for i in live)
    return total


def step_models(model: Any, name: str, steps: list[tuple[str, Plan]]) -> dict[str, Any]:
    """One model per step: the trained model itself for an empty plan, else a planned copy."""
    return {step: model if plan.empty else planned_copy(model, name, plan) for step, plan in steps}


def step_report(
    model: Any,
    name: str,
    steps: list[tuple[str, Plan]],
    score: Callable[[Any], dict[str, float]],
    base: Any | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per step: its plan's counts, validation metrics, deployed parameters and (with ``base``) inference
    ratios; and the step models by name."""
    models = step_models(model, name, steps)
    ratios = {}
    if base is not None:
        ratios = inference_ratios(base, models, int(base.config.vocab_size))
    rows = []
    for step, plan in steps:
        rows.append(
            {
                "step": step,
                "plan": plan.to_dict(),
                "pruned": len(plan.prune),
                "folded": len(plan.fold),
                "prefix_length": _prefix_length(models[step], name),
                "valid": score(models[step]),
                "parameters": deployed_parameters(models[step], name),
                "inference_ratio": {shape: row[step] for shape, row in ratios.items()},
                "base_ms": {shape: row["base_ms"] for shape, row in ratios.items()},
            }
        )
    return rows, models


def _prefix_length(model: Any, name: str) -> int:
    """Positions per layer of the task's prefix (0 when no layer attends to one)."""
    encoder = model.tasks[name].prefix
    if encoder is None or len(encoder.pruned_layers) == encoder.num_layers:
        return 0
    return int(encoder.length)


def step_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The steps as a printed table: metric, parameters, prefix length and each timed shape's ratio."""
    shapes = list(rows[0]["inference_ratio"]) if rows else []
    header = f"  {'step':<9}{'valid ' + metric:>18}{'parameters':>12}{'prefix P':>10}"
    header += "".join(f"{shape:>10}" for shape in shapes)
    lines = [header]
    for row in rows:
        value = row["valid"].get(metric)
        shown = "-" if value is None else f"{100 * value:.2f}"
        line = f"  {row['step']:<9}{shown:>18}{row['parameters']:>12,}{row['prefix_length']:>10}"
        line += "".join(f"{row['inference_ratio'][shape]:>9.3f}x" for shape in shapes)
        lines.append(line)
    return "\n".join(lines)
