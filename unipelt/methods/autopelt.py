"""``autopelt``: hard-concrete gates that choose the modules per layer under a latency cost; the closed ones
are pruned and the open ones folded when the run ends (:mod:`unipelt.autopelt.training`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unipelt.methods.base import Method, MethodRun, RunContext

if TYPE_CHECKING:
    from unipelt.training.config import TrainConfig

log = logging.getLogger("unipelt")

GATE_LR = 0.05  # log alpha must travel several units to close within a run: RESULTS.md, "AutoPELT"
GATE_WARMUP = 1 / 3  # share of the steps the gates are held: RESULTS.md, "AutoPELT"


@dataclass(frozen=True)
class AutoPELT(Method):
    """Gates at their own, constant rate, held for the first third of the steps; regression heads start at the
    labels' mean (RESULTS.md, "AutoPELT")."""

    label_mean_start: bool = True
    constant_rate_groups: tuple[str, ...] = ("gates",)

    def default_gate_lr(self, base: float) -> float:
        return GATE_LR

    def gate_warmup(self, config: TrainConfig, max_steps: int) -> int:
        if config.gate_warmup_steps is not None:
            return config.gate_warmup_steps
        return int(round(GATE_WARMUP * max_steps))

    def attach(self, context: RunContext) -> MethodRun:
        """The latency table, the loss terms, the gate schedule and tracker, and the prune-and-fold finish."""
        from unipelt.autopelt.training import Session  # torch: loaded by a run, not by the CLI's parser

        if context.splits.regression and self.regression_start(context.config) == "zero":
            log.warning(
                "autopelt with the regression head started at zero stayed at the labels' mean in 6 of 9 "
                "3-epoch STS-B runs, with its default --regression-bias label-mean in 3 of 9 (benchmarks/"
                "RESULTS.md, AutoPELT); train long enough that validation leaves the mean"
            )
        return Session(
            context.config,
            context.unipelt,
            context.run_dir,
            context.datasets,
            context.collate,
            context.compute_metrics,
        )


AUTOPELT = AutoPELT("autopelt", lr=5e-4)
