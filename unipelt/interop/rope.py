"""Moving prefix keys between our pinned positions and PEFT's shifted ones, on rotary-position models.

Under PEFT a prefix of length P sits in the KV cache, so the model numbers the real tokens P, P+1, ...; ours
keeps them at 0, 1, ... and adds the prefix at the attention function. Rotary embeddings make a score depend
on the difference of positions only: a query rotated by t + P against a key k (prefix keys are never rotated)
scores as a query rotated by t against R(P) k. So rotating the prefix keys by P positions converts ours to
PEFT's, and by -P back. Models without rotary embeddings are returned unchanged.
"""

from __future__ import annotations

import sys
from typing import Any

import torch


def rotary(base: Any) -> tuple[Any, Any] | None:
    """(rotary embedding module, the modeling file's apply_rotary_pos_emb), or None without rotary positions."""
    backbone = base.base_model
    embedding = getattr(backbone, "rotary_emb", None)
    apply = getattr(sys.modules[type(backbone).__module__], "apply_rotary_pos_emb", None)
    if embedding is None or apply is None:
        return None
    return embedding, apply


@torch.no_grad()
def rotate_prefix_keys(
    base: Any, keys: torch.Tensor, shift: int, dims: dict[str, int], inverse: bool = False
) -> torch.Tensor:
    """Prefix keys (layers, P, kv_dim) rotated by ``shift`` positions (``-shift`` with ``inverse``)."""
    found = rotary(base)
    if found is None:
        return keys
    embedding, apply = found
    layers, length, _ = keys.shape
    heads, head_dim = dims["num_key_value_heads"], dims["head_dim"]
    split = keys.reshape(layers, length, heads, head_dim).transpose(1, 2).float()  # (L, H, P, D)
    position = torch.full((1, 1), -shift if inverse else shift, dtype=torch.long, device=keys.device)
    cos, sin = embedding(split, position)  # (1, 1, D)
    rotated, _ = apply(split, split, cos, sin)
    return rotated.transpose(1, 2).reshape(keys.shape).to(keys.dtype)
