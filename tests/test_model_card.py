"""Model cards of finished runs and of PEFT exports, read back by huggingface_hub's own parser."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_runs import tiny_run_config

from unipelt.cli import main
from unipelt.training import train

hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, glue_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rte-lora"
    train(tiny_run_config(tiny_model_dir, glue_dir, out, method="lora", seed=3))
    return out


def test_a_finished_run_has_a_hub_model_card(lora_run) -> None:
    card = hub.ModelCard.load(lora_run / "README.md")
    metrics = json.loads((lora_run / "metrics.json").read_text())
    data = card.data
    assert data.library_name == "unipelt"
    assert data.base_model and data.pipeline_tag == "text-classification"
    assert data.datasets == ["nyu-mll/glue"] and "lora" in data.tags
    values = {r.metric_type: r.metric_value for r in data.eval_results}
    assert values["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    majority = metrics["majority_class"]["test"]["accuracy"]
    assert f"| accuracy | {metrics['test']['accuracy']:.4f} | {majority:.4f} |" in card.text
    assert f"{metrics['parameters']['total_without_prefix_mlp']:,}" in card.text
    assert "seed(s): 3" in card.text and "K = 16" in card.text


def test_export_run_to_peft_with_card_and_same_logits(lora_run, tmp_path, capsys) -> None:
    from transformers import AutoModelForSequenceClassification

    from unipelt.inference.runs import Run

    peft = pytest.importorskip("peft")

    out = tmp_path / "peft"
    assert main(["export", str(lora_run), "--format", "peft", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["files"]) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert report["peft_bytes"] > 0 and report["unipelt_bytes"] > 0
    card = hub.ModelCard.load(out / "README.md")
    assert card.data.library_name == "unipelt" and "peft" in card.data.tags
    assert "PeftModel.from_pretrained" in card.text

    ours, tokenizer = Run(lora_run).load()
    sample = tokenizer(
        ["a first sentence", "and a longer second one here"], padding=True, return_tensors="pt"
    )
    config = json.loads((lora_run / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForSequenceClassification.from_pretrained(config["model"], num_labels=2)
        loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        assert (ours(**sample).logits - loaded(**sample).logits).abs().max() < 1e-5


def test_export_of_a_unipelt_run_is_refused_by_name(tiny_model_dir, glue_dir, tmp_path, capsys) -> None:
    run = tmp_path / "rte-unipelt"
    train(tiny_run_config(tiny_model_dir, glue_dir, run, method="unipelt", epochs=1))
    assert (run / "README.md").is_file()
    capsys.readouterr()
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "p")]) != 0
    assert "bottleneck adapters have no PEFT equivalent" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
