"""unipelt.backbones: the one builder of a task's base model and tokenizer. Config-only folders, no weights."""

from __future__ import annotations

import pytest
import transformers as tf

from unipelt.backbones import head_kwargs, load_base_model, load_tokenizer
from unipelt.errors import UniPELTError


def tiny_bert(folder):
    tf.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    ).save_pretrained(folder)
    return folder


def test_head_kwargs_size_and_name_the_head():
    assert head_kwargs("regression") == {"num_labels": 1, "problem_type": "regression"}
    assert head_kwargs("classification", ["neg", "pos"]) == {
        "num_labels": 2,
        "id2label": {0: "neg", 1: "pos"},
        "label2id": {"neg": 0, "pos": 1},
    }
    assert head_kwargs("classification", num_labels=3) == {"num_labels": 3}
    assert head_kwargs() == {}  # the model's own config decides
    for bad in (
        lambda: head_kwargs("regression", ["a"]),
        lambda: head_kwargs("classification", ["a", "b"], num_labels=3),
        lambda: head_kwargs("ranking"),
    ):
        with pytest.raises(UniPELTError):
            bad()


@pytest.mark.parametrize("init", ["random", "meta"])
def test_load_base_model_sizes_the_head_from_the_task(tmp_path, init):
    folder = tiny_bert(tmp_path)
    model = load_base_model(folder, "classification", ["a", "b", "c"], init=init, pad_token_id=0)
    assert model.config.num_labels == 3 and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert model.config.pad_token_id == 0
    assert next(model.parameters()).is_meta == (init == "meta")
    regression = load_base_model(folder, "regression", init=init)
    assert regression.config.num_labels == 1 and regression.config.problem_type == "regression"


def test_load_errors_are_unipelt_errors(tmp_path):
    with pytest.raises(UniPELTError, match="does not exist"):
        load_base_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UniPELTError, match="config.json"):
        load_base_model(tmp_path / "empty")
    with pytest.raises(UniPELTError, match="tokenizer"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(UniPELTError, match="init"):
        load_base_model(tiny_bert(tmp_path / "bert"), init="zeros")


def test_load_tokenizer_pads_with_eos_when_it_has_no_pad_token(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"<eos>": 0, "hello": 1, "[UNK]": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.pad_token == "<eos>" and tokenizer.pad_token_id == 0
