"""Compiling a UniPELT model: the calls that run one task go through one compiled graph."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from unipelt.compiling import CompiledForward
from unipelt.errors import UniPELTError
from unipelt.heads import LABELLED, with_task_loss
from unipelt.inject.context import (
    COLLECT,
    DISABLED,
    EAGER,
    OBSERVE,
    TRACED,
    set_for_model,
)

if TYPE_CHECKING:
    from unipelt.model import UniPELTModel


class CompiledCalls:
    """Calls of one task through a compiled graph (:mod:`unipelt.compiling`), the rest eager."""

    def compile(self, **options: Any) -> UniPELTModel:
        """Compile the calls that run one task with ``torch.compile(**options)`` (see :mod:`unipelt.compiling`);
        the rest stays eager. Outputs equal the eager model's within float rounding. Returns the model."""
        self._compiled = CompiledForward(options)
        return self

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Run this model uncompiled inside this block (this thread), e.g. to read ``gate_values()``."""
        token = set_for_model(EAGER, self.injector.key, True)
        try:
            yield
        finally:
            EAGER.reset(token)

    def _compiled_task(self, task: str | list[str] | None, args: tuple, kwargs: dict) -> str | None:
        """The one task a call runs when the compiled graph may serve it, else None (run eagerly)."""
        key = self.injector.key
        if key in DISABLED.get() or key in EAGER.get() or key in OBSERVE.get() or key in COLLECT.get():
            return None
        if task is None:
            return self.active_task
        if isinstance(task, str):
            return task if task in self.tasks else None
        names = set(task)
        if len(names) != 1 or not names <= set(self.tasks):
            return None
        return next(iter(names)) if len(task) == self.injector.batch_size(args, kwargs) else None

    def traced_forward(self, args: tuple, kwargs: dict, task: str | list[str] | None) -> Any:
        """``forward`` while ``torch.compile`` traces it: one task (``task=`` or the default), routed through
        :data:`~unipelt.inject.context.TRACED` since a graph cannot read context variables."""
        if task is not None and not isinstance(task, str):
            raise UniPELTError(
                "a compiled model runs one task per call; run mixed-task batches on the uncompiled model"
            )
        name = (
            task or self.injector.default_task or (next(iter(self.tasks)) if len(self.tasks) == 1 else None)
        )
        labels = kwargs.get("labels")
        own_loss = labels is not None and name is not None and self.tasks[name].kind in LABELLED
        if own_loss:
            kwargs = {k: v for k, v in kwargs.items() if k != "labels"}
        TRACED.route = (self.injector.key, name)
        output = self.base_model(*args, **kwargs)
        TRACED.route = None
        if own_loss:
            output = with_task_loss(output, labels, self.tasks, name, [name])
        return output
