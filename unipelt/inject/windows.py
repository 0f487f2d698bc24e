"""Attention over windows (Swin): each row of the batch enters attention as several consecutive rows.

Swin cuts a layer's (B, H*W, d) state into windows of w x w patches (padded to a multiple of w, shifted by
w/2 in every other block) and runs attention on (B * windows, w*w, d): the windows of row b are rows
b * n ... (b + 1) * n - 1 of the attention's batch, n = windows per image. Everything the injector routes
inside attention (the q/k/v/o projections' LoRA, IA3 and BitFit, and the prefix) is written for rows of the
batch, so while the attention module runs, its layer's :class:`~unipelt.inject.context.LayerCall` is
replaced by a view of it in window rows: each task's rows become the rows of their windows, each gate value
is repeated for every window of its row. The gates themselves are computed before that, from the whole
unpadded row (``Architecture.gates_from``), so a gate is a property of the image, not of its windows or of
the padding Swin adds to them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.inject.context import LAYER, TRACED, LayerCall, RowGroup, current_layer, tracing


class WindowedCall(LayerCall):
    """A layer call whose rows are windows; ``outer`` is the call it was made from, restored afterwards."""

    __slots__ = ("outer",)


def _images(call: LayerCall) -> int | None:
    """Rows of the batch: the tasks' rows together, or the length of any gate value; None if nothing says."""
    if any(group.rows is not None for group in call.groups):
        return sum(len(group.rows) for group in call.groups if group.rows is not None)
    for group in call.groups:
        for value in group.gates.values():
            return value.shape[0]
    return None


def in_windows(call: LayerCall, rows: int) -> WindowedCall:
    """``call`` for an attention input of ``rows`` rows, each batch row cut into consecutive windows."""
    images = _images(call)
    windows = 1 if images is None else rows // images
    if images is not None and windows * images != rows:
        raise UniPELTError(f"attention saw {rows} rows for a batch of {images}: not whole windows per row")
    view = WindowedCall.__new__(WindowedCall)
    view.index, view.context, view.outer = call.index, call.context, call
    view.source = None  # the projections read windows, not the gates' input
    view.groups = []
    for group in call.groups:
        spread = None
        if group.rows is not None:
            offsets = torch.arange(windows, device=group.rows.device)
            spread = (group.rows[:, None] * windows + offsets).reshape(-1)
        inner = RowGroup(group.task, spread, None)  # images have no padding mask
        for site, value in group.gates.items():
            if value.dim() != 1:
                raise UniPELTError("a gate per token cannot follow Swin's windows; use gate_pooling='mean'")
            inner.gates[site] = value.repeat_interleave(windows, dim=0)
        view.groups.append(inner)
    return view


def _set(call: LayerCall | None) -> None:
    if tracing():
        TRACED.layer = call
    else:
        LAYER.set(call)


def _enter(index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
    call = current_layer(index)
    if call is None or isinstance(call, WindowedCall):
        return
    x = args[0] if args else kwargs["hidden_states"]
    _set(in_windows(call, x.shape[0]))


def _leave(index: int, module: nn.Module, args: tuple, output: Any) -> None:
    call = current_layer(index)
    if isinstance(call, WindowedCall):
        _set(call.outer)


def install(attention: nn.Module, index: int) -> list[Any]:
    """Hooks that show ``attention`` (of layer ``index``) its layer's call in window rows; their handles."""
    return [
        attention.register_forward_pre_hook(partial(_enter, index), with_kwargs=True),
        attention.register_forward_hook(partial(_leave, index), always_call=True),
    ]
