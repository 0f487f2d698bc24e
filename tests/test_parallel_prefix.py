"""The parallel prefix: a softmax of its own over the prefix positions, added to the attention output, with
values that start at zero, so that an untrained prefix leaves a decoder exactly as it was, while it still learns.

The default for a gated prefix on decoders; encoders and an ungated prefix keep the paper's form.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import batch, perturb, save_as_before, tiny_model

from unipelt import UniPELTModel, add_unipelt, load_unipelt
from unipelt.config import UniPELTConfig
from unipelt.inject.architectures import ARCHITECTURES
from unipelt.plan import Plan, apply_plan, task_units


def logits(model, inputs, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def change_from_base(model, inputs) -> float:
    """Largest change of any logit that the model's modules make."""
    with model.disabled():
        base = logits(model, inputs)
    return float((logits(model, inputs) - base).abs().max())


def test_auto_is_parallel_for_a_gated_prefix_on_decoders_only():
    config = UniPELTConfig()
    assert config.prefix_form == "auto"
    for arch in ("llama", "qwen2", "mistral", "gpt2"):
        assert config.resolved_prefix_form(ARCHITECTURES[arch]) == "parallel", arch
        assert config.replace(gate="none").resolved_prefix_form(ARCHITECTURES[arch]) == "concat", arch
    for arch in ("bert", "roberta", "mpnet", "vit", "swin"):  # vision encoders are pre-norm, not decoders
        assert config.resolved_prefix_form(ARCHITECTURES[arch]) == "concat", arch
    assert config.replace(prefix_form="parallel").resolved_prefix_form(ARCHITECTURES["bert"]) == "parallel"
    with pytest.raises(Exception, match="prefix_form must be one of"):
        config.replace(prefix_form="silent")


@pytest.mark.parametrize("reparam", [True, False])
def test_an_untrained_parallel_prefix_is_the_base_model_exactly(reparam):
    """The paper's prefix moves the logits before any training; the parallel one does not move them at all."""
    inputs = batch("llama", batch_size=3, length=12, pad=3, seed=1)
    changes = {}
    for form in ("concat", "parallel"):
        torch.manual_seed(0)
        model = add_unipelt(
            tiny_model("llama"), "prefix", gate="sigmoid", prefix_form=form, prefix_reparam=reparam
        )
        changes[form] = change_from_base(model.eval(), inputs)
    assert changes["concat"] > 0.01, changes
    assert changes["parallel"] == 0.0, changes


def test_the_parallel_prefix_learns_keys_and_values():
    model = add_unipelt(tiny_model("llama"), "unipelt")
    encoder = model.tasks["default"].prefix
    assert encoder.parallel and encoder.reparameterised
    model.train()
    for step in range(2):  # values first; with values no longer zero, the keys' gradient too
        model.zero_grad()
        model(**batch("llama", batch_size=2, length=8), labels=torch.tensor([0, 1])).loss.backward()
        if step == 0:
            assert float(encoder.mlp[2].weight.grad.abs().max()) > 0
            with torch.no_grad():
                encoder.mlp[2].weight.add_(0.1 * torch.randn_like(encoder.mlp[2].weight))
    assert float(encoder.embedding.weight.grad.abs().max()) > 0


def test_parallel_and_concat_prefixes_in_one_mixed_batch_equal_each_row_alone():
    model = UniPELTModel(tiny_model("llama"))
    model.add_task("parallel", "unipelt")
    model.add_task("concat", "unipelt", prefix_form="concat", prefix_length=4)
    model.add_task("none", "lora")
    perturb(model)
    assert model.tasks["parallel"].prefix.parallel and not model.tasks["concat"].prefix.parallel
    inputs = batch("llama", batch_size=3, length=9, pad=0)
    tasks = ["parallel", "concat", "none"]
    mixed = logits(model, inputs, task=tasks)
    for row, name in enumerate(tasks):
        alone = logits(model, {k: v[row : row + 1] for k, v in inputs.items()}, task=name)
        assert torch.allclose(mixed[row], alone[0], atol=1e-5), name


def test_cached_decoding_with_a_parallel_prefix_equals_the_full_forward():
    model = add_unipelt(tiny_model("llama", head="causal-lm"), "unipelt").eval()
    perturb(model)
    ids = batch("llama", batch_size=1, length=10, pad=0)["input_ids"]
    full = logits(model, {"input_ids": ids})
    with torch.no_grad():
        first = model(input_ids=ids[:, :6], use_cache=True)
        cache, steps = first.past_key_values, [first.logits]
        for position in range(6, 10):
            out = model(input_ids=ids[:, position : position + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_a_folded_gate_scales_the_values_only():
    model = add_unipelt(tiny_model("llama"), "unipelt", gate_pooling="mean").eval()
    perturb(model)
    inputs = batch("llama")
    task = model.tasks["default"]
    units = [u for u in task_units(task) if u.kind == "prefix"]
    with torch.no_grad():
        for layer in task.layers:  # a constant prefix gate of sigmoid(1.0): zero weights, bias 1
            linear = layer.gate.linear
            row = layer.gate.sites.index("prefix")
            linear.weight[row].zero_()
            linear.bias[row] = 1.0
    gated = logits(model, inputs)
    apply_plan(model, "default", Plan(fold={u: float(torch.sigmoid(torch.tensor(1.0))) for u in units}))
    assert torch.allclose(logits(model, inputs), gated, atol=1e-5)


def test_the_form_saves_and_older_checkpoints_keep_the_papers_prefix(tmp_path):
    model = add_unipelt(tiny_model("llama"), "unipelt").eval()
    perturb(model)
    inputs = batch("llama")
    model.save_pretrained(tmp_path / "run")
    loaded = load_unipelt(tiny_model("llama"), tmp_path / "run").eval()
    assert loaded.tasks["default"].prefix.parallel
    assert torch.allclose(logits(loaded, inputs), logits(model, inputs), atol=1e-6)
    # a checkpoint written before prefix_form existed holds the paper's prefix, whatever the default is now
    old_style = add_unipelt(tiny_model("llama"), "unipelt", prefix_form="concat").eval()
    perturb(old_style)
    old = load_unipelt(tiny_model("llama"), save_as_before(old_style, tmp_path / "old", "prefix_form")).eval()
    assert not old.tasks["default"].prefix.parallel
    assert torch.allclose(logits(old, inputs), logits(old_style, inputs), atol=1e-6)
