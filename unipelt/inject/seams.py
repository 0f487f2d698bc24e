"""Seams for the two architectures that compute attention inline (MPNet, DeBERTa-v2).

They do not call transformers' pluggable attention function, so the prefix cannot enter there. For them the
attention module's ``forward`` is replaced, on the instance only, by a short function that recomputes q/k/v
with the module's own projections and position terms and then calls the same core as every other model
(:func:`unipelt.inject.attention.attend_with_prefix`). When the call has no prefix the class's own forward
runs, unchanged. Prefix columns get no position bias: they have no position.
"""

from __future__ import annotations

import types

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from unipelt.errors import UniPELTError
from unipelt.inject import attention
from unipelt.inject.attention import prefix_for


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool and mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask.bool(), torch.finfo(dtype).min
    )


def _refuse_attention_weights(output_attentions: bool) -> None:
    if output_attentions:
        raise UniPELTError(
            "output_attentions is not available with prefix-tuning on this architecture (its attention runs "
            "through SDPA here); call the model without output_attentions, or inside model.disabled()"
        )


def mpnet_forward(
    self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs
):
    """MPNetSelfAttention with a prefix: its own q/k/v/o and relative position bias, prefix columns unbiased."""
    prefix = prefix_for(self, hidden_states.shape[0], hidden_states.shape[1], hidden_states.dtype)
    if prefix is None:
        return type(self).forward(
            self, hidden_states, attention_mask, position_bias, output_attentions, **kwargs
        )
    _refuse_attention_weights(output_attentions)
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q = self.q(hidden_states).view(shape).transpose(1, 2)
    k = self.k(hidden_states).view(shape).transpose(1, 2)
    v = self.v(hidden_states).view(shape).transpose(1, 2)
    bias = _additive(attention_mask, q.dtype)
    if position_bias is not None:
        bias = position_bias if bias is None else position_bias + bias
    dropout = self.dropout.p if self.training else 0.0
    context, _ = attention.attend_with_prefix(
        sdpa_attention_forward,
        self,
        q,
        k,
        v,
        bias,
        prefix,
        dropout=dropout,
        scaling=self.attention_head_size**-0.5,
    )
    return (self.o(context.reshape(*hidden_states.shape[:-1], -1)),)


def deberta_forward(
    self,
    hidden_states,
    attention_mask,
    output_attentions=False,
    query_states=None,
    relative_pos=None,
    rel_embeddings=None,
):
    """DisentangledSelfAttention with a prefix: content-to-position terms for real keys only."""
    prefix = prefix_for(self, hidden_states.shape[0], hidden_states.shape[1], hidden_states.dtype)
    if prefix is None:
        return type(self).forward(
            self, hidden_states, attention_mask, output_attentions, query_states, relative_pos, rel_embeddings
        )
    _refuse_attention_weights(output_attentions)
    if query_states is not None:
        raise UniPELTError(
            "prefix-tuning on DeBERTa-v2 supports self-attention only, not separate query states"
        )
    heads = self.num_attention_heads
    batch, length = hidden_states.shape[:2]
    q = self.transpose_for_scores(self.query_proj(hidden_states), heads)  # (B*H, T, D)
    k = self.transpose_for_scores(self.key_proj(hidden_states), heads)
    v = self.transpose_for_scores(self.value_proj(hidden_states), heads)
    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    bias = _additive(attention_mask, q.dtype)
    if self.relative_attention:
        rel = self.disentangled_attention_bias(
            q, k, relative_pos, self.pos_dropout(rel_embeddings), scale_factor
        )
        rel = rel.view(batch, heads, length, -1)
        bias = rel if bias is None else rel + bias
    dropout = self.dropout.p if self.training else 0.0
    context, _ = attention.attend_with_prefix(
        sdpa_attention_forward,
        self,
        q.view(batch, heads, length, -1),
        k.view(batch, heads, length, -1),
        v.view(batch, heads, length, -1),
        bias,
        prefix,
        dropout=dropout,
        scaling=(q.shape[-1] * scale_factor) ** -0.5,
    )
    return (context.reshape(batch, length, -1), None)


SEAMS = {"mpnet": mpnet_forward, "deberta": deberta_forward}


def install_seam(module: torch.nn.Module, seam: str) -> None:
    """Swap the seam in as the instance's forward (for inline-attention models only)."""
    if seam in SEAMS:
        module.forward = types.MethodType(SEAMS[seam], module)


def remove_seam(module: torch.nn.Module) -> None:
    module.__dict__.pop("forward", None)  # the instance attribute; the class method shows through again
