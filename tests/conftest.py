"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real GLUE TSVs; tests that need them skip when the folder is not there.
_DEFAULT_GLUE_DIR = Path("/work/shared/data/glue")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE folder ($UNIPELT_DATA_DIR or the shared copy); skips the test when neither exists."""
    folder = Path(os.environ.get("UNIPELT_DATA_DIR") or _DEFAULT_GLUE_DIR)
    if not (folder / "RTE" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found at {folder} (set UNIPELT_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT saved with the packaged MiniLM tokenizer: a real model folder that trains in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from unipelt.errors import UniPELTError
    from unipelt.pretrained import minilm_path

    try:
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    except UniPELTError as error:
        pytest.skip(str(error))
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
