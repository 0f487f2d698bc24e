"""The inference fast path computes what the plain path computes: joined weights follow every change of their
parts, the layer's joint matmul equals the separate projections, aligned prefix keys change nothing."""

from __future__ import annotations

import pytest
import torch
from tiny_models import batch, perturb, tiny_model

from unipelt.inject import attention
from unipelt.model import add_unipelt
from unipelt.modules.lora import LoRALayer


def _model(arch: str, preset: str = "unipelt"):
    model = add_unipelt(tiny_model(arch), preset)
    perturb(model)
    return model.eval()


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
    for layer, sites in separate_gates.items():
        for site, value in sites.items():
            torch.testing.assert_close(joint_gates[layer][site], value, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_aligned_prefix_keys_change_nothing(arch, monkeypatch):
    model, inputs = _model(arch, "prefix"), batch(arch)
    with torch.no_grad():
        aligned = model(**inputs).logits
        monkeypatch.setattr(attention, "KEY_ALIGN", 1)
        plain = model(**inputs).logits
    torch.testing.assert_close(aligned, plain, atol=1e-5, rtol=1e-5)
