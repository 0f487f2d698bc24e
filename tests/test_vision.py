"""Vision Transformers (ViT, DeiT) with every module and the gates, on tiny random models built from configs."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from test_prefix_attention import recorded, reference_attention  # noqa: F401 - the fixture is used by name
from tiny_models import perturb

from unipelt import UniPELTModel, add_unipelt, load_unipelt

VISION = ["vit", "deit"]
# 16 x 16 images in 4 x 4 patches: 17 tokens with the [CLS] token, 2 layers of width 32
SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "image_size": 16,
    "patch_size": 4,
}
METHODS = ["unipelt", "unipelt-ap", "unipelt-router", "lora", "adapter", "prefix", "ia3", "bitfit"]


def tiny_vision(arch: str, num_labels: int = 3, seed: int = 0) -> torch.nn.Module:
    """A 2-layer image classifier of 16 x 16 images in 4 x 4 patches (17 tokens with the [CLS] token)."""
    torch.manual_seed(seed)
    config_class, model_class = {
        "vit": (tf.ViTConfig, tf.ViTForImageClassification),
        "deit": (tf.DeiTConfig, tf.DeiTForImageClassification),
    }[arch]
    return model_class(config_class(**SIZES, num_labels=num_labels)).eval()


def images(batch_size: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", VISION)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_changes_the_output_and_disabled_is_the_base_model(arch, method):
    pixels = images()
    with torch.no_grad():
        base = tiny_vision(arch)(pixel_values=pixels).logits
        model = add_unipelt(tiny_vision(arch), method)
        perturb(model)
        out = model(pixel_values=pixels).logits
        with model.disabled():
            off = model(pixel_values=pixels).logits
    assert out.shape == (3, 3)
    assert torch.equal(off, base), "disabled() must be the base model bit for bit"
    assert not torch.allclose(out, base, atol=1e-4), f"{method} must act on {arch}"


@pytest.mark.parametrize("arch", VISION)
def test_gates_pool_over_every_patch_and_start_mid_range(arch):
    model = add_unipelt(tiny_vision(arch), "unipelt")
    with torch.no_grad():
        model(pixel_values=images(4))
    gates = model.gate_values()
    assert sorted(gates) == [0, 1]
    for sites in gates.values():
        assert set(sites) >= {"prefix", "adapter"}
        for value in sites.values():
            assert value.shape[0] == 4 and torch.isfinite(value).all()
            assert ((value > 0.25) & (value < 0.75)).all(), "gates start near one half"


@pytest.mark.parametrize("arch", VISION)
def test_prefix_attention_equals_explicit_concatenation(arch, recorded):  # noqa: F811
    model = add_unipelt(tiny_vision(arch), "unipelt")
    perturb(model)
    with torch.no_grad():
        model(pixel_values=images())
    assert len(recorded) == 2
    for call in recorded:
        expected = reference_attention(
            call["q"], call["k"], call["v"], None, False, call["pk"], call["pv"], call["gate"], call["scale"]
        )
        assert torch.allclose(call["out"], expected, atol=1e-5), (call["out"] - expected).abs().max()


@pytest.mark.parametrize("arch", VISION)
def test_merged_lora_equals_unmerged_and_differs_from_the_base(arch):
    pixels = images()
    model = add_unipelt(tiny_vision(arch), "lora")
    perturb(model)
    with torch.no_grad():
        base = tiny_vision(arch)(pixel_values=pixels).logits
        unmerged = model(pixel_values=pixels).logits
        model.merge()
        merged = model(pixel_values=pixels).logits
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-4)


@pytest.mark.parametrize("arch", VISION)
def test_save_and_load_round_trip(arch, tmp_path):
    pixels = images()
    model = add_unipelt(tiny_vision(arch), "unipelt")
    perturb(model)
    model.save_pretrained(tmp_path / "checkpoint")
    loaded = load_unipelt(tiny_vision(arch), tmp_path / "checkpoint")  # a fresh base, same weights
    with torch.no_grad():
        assert torch.allclose(
            model(pixel_values=pixels).logits, loaded(pixel_values=pixels).logits, atol=1e-6
        )


@pytest.mark.parametrize("arch", VISION)
def test_mixed_task_batch_of_images_equals_each_row_alone(arch):
    model = UniPELTModel(tiny_vision(arch))
    model.add_task("digits", "unipelt", num_labels=3)
    model.add_task("shapes", "lora", num_labels=2)
    model.add_task("colours", "adapter", num_labels=3)
    perturb(model)
    pixels = images(5)
    tasks = ["digits", "shapes", "colours", "digits", "shapes"]
    widths = {"digits": 3, "shapes": 2, "colours": 3}
    with torch.no_grad():
        mixed = model(pixel_values=pixels, task=tasks).logits
        for row, name in enumerate(tasks):
            alone = model(pixel_values=pixels[row : row + 1], task=name).logits
            assert torch.allclose(mixed[row, : widths[name]], alone[0], atol=1e-5), (row, name)


def test_vit_base_lora_count_by_hand(tmp_path, capsys):
    """ViT-B/16: 12 layers, hidden 768; rank-8 LoRA on query and value: 12 x 2 x (8 x 768 + 768 x 8)."""
    import json

    from unipelt.backbones import load_base_model
    from unipelt.cli import main

    tf.ViTConfig().save_pretrained(tmp_path)  # the config of google/vit-base-patch16-224, no weights
    model = load_base_model(tmp_path, "image-classification", num_labels=10, init="meta")
    counts = add_unipelt(model, "lora", lora_rank=8).parameter_counts()
    assert counts["lora"] == 12 * 2 * (8 * 768 + 768 * 8) == 294_912
    assert main(["params", str(tmp_path), "--method", "unipelt", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lora"] == 294_912 and printed["adapter"] == 12 * (2 * 768 * 48 + 48 + 768)


def test_clip_image_tower_takes_every_module_as_a_feature_extractor(tmp_path):
    config = tf.CLIPVisionConfig(**SIZES)
    pixels = images()
    torch.manual_seed(0)
    base = tf.CLIPVisionModel(config).eval()
    torch.manual_seed(0)
    model = add_unipelt(tf.CLIPVisionModel(config).eval(), "unipelt")
    perturb(model)
    with torch.no_grad():
        reference = base(pixel_values=pixels).last_hidden_state
        out = model(pixel_values=pixels).last_hidden_state
        with model.disabled():
            assert torch.equal(model(pixel_values=pixels).last_hidden_state, reference)
    assert out.shape == (3, 17, 32) and not torch.allclose(out, reference, atol=1e-4)
    assert set(model.gate_values()[1]) == {"lora_query", "lora_value", "prefix", "adapter"}
    model.save_pretrained(tmp_path / "clip")
    torch.manual_seed(0)
    loaded = load_unipelt(tf.CLIPVisionModel(config).eval(), tmp_path / "clip")
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=pixels).last_hidden_state, out, atol=1e-6)
