"""Gates on pre-norm decoders: they read an RMS-normalised state and start mid-range whatever the residual scale.

A pre-norm decoder never normalises its residual stream; in deep layers of real LLMs (SmolLM2) the states a gate
reads reach norms in the thousands. The tiny LLaMA here is scaled to that regime, so a gate reading the raw
state saturates at 0 or 1 per token, and the normalised gate must not.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from tiny_models import DECODERS, ENCODERS, batch, perturb, save_as_before, tiny_model

from unipelt import add_unipelt, load_unipelt
from unipelt.analysis.gate_stats import collect_gate_stats
from unipelt.config import UniPELTConfig
from unipelt.gates import SigmoidGate
from unipelt.gates.normalise import INIT_LOGIT_STD
from unipelt.inject.architectures import ARCHITECTURES


def scaled_llama(hidden: int, seed: int = 0) -> torch.nn.Module:
    """A tiny causal LLaMA whose residual stream and feed-forward outputs have norms in the thousands, and whose
    norms' learnt weights are large (as in deep layers of trained pre-norm LLMs)."""
    torch.manual_seed(seed)
    config = tf.LlamaConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=hidden + 5,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = tf.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(3000.0)
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(3000.0)
            layer.input_layernorm.weight.mul_(200.0)
            layer.post_attention_layernorm.weight.mul_(200.0)
    return model


def random_text(count: int = 4, length: int = 12) -> list[dict[str, torch.Tensor]]:
    return [batch("llama", batch_size=3, length=length, pad=3, seed=seed) for seed in range(count)]


def gate_input_norms(model, base: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[float]:
    """Smallest per-token norm of each state a gate reads: attention inputs and feed-forward outputs."""
    norms: list[float] = []
    handles = []
    for layer in base.model.layers:
        handles.append(
            layer.self_attn.register_forward_pre_hook(
                lambda m, a, k: norms.append(k["hidden_states"].norm(dim=-1).min().item()), with_kwargs=True
            )
        )
        handles.append(
            layer.mlp.down_proj.register_forward_hook(
                lambda m, a, out: norms.append(out.norm(dim=-1).min().item())
            )
        )
    try:
        with torch.no_grad(), model.disabled():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return norms


def token_gates(model, inputs) -> list[torch.Tensor]:
    """Every gate value of every layer and site at the real tokens of ``inputs``."""
    with torch.no_grad():
        model(**inputs)
    mask = inputs["attention_mask"].bool()
    values = []
    for sites in model.gate_values().values():
        for value in sites.values():
            values.append(value[mask] if value.dim() == 2 else value)
    return values


@pytest.mark.parametrize("hidden", [32, 256])
@pytest.mark.parametrize("method", ["unipelt", "unipelt-ap"])
def test_gates_start_mid_range_on_a_residual_stream_in_the_thousands(hidden, method):
    base = scaled_llama(hidden)
    model = add_unipelt(base, method).eval()
    unpadded = batch("llama", batch_size=3, length=12, pad=0)
    assert min(gate_input_norms(model, base, unpadded)) > 1000
    stats = collect_gate_stats(model, random_text())
    assert len(stats.layers) == 3 and {"prefix", "adapter"} <= set(stats.sites)
    for layer, site, mean, _, count in stats.rows():
        assert count == 12 and 0.25 <= mean <= 0.75, (layer, site, mean)
    for inputs in random_text():
        for value in token_gates(model, inputs):
            assert value.min().item() >= 0.25 and value.max().item() <= 0.75


def test_raw_state_gates_saturate_there():
    """The failure the normalised view prevents: the paper's gate on the same model is a 0/1 switch per token."""
    model = add_unipelt(scaled_llama(32), "unipelt", gate_input="raw").eval()
    values = torch.cat([v for inputs in random_text() for v in token_gates(model, inputs)])
    saturated = ((values < 0.01) | (values > 0.99)).float().mean().item()
    assert saturated > 0.2


def test_router_starts_near_uniform_there():
    model = add_unipelt(scaled_llama(64), "unipelt-router").eval()
    for inputs in random_text(2):
        values = token_gates(model, inputs)
        assert len(values) == 9  # 3 layers x (lora, prefix, adapter)
        for value in values:
            assert (value - 1 / 3).abs().max().item() < 0.1


@pytest.mark.parametrize("width", [32, 576, 2048])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_normalised_gate_logits_have_the_same_spread_at_any_width_and_scale(width, scale):
    torch.manual_seed(width)
    gate = SigmoidGate(width, [f"s{i}" for i in range(64)], normalise=True)
    x = torch.randn(512, width) * scale + scale * torch.randn(width)  # a shared offset, like outlier dims
    with torch.no_grad():
        logits = gate.linear(gate.view(x))
    assert gate.linear.bias.abs().max().item() == 0.0
    assert logits.mean().abs().item() < 0.05
    assert math.isclose(logits.std().item(), INIT_LOGIT_STD, rel_tol=0.15)


@pytest.mark.parametrize("field", ["gate_input", "adapter_input"])
def test_the_table_decides_what_gates_and_adapters_read(field):
    config = UniPELTConfig.from_preset("unipelt")
    resolved = getattr(config, f"resolved_{field}")
    assert getattr(config, field) == "auto"
    for arch in ENCODERS:
        assert resolved(ARCHITECTURES[arch]) == "raw", arch
    for arch in DECODERS:
        assert resolved(ARCHITECTURES[arch]) == "rms", arch
    assert getattr(config.replace(**{field: "rms"}), f"resolved_{field}")(ARCHITECTURES["bert"]) == "rms"
    assert getattr(config.replace(**{field: "raw"}), f"resolved_{field}")(ARCHITECTURES["llama"]) == "raw"
    with pytest.raises(Exception, match=f"{field} must be one of"):
        config.replace(**{field: "layernorm"})


@pytest.mark.parametrize("method", ["unipelt", "unipelt-router"])
def test_encoders_keep_the_papers_gate_bit_for_bit(method):
    outputs, states = [], []
    for gate_input in ("auto", "raw"):
        torch.manual_seed(5)
        model = add_unipelt(tiny_model("bert"), method, gate_input=gate_input).eval()
        perturb(model)
        with torch.no_grad():
            outputs.append(model(**batch("bert")).logits)
        states.append(model.added_state_dict())
    assert torch.equal(outputs[0], outputs[1])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    gates = [m for m in model.modules() if isinstance(m, SigmoidGate)]
    assert method == "unipelt-router" or (gates and not any(g.normalise for g in gates))


@pytest.mark.parametrize("field", ["gate_input", "adapter_input"])
def test_checkpoints_without_the_field_load_with_the_raw_state_and_their_outputs(tmp_path, field):
    """A decoder checkpoint written before ``gate_input`` / ``adapter_input`` existed was trained with gates and
    adapters that read the raw state."""
    torch.manual_seed(2)
    old = add_unipelt(tiny_model("llama"), "unipelt", **{field: "raw"}).eval()
    perturb(old)
    inputs = batch("llama")
    with torch.no_grad():
        expected = old(**inputs).logits
    loaded = load_unipelt(tiny_model("llama"), save_as_before(old, tmp_path / "ckpt", field)).eval()
    assert getattr(loaded.unipelt_config, field) == "raw"
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-6)


def test_new_decoder_checkpoints_round_trip_with_normalised_gates(tmp_path):
    torch.manual_seed(2)
    model = add_unipelt(tiny_model("llama"), "unipelt").eval()
    perturb(model)
    inputs = batch("llama")
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_unipelt(tiny_model("llama"), tmp_path / "ckpt").eval()
    assert loaded.unipelt_config.gate_input == "auto"
    assert all(g.normalise for g in loaded.modules() if isinstance(g, SigmoidGate))
    with torch.no_grad():
        assert torch.allclose(loaded(**inputs).logits, expected, atol=1e-6)
