"""Tiny randomly initialised models of every supported architecture, built from config classes (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as tf

ENCODERS = ["bert", "roberta", "distilbert", "electra", "deberta-v2", "mpnet"]
DECODERS = ["gpt2", "llama", "qwen2", "mistral"]
ARCHS = ENCODERS + DECODERS
VOCAB = 100


def tiny_config(arch: str, num_labels: int = 2) -> tf.PretrainedConfig:
    common = {"vocab_size": VOCAB, "num_labels": num_labels, "pad_token_id": 0}
    if arch == "gpt2":
        return tf.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2, **common
        )
    if arch == "distilbert":
        return tf.DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64, **common
        )
    sizes = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
    }
    if arch in ("llama", "qwen2", "mistral"):
        config_class = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[arch]
        return config_class(num_key_value_heads=2, bos_token_id=1, eos_token_id=2, **sizes, **common)
    if arch == "deberta-v2":
        return tf.DebertaV2Config(
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=8,
            max_relative_positions=16,
            **sizes,
            **common,
        )
    config_class = {
        "bert": tf.BertConfig,
        "roberta": tf.RobertaConfig,
        "electra": tf.ElectraConfig,
        "mpnet": tf.MPNetConfig,
    }[arch]
    return config_class(**sizes, **common)


def tiny_model(
    arch: str, head: str = "classification", seed: int = 0, num_labels: int = 2
) -> torch.nn.Module:
    """A tiny model in eval mode (no dropout) so repeated forwards are deterministic."""
    torch.manual_seed(seed)
    config = tiny_config(arch, num_labels)
    auto = tf.AutoModelForCausalLM if head == "causal-lm" else tf.AutoModelForSequenceClassification
    return auto.from_config(config).eval()


def batch(
    arch: str, batch_size: int = 3, length: int = 7, pad: int = 2, seed: int = 1
) -> dict[str, torch.Tensor]:
    """Input ids with right padding on the later rows (decoders with padding classify via pad_token_id)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    for row in range(1, batch_size):
        mask[row, length - min(pad, length - 1) * row // (batch_size - 1) :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


def perturb(unipelt_model: torch.nn.Module, seed: int = 3, scale: float = 0.5) -> None:
    """Move zero-initialised LoRA B, adapter up weights and BitFit deltas away from zero, IA3 scales away from
    one, and enlarge the prefix, so that every module visibly changes the output of a tiny random model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unipelt_model.named_parameters():
            if "lora_B" in name or ".up." in name or "prefix.mlp.2" in name or ".bitfit." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
            elif ".ia3." in name:
                parameter.copy_(1 + torch.randn(parameter.shape, generator=generator) * scale)


def save_as_before(model: torch.nn.Module, folder: Path, field: str) -> Path:
    """Save ``model`` to ``folder`` as a checkpoint written before the config field ``field`` existed."""
    model.save_pretrained(folder)
    config_file = folder / "unipelt_config.json"
    meta = json.loads(config_file.read_text())
    del meta["unipelt"][field]
    config_file.write_text(json.dumps(meta))
    return folder
