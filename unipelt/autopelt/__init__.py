"""AutoPELT: keep the sub-modules that matter, prune and fold the rest, deploy near the base model's cost.

- :mod:`~unipelt.autopelt.plan`: reading and writing a checkpoint's structure plan (prune / fold per layer and
  unit; the plan and applying it at load time are the core's, :mod:`unipelt.plan`);
- :mod:`~unipelt.autopelt.measure`: gate mean, spread and contribution of every unit on a data set;
- :mod:`~unipelt.autopelt.search`: thresholds from flags, or the most pruning under a validation budget;
- :mod:`~unipelt.autopelt.optimize`: ``unipelt optimize RUN`` end to end (and ``--restore``);
- :mod:`~unipelt.autopelt.latency`: forward timings, inference ratios and the latency table of training;
- :mod:`~unipelt.autopelt.report`: the kept / folded / pruned heatmap.
"""

from unipelt.autopelt.plan import read_plan, write_plan
from unipelt.plan import Plan, Unit, apply_plan, task_units

__all__ = ["Plan", "Unit", "apply_plan", "read_plan", "task_units", "write_plan"]
