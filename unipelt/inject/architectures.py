"""Where each supported architecture keeps the parts UniPELT touches: one table row per model type.

Supporting a new architecture means adding a row, not copying its attention code. A row names, relative
to one transformer layer, the self-attention module (the prefix site, and the module whose input feeds
the LoRA/prefix gates), the query/key/value/output projections (LoRA sites; ``"attn.c_attn[0/3]"`` is the
first third of GPT-2's fused q/k/v Conv1D), and the feed-forward input and output projections (IA3 scales the
input of ``ffn_output``, the adapter sits on its output). Every PEFT module names the places it touches by these
roles (``query``, ``key``, ``value``, ``output``, ``ffn_input``, ``ffn_output``), never by a model's own paths.

``pre_norm`` marks architectures that normalise a layer's input, not its output (LLaMA, GPT-2, ...): their
residual stream is never normalised and grows with depth, so gates there read an RMS-normalised view of the
state (``gate_input="auto"``, see :mod:`unipelt.gates.normalise`).

``seam`` says how prefix keys/values reach attention: ``"interface"`` for models that call transformers'
pluggable attention function (we register our own, see :mod:`unipelt.attention`), and a named seam for
the two that compute attention inline (MPNet adds a relative position bias; DeBERTa-v2 adds
disentangled position scores).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from unipelt.errors import UnsupportedModelError


@dataclass(frozen=True)
class Architecture:
    layers: str
    attention: str
    projections: dict[str, str]
    ffn_output: str
    ffn_input: str
    decoder: bool = False
    pre_norm: bool = False
    seam: str = "interface"
    head: tuple[str, ...] = field(default=("classifier", "score", "pre_classifier", "pooler"))


_BERT_LIKE = Architecture(
    layers="encoder.layer",
    attention="attention.self",
    projections={
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "output": "attention.output.dense",
    },
    ffn_output="output.dense",
    ffn_input="intermediate.dense",
)

_LLAMA_LIKE = Architecture(
    layers="layers",
    attention="self_attn",
    projections={
        "query": "self_attn.q_proj",
        "key": "self_attn.k_proj",
        "value": "self_attn.v_proj",
        "output": "self_attn.o_proj",
    },
    ffn_output="mlp.down_proj",
    ffn_input="mlp.up_proj",
    decoder=True,
    pre_norm=True,
)

# Vision Transformers: a patch embedding in front of a plain pre-norm encoder, attention through the interface.
_VIT_LIKE = Architecture(
    layers="layers",
    attention="attention",
    projections={
        "query": "attention.q_proj",
        "key": "attention.k_proj",
        "value": "attention.v_proj",
        "output": "attention.o_proj",
    },
    ffn_output="mlp.fc2",
    ffn_input="mlp.fc1",
    pre_norm=True,
)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": Architecture(
        layers="transformer.layer",
        attention="attention",
        projections={
            "query": "attention.q_lin",
            "key": "attention.k_lin",
            "value": "attention.v_lin",
            "output": "attention.out_lin",
        },
        ffn_output="ffn.lin2",
        ffn_input="ffn.lin1",
    ),
    "deberta-v2": Architecture(
        layers="encoder.layer",
        attention="attention.self",
        projections={
            "query": "attention.self.query_proj",
            "key": "attention.self.key_proj",
            "value": "attention.self.value_proj",
            "output": "attention.output.dense",
        },
        ffn_output="output.dense",
        ffn_input="intermediate.dense",
        seam="deberta",
    ),
    "mpnet": Architecture(
        layers="encoder.layer",
        attention="attention.attn",
        projections={
            "query": "attention.attn.q",
            "key": "attention.attn.k",
            "value": "attention.attn.v",
            "output": "attention.attn.o",
        },
        ffn_output="output.dense",
        ffn_input="intermediate.dense",
        seam="mpnet",
    ),
    "gpt2": Architecture(
        layers="h",
        attention="attn",
        projections={
            "query": "attn.c_attn[0/3]",
            "key": "attn.c_attn[1/3]",
            "value": "attn.c_attn[2/3]",
            "output": "attn.c_proj",
        },
        ffn_output="mlp.c_proj",
        ffn_input="mlp.c_fc",
        decoder=True,
        pre_norm=True,
    ),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "vit": _VIT_LIKE,
    "deit": _VIT_LIKE,
    "clip_vision_model": Architecture(  # CLIP's image tower (CLIPVisionModel): features, no head of its own
        layers="encoder.layers",
        attention="self_attn",
        projections={
            "query": "self_attn.q_proj",
            "key": "self_attn.k_proj",
            "value": "self_attn.v_proj",
            "output": "self_attn.out_proj",
        },
        ffn_output="mlp.fc2",
        ffn_input="mlp.fc1",
        pre_norm=True,
    ),
}

_FUSED = re.compile(r"^(?P<path>.+)\[(?P<index>\d+)/(?P<parts>\d+)\]$")


def architecture_for(model: nn.Module | Any) -> Architecture:
    """The table row for a model (or for its Transformers config alone, to check a model before loading its
    weights), or an error that lists what is supported and how to add more."""
    model_type = getattr(getattr(model, "config", model), "model_type", None)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    supported = ", ".join(sorted(ARCHITECTURES))
    raise UnsupportedModelError(
        f"model type {model_type!r} is not supported. Supported: {supported}. To add one, add a row to "
        "ARCHITECTURES in unipelt/inject/architectures.py naming its layer list, self-attention module, q/k/v "
        "projections and feed-forward output (see the rows for bert and llama)."
    )


ROLES = ("query", "key", "value", "output", "ffn_input", "ffn_output")


def role_path(arch: Architecture, role: str) -> str:
    """The table's path (maybe with a fused-slice suffix) for a role such as ``key`` or ``ffn_output``."""
    if role == "ffn_input":
        return arch.ffn_input
    if role == "ffn_output":
        return arch.ffn_output
    if role not in arch.projections:
        raise UnsupportedModelError(f"unknown projection {role!r}; known: {', '.join(ROLES)}")
    return arch.projections[role]


def parse_projection(spec: str) -> tuple[str, int, int]:
    """``"attn.c_attn[2/3]"`` -> ("attn.c_attn", 2, 3); a plain path -> (path, 0, 1)."""
    match = _FUSED.match(spec)
    if match is None:
        return spec, 0, 1
    return match["path"], int(match["index"]), int(match["parts"])


def layer_list(backbone: nn.Module, arch: Architecture) -> nn.ModuleList:
    layers = backbone.get_submodule(arch.layers)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModelError(
            f"expected a ModuleList at {arch.layers!r}, found {type(layers).__name__}"
        )
    return layers


def model_dims(config: Any) -> dict[str, int]:
    """The shape facts of a Transformers config that UniPELT and its checkpoints depend on."""
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    return {
        "hidden_size": hidden,
        "num_hidden_layers": int(config.num_hidden_layers),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
    }
