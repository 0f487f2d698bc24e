"""The hooks inside one transformer layer: its start, its attention input, its projections, the heads.

- on each transformer layer, before it: a :class:`~unipelt.inject.context.LayerCall` for that layer's run
  (under gradient checkpointing, set again around the re-run in backward, see :class:`_Replaying`);
- on each self-attention module (or the layer's ``gate_site``, for attention over windows, see
  :mod:`unipelt.inject.windows`): each task's layer gates and whatever its modules prepare from the attention
  input (LoRA's down projections of the query, key and value, in the same matmul as the gate); a projection
  whose input is another tensor (a window of it) computes its own;
- on each projection some task uses (by role: query, key, value, output, ffn_input, ffn_output): call that
  task's modules on that task's rows, output or input side; one task for the whole batch takes no gathering;
- on each base head module: run each row's task head instead.

:class:`LayerHooks` is the part of :class:`~unipelt.inject.hooks.Injector` that holds these hooks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from unipelt.inject.context import (
    LAYER,
    TRACED,
    LayerCall,
    Observer,
    current_forward,
    current_layer,
    tracing,
)


class _Replaying:
    """Wraps a layer's gradient-checkpointing function so the re-run in backward sees the same LayerCall.

    transformers checkpoints a layer's ``forward`` (its hooks, ours included, stay outside), and the re-run
    happens during backward, after the call's context is gone. The LayerCall of the first run is captured in
    a closure and set again around the re-run, in whatever thread runs backward.
    """

    def __init__(self, checkpoint: Any) -> None:
        self.checkpoint = checkpoint

    def __call__(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        call = LAYER.get()
        first = True  # the first run of `run` is the forward itself; later ones are re-runs in backward

        def run(*inner_args: Any, **inner_kwargs: Any) -> Any:
            nonlocal first
            replay = call if first or call is None else call.for_replay()
            first = False
            token = LAYER.set(replay)
            try:
                return function(*inner_args, **inner_kwargs)
            finally:
                LAYER.reset(token)

        return self.checkpoint(run, *args, **kwargs)


def _through(parts: list, group: Any, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """Apply one task's modules in order: on the output when there is one, else on the input."""
    for role, part in parts:
        if out is None:
            x = part.apply(role, x, None, group)
        else:
            out = part.apply(role, x, out, group)
    return x if out is None else out


def _observed(
    parts: list, group: Any, x: torch.Tensor, out: torch.Tensor | None, index: int, observer: Observer
) -> torch.Tensor:
    """:func:`_through` for an observed call: each module's input-or-output before and after it is shown to
    the observer (a copy of ``before``, since modules may work in place)."""
    for role, part in parts:
        before = (x if out is None else out).clone()
        after = part.apply(role, x, out, group)
        if out is None:
            x = after
        else:
            out = after
        observer(index, part.kind, role, before, after, group.mask_for(before))
    return x if out is None else out


class LayerHooks:
    """Layer, attention, projection and head hooks of an injector (``self.tasks``, ``self.key`` are its)."""

    tasks: nn.ModuleDict
    key: int

    def _layer_begin(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """The layer's call state. It stays set until the next layer's begins or the model's call ends (a
        stale one is never read: :func:`current_layer` matches the index), so a layer needs no end hook; its
        row groups are recorded now and their gate values read when the call ends."""
        context = current_forward(self.key)
        call = None if context is None else LayerCall(index, context)
        if tracing():
            TRACED.layer = call
            return
        LAYER.set(call)
        if call is None:
            return
        context.gates[index] = call.groups
        checkpointing = module.__dict__.get("_gradient_checkpointing_func")
        if checkpointing is not None and not isinstance(checkpointing, _Replaying):
            module._gradient_checkpointing_func = _Replaying(checkpointing)

    def _gates(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        call = current_layer(index)
        if call is None:
            return
        x = args[0] if args else kwargs["hidden_states"]
        call.source = x
        for group in call.groups:
            task = self.tasks[group.task]
            task.layers[index].prepare(group.take(x), group, task.pooling)

    def _site_output(self, index: int, roles: tuple[str, ...], module: nn.Module, args: tuple, output: Any):
        return self._route(index, roles, "output", args[0], output)

    def _site_input(self, index: int, roles: tuple[str, ...], module: nn.Module, args: tuple):
        x = self._route(index, roles, "input", args[0], None)
        return None if x is None else (x, *args[1:])

    def _route(
        self, index: int, roles: tuple[str, ...], when: str, x: torch.Tensor, out: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Each task's modules at this site on that task's rows: the new output (or input), None if unchanged."""
        call = current_layer(index)
        if call is None:
            return None
        result = out if when == "output" else x
        if x is not call.source:  # not the attention input: what was prepared from it does not apply
            for group in call.groups:
                group.prepared = {}
        changed = False
        observer = call.context.observer
        through = _through if observer is None else partial(_observed, index=index, observer=observer)
        for group in call.groups:
            parts = self.tasks[group.task].layers[index].at(roles, when)
            if not parts:
                continue
            if group.rows is None:  # one task for the whole batch: no gathering, in place where allowed
                return through(parts, group, x, out)
            # The input of an output site is gathered only when a module reads it (the adapter's would be the
            # feed-forward block's wide inner state).
            reads = out is None or any(part.reads_input(role, group) for role, part in parts)
            rows = through(
                parts, group, group.take(x) if reads else None, None if out is None else group.take(out)
            )
            if changed and not torch.is_grad_enabled():  # the copy made by the first task's rows is ours
                result.index_copy_(0, group.rows, rows)
            else:
                result, changed = result.index_copy(0, group.rows, rows), True
        return result if changed else None

    def _head(self, path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any):
        context = current_forward(self.key)
        if context is None:
            return None
        if context.single:
            head = self.tasks[context.groups[0].task].head_module(path)
            return None if head is None else head(*args, **kwargs)
        pieces = []
        for group in context.groups:
            head = self.tasks[group.task].head_module(path)
            piece = group.take(output) if head is None else head(group.take(args[0]), *args[1:], **kwargs)
            pieces.append((group.rows, piece))
        width = max(piece.shape[-1] for _, piece in pieces)
        first = pieces[0][1]
        # Tasks with fewer outputs leave NaN in the extra columns: slice a row's logits to its task's labels.
        result = first.new_full((output.shape[0], *first.shape[1:-1], width), float("nan"))
        for rows, piece in pieces:
            if piece.shape[-1] < width:
                piece = torch.nn.functional.pad(piece, (0, width - piece.shape[-1]), value=float("nan"))
            result = result.index_copy(0, rows, piece)
        return result
