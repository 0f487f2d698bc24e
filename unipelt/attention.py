"""How prefix keys/values reach attention, exactly, on every supported architecture.

Passing a prefix as ``past_key_values`` (what PEFT does) shifts position ids by the prefix length and puts
the prefix into the KV cache; outputs then differ from the model the prefix was meant to extend. Instead
we concatenate the gated prefix to the keys and values at the attention function itself, after positions
are applied and after the cache is updated:

- models that call transformers' pluggable attention function get ours, registered as ``unipelt_sdpa`` /
  ``unipelt_eager`` (same mask builders as ``sdpa`` / ``eager``). Modules without a prefix site (cross
  attention) and a disabled model pass straight through to the original function.
- MPNet and DeBERTa-v2 compute attention inline; for them a short seam recomputes q/k/v with the module's
  own projections and position terms, then calls the same core. Prefix columns get no position bias.

The mask grows by P always-visible columns (a causal mask is built explicitly, offset for the cache).
A gate that is one number per example scales the prefix keys and values directly. A per-token gate (decoders)
must scale them per query; we do that exactly inside one SDPA call by widening each head: queries become
[q, g·q], real keys [k, 0], prefix keys [0, p_k], so scores are q·k and g·(q·p_k); values [v, 0] and [0, p_v]
give both halves of the output, and the prefix half is scaled by g again.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from unipelt.errors import UniPELTError


class PrefixSite:
    """Per-layer link from an attention module to its prefix slice and prefix gate (a plain object, no params)."""

    def __init__(self, runtime: Any, layer: int, kv_heads: int, head_dim: int) -> None:
        self.runtime, self.layer, self.kv_heads, self.head_dim = runtime, layer, kv_heads, head_dim
        self.gate: torch.Tensor | None = None  # set by the layer's gate hook each forward
        self.original_forward: Any = None

    def active(self) -> bool:
        return self.runtime.enabled and self.runtime.prefix is not None

    def keys_values(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's prefix as (kv_heads, P, head_dim) keys and values."""
        prefix = self.runtime.prefix_heads(self.kv_heads, self.head_dim)[self.layer]  # (2, kv_heads, P, D)
        if prefix.dtype != dtype:
            prefix = prefix.to(dtype)
        return prefix[0], prefix[1]


def _extend_mask(
    mask: torch.Tensor | None, q_len: int, k_len: int, p_len: int, causal: bool, device: torch.device
) -> torch.Tensor | None:
    """Add P visible columns in front of an attention mask (bool or additive), building a causal one if needed."""
    if mask is None:
        if not (causal and q_len > 1):
            return None
        rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
        visible = torch.arange(k_len, device=device)[None, :] <= rows
        return torch.cat([visible.new_ones(q_len, p_len), visible], dim=-1)[None, None]
    if mask.dim() == 2:
        raise ValueError(
            "prefix-tuning needs a 4D attention mask; flash-attention's 2D masks are not supported"
        )
    extra = (
        mask.new_ones(*mask.shape[:-1], p_len)
        if mask.dtype == torch.bool
        else mask.new_zeros(*mask.shape[:-1], p_len)
    )
    return torch.cat([extra, mask], dim=-1)


def attend_with_prefix(
    inner: Any,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    site: PrefixSite,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Attention over [prefix; keys] with the prefix scaled by its gate. q (B,H,Q,D), k/v (B,Hkv,K,D)."""
    batch, _, q_len, head_dim = query.shape
    prefix_k, prefix_v = site.keys_values(key.dtype)
    p_len = prefix_k.shape[1]
    causal = kwargs.pop("is_causal", None)
    causal = getattr(module, "is_causal", False) if causal is None else causal
    mask = _extend_mask(attention_mask, q_len, key.shape[2], p_len, bool(causal), query.device)
    prefix_k = prefix_k.unsqueeze(0).expand(batch, -1, -1, -1)
    prefix_v = prefix_v.unsqueeze(0).expand(batch, -1, -1, -1)
    gate = site.gate
    if gate is None or gate.dim() == 1:
        if gate is not None:
            scale = gate.to(key.dtype).view(-1, 1, 1, 1)
            prefix_k, prefix_v = prefix_k * scale, prefix_v * scale
        key = torch.cat([prefix_k, key], dim=2)
        value = torch.cat([prefix_v, value], dim=2)
        return inner(module, query, key, value, mask, is_causal=False, **kwargs)
    # Per-token gate: widen each head so one attention call applies g per query (see module docstring).
    g = gate.to(query.dtype)[:, None, -q_len:, None]  # (B, 1, Q, 1)
    zeros_p, zeros_k = torch.zeros_like(prefix_k), torch.zeros_like(key)
    query = torch.cat([query, query * g], dim=-1)
    key = torch.cat([torch.cat([zeros_p, prefix_k], -1), torch.cat([key, zeros_k], -1)], dim=2)
    value = torch.cat([torch.cat([zeros_p, prefix_v], -1), torch.cat([value, zeros_k], -1)], dim=2)
    if kwargs.get("scaling") is None:
        kwargs["scaling"] = head_dim**-0.5
    output, weights = inner(module, query, key, value, mask, is_causal=False, **kwargs)  # (B, Q, H, 2D)
    output = output[..., :head_dim] + g.transpose(1, 2) * output[..., head_dim:]
    return output, weights


def _site_of(module: torch.nn.Module) -> PrefixSite | None:
    site = module.__dict__.get("_unipelt_site")
    return site if site is not None and site.active() else None


def unipelt_sdpa(module, query, key, value, attention_mask, **kwargs):
    site = _site_of(module)
    if site is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return attend_with_prefix(
        sdpa_attention_forward, module, query, key, value, attention_mask, site, **kwargs
    )


def _model_eager(module: torch.nn.Module) -> Any:
    """The eager attention function of the module's own modeling file (they differ per model)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def unipelt_eager(module, query, key, value, attention_mask, **kwargs):
    inner = _model_eager(module)
    site = _site_of(module)
    if site is None:
        return inner(module, query, key, value, attention_mask, **kwargs)
    return attend_with_prefix(inner, module, query, key, value, attention_mask, site, **kwargs)


AttentionInterface.register("unipelt_sdpa", unipelt_sdpa)
AttentionInterface.register("unipelt_eager", unipelt_eager)
AttentionMaskInterface.register("unipelt_sdpa", sdpa_mask)
AttentionMaskInterface.register("unipelt_eager", eager_mask)


def interface_name(original: str | None) -> str:
    """Our registered attention for a model's current one (sdpa unless it was eager)."""
    return "unipelt_eager" if original == "eager" else "unipelt_sdpa"


# --- Seams for the two architectures that compute attention inline -------------------------------------


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
    site: PrefixSite = self.__dict__["_unipelt_site"]
    if not site.active():
        return site.original_forward(
            hidden_states, attention_mask, position_bias, output_attentions, **kwargs
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
    context, _ = attend_with_prefix(
        sdpa_attention_forward,
        self,
        q,
        k,
        v,
        bias,
        site,
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
    site: PrefixSite = self.__dict__["_unipelt_site"]
    if not site.active():
        return site.original_forward(
            hidden_states, attention_mask, output_attentions, query_states, relative_pos, rel_embeddings
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
    context, _ = attend_with_prefix(
        sdpa_attention_forward,
        self,
        q.view(batch, heads, length, -1),
        k.view(batch, heads, length, -1),
        v.view(batch, heads, length, -1),
        bias,
        site,
        dropout=dropout,
        scaling=(q.shape[-1] * scale_factor) ** -0.5,
    )
    return (context.reshape(batch, length, -1), None)


SEAMS = {"mpnet": mpnet_forward, "deberta": deberta_forward}


def install_seam(module: torch.nn.Module, seam: str, site: PrefixSite) -> None:
    """Point a module at its prefix site; for inline-attention models also swap in the seam forward."""
    module.__dict__["_unipelt_site"] = site
    if seam in SEAMS:
        site.original_forward = module.forward
        module.forward = types.MethodType(SEAMS[seam], module)


def remove_seam(module: torch.nn.Module) -> None:
    site = module.__dict__.pop("_unipelt_site", None)
    if site is not None and site.original_forward is not None:
        del module.forward  # the instance attribute; the class method shows through again
