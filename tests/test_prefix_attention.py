"""Prefix-tuning at the attention level against an explicit reference: concatenate, mask, softmax, average."""

from __future__ import annotations

import pytest
import torch
from tiny_models import batch, perturb, tiny_model

import unipelt.inject.attention as attention
from unipelt import add_unipelt


def reference_attention(q, k, v, mask, causal, prefix_k, prefix_v, gate, scale, gate_on="prefix"):
    """Attention of q over [gate * prefix; keys], written out without SDPA and without the widening trick.

    q (B,H,Q,D); k, v (B,Hkv,K,D); prefix (Hkv,P,D); mask bool or additive (B|1, 1|H, Q, K) or None;
    gate None, (B,) or (B,Q). ``gate_on="real"`` applies the gate to the real keys/values instead (a wrong model).
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
    pk = prefix_k.repeat_interleave(heads // kv_heads, 0)[None]
    pv = prefix_v.repeat_interleave(heads // kv_heads, 0)[None]
    batch_size, _, q_len, _ = q.shape
    g = (
        torch.ones(batch_size, q_len)
        if gate is None
        else (gate[:, None].expand(-1, q_len) if gate.dim() == 1 else gate)
    )
    g = g[:, None, :, None]  # (B, 1, Q, 1): one gate per example and query
    if gate_on == "prefix":
        scores_p = g * (q @ pk.transpose(-1, -2)) * scale
        scores_r = (q @ k.transpose(-1, -2)) * scale
    else:
        scores_p = (q @ pk.transpose(-1, -2)) * scale
        scores_r = g * (q @ k.transpose(-1, -2)) * scale
    k_len = k.shape[2]
    if mask is not None:
        scores_r = scores_r.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores_r + mask
    elif causal:
        allowed = torch.arange(k_len)[None, :] <= torch.arange(q_len)[:, None] + (k_len - q_len)
        scores_r = scores_r.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(torch.cat([scores_p, scores_r], dim=-1), dim=-1)
    w_p, w_r = weights[..., : pk.shape[2]], weights[..., pk.shape[2] :]
    if gate_on == "prefix":
        out = (w_p @ pv) * g + w_r @ v
    else:
        out = w_p @ pv + (w_r @ v) * g
    return out.transpose(1, 2)  # (B, Q, H, D) like the attention functions


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    original = attention.attend_with_prefix

    def spy(inner, module, query, key, value, attention_mask, prefixes, **kwargs):
        output, weights = original(inner, module, query, key, value, attention_mask, prefixes, **kwargs)
        prefix = prefixes.concat or prefixes.parallel  # one task: one form, every row has the same prefix
        prefix_k, prefix_v = prefix.kv[0][0], prefix.kv[1][0]
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", False) if causal is None else causal
        calls.append(
            {
                "q": query,
                "k": key,
                "v": value,
                "mask": attention_mask,
                "causal": causal,
                "pk": prefix_k,
                "pv": prefix_v,
                "gate": prefix.gate,
                "parallel": prefixes.parallel is not None,
                "scale": kwargs.get("scaling") or query.shape[-1] ** -0.5,
                "out": output,
            }
        )
        return output, weights

    monkeypatch.setattr(attention, "attend_with_prefix", spy)
    return calls


def reference_parallel(q, k, v, mask, causal, prefix_k, prefix_v, gate, scale):
    """The model's own attention of q over the real keys, plus the gate times q's softmax over the prefix keys
    alone times the prefix values (the parallel form)."""
    plain = reference_attention(q, k, v, mask, causal, prefix_k[:, :0], prefix_v[:, :0], None, scale)
    heads, kv_heads = q.shape[1], k.shape[1]
    pk = prefix_k.repeat_interleave(heads // kv_heads, 0)[None]
    pv = prefix_v.repeat_interleave(heads // kv_heads, 0)[None]
    own = torch.softmax((q @ pk.transpose(-1, -2)) * scale, dim=-1) @ pv  # (B, H, Q, D)
    g = torch.ones(q.shape[0], q.shape[2]) if gate is None else gate
    g = g[:, None].expand(-1, q.shape[2]) if g.dim() == 1 else g
    return plain + (own * g[:, None, :, None]).transpose(1, 2)


@pytest.mark.parametrize(
    "arch,method,form",
    [
        ("bert", "unipelt-ap", "concat"),
        ("llama", "unipelt", "concat"),
        ("llama", "unipelt", "parallel"),
        ("qwen2", "unipelt-router", "parallel"),
        ("gpt2", "prefix", "concat"),
        ("mpnet", "unipelt", "concat"),
        ("deberta-v2", "unipelt", "concat"),
    ],
)
def test_prefix_attention_equals_explicit_reference(arch, method, form, recorded):
    unipelt = add_unipelt(tiny_model(arch), method, prefix_form=form)
    perturb(unipelt)
    with torch.no_grad():
        unipelt(**batch(arch))
    assert len(recorded) == 2  # one call per layer
    for call in recorded:
        assert call["parallel"] == (form == "parallel")
        if call["gate"] is not None:
            assert call["gate"].dim() == (2 if arch in ("llama", "qwen2", "gpt2") else 1)
        mask = call["mask"]
        if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
            mask = mask.bool()
        reference = reference_parallel if form == "parallel" else reference_attention
        expected = reference(
            call["q"],
            call["k"],
            call["v"],
            mask,
            call["causal"],
            call["pk"],
            call["pv"],
            call["gate"],
            call["scale"],
        )
        assert torch.allclose(call["out"], expected, atol=1e-5), (arch, (call["out"] - expected).abs().max())
        if call["gate"] is not None and form == "concat":
            wrong = reference_attention(
                call["q"],
                call["k"],
                call["v"],
                mask,
                call["causal"],
                call["pk"],
                call["pv"],
                call["gate"],
                call["scale"],
                gate_on="real",
            )
            assert not torch.allclose(call["out"], wrong, atol=1e-4), "the gate must scale the prefix only"


def test_prefix_gqa_decoder_with_padding_uses_padded_mask(recorded):
    unipelt = add_unipelt(tiny_model("llama"), "unipelt", prefix_form="concat")
    with torch.no_grad():
        unipelt(**batch("llama", pad=3))
    call = recorded[0]
    assert call["k"].shape[1] == 2 and call["q"].shape[1] == 4  # grouped-query attention
    assert call["mask"] is not None and call["mask"].dtype == torch.bool


def test_mpnet_seam_matches_the_models_own_math():
    """The MPNet seam against MPNet's attention written out by hand, with the prefix as extra keys/values."""
    unipelt = add_unipelt(tiny_model("mpnet"), "prefix")
    perturb(unipelt)
    module = unipelt.base_model.mpnet.encoder.layer[1].attention.attn
    seen = {}

    def pre(mod, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    def post(mod, args, kwargs, output):
        seen["out"] = output[0]

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, with_kwargs=True)
    inputs = batch("mpnet")
    with torch.no_grad():
        unipelt(**inputs)
        hidden = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]
        names = ["attention_mask", "position_bias"]
        extra = dict(zip(names, seen["args"][1:])) | {k: v for k, v in seen["kwargs"].items() if k in names}
        heads, size = module.num_attention_heads, module.attention_head_size
        split = lambda t: t.view(*t.shape[:2], heads, size).transpose(1, 2)  # noqa: E731
        q, k, v = split(module.q(hidden)), split(module.k(hidden)), split(module.v(hidden))
        prefix = unipelt.prefix()[1]  # layer 1: (2, P, d)
        pk, pv = split(prefix[0][None]), split(prefix[1][None])
        scores_r = q @ k.transpose(-1, -2) / size**0.5 + extra["position_bias"]
        if extra.get("attention_mask") is not None:
            scores_r = scores_r + extra["attention_mask"]
        scores_p = (q @ pk.transpose(-1, -2) / size**0.5).expand(-1, -1, -1, -1)
        weights = torch.softmax(torch.cat([scores_p, scores_r], -1), -1)
        context = weights[..., : pk.shape[2]] @ pv + weights[..., pk.shape[2] :] @ v
        expected = module.o(context.transpose(1, 2).reshape(*hidden.shape[:2], -1))
    assert torch.allclose(seen["out"], expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_prefix_does_not_shift_positions(arch, monkeypatch):
    """Real queries/keys of layer 0 are the same with and without the prefix (rotary/absolute positions intact)."""
    seen = []
    original = attention.sdpa_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((query, key))
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    unipelt = add_unipelt(tiny_model(arch), "prefix")
    inputs = batch(arch)
    with torch.no_grad():
        unipelt(**inputs)
        with_prefix = seen[0]
        seen.clear()
        with unipelt.disabled():
            unipelt(**inputs)
        without = seen[0]
    length = inputs["input_ids"].shape[1]
    aligned = length + 10 + (-(length + 10) % attention.KEY_ALIGN)  # masked columns align the keys
    assert with_prefix[1].shape[2] == aligned  # the prefix is there ...
    assert torch.equal(with_prefix[0], without[0])  # ... queries unchanged ...
    assert torch.equal(with_prefix[1][:, :, -length:], without[1])  # ... and the real keys too


def test_attention_weights_with_an_inline_seam_are_refused_not_silently_wrong():
    from unipelt.errors import UniPELTError

    unipelt = add_unipelt(tiny_model("mpnet"), "prefix")
    with pytest.raises(UniPELTError, match="output_attentions"):
        unipelt(**batch("mpnet"), output_attentions=True)
    with unipelt.disabled():
        assert unipelt(**batch("mpnet"), output_attentions=True).attentions is not None
