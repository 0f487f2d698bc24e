"""What the bottleneck adapter reads on pre-norm decoders: its input over its per-token RMS (``adapter_input``).

A pre-norm decoder's feed-forward outputs reach norms in the thousands in deep layers. An adapter reading them
raw changes its layer's output in proportion to that norm for the same weights, so one optimizer step moves a
deep layer far more than a shallow one. Reading the RMS-normalised output makes its update the same at any
scale; encoders keep the paper's adapter.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_decoder_gates import random_text, scaled_llama
from tiny_models import tiny_model

from unipelt import add_unipelt
from unipelt.modules import BottleneckAdapter


def _trained_adapter(normalise: bool, gated: bool = False) -> BottleneckAdapter:
    torch.manual_seed(0)
    adapter = BottleneckAdapter(32, 8, gated=gated, normalise_gate=normalise, normalise_input=normalise)
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
    return adapter


@pytest.mark.parametrize("normalise", [True, False])
def test_the_update_does_not_grow_with_the_input_scale_when_normalised(normalise):
    adapter = _trained_adapter(normalise)
    h = torch.randn(2, 5, 32)
    with torch.no_grad():
        small = adapter(h.clone()) - h
        large = adapter(1000 * h) - 1000 * h
    if normalise:
        assert torch.allclose(large, small, rtol=1e-3, atol=1e-3)
    else:  # the paper's adapter on the raw state: relu is positively homogeneous, so the update scales too
        assert (large - small).abs().max() > 100 * small.abs().max()


@pytest.mark.parametrize("normalise", [True, False])
def test_the_gate_sharing_the_down_matmul_gives_the_separate_result(normalise):
    """With a gate and an input that read the same tensor, one matmul computes both: same output and gate."""
    adapter = _trained_adapter(normalise, gated=True).eval()
    h = 300 * torch.randn(2, 5, 32)
    group = SimpleNamespace(
        gates={}, prepared={}, mask_for=lambda hidden: None
    )  # one task's rows, no padding
    with torch.no_grad():
        joint = adapter.apply("output", h, h.clone(), group)
        gate = adapter.gate(h, None, adapter.pooling)["adapter"]
        separate = adapter(h.clone(), gate)
    assert adapter._joint_gate()
    assert torch.allclose(group.gates["adapter"], gate, atol=1e-6)
    assert torch.allclose(joint, separate, rtol=1e-5, atol=1e-3)


def test_untrained_adapter_on_a_scaled_decoder_is_the_identity():
    base = scaled_llama(32)
    model = add_unipelt(scaled_llama(32), "adapter").eval()
    assert all(m.normalise_input for m in model.modules() if isinstance(m, BottleneckAdapter))
    for inputs in random_text(2):
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, base(**inputs).logits)


def test_one_step_moves_deep_and_shallow_layers_alike_on_a_scaled_decoder():
    """Same Adam step, same data: the largest per-layer change of the adapter's output stays near its size at
    unit scale with normalised input, and grows with the feed-forward norm with raw input."""
    inputs = random_text(1)[0]
    changes = {}
    for view in ("rms", "raw"):
        model = add_unipelt(scaled_llama(32), "adapter", adapter_input=view)
        adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=1e-3)
        for _ in range(2):  # up first (down's gradient is zero while up is), then both
            model(**inputs, labels=inputs["input_ids"]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        probe = torch.randn(4, 32) * 3000
        with torch.no_grad():
            changes[view] = max((a(probe.clone()) - probe).norm(dim=-1).max().item() for a in adapters)
    assert changes["rms"] < 0.1 and changes["raw"] > 1000 * changes["rms"]


def test_encoders_keep_the_paper_adapter():
    model = add_unipelt(tiny_model("bert"), "unipelt")
    assert not any(m.normalise_input for m in model.modules() if isinstance(m, BottleneckAdapter))
