"""The batch loop, re-exported from :mod:`unipelt.running.loop` for the serving modules."""

from unipelt.running.loop import (
    chunks,
    forward_batches,
    logits_and_labels,
    model_device,
    model_dtype,
    to_model,
)

__all__ = ["chunks", "forward_batches", "logits_and_labels", "model_device", "model_dtype", "to_model"]
