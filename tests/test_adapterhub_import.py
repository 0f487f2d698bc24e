"""Folders saved by AdapterHub ``adapters`` read into unipelt, against the logits ``adapters`` itself gave.

The fixture (a tiny random BERT, one folder per adapters configuration, the logits) is made by
tests/fixtures/adapterhub/make.py in the environment of benchmarks/peer_env.sh, so this test needs neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from unipelt.errors import UniPELTError
from unipelt.model import UniPELTModel

FIXTURE = Path(__file__).parent / "fixtures" / "adapterhub"
EXPECTED = json.loads((FIXTURE / "logits.json").read_text())
TOLERANCE = 1e-4


def logits(name: str, batch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, adapters') for one fixture adapter on one input batch."""
    model = UniPELTModel(BertForSequenceClassification.from_pretrained(FIXTURE / "base").eval())
    model.load_task(name, FIXTURE / name)
    inputs = {k: torch.tensor(v) for k, v in EXPECTED["inputs"][batch].items()}
    with torch.no_grad():
        ours = model(**inputs, task=name).logits
    return ours, torch.tensor(EXPECTED["logits"][name][batch])


@pytest.mark.parametrize("name", ["unipelt", "lora", "prefix", "bottleneck"])
def test_adapterhub_folders_give_adapters_logits_without_padding(name: str) -> None:
    ours, theirs = logits(name, "unpadded")
    base = torch.tensor(EXPECTED["logits"]["base"]["unpadded"])
    assert (theirs - base).abs().max() > 5e-3  # the adapter changes the output (50x the tolerance)
    assert (ours - theirs).abs().max() < TOLERANCE


@pytest.mark.parametrize("name", ["lora", "prefix", "bottleneck"])
def test_ungated_adapters_agree_with_padding_too(name: str) -> None:
    ours, theirs = logits(name, "padded")
    assert (ours - theirs).abs().max() < TOLERANCE


def test_gates_pooled_over_padding_differ_on_padded_rows_only() -> None:
    ours, theirs = logits("unipelt", "padded")
    difference = (ours - theirs).abs().max(dim=-1).values
    assert difference[0] < TOLERANCE  # row 0 has no padding
    assert (difference[1:] > 1e-3).all()  # adapters' gates average over the padding of rows 1 and 2


def test_unipelt_task_is_gated_like_the_adapters_one() -> None:
    model = UniPELTModel(BertForSequenceClassification.from_pretrained(FIXTURE / "base"))
    task = model.load_task("u", FIXTURE / "unipelt")
    assert task.config.modules == ["lora", "prefix", "adapter"] and task.config.gate == "sigmoid"
    assert (task.config.lora_rank, task.config.prefix_length, task.config.adapter_size) == (2, 3, 4)


def test_pfeiffer_placed_bottleneck_is_refused_with_the_reason() -> None:
    model = UniPELTModel(BertForSequenceClassification.from_pretrained(FIXTURE / "base"))
    with pytest.raises(UniPELTError, match="Pfeiffer's placement"):
        model.load_task("p", FIXTURE / "unipelt-pfeiffer")
    assert "p" not in model.tasks
