"""The module interface: IA3 and BitFit alone and in a UniPELT mix, and a new module added in one file."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from tiny_models import batch, perturb, tiny_model

from unipelt import UniPELTConfig, add_unipelt, load_unipelt
from unipelt.errors import UniPELTError
from unipelt.modules import MODULES, PeftModule, register


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def bert_base_on_meta():
    with torch.device("meta"):
        return tf.BertForSequenceClassification(tf.BertConfig())


def test_paper_counts_of_ia3_and_bitfit_on_bert_base():
    ia3 = add_unipelt(bert_base_on_meta(), "ia3").parameter_counts()
    assert ia3["ia3"] == 12 * (768 + 768 + 3072) == 55_296
    bitfit = add_unipelt(bert_base_on_meta(), "bitfit").parameter_counts()
    assert bitfit["bitfit"] == 12 * (4 * 768 + 3072 + 768)
    assert ia3["gates"] == bitfit["gates"] == 0


@pytest.mark.parametrize("method", ["ia3", "bitfit"])
@pytest.mark.parametrize("arch", ["bert", "gpt2", "distilbert", "llama"])
def test_ungated_ia3_and_bitfit_merge_exactly(method, arch):
    model = tiny_model(arch)
    inputs = batch(arch)
    base = logits(model, inputs)
    unipelt = add_unipelt(model, method)
    perturb(unipelt)
    unmerged = logits(unipelt, inputs)
    assert not torch.allclose(unmerged, base, rtol=1e-3, atol=1e-7)
    if method == "bitfit" and arch == "llama":
        with pytest.raises(UniPELTError, match="has no bias"):
            unipelt.merge()
        return
    unipelt.merge()
    assert torch.allclose(logits(unipelt, inputs), unmerged, atol=1e-5)
    assert unipelt.merged == [method]


def test_gated_ia3_refuses_merge_and_mix_is_identity_at_init():
    model = tiny_model("bert")
    inputs = batch("bert")
    base = logits(model, inputs)
    mix = add_unipelt(model, "unipelt", modules="lora,adapter,ia3,bitfit")
    assert mix.unipelt_config.modules == ["lora", "adapter", "ia3", "bitfit"]
    assert torch.allclose(logits(mix, inputs), base, atol=1e-6), "every module starts as the identity"
    with pytest.raises(UniPELTError, match="gated"):
        mix.merge(["ia3"])
    gate = mix.layers[0].gate
    assert gate.sites == ["lora_query", "lora_value", "bitfit", "ia3"]  # the registry order


def test_apl_plus_ia3_trains_only_its_weights_and_every_gate_learns(tmp_path):
    model = add_unipelt(tiny_model("bert"), "unipelt", modules=["lora", "prefix", "adapter", "ia3"])
    perturb(model)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(**batch("bert"), labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gate_parameters())
    optimizer.step()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == parameter.requires_grad or not changed, name
        if name.startswith("base_model."):
            assert not changed, name
    assert any("ia3" in n for n, p in model.named_parameters() if not torch.equal(p, before[n]))
    model.save_pretrained(tmp_path / "c")
    loaded = load_unipelt(tiny_model("bert"), tmp_path / "c")
    model.eval()
    assert torch.equal(logits(loaded, batch("bert")), logits(model, batch("bert")))


class OutputScale(PeftModule):
    """A new module written against the interface only: one learned scalar on the attention output."""

    kind = "test_scale"
    title = "scale"
    options = {"test_scale_init": 1.0}

    def __init__(self, init: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(init)))

    @classmethod
    def build(cls, spec, index):
        return cls(spec.option("test_scale_init"))

    def sites(self):
        return [("output", "output")]

    def apply(self, role, x, out, group):
        return out * self.scale


@pytest.fixture
def registered_scale():
    register(OutputScale)
    yield
    del MODULES["test_scale"]


def test_a_new_module_is_one_class_and_a_registration(registered_scale, tmp_path):
    model = tiny_model("bert")
    inputs = batch("bert")
    base = logits(model, inputs)
    unipelt = add_unipelt(model, "lora", modules=["test_scale"], test_scale_init=1.5)
    assert unipelt.unipelt_config.option("test_scale_init") == 1.5
    assert unipelt.parameter_counts()["test_scale"] == 2  # one scalar per layer
    assert not torch.allclose(logits(unipelt, inputs), base)
    unipelt.save_pretrained(tmp_path / "c")
    assert torch.equal(
        logits(load_unipelt(tiny_model("bert"), tmp_path / "c"), inputs), logits(unipelt, inputs)
    )
    with pytest.raises(UniPELTError, match="unknown module"):
        UniPELTConfig(modules=["lora", "nope"])
