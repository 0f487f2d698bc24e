"""``torch.compile`` for a UniPELT model's single-task calls.

A compiled graph holds one task's modules as constants and reads no context variable (see
:mod:`unipelt.inject.context`), so :meth:`UniPELTModel.compile` compiles only the path a call for one task
takes; everything that depends on the caller's thread state stays eager: mixed-task batches,
``disabled()``, ``observe()``, ``collect_gates()`` and ``with model.eager():``. A compiled call publishes no
gate values (``gate_values()`` is empty after it); run it inside ``model.eager()`` to read them.

``torch.compile(model)`` works too: dynamo then traces the whole ``forward``, which takes the same path for
the task named by ``task=`` or the model's default task.
"""

from __future__ import annotations

from typing import Any

import torch


class CompiledForward:
    """The compiled single-task forward of one model instance; a deep copy compiles its own on first use."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)
        self._fn: Any = None

    def __deepcopy__(self, memo: dict) -> CompiledForward:
        return CompiledForward(self.options)  # the compiled function is bound to the original model

    def __call__(self, model: torch.nn.Module, args: tuple, kwargs: dict, task: str) -> Any:
        if self._fn is None:
            self._fn = torch.compile(model.traced_forward, **self.options)
        return self._fn(args, kwargs, task)
