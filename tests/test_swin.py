"""Swin: every module and the gates on a staged model whose attention runs in shifted, padded windows.

The tiny Swin sees 16 x 16 images in 2 x 2 patches: an 8 x 8 grid, windows of 3 x 3 (padded to 9 x 9, 9
windows per image), then patch merging to 4 x 4 (padded to 6 x 6, 4 windows), every second block shifted.
Its two stages have widths 16 and 32 with 2 heads each, so the head size changes between stages too.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from tiny_models import perturb

from unipelt import UniPELTModel, add_unipelt, load_unipelt
from unipelt.errors import UniPELTError
from unipelt.inject.architectures import layer_list

CONFIG = {
    "image_size": 16,
    "patch_size": 2,
    "embed_dim": 16,
    "depths": [2, 2],
    "num_heads": [2, 2],
    "window_size": 3,
}
METHODS = ["unipelt", "unipelt-ap", "unipelt-router", "lora", "adapter", "prefix", "ia3", "bitfit"]


def tiny_swin(num_labels: int = 3, seed: int = 0, head: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = tf.SwinConfig(**CONFIG, num_labels=num_labels)
    model = tf.SwinForImageClassification(config) if head else tf.SwinModel(config)
    with torch.no_grad():  # Swin starts its relative position biases at zero: make them matter
        for name, parameter in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.normal_(0.0, 1.0)
    return model.eval()


def images(batch_size: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def blocks(model: UniPELTModel) -> list[torch.nn.Module]:
    return list(model.injector.layers)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_changes_the_output_and_disabled_is_the_base_model(method):
    pixels = images()
    with torch.no_grad():
        base = tiny_swin()(pixel_values=pixels).logits
        model = add_unipelt(tiny_swin(), method)
        perturb(model)
        out = model(pixel_values=pixels).logits
        with model.disabled():
            off = model(pixel_values=pixels).logits
    assert out.shape == (3, 3)
    assert torch.equal(off, base), "disabled() must be the base model bit for bit"
    assert not torch.allclose(out, base, atol=1e-4), f"{method} must act on Swin"


def test_the_four_blocks_of_both_stages_are_the_layers_with_their_own_widths():
    model = add_unipelt(tiny_swin(), "unipelt")
    layers = blocks(model)
    assert len(layers) == 4 == model.dims["num_hidden_layers"]
    assert layers[2] is model.base_model.swin.encoder.layers[1].blocks[0]
    for index, width in enumerate([16, 16, 32, 32]):
        task = model.tasks["default"].layers[index]
        assert task.lora.query.lora_A.in_features == width
        assert task.adapter.down.in_features == width and task.adapter.down.out_features == width // 16
        assert task.gate.linear.in_features == width
        assert model.prefix.layer_prefix(index).shape == (2, 10, width)


def test_gates_read_the_whole_unpadded_row_and_start_mid_range():
    model = add_unipelt(tiny_swin(), "unipelt")
    perturb(model)
    seen, windows = {}, {}
    for index, layer in enumerate(blocks(model)):
        layer.layernorm_before.register_forward_pre_hook(lambda m, a, i=index: seen.__setitem__(i, a[0]))
        layer.attention.register_forward_pre_hook(lambda m, a, i=index: windows.__setitem__(i, a[0]))
    with torch.no_grad():
        model(pixel_values=images(4))
    gates = model.gate_values()
    assert sorted(gates) == [0, 1, 2, 3]
    task = model.tasks["default"]
    for index, sites in gates.items():
        row = seen[index]
        assert row.shape[:2] == (4, 64 if index < 2 else 16), "the layer input: every patch, no padding"
        assert windows[index].shape[0] * windows[index].shape[1] > row.shape[0] * row.shape[1], "padded"
        expected = task.layers[index].gate(row, None, "mean")
        assert set(sites) == {"lora_query", "lora_value", "prefix", "adapter"}
        for site in ("lora_query", "lora_value", "prefix"):
            assert sites[site].shape == (4,)
            assert torch.allclose(sites[site], expected[site], atol=1e-6)
    fresh = add_unipelt(tiny_swin(), "unipelt")
    with torch.no_grad():
        fresh(pixel_values=images(4))
    for sites in fresh.gate_values().values():
        for value in sites.values():
            assert ((value > 0.25) & (value < 0.75)).all(), "gates start near one half"


def test_prefix_in_shifted_padded_windows_equals_explicit_concatenation():
    """Each window's attention over [g * prefix; its patches], written out by hand: the relative position bias
    and the shifted windows' mask on the patches only, the image's gate on every window's prefix."""
    model = add_unipelt(tiny_swin(), "prefix", gate="sigmoid")
    perturb(model)
    calls = {}
    for index, layer in enumerate(blocks(model)):
        layer.attention.register_forward_hook(
            lambda m, a, out, i=index: calls.__setitem__(i, (a[0], a[1], out[0])), always_call=True
        )
    pixels = images(2)
    with torch.no_grad():
        model(pixel_values=pixels)
        gates = model.gate_values()
        shifted = 0
        for index, layer in enumerate(blocks(model)):
            x, shift_mask, out = calls[index]
            expected = explicit_window_attention(
                layer.attention, x, shift_mask, model.prefix.layer_prefix(index), gates[index]["prefix"]
            )
            assert torch.allclose(out, expected, atol=1e-5), (index, (out - expected).abs().max())
            shifted += shift_mask is not None
        with model.disabled():
            model(pixel_values=pixels)
        assert not torch.allclose(calls[3][2], out, atol=1e-4), "the prefix changes attention"
    assert shifted == 2


def explicit_window_attention(attention, x, shift_mask, prefix, gate):
    """SwinAttention's output for windows x (B * n, N, d) with gated prefix keys/values (2, P, d)."""
    rows, length, width = x.shape
    heads, size = attention.num_attention_heads, attention.head_dim
    per_image = rows // gate.shape[0]
    g = gate.repeat_interleave(per_image)[:, None, None, None]

    def split(t):
        return t.view(*t.shape[:-1], heads, size).transpose(-3, -2)

    q, k, v = split(attention.q_proj(x)), split(attention.k_proj(x)), split(attention.v_proj(x))
    pk, pv = split(prefix[0]) * g, split(prefix[1]) * g  # (B * n, H, P, D)
    bias = attention.relative_position_bias()  # (1, H, N, N)
    if shift_mask is not None:
        bias = bias + shift_mask.repeat(rows // shift_mask.shape[0], 1, 1)[:, None]
    scores = torch.cat([q @ pk.transpose(-1, -2), q @ k.transpose(-1, -2)], -1) * size**-0.5
    scores[..., pk.shape[2] :] += bias
    context = torch.softmax(scores, -1) @ torch.cat([pv, v], 2)
    return attention.o_proj(context.transpose(1, 2).reshape(rows, length, width))


def test_mixed_task_batch_of_images_equals_each_row_alone():
    model = UniPELTModel(tiny_swin())
    model.add_task("digits", "unipelt", num_labels=3)
    model.add_task("shapes", "lora", num_labels=2)
    model.add_task("colours", "adapter", num_labels=3)
    model.add_task("short", "prefix", num_labels=2, prefix_length=3)
    perturb(model)
    pixels = images(6)
    tasks = ["digits", "shapes", "short", "colours", "digits", "short"]
    widths = {"digits": 3, "shapes": 2, "colours": 3, "short": 2}
    with torch.no_grad():
        mixed = model(pixel_values=pixels, task=tasks).logits
        for row, name in enumerate(tasks):
            alone = model(pixel_values=pixels[row : row + 1], task=name).logits
            assert torch.allclose(mixed[row, : widths[name]], alone[0], atol=1e-5), (row, name)


def test_merged_lora_equals_unmerged_and_differs_from_the_base():
    pixels = images()
    model = add_unipelt(tiny_swin(), "lora", lora_targets=["query", "key", "value", "output"])
    perturb(model)
    with torch.no_grad():
        base = tiny_swin()(pixel_values=pixels).logits
        unmerged = model(pixel_values=pixels).logits
        model.merge()
        merged = model(pixel_values=pixels).logits
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-4)


@pytest.mark.parametrize("eject", [False, True])
def test_save_and_load_round_trip(eject, tmp_path):
    pixels = images()
    model = add_unipelt(tiny_swin(), "unipelt")
    perturb(model)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
        if eject:  # the prefix stored per layer (widths differ per stage), the MLP dropped
            model.eject_prefix_mlp()
            assert torch.equal(model(pixel_values=pixels).logits, before)
            assert [tuple(p.shape) for p in model.prefix.prefix] == [(2, 10, 16)] * 2 + [(2, 10, 32)] * 2
    model.save_pretrained(tmp_path / "checkpoint")
    loaded = load_unipelt(tiny_swin(), tmp_path / "checkpoint")  # a fresh base, same weights
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=pixels).logits, before, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    pixels, labels = images(), torch.tensor([0, 1, 2])

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = add_unipelt(tiny_swin(), "unipelt")
        perturb(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            stages = model.base_model.swin.encoder.layers
            assert not stages[0].gradient_checkpointing and blocks(model)[0].gradient_checkpointing
        model(pixel_values=pixels, labels=labels).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-6), name


def test_features_model_takes_every_module():
    pixels = images()
    with torch.no_grad():
        reference = tiny_swin(head=False)(pixel_values=pixels).last_hidden_state
        model = add_unipelt(tiny_swin(head=False), "unipelt")
        perturb(model)
        out = model(pixel_values=pixels).last_hidden_state
        with model.disabled():
            assert torch.equal(model(pixel_values=pixels).last_hidden_state, reference)
    assert out.shape == (3, 16, 32) and not torch.allclose(out, reference, atol=1e-4)


def test_gates_per_token_are_refused_with_the_reason():
    with pytest.raises(UniPELTError, match="windowed attention"):
        add_unipelt(tiny_swin(), "unipelt", gate_pooling="token")


def test_swin_tiny_counts_by_hand(tmp_path, capsys):
    """Swin-T: stages of 2, 2, 6, 2 blocks at widths 96, 192, 384, 768 (4,416 summed over the 12 blocks).
    Rank-8 LoRA on query and value: 2 x (8d + 8d) = 32d per block; adapter (reduction 16): 2db + b + d with
    b = d / 16; prefix of 10: 2 x 10 x d per block."""
    from unipelt.backbones import load_base_model
    from unipelt.cli import main

    tf.SwinConfig().save_pretrained(tmp_path)  # the config of microsoft/swin-tiny-patch4-window7-224
    widths = [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    model = load_base_model(tmp_path, "image-classification", num_labels=10, init="meta")
    assert len(layer_list(model.base_model, add_unipelt(model, "lora").arch)) == 12
    assert main(["params", str(tmp_path), "--method", "unipelt", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lora"] == 32 * sum(widths) == 141_312
    assert printed["adapter"] == sum(2 * d * (d // 16) + d // 16 + d for d in widths) == 274_260
    assert printed["prefix"] == 20 * sum(widths) == 88_320


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_lora_and_ia3_export_to_peft_exactly(method, tmp_path):
    import peft

    pixels = images()
    model = add_unipelt(tiny_swin(), method)
    perturb(model)
    folder = model.save_peft("default", tmp_path / method)
    theirs = peft.PeftModel.from_pretrained(tiny_swin(), folder).eval()
    with torch.no_grad():  # PeftModel.forward adds text keywords Swin's attention refuses: call its model
        expected = theirs.base_model(pixel_values=pixels).logits
        assert torch.allclose(model(pixel_values=pixels).logits, expected, atol=1e-6)
        assert not torch.allclose(tiny_swin()(pixel_values=pixels).logits, expected, atol=1e-4)


def test_folding_constant_gates_keeps_the_outputs():
    """An autopelt plan on Swin: constant gates folded into LoRA, the per-stage prefix tensors and the adapter."""
    import math

    from unipelt.autopelt import Plan, Unit, apply_plan

    pixels = images()
    model = add_unipelt(tiny_swin(), "unipelt")
    perturb(model)
    fold = {}
    for index, layer_modules in enumerate(model.tasks["default"].layers):
        for site, bias in {"lora_query": 0.7, "lora_value": -1.2, "prefix": 0.3, "adapter": 1.5}.items():
            gate = layer_modules.adapter.gate if site == "adapter" else layer_modules.gate
            row = gate.sites.index(site)
            with torch.no_grad():
                gate.linear.weight[row].zero_()
                gate.linear.bias[row] = bias + index
            fold[Unit(index, site)] = 1 / (1 + math.exp(-(bias + index)))
    with torch.no_grad():
        reference = model(pixel_values=pixels).logits
        apply_plan(model, "default", Plan(set(), fold))
        assert torch.allclose(model(pixel_values=pixels).logits, reference, atol=1e-5)
    assert not any(model.gate_values().values()) and "lora" in model.merged


@pytest.mark.slow
def test_a_swin_run_trains_evaluates_and_predicts(tmp_path, capsys):
    """`unipelt train` on a Swin folder without an image processor (the default one, with a warning)."""
    import numpy as np
    from PIL import Image

    from unipelt.cli import main

    tiny_swin(num_labels=2).save_pretrained(tmp_path / "swin")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("valid", 8), ("test", 8)):
        for label in ("bright", "dark"):
            for i in range(count):
                path = tmp_path / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(150, 255, (8, 8)) if label == "bright" else rng.integers(0, 90, (8, 8))
                Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)
    run = tmp_path / "run"
    args = ["train", "--model", str(tmp_path / "swin"), "--train", str(tmp_path / "train")]
    args += ["--valid", str(tmp_path / "valid"), "--test", str(tmp_path / "test"), "--method", "unipelt"]
    args += ["--epochs", "4", "--batch-size", "8", "--lr", "3e-3", "--out", str(run), "--threads", "1"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]  # bright against dark is easy
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(tmp_path / "test" / "dark")]) == 0
    predictions = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(predictions) == 8 and sum(p["label"] == "dark" for p in predictions) >= 7


def test_compiled_swin_has_no_graph_break_and_gives_the_eager_outputs():
    model = add_unipelt(tiny_swin(), "unipelt")
    perturb(model)
    pixels = images()
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(pixel_values=pixels).logits
        explained = torch._dynamo.explain(model)(pixel_values=pixels)
        assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
        compiled = torch.compile(model, backend="aot_eager")(pixel_values=pixels).logits
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
