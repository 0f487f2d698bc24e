"""How prefix keys/values reach attention, exactly, on every supported architecture.

Passing a prefix as ``past_key_values`` (what PEFT does) shifts position ids by the prefix length and puts
the prefix into the KV cache; outputs then differ from the model the prefix was meant to extend. Instead
we concatenate the gated prefix to the keys and values at the attention function itself, after positions
are applied and after the cache is updated:

- models that call transformers' pluggable attention function get ours, registered as ``unipelt_sdpa`` /
  ``unipelt_eager`` (same mask builders as ``sdpa`` / ``eager``). Modules without a prefix site (cross
  attention) and a disabled model pass straight through to the original function.
- Swin calls the interface once per window, with its relative position bias (and the shifted windows' mask)
  as the additive mask: the prefix columns added to that mask are zeros, so the prefix gets no position bias,
  and each window of a row attends to that row's prefix (:mod:`unipelt.inject.windows` maps rows to windows).
- MPNet and DeBERTa-v2 compute attention inline; for them a short seam (:mod:`unipelt.inject.seams`)
  recomputes q/k/v with the module's own projections and position terms, then calls the same core. Prefix
  columns get no position bias.

Each row attends to the prefix of its own task: a mixed-task batch pads the tasks' prefixes to one length and
masks the padding, so a row's result equals running it alone.

The mask grows by P always-visible columns (a causal mask is built explicitly, offset for the cache).
A gate that is one number per example scales the prefix keys and values directly. A per-token gate (decoders)
must scale them per query; we do that exactly inside one SDPA call by widening each head: queries become
[q, g·q], real keys [k, 0], prefix keys [0, p_k], so scores are q·k and g·(q·p_k); values [v, 0] and [0, p_v]
give both halves of the output, and the prefix half is scaled by g again. With one query per row (every
step of cached generation) the per-token gate is one number per row, and the plain scaling is exact and
cheaper: no widened heads, no copy of the whole KV cache per step.

A prefix in the parallel form (:mod:`unipelt.modules.prefix`) does not join that softmax: the real attention
runs as the model's own, and the prefix adds softmax(q · p_k) p_v over its own P positions, scaled by its gate.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from unipelt.inject.context import LAYER, current_layer, tracing


def _extend_mask(
    mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    p_len: int,
    causal: bool,
    device: torch.device,
    valid: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Put P prefix columns in front of an attention mask (bool or additive), building a causal one if needed.

    ``valid`` (B or 1, P) marks which prefix columns each row sees (rows of tasks with shorter or no prefix in
    a mixed-task batch, alignment padding); None means every row sees all of them.
    """
    if mask is None:
        if not (causal and q_len > 1) and valid is None:
            return None
        if causal and q_len > 1:
            rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
            mask = (torch.arange(k_len, device=device)[None, :] <= rows)[None, None]
        else:  # one row of the mask, broadcast over the queries
            mask = torch.ones(1, 1, 1, k_len, dtype=torch.bool, device=device)
    if mask.dim() == 2:
        raise ValueError(
            "prefix-tuning needs a 4D attention mask; flash-attention's 2D masks are not supported"
        )
    if valid is None:
        extra = (
            mask.new_ones(*mask.shape[:-1], p_len)
            if mask.dtype == torch.bool
            else mask.new_zeros(*mask.shape[:-1], p_len)
        )
    else:
        rows = max(valid.shape[0], mask.shape[0])
        seen = valid[:, None, None, :].expand(rows, mask.shape[1], mask.shape[2], -1)
        extra = (
            seen
            if mask.dtype == torch.bool
            else torch.zeros_like(seen, dtype=mask.dtype).masked_fill(~seen, torch.finfo(mask.dtype).min)
        )
        mask = mask.expand(rows, -1, -1, -1)
    return torch.cat([extra, mask], dim=-1)


def _alignment(p_len: int, keys: int) -> int:
    """Invisible zero columns to add to a prefix of ``p_len`` so that prefix and keys fill whole KEY_ALIGN's.

    PyTorch's CPU flash attention runs its softmax over the keys in vectors of 16 and takes a scalar path for
    the rest: 128 keys plus a prefix of 10 cost about 1.4x the 128 keys alone, 144 with 6 masked ones about
    the same as 128. The padding columns are zero and masked, so the result is unchanged.
    """
    return -(keys + p_len) % KEY_ALIGN


def _visible(valid: torch.Tensor | None, p_len: int, pad: int, device: torch.device) -> torch.Tensor | None:
    """Which of the ``p_len + pad`` prefix columns each row sees: ``valid`` (or all) and none of the padding."""
    if not pad:
        return valid
    if valid is None:
        return (torch.arange(p_len + pad, device=device) < p_len)[None]
    return F.pad(valid, (0, pad))


KEY_ALIGN = 16  # see _alignment


class Prefix(NamedTuple):
    """The prefix a call's rows attend to in one layer.

    ``kv``: keys and values, each (B or 1, Hkv, P, D), batch 1 when one task has the whole batch (broadcast,
    not copied); ``valid``: (B, P) which columns exist for each row, None when all do; ``gate``: the prefix gate
    per row (B,) or per row and token (B, T), None when ungated.
    """

    kv: tuple[torch.Tensor, torch.Tensor]
    valid: torch.Tensor | None
    gate: torch.Tensor | None


class Prefixes(NamedTuple):
    """A call's prefixes in one layer, by form: ``concat`` joins the real keys' softmax (the paper's),
    ``parallel`` has a softmax of its own; either is None when no row's task has a prefix of that form."""

    concat: Prefix | None
    parallel: Prefix | None


def _gather_prefixes(
    call: Any,
    index: int,
    batch: int,
    kv_heads: int,
    head_dim: int,
    q_len: int,
    dtype: torch.dtype,
    parallel: bool,
) -> Prefix | None:
    """The prefix (of the form ``parallel`` says) of each row's task in layer ``index``, which columns exist,
    and each row's prefix gate.

    One task for the whole batch (the usual case) keeps that task's prefix at batch 1, without copying. A
    mixed batch pads every task's prefix to the longest one and marks the padding as invisible.
    """
    tasks = call.context.tasks
    found = []
    for group in call.groups:
        encoder = tasks[group.task].prefix
        if encoder is None or index in encoder.pruned_layers or encoder.parallel != parallel:
            continue
        found.append(
            (group, encoder.attention_kv(index, kv_heads, head_dim, dtype), group.gates.get("prefix"))
        )
    if not found:
        return None
    if len(found) == 1 and found[0][0].rows is None:
        _, kv, gate = found[0]
        return Prefix(kv, None, gate)
    longest = max(kv[0].shape[2] for _, kv, _ in found)
    per_token = any(gate is not None and gate.dim() == 2 for _, _, gate in found)
    kv = None
    valid = torch.zeros(batch, longest, dtype=torch.bool, device=found[0][1][0].device)
    gates = torch.zeros((batch, q_len) if per_token else (batch,), dtype=dtype, device=valid.device)
    for group, (keys, values), gate in found:
        rows = group.rows if group.rows is not None else torch.arange(batch, device=valid.device)
        length = keys.shape[2]
        padded = F.pad(torch.stack([keys, values]), (0, 0, 0, longest - length))  # (2, 1, Hkv, Pmax, D)
        if kv is None:
            kv = padded.new_zeros(2, batch, *padded.shape[2:])
        kv = kv.index_copy(1, rows, padded.expand(-1, len(rows), -1, -1, -1))
        valid[rows, :length] = True
        if gate is None:
            gate = torch.ones(len(rows), dtype=dtype, device=valid.device)
        gate = gate.to(dtype)
        if per_token:
            gate = gate[:, -q_len:] if gate.dim() == 2 else gate[:, None].expand(-1, q_len)
        gates = gates.index_copy(0, rows, gate)
    keys, values = kv.unbind(0)
    return Prefix((keys, values), valid, gates)


def attend_with_prefix(
    inner: Any,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prefixes: Prefixes,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Attention with the call's prefixes: over [prefix; keys] for a concatenated prefix, scaled by its gate,
    plus a parallel prefix's own attention. q (B,H,Q,D), k/v (B,Hkv,K,D).

    Under ``model.observe`` the attention without the prefix is computed too and shown to the observer."""
    call = None if tracing() else LAYER.get()  # a traced call has no observer and keeps no mask
    masks = None if call is None else call.context.prefix_masks
    if prefixes.concat is None:
        output, weights = inner(module, query, key, value, attention_mask, **kwargs)
    else:
        output, weights = _attend(
            inner, module, query, key, value, attention_mask, prefixes.concat, masks, **kwargs
        )
    if prefixes.parallel is not None:
        extra, own = _parallel(query, prefixes.parallel, kwargs.get("scaling"))
        output = output + extra
        # eager attention reports weights: the prefix's own come first, as concat's do
        if weights is not None:
            weights = torch.cat([own.to(weights.dtype), weights], dim=-1)
    observer = None if call is None else call.context.observer
    if observer is not None:
        plain, _ = inner(module, query, key, value, attention_mask, **kwargs)
        observer(call.index, "prefix", "attention", plain, output, call.context.mask)
    return output, weights


def _parallel(
    query: torch.Tensor, prefix: Prefix, scaling: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A parallel prefix's output, (B, Q, H, D) like the attention functions': each query's softmax over the
    P prefix keys of its row's task, times their values, times the row's (or token's) gate; and that softmax,
    (B, H, Q, P). In a mixed-task batch a row whose task has no such prefix has zero keys, values and gate
    (:func:`_gather_prefixes`), so it gets zeros."""
    kv, valid, gate = prefix
    batch, heads, q_len, head_dim = query.shape
    keys, values = kv  # (B or 1, Hkv, P, D) each
    # Grouped-query attention: the queries of the heads sharing a key head attend to it as one block, so the
    # prefix is never copied per head.
    grouped = query.reshape(batch, keys.shape[1], -1, head_dim)  # (B, Hkv, heads per key head * Q, D)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)) * (head_dim**-0.5 if scaling is None else scaling)
    if valid is not None:  # a mixed-task batch: a finite fill keeps rows with no column free of NaN
        scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, values).view(batch, heads, q_len, head_dim)
    weights = weights.view(batch, heads, q_len, -1)
    if gate is not None:
        gate = gate.to(query.dtype)
        output = output * (gate[:, -q_len:] if gate.dim() == 2 else gate[:, None])[:, None, :, None]
    return output.transpose(1, 2), weights


def _attend(
    inner: Any,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prefix: Prefix,
    masks: dict | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """:func:`attend_with_prefix` without the observer. ``masks``: the call's extended masks, which every layer
    of a single-task call shares (same model mask, lengths and prefix), so each is built once per call."""
    batch, _, q_len, head_dim = query.shape
    (prefix_k, prefix_v), valid, gate = prefix
    if valid is not None:
        masks = None  # a mixed-task batch: which columns exist depends on the layer's prefixes
    causal = kwargs.pop("is_causal", None)
    causal = bool(getattr(module, "is_causal", False) if causal is None else causal)
    if gate is not None and gate.dim() == 2 and q_len == 1:
        # One query per row (a cached decoding step): its gate is the row's, no widening.
        gate = gate if gate.shape[1] == 1 else gate[:, -1]  # (B, 1) or (B,): one value per row
    if gate is not None and (gate.dim() == 1 or q_len == 1):
        g = (gate if gate.dtype == prefix_k.dtype else gate.to(prefix_k.dtype)).view(-1, 1, 1, 1)
        prefix_k, prefix_v, gate = prefix_k * g, prefix_v * g, None
    p_len, pad = prefix_k.shape[2], 0
    if inner is sdpa_attention_forward and q_len > 1:  # one query (a decoding step) has no softmax to align
        pad = _alignment(p_len, key.shape[2])
        if pad:
            prefix_k, prefix_v = F.pad(prefix_k, (0, 0, 0, pad)), F.pad(prefix_v, (0, 0, 0, pad))
    entry = (id(attention_mask), q_len, key.shape[2], p_len, pad, causal)
    cached = None if masks is None else masks.get(entry)
    if cached is None:
        seen = _visible(valid, p_len, pad, query.device)
        mask = _extend_mask(attention_mask, q_len, key.shape[2], p_len + pad, causal, query.device, seen)
        if masks is not None:
            masks[entry] = (mask, attention_mask)  # holding the model's mask keeps its id unique in the call
    else:
        mask = cached[0]
    if prefix_k.shape[0] != batch:
        prefix_k, prefix_v = prefix_k.expand(batch, -1, -1, -1), prefix_v.expand(batch, -1, -1, -1)
    if gate is None:
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


LAYER_KEY = "_unipelt_layer"  # instance-dict key marking a self-attention module with its layer index


def prefix_for(
    module: torch.nn.Module,
    batch: int,
    q_len: int,
    dtype: torch.dtype,
    kv_shape: tuple[int, int] | None = None,
):
    """The prefixes this call's rows attend to in this attention module, or None (no prefix, cross attention,
    disabled model). ``kv_shape``: (key heads, head size) of this module's keys, when the caller has them
    (in a staged model such as Swin they change from stage to stage); else the model's, recorded on the
    module."""
    index = module.__dict__.get(LAYER_KEY)
    if index is None:
        return None
    call = current_layer(index)
    if call is None or not call.context.enabled:
        return None
    kv_heads, head_dim = kv_shape or module.__dict__["_unipelt_kv_shape"]
    found = [
        _gather_prefixes(call, index, batch, kv_heads, head_dim, q_len, dtype, parallel)
        for parallel in (False, True)
    ]
    return None if all(prefix is None for prefix in found) else Prefixes(*found)


def unipelt_sdpa(module, query, key, value, attention_mask, **kwargs):
    prefix = prefix_for(module, query.shape[0], query.shape[2], key.dtype, (key.shape[1], key.shape[3]))
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return attend_with_prefix(
        sdpa_attention_forward, module, query, key, value, attention_mask, prefix, **kwargs
    )


def _model_eager(module: torch.nn.Module) -> Any:
    """The eager attention function of the module's own modeling file (they differ per model)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def unipelt_eager(module, query, key, value, attention_mask, **kwargs):
    inner = _model_eager(module)
    prefix = prefix_for(module, query.shape[0], query.shape[2], key.dtype, (key.shape[1], key.shape[3]))
    if prefix is None:
        return inner(module, query, key, value, attention_mask, **kwargs)
    return attend_with_prefix(inner, module, query, key, value, attention_mask, prefix, **kwargs)


AttentionInterface.register("unipelt_sdpa", unipelt_sdpa)
AttentionInterface.register("unipelt_eager", unipelt_eager)
AttentionMaskInterface.register("unipelt_sdpa", sdpa_mask)
AttentionMaskInterface.register("unipelt_eager", eager_mask)


def interface_name(original: str | None) -> str:
    """Our registered attention for a model's current one (sdpa unless it was eager)."""
    return "unipelt_eager" if original == "eager" else "unipelt_sdpa"
