"""The inference fast path computes what the plain path computes: joined weights follow every change of their
parts, the layer's joint matmul equals the separate projections, aligned prefix keys change nothing, a short
call's updates equal the accumulated ones, kept prefix keys follow the stored prefix; and a cached decoding
step stays a few operations per layer."""

from __future__ import annotations

import pytest
import torch
from tiny_models import batch, perturb, tiny_model
from torch.profiler import ProfilerActivity, profile

from unipelt.inject import attention
from unipelt.model import add_unipelt
from unipelt.modules import base
from unipelt.modules.lora import LoRALayer


def _model(arch: str, preset: str = "unipelt"):
    model = add_unipelt(tiny_model(arch), preset)
    perturb(model)
    return model.eval()


def assert_same_gates(ours: dict, reference: dict) -> None:
    """Every gate of ``reference`` ({layer: {site: values}}) equals ours."""
    for layer, sites in reference.items():
        for site, value in sites.items():
            torch.testing.assert_close(ours[layer][site], value, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_joined_weights_follow_changes_of_their_parts(arch):
    model, inputs = _model(arch), batch(arch)
    with torch.no_grad():
        model(**inputs)  # fills the caches
        task = model.tasks[next(iter(model.tasks))]
        for layer in task.layers:
            layer.gate.linear.weight.add_(0.3)
            layer.adapter.down.weight.mul_(1.5)
            layer.adapter.up.bias.add_(0.2)
            layer.lora.value.lora_A.weight.mul_(-1.0)
        cached = model(**inputs).logits
    with torch.enable_grad():  # joins the weights afresh
        fresh = model(**inputs).logits
    torch.testing.assert_close(cached, fresh.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_joint_matmul_equals_separate_projections(arch, monkeypatch):
    """With the joint matmul switched off (no module offers a projection) the outputs and gates are the same."""
    model, inputs = _model(arch), batch(arch)
    with torch.no_grad():
        joint = model(**inputs).logits
        joint_gates = model.gate_values()
        monkeypatch.setattr(LoRALayer, "attention_input_projections", lambda self: [])
        separate = model(**inputs).logits
        separate_gates = model.gate_values()
    torch.testing.assert_close(joint, separate, atol=1e-5, rtol=1e-5)
    assert_same_gates(joint_gates, separate_gates)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_aligned_prefix_keys_change_nothing(arch, monkeypatch):
    model, inputs = _model(arch, "prefix"), batch(arch)
    with torch.no_grad():
        aligned = model(**inputs).logits
        monkeypatch.setattr(attention, "KEY_ALIGN", 1)
        plain = model(**inputs).logits
    torch.testing.assert_close(aligned, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,preset", [("bert", "unipelt"), ("llama", "unipelt"), ("llama", "lora")])
def test_few_rows_update_equals_the_accumulated_one(arch, preset, monkeypatch):
    """A short call (at most FEW_ROWS token rows) adds LoRA's and the adapter's updates with a fresh product;
    a longer one accumulates them with addmm. Both give the same outputs and gates."""
    model, inputs = _model(arch, preset), batch(arch, batch_size=2, length=5)
    with torch.no_grad():
        few = model(**inputs).logits
        few_gates = model.gate_values()
        monkeypatch.setattr(base, "FEW_ROWS", 0)
        accumulated = model(**inputs).logits
        accumulated_gates = model.gate_values()
    torch.testing.assert_close(few, accumulated, atol=1e-5, rtol=1e-5)
    assert_same_gates(few_gates, accumulated_gates)


def _decode(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits of ``steps`` cached greedy decoding steps after a prefill of ``ids``."""
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    cache, step, mask, logits = out.past_key_values, out.logits[:, -1:].argmax(-1), torch.ones_like(ids), []
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(step)], dim=1)
        out = model(input_ids=step, attention_mask=mask, past_key_values=cache, use_cache=True)
        cache, step = out.past_key_values, out.logits[:, -1:].argmax(-1)
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


def _causal(preset: str = "unipelt", **overrides):
    model = add_unipelt(tiny_model("llama", head="causal-lm"), preset, **overrides)
    perturb(model)
    model.eject_prefix_mlp()
    return model.eval()


def test_kept_prefix_keys_follow_changes_of_the_stored_prefix():
    """Decoding keeps each layer's prefix keys and values shaped for attention; changing the stored prefix in
    place, or replacing it, gives what prefix keys made afresh (with gradients on) give."""
    model = _causal()
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    encoder = model.tasks[next(iter(model.tasks))].prefix
    with torch.no_grad():
        _decode(model, ids, 3)  # keeps them
        encoder.prefix.mul_(-2.0)
        kept = _decode(model, ids, 3)
    with torch.enable_grad():
        fresh = _decode(model, ids, 3)
    torch.testing.assert_close(kept, fresh.detach(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        encoder.prefix = torch.nn.Parameter(encoder.prefix.detach() * 0.5)
        replaced = _decode(model, ids, 3)
    with torch.enable_grad():
        fresh = _decode(model, ids, 3)
    torch.testing.assert_close(replaced, fresh.detach(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(replaced, kept, atol=1e-3)


def _top_level_ops(model, step: dict) -> int:
    """aten operators called from Python (not from inside another operator) in one call."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**step)
    return sum(
        1
        for event in prof.events()
        if event.name.startswith("aten::")
        and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::"))
    )


@pytest.mark.parametrize("form,most", [("concat", 29), ("parallel", 40)])
def test_a_cached_decoding_step_adds_few_operations_per_layer(form, most):
    """UniPELT (gated LoRA on query and value, gated prefix, gated adapter) adds few tensor operations per layer
    to a cached decoding step of one row: its gates, the two LoRA pairs, the adapter and the prefix (columns
    joined to the keys, or a parallel prefix's own attention), and nothing per step that depends on the prefix
    alone (its keys are shaped once)."""
    plain, model = tiny_model("llama", head="causal-lm"), _causal(prefix_form=form)
    ids = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    counts = []
    with torch.inference_mode():
        for m in (plain, model):
            out = m(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            step = {
                "input_ids": out.logits[:, -1:].argmax(-1),
                "attention_mask": torch.ones(1, 7, dtype=torch.long),
                "past_key_values": out.past_key_values,
                "use_cache": True,
            }
            m(**step)  # the kept weights and prefix keys are made by the first step
            step["attention_mask"] = torch.ones(1, 8, dtype=torch.long)
            counts.append(_top_level_ops(m, step))
    layers = len(model.injector.layers)
    assert (counts[1] - counts[0]) / layers <= most, counts
