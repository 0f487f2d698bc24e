"""Invariants of the UniPELT core on every architecture x method. Each assertion can fail."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import ARCHS, DECODERS, ENCODERS, batch, perturb, tiny_model

from unipelt import PRESETS, UniPELTConfig, add_unipelt, load_unipelt
from unipelt.errors import CheckpointMismatchError, UniPELTError, UnsupportedModelError

METHODS = list(PRESETS)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "method,overrides",
    [
        ("lora", {}),
        ("adapter", {}),
        ("unipelt", {"prefix": False, "gate": "none"}),
        ("unipelt", {"prefix": False}),
    ],
)
def test_identity_at_init(arch, method, overrides):
    model = tiny_model(arch)
    inputs = batch(arch)
    base = logits(model, inputs)
    unipelt = add_unipelt(model, method, **overrides)
    assert torch.allclose(logits(unipelt, inputs), base, atol=1e-6)
    perturb(unipelt)
    assert not torch.allclose(logits(unipelt, inputs), base, atol=1e-4), (
        "perturbed modules must change outputs"
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_disabled_is_base_and_enabled_is_not(arch, method):
    model = tiny_model(arch)
    inputs = batch(arch)
    base = logits(model, inputs)
    unipelt = add_unipelt(model, method)
    perturb(unipelt)
    with unipelt.disabled():
        assert torch.equal(logits(unipelt, inputs), base)
    assert not torch.allclose(logits(unipelt, inputs), base, atol=1e-5)
    restored = unipelt.unload()
    assert torch.equal(logits(restored, inputs), base)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["unipelt", "unipelt-router", "prefix"])
def test_save_load_round_trip(arch, method, tmp_path):
    unipelt = add_unipelt(tiny_model(arch), method)
    perturb(unipelt)
    inputs = batch(arch)
    expected = logits(unipelt, inputs)
    unipelt.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["unipelt_config.json", "unipelt_weights.safetensors"]
    fresh = tiny_model(arch)  # same base weights; scramble its head so the checkpoint must restore it
    with torch.no_grad():
        for name in unipelt.head_names:
            for parameter in fresh.get_submodule(name).parameters():
                parameter.normal_()
    loaded = load_unipelt(fresh, tmp_path / "ckpt")
    assert set(loaded.added_state_dict()) == set(unipelt.added_state_dict())
    assert torch.equal(logits(loaded, inputs), expected)


def test_checkpoint_is_small_and_holds_no_base_weights(tmp_path):
    unipelt = add_unipelt(tiny_model("bert"), "unipelt")
    unipelt.save_pretrained(tmp_path / "c")
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "c" / "unipelt_weights.safetensors"))
    assert all(k.split(".")[0] in ("layers", "prefix", "head") for k in keys)
    assert not any("query.weight" in k and k.startswith("head") for k in keys)


def test_load_onto_mismatched_base_is_a_clear_error(tmp_path):
    add_unipelt(tiny_model("bert"), "unipelt").save_pretrained(tmp_path / "c")
    with pytest.raises(CheckpointMismatchError, match="different base model"):
        load_unipelt(tiny_model("roberta"), tmp_path / "c")
    # The head belongs to the task: a base built with another label count gets the checkpoint's head size.
    loaded = load_unipelt(tiny_model("bert", num_labels=3), tmp_path / "c")
    assert logits(loaded, batch("bert")).shape == (3, 2)
    with pytest.raises(UniPELTError, match="not found"):
        load_unipelt(tiny_model("bert"), tmp_path / "missing")


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    unipelt = add_unipelt(tiny_model("bert"), "unipelt")
    unipelt.save_pretrained(tmp_path / "c")
    perturb(unipelt)
    unipelt.save_pretrained(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    loaded = load_unipelt(tiny_model("bert"), tmp_path / "c")
    inputs = batch("bert")
    assert torch.equal(logits(loaded, inputs), logits(unipelt, inputs))


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2", "mpnet"])
@pytest.mark.parametrize("method", ["unipelt", "unipelt-router"])
def test_one_step_changes_only_trainable_parameters(arch, method):
    model = tiny_model(arch)
    unipelt = add_unipelt(model, method, adapter_size=8)  # hidden/16 = 2 ReLU units can all be dead
    unipelt.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in unipelt.named_parameters() if p.requires_grad}
    assert frozen and trainable
    optimizer = torch.optim.AdamW([p for p in unipelt.parameters() if p.requires_grad], lr=1e-2)
    inputs = {**batch(arch), "labels": torch.tensor([0, 1, 1])}
    for _ in range(2):  # after one step B and up are non-zero, so every gate gets a gradient in the second
        optimizer.zero_grad()
        unipelt(**inputs).loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), f"frozen {name} changed"
            assert parameter.grad is None
    changed = [
        n for n, p in unipelt.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])
    ]
    assert len(changed) == len(trainable)
    for parameter in unipelt.gate_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_padding_leaves_gates_and_real_outputs_unchanged(arch):
    unipelt = add_unipelt(tiny_model(arch), "unipelt")
    perturb(unipelt)
    inputs = batch(arch, batch_size=2, length=6, pad=0)
    with torch.no_grad():
        short = unipelt(**inputs).logits
        gates_short = unipelt.gate_values()
        padded = {k: torch.cat([v, torch.zeros(2, 3, dtype=v.dtype)], dim=1) for k, v in inputs.items()}
        long = unipelt(**padded).logits
        gates_long = unipelt.gate_values()
    assert torch.allclose(short, long, atol=1e-5)
    for layer, sites in gates_short.items():
        for site, value in sites.items():
            other = gates_long[layer][site]
            other = other[:, : value.shape[1]] if value.dim() == 2 else other
            assert torch.allclose(value, other, atol=1e-6), (layer, site)


def test_gate_ranges_and_shapes():
    unipelt = add_unipelt(tiny_model("bert"), "unipelt")
    logits(unipelt, batch("bert"))
    gates = unipelt.gate_values()
    assert sorted(gates) == [0, 1]
    assert sorted(gates[0]) == ["adapter", "lora_query", "lora_value", "prefix"]
    for value in gates[0].values():
        assert value.shape == (3,) and bool(((value > 0) & (value < 1)).all())
    router = add_unipelt(tiny_model("bert"), "unipelt-router", router_temperature=0.5)
    logits(router, batch("bert"))
    weights = torch.stack([router.gate_values()[1][s] for s in ("lora", "prefix", "adapter")], dim=-1)
    assert torch.allclose(weights.sum(-1), torch.ones(3), atol=1e-6)
    decoder = add_unipelt(tiny_model("llama"), "unipelt")
    logits(decoder, batch("llama"))
    assert decoder.gate_values()[0]["prefix"].shape == (3, 7), "decoders gate per token"


def test_gate_history_does_not_grow():
    unipelt = add_unipelt(tiny_model("bert"), "unipelt")
    for length in (5, 6, 7):
        logits(unipelt, batch("bert", length=length))
    assert unipelt.gate_values()[0]["prefix"].shape == (3,)
    assert all(not isinstance(v, torch.Tensor) for v in vars(unipelt).values()), "no call state on the model"


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_equals_unmerged_and_differs_from_base(arch):
    model = tiny_model(arch)
    inputs = batch(arch)
    base = logits(model, inputs)
    unipelt = add_unipelt(model, "lora", lora_targets=["query", "key", "value"])
    perturb(unipelt, scale=0.2)
    unmerged = logits(unipelt, inputs)
    unipelt.merge_lora()
    merged = logits(unipelt, inputs)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-4)
    assert unipelt.parameter_counts()["lora"] == 0


def test_merging_a_gated_lora_is_refused():
    unipelt = add_unipelt(tiny_model("bert"), "unipelt")
    with pytest.raises(UniPELTError, match="gated LoRA"):
        unipelt.merge_lora()


@pytest.mark.parametrize("arch", ARCHS)
def test_ejecting_the_prefix_mlp_keeps_outputs(arch):
    unipelt = add_unipelt(tiny_model(arch), "unipelt")
    perturb(unipelt)
    inputs = batch(arch)
    before = logits(unipelt, inputs)
    counts = unipelt.parameter_counts()
    unipelt.eject_prefix_mlp()
    assert torch.equal(logits(unipelt, inputs), before)
    after = unipelt.parameter_counts()
    assert after["prefix_mlp"] == 0 and after["prefix"] == counts["prefix"]
    assert after["total_with_prefix_mlp"] == counts["total_without_prefix_mlp"]


def greedy_generate(model, prompt, new_tokens):
    """KV-cached greedy generation of exactly ``new_tokens`` tokens."""
    return model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("method", ["unipelt", "unipelt-router", "prefix"])
def test_cached_generation_equals_uncached_greedy(arch, method):
    model = tiny_model(arch, head="causal-lm")
    unipelt = add_unipelt(model, method)
    perturb(unipelt, scale=0.3)
    prompt = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cached = greedy_generate(unipelt, prompt, 6)
        ids = prompt
        for _ in range(6):
            next_logits = unipelt(input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, next_logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, ids)
    with unipelt.disabled(), torch.no_grad():
        base_tokens = greedy_generate(unipelt, prompt, 6)
    assert not torch.equal(base_tokens, cached), "the added modules should change what is generated"


def test_paper_parameter_counts_on_bert_base():
    import transformers as tf

    config = tf.BertConfig()  # BERT-base: 768 hidden, 12 layers, 12 heads
    with torch.device("meta"):
        model = tf.BertForSequenceClassification(config)
    counts = add_unipelt(model, "unipelt").parameter_counts()
    assert counts["lora"] == 294_912
    assert counts["prefix"] == 184_320
    assert counts["adapter"] == 894_528
    assert counts["gates"] == 36_912
    assert 9_800_000 < counts["prefix_mlp"] < 9_900_000
    assert counts["total_without_prefix_mlp"] - counts["head"] == 294_912 + 184_320 + 894_528 + 36_912


def test_gqa_prefix_uses_key_value_heads():
    unipelt = add_unipelt(tiny_model("llama"), "prefix")
    assert unipelt.parameter_counts()["prefix"] == 2 * 2 * 10 * (2 * 8)  # layers * (k, v) * P * kv_dim


def test_unsupported_model_error_lists_supported_types():
    import transformers as tf

    model = tf.T5ForConditionalGeneration(
        tf.T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=8, d_kv=8, vocab_size=50)
    )
    with pytest.raises(UnsupportedModelError, match=r"'t5' is not supported.*bert.*llama.*add a row"):
        add_unipelt(model, "unipelt")


def test_config_presets_and_json_round_trip(tmp_path):
    for name in METHODS:
        config = UniPELTConfig.from_preset(name, lora_rank=4)
        assert UniPELTConfig.from_json(config.to_json()) == config
    config = UniPELTConfig.from_preset("unipelt-ap", adapter_size=24)
    config.to_json(tmp_path / "c.json")
    assert UniPELTConfig.from_json(tmp_path / "c.json") == config
    assert json.loads(config.to_json())["modules"] == ["prefix", "adapter"]
    # Configs written before `modules` existed spell the paper's three modules as booleans.
    old = {k: v for k, v in config.to_dict().items() if k != "modules"}
    assert UniPELTConfig.from_dict({**old, "lora": True, "prefix": False, "adapter": True}).modules == [
        "lora",
        "adapter",
    ]
    with pytest.raises(UniPELTError, match="unknown method"):
        UniPELTConfig.from_preset("bogus")
    with pytest.raises(UniPELTError, match="unknown config field"):
        UniPELTConfig.from_preset("unipelt", lora_rnak=4)
    with pytest.raises(UniPELTError, match="gate must be"):
        UniPELTConfig(gate="tanh")


def test_only_added_modules_and_head_are_trainable():
    model = tiny_model("bert")
    unipelt = add_unipelt(model, "unipelt")
    trainable = [n for n, p in unipelt.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("tasks.default.") for n in trainable)
    assert any(n.startswith("tasks.default.head.classifier") for n in trainable)
    assert not any(p.requires_grad for p in unipelt.base_model.parameters()), "the base model stays frozen"
