"""Per-call state: what one forward pass needs that the frozen model's modules do not pass to each other.

The hooks need to know, for the call at hand, which rows of the batch belong to which task, which tokens are
padding, whether the added modules are switched on, and where to put gate values. None of that may live on
the model: two threads calling one model at once, or gradient checkpointing re-running a layer during
backward, would see another call's state. So:

- :class:`ForwardContext` is made afresh for every top-level call of the base model and reached through a
  ``contextvars.ContextVar``, which is per thread (and per asyncio task);
- :class:`LayerCall` is made by each transformer layer's pre-hook for that layer's run and holds the gate
  values of that run, one :class:`RowGroup` per task present in the batch;
- gradient checkpointing re-runs a layer's forward in backward, after the top-level call has returned; the
  injector wraps the layer's checkpoint function so the re-run sees the LayerCall of the first run, and
  routes, masks and gates exactly like it.

Anything shared (the switch of a ``disabled()`` block, the task chosen by ``with model.task(...)``, an
observer of ``with model.observe(...)``) is a context variable too, so it is scoped to the caller's thread.

``torch.compile`` cannot trace context variables. While dynamo traces a call, the call's state is kept in
:data:`TRACED` instead: the model's ``forward`` puts the routing there and the hooks their context and layer
call, all inside the traced frame. Dynamo resolves those reads while tracing, so the compiled graph holds the
task's modules as constants and reads nothing shared when it runs; the only run-time effect is dynamo
writing the holder's final, empty state back. Use :func:`current_forward` and :func:`current_layer` to read
the state in either mode.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch

_EMPTY: Mapping[int, Any] = MappingProxyType({})  # per-model variables start empty, read-only

FORWARD: contextvars.ContextVar[ForwardContext | None] = contextvars.ContextVar(
    "unipelt_forward", default=None
)
LAYER: contextvars.ContextVar[LayerCall | None] = contextvars.ContextVar("unipelt_layer", default=None)
# Routing asked for by the caller (``model(..., task=...)``, ``model.generate(..., task=...)``).
ROUTE: contextvars.ContextVar[tuple[int, Any] | None] = contextvars.ContextVar("unipelt_route", default=None)
# ids of models switched off by ``disabled()`` in this thread.
DISABLED: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "unipelt_disabled", default=frozenset()
)
# Task chosen by ``with model.task(name)`` per model id, in this thread.
ACTIVE: contextvars.ContextVar[Mapping[int, str]] = contextvars.ContextVar("unipelt_active", default=_EMPTY)
# Where a gate penalty collects live (non-detached) gate values, per model id.
COLLECT: contextvars.ContextVar[Mapping[int, list]] = contextvars.ContextVar(
    "unipelt_collect", default=_EMPTY
)
# The last forward's gate values per model id, for ``gate_values()`` of the caller that ran it.
LAST_GATES: contextvars.ContextVar[Mapping[int, dict]] = contextvars.ContextVar(
    "unipelt_last_gates", default=_EMPTY
)

# ids of models that run uncompiled in this thread (``with model.eager():``).
EAGER: contextvars.ContextVar[Mapping[int, bool]] = contextvars.ContextVar("unipelt_eager", default=_EMPTY)
# An observer per model id (``with model.observe(fn):``): it sees what each added module changes.
OBSERVE: contextvars.ContextVar[Mapping[int, Observer]] = contextvars.ContextVar(
    "unipelt_observe", default=_EMPTY
)


class Observer(Protocol):
    """Called once per added module per call while observing: ``kind`` is the module kind (``lora``,
    ``adapter``, ``ia3``, ``bitfit``, or ``prefix`` with role ``attention``), ``before`` / ``after`` the tensor
    it acts on without and with it (for the prefix: the attention output without and with the prefix), and
    ``mask`` the (B, T) padding mask aligned with them, None when nothing is padded. Observers must not change
    the tensors."""

    def __call__(
        self,
        layer: int,
        kind: str,
        role: str,
        before: torch.Tensor,
        after: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> None: ...


@dataclass
class Group:
    """Rows of a batch that one task handles: ``rows`` is None when it is the whole batch."""

    task: str
    rows: torch.Tensor | None

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """This group's rows of a batch-first tensor."""
        return tensor if self.rows is None else tensor.index_select(0, self.rows)


@dataclass
class ForwardContext:
    model_id: int
    groups: list[Group]
    enabled: bool = True
    mask: torch.Tensor | None = None  # (B, T) padding mask of the call, None when nothing is padded
    # layer -> that layer's row groups, whose ``gates`` hold the values per site once the layer has run
    gates: dict[int, list[RowGroup]] = field(default_factory=dict)
    live: list | None = None  # collector of live gate values for a gate penalty, when one is asked for
    tasks: Any = None  # the model's ModuleDict of tasks
    observer: Observer | None = None  # set by ``model.observe``; None on every ordinary call
    token: Any = None  # to restore the previous context at the end of the call
    # Attention masks extended by the prefix columns, built by the first layer that needs one and reused by
    # the others (unipelt.inject.attention)
    prefix_masks: dict = field(default_factory=dict)

    @property
    def single(self) -> bool:
        return len(self.groups) == 1 and self.groups[0].rows is None


class RowGroup:
    """One task's rows inside one layer run: what a module's ``apply`` sees (see modules.base.RowGroup)."""

    __slots__ = ("task", "rows", "mask", "gates", "prepared")

    def __init__(self, task: str, rows: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        self.task, self.rows, self.mask = task, rows, mask
        self.gates: dict[str, torch.Tensor] = {}
        # What the layer's modules computed from the attention input for these rows, e.g. LoRA's down
        # projections of the query and value in the gate's matmul; used by the projections that read it.
        self.prepared: dict[str, torch.Tensor] = {}

    def mask_for(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The padding mask aligned with ``hidden`` (B, T, d): its last T columns (a KV cache adds earlier ones)."""
        mask = self.mask
        if mask is None or mask.shape[0] != hidden.shape[0]:
            return None
        return mask[:, -hidden.shape[1] :]

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """This group's rows of a batch-first tensor."""
        return tensor if self.rows is None else tensor.index_select(0, self.rows)


class LayerCall:
    """The state of one transformer layer's run: its index, the call's context, one RowGroup per task and
    the attention input (``source``) that the groups' ``prepared`` values were computed from."""

    __slots__ = ("index", "context", "groups", "source")

    def __init__(self, index: int, context: ForwardContext) -> None:
        self.index, self.context = index, context
        self.source: torch.Tensor | None = None
        mask = context.mask
        self.groups = [
            RowGroup(g.task, g.rows, None if mask is None or g.rows is None else mask.index_select(0, g.rows))
            for g in context.groups
        ]
        if mask is not None and context.single:
            self.groups[0].mask = mask

    def for_replay(self) -> LayerCall:
        """The same routing (rows, masks) with empty gate slots, for gradient checkpointing's re-run.

        The re-run computes the gates again; writing them into this run's slots would put tensors of the
        re-run's graph into the call's published gate values, and through them keep the whole re-computed
        layer's activations alive until the next forward (on SmolLM2 with APL: about 1.2 GB more peak memory,
        which checkpointing was meant to save).
        """
        replay = LayerCall.__new__(LayerCall)
        replay.index, replay.context, replay.source = self.index, self.context, None
        replay.groups = [RowGroup(g.task, g.rows, g.mask) for g in self.groups]
        return replay


class _Traced:
    """The per-call state of a call dynamo is tracing (see the module docstring); empty at run time."""

    __slots__ = ("route", "context", "layer")

    def __init__(self) -> None:
        self.route: tuple[int, Any] | None = None
        self.context: ForwardContext | None = None
        self.layer: LayerCall | None = None


TRACED = _Traced()


def tracing() -> bool:
    """True while dynamo traces the call (``torch.compile``): context variables are out of reach then."""
    return torch.compiler.is_compiling()


def current_forward(model_id: int) -> ForwardContext | None:
    """The running call's context for the model with this id, if it is enabled."""
    context = TRACED.context if tracing() else FORWARD.get()
    if context is None or context.model_id != model_id or not context.enabled:
        return None
    return context


def current_layer(index: int) -> LayerCall | None:
    """The running call's state of layer ``index``, None when no enabled call runs it."""
    call = TRACED.layer if tracing() else LAYER.get()
    return call if call is not None and call.index == index else None


def set_for_model(var: contextvars.ContextVar, model_id: int, value: Any) -> contextvars.Token:
    """Set one model's entry of a per-model context variable (copy on write, so other threads are unaffected)."""
    current = dict(var.get())
    if value is None:
        current.pop(model_id, None)
    else:
        current[model_id] = value
    return var.set(current)
