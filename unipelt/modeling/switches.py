"""Switching a UniPELT model's modules off, reading its gates, observing its modules, grouping its parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from unipelt.inject.context import (
    COLLECT,
    DISABLED,
    LAST_GATES,
    OBSERVE,
    Observer,
    set_for_model,
)


class Switches:
    """Switching the added modules off, reading and collecting gates, observing modules; the trainable
    parameters by kind."""

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the plain base model in this block (this thread): no added module, gate or task head."""
        token = DISABLED.set(DISABLED.get() | {self.injector.key})
        try:
            yield
        finally:
            DISABLED.reset(token)

    @property
    def enabled(self) -> bool:
        """False inside a ``disabled()`` block of this thread."""
        return self.injector.key not in DISABLED.get()

    def gate_values(self) -> dict[int, dict[str, torch.Tensor]]:
        """Gate values of this thread's latest forward, per layer and site: (B,) per example or (B, T) per token.

        In a mixed-task batch a row whose task has no such site holds NaN."""
        return {layer: dict(sites) for layer, sites in LAST_GATES.get().get(self.injector.key, {}).items()}

    @contextlib.contextmanager
    def collect_gates(self) -> Iterator[list[torch.Tensor]]:
        """Collect the live (differentiable) gate values of the forwards run in this block, e.g. for a penalty."""
        collected: list[torch.Tensor] = []
        token = set_for_model(COLLECT, self.injector.key, collected)
        try:
            yield collected
        finally:
            COLLECT.reset(token)

    @contextlib.contextmanager
    def observe(self, observer: Observer) -> Iterator[None]:
        """Show ``observer`` what every added module changes in the forwards run in this block (this thread
        only; see :class:`~unipelt.inject.context.Observer`). Meant for analysis passes: it costs a copy per
        module call and, with a prefix, a second attention call per layer."""
        token = set_for_model(OBSERVE, self.injector.key, observer)
        try:
            yield
        finally:
            OBSERVE.reset(token)

    def gate_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """The gates' parameters of one task (or of all tasks), e.g. for their own learning rate."""
        tasks = [self._task(task)] if task else list(self.tasks.values())
        return [p for t in tasks for p in t.gate_parameters()]

    def parameter_groups(self, task: str | None = None) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by kind, for separate learning rates: the prefix encoder, the other added
        modules, gates and head. The prefix has its own group because its MLP can grow the prefix keys until
        attention goes mostly to the prefix and every input gets the same representation (benchmarks/RESULTS.md,
        STS-B seed 2 at K = 1000)."""
        tasks = [self._task(task)] if task else list(self.tasks.values())
        gate_ids = {id(p) for t in tasks for p in t.gate_parameters()}
        head = [p for t in tasks for p in t.head.parameters()]
        prefix = [p for t in tasks if t.prefix is not None for p in t.prefix.parameters()]
        other = gate_ids | {id(p) for p in head} | {id(p) for p in prefix}
        added = [p for t in tasks for p in t.parameters() if id(p) not in other]
        return {"added": added, "prefix": prefix, "gates": self.gate_parameters(task), "head": head}

    def parameter_counts(self, task: str | None = None) -> dict[str, int]:
        """Trainable parameters of a task per sub-module, and totals with and without the prefix MLP.

        ``prefix`` is the size of the prefix vectors (what inference keeps); ``prefix_mlp`` the
        reparameterisation MLP that exists only while training (0 once ejected or when stored flat).
        """
        return self._task(task).parameter_table(self.base_model)

    def freeze_gates(self, frozen: bool = True) -> None:
        """Hold gates at their current values (gate warm-up) or release them."""
        for parameter in self.gate_parameters():
            parameter.requires_grad_(not frozen)
