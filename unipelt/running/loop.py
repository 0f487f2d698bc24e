"""The one batch loop of inference: collate -> forward on the model's device and dtype -> outputs on the host.

Every place that runs a model over batches (eval, predict, optimize, autopelt's evaluation during training,
unit measurement, serving, export checks, tagging, chat scoring) goes through :func:`forward_batches`, so a
model placed on a GPU (or cast to bf16) is fed there and its outputs come back as float32 CPU tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

Forward = Callable[[Iterable[Mapping[str, Any]]], Iterator[np.ndarray]]
"""A model as a function of collated batches to its outputs, one float32 array per batch: a PyTorch model
through :func:`model_forward`, or an ONNX Runtime session."""


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def to_model(batch: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Tensors (and numpy arrays) of a batch on ``device``; floating ones cast to ``dtype``, ids kept as they are."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        out[key] = value
    return out


def chunks(
    rows: Sequence[Any], collate: Callable[[list[Any]], Mapping[str, Any]], size: int
) -> Iterator[Any]:
    """Collated batches of ``size`` consecutive rows."""
    for start in range(0, len(rows), size):
        yield collate(list(rows[start : start + size]))


def _logits(output: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    return output.logits


@torch.inference_mode()
def forward_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    keep: tuple[str, ...] = ("labels",),
    select: Callable[[Any, Mapping[str, Any]], torch.Tensor] = _logits,
    **call: Any,
) -> Iterator[tuple[torch.Tensor, Mapping[str, Any]]]:
    """For each batch: (the selected output as a float32 CPU tensor, the batch as given).

    Fields named in ``keep`` (labels) stay out of the forward; ``select(output, batch)`` picks what comes back
    (default: the logits), with the batch on the model's device, so a reduction such as a summed loss is
    computed there; ``call`` is passed to every forward (e.g. ``task=...``). Runs under inference mode; the caller's code between batches does not (it is a generator
    wrapped by torch, which sets the mode around each step only). Right after a batch is yielded, the model's
    per-call state (``model.gate_values()``) is that batch's.
    """
    device, dtype = model_device(model), model_dtype(model)
    for batch in batches:
        placed = to_model(batch, device, dtype)
        output = model(**{k: v for k, v in placed.items() if k not in keep}, **call)
        yield select(output, placed).float().cpu(), batch


def logits_and_labels(
    model: nn.Module, batches: Iterable[Mapping[str, Any]], **call: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """All logits of ``batches`` (concatenated, float32) and their labels when the batches have them."""
    logits, labels = [], []
    for output, batch in forward_batches(model, batches, **call):
        logits.append(output.numpy())
        if "labels" in batch:
            value = batch["labels"]
            labels.append(value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
    return np.concatenate(logits), (np.concatenate(labels) if labels else None)


def model_forward(model: nn.Module) -> Forward:
    """The model as a :data:`Forward`: its logits per batch, through :func:`forward_batches`."""

    def forward(batches: Iterable[Mapping[str, Any]]) -> Iterator[np.ndarray]:
        for output, _ in forward_batches(model, batches):
            yield output.numpy()

    return forward
