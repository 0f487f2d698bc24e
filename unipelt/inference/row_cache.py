"""A KV cache whose rows come and go: the running batch of continuous batching.

Rows are aligned on the right: every row's newest token sits in the last column, and a row shorter than the
longest one is padded on the left with zero keys/values that its attention mask hides. So one decoding step
feeds one new token per row, at one shared cache column, while each row keeps its own positions (passed as
``position_ids``), task and length. A row joins with the cache of its own prefill; a finished row leaves, and
columns that no remaining row uses are cut from the left, so the cache never grows past its longest row.

The cache itself is a Transformers :class:`~transformers.DynamicCache`; only the tensors of its layers are
re-assembled when rows join or leave. Masked columns get exactly zero attention weight, so a row continues as
it would alone (up to float rounding of the wider batch).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from unipelt.errors import UniPELTError


def _layers(cache: DynamicCache) -> list:
    layers = list(cache.layers)
    for layer in layers:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise UniPELTError(
                "continuous batching needs a plain key/value cache in every layer; this model uses "
                f"{type(layer).__name__} (sliding-window or recurrent layers are not supported)"
            )
    return layers


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` (B, H, L, D) with ``width`` zero columns put in front of its sequence axis."""
    if width == 0:
        return tensor
    zeros = tensor.new_zeros(*tensor.shape[:2], width, tensor.shape[3])
    return torch.cat([zeros, tensor], dim=2)


class RowCache:
    """The cache and attention mask of the running rows, right-aligned (see the module docstring)."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, L) long: 1 where a row has a real token

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def add(self, cache: DynamicCache, length: int) -> None:
        """Append one row: the cache of its prefill (batch of one, ``length`` real tokens, no padding)."""
        mask = torch.ones(1, length, dtype=torch.long, device=_layers(cache)[0].keys.device)
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.width, length)
        mine, theirs = width - self.width, width - length
        for layer, new in zip(_layers(self.cache), _layers(cache)):
            layer.keys = torch.cat([_pad_left(layer.keys, mine), _pad_left(new.keys, theirs)])
            layer.values = torch.cat([_pad_left(layer.values, mine), _pad_left(new.values, theirs)])
        pad = self.mask.new_zeros
        self.mask = torch.cat(
            [
                torch.cat([pad(self.rows, mine), self.mask], dim=1),
                torch.cat([pad(1, theirs), mask], dim=1),
            ]
        )

    def step_mask(self) -> torch.Tensor:
        """The attention mask of a decoding step: every row's columns plus the new token's."""
        return torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)

    def stepped(self, mask: torch.Tensor) -> None:
        """Record that a decoding step ran with ``mask`` (the cache grew by that column)."""
        self.mask = mask

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), then cut the columns no kept row uses."""
        if not rows:
            self.cache = self.mask = None
            return
        if rows == list(range(self.rows)):
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.width
        self.mask = self.mask[:, start:]
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
