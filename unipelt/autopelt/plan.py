"""Reading and writing the structure plan of a run's checkpoint (the plan itself and applying it:
:mod:`unipelt.plan`, part of the core)."""

from __future__ import annotations

import json
from pathlib import Path

from unipelt.checkpoint import CONFIG_NAME, read_checkpoint_config, write_json
from unipelt.plan import PLAN_KEY, Plan, Unit, apply_plan, gate_site, plan_from_meta, task_units

__all__ = [
    "Plan",
    "Unit",
    "apply_plan",
    "describe",
    "gate_site",
    "plan_from_meta",
    "read_plan",
    "task_units",
    "write_plan",
]


def read_plan(checkpoint: str | Path) -> Plan | None:
    """The plan stored in a task checkpoint's config, or None."""
    return plan_from_meta(read_checkpoint_config(checkpoint))


def write_plan(checkpoint: str | Path, plan: Plan | None) -> None:
    """Store ``plan`` in a task checkpoint's config (None removes it: the trained structure comes back)."""
    meta = read_checkpoint_config(checkpoint)
    meta.pop(PLAN_KEY, None)
    if plan is not None and not plan.empty:
        meta[PLAN_KEY] = plan.to_dict()
    write_json(Path(checkpoint) / CONFIG_NAME, meta)


def describe(plan: Plan) -> str:
    return json.dumps(plan.to_dict())
