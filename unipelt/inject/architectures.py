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

Hierarchical models (Swin) differ in three ways, each one field of the row. ``layers`` may hold one ``*``
(``"encoder.layers.*.blocks"``: the blocks of every stage, in order, are the layers). Widths change from stage
to stage, so every module sizes itself from its own site (see :mod:`unipelt.modules.projections`), never from
the config's ``hidden_size``. ``windowed`` marks attention that runs on windows of the image: each row of the
batch enters attention as several consecutive rows (see :mod:`unipelt.inject.windows`), so the gates read the
input of ``gates_from`` instead, the whole unpadded row before it is cut into windows.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

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
    gates_from: str | None = None  # the module whose input the layer's gates read; None: ``attention``
    windowed: bool = False  # attention sees each row as consecutive windows (Swin)

    @property
    def gate_site(self) -> str:
        """The module, relative to a layer, whose input feeds the layer's gates."""
        return self.gates_from or self.attention


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
    # Swin: four stages of blocks whose width doubles per stage, attention in shifted windows through the
    # attention interface with a relative position bias in its mask (the prefix columns get none).
    "swin": dataclasses.replace(
        _VIT_LIKE,
        layers="encoder.layers.*.blocks",
        head=("classifier",),  # its pooler is a parameter-free average
        gates_from="layernorm_before",
        windowed=True,
    ),
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
    """The transformer layers in order; with a ``*`` in the path, the layers of every stage one after another
    (a new list holding the model's own modules)."""
    outer, star, inner = arch.layers.partition(".*.")
    if not star:
        return _module_list(backbone, arch.layers)
    stages = _module_list(backbone, outer)
    return nn.ModuleList(layer for stage in stages for layer in _module_list(stage, inner))


def checkpoint_layers_only(model: nn.Module, layers: nn.ModuleList) -> None:
    """Switch off gradient checkpointing of the modules that hold layers (Swin's stages), keeping the layers'.

    The injector sets a layer's per-call state again around the layer's own re-run in backward; a stage
    re-run would run its layers after the call's state is gone, without the added modules. Checkpointing
    each layer saves as much memory as checkpointing its stage as well."""
    inside = {id(module) for layer in layers for module in layer.modules()}
    for module in model.modules():
        if id(module) in inside or not isinstance(module, GradientCheckpointingLayer):
            continue  # other modules with the flag (older encoders) checkpoint their layers one by one
        if module.gradient_checkpointing and any(id(child) in inside for child in module.modules()):
            module.gradient_checkpointing = False


def _module_list(module: nn.Module, path: str) -> nn.ModuleList:
    found = module.get_submodule(path)
    if not isinstance(found, nn.ModuleList):
        raise UnsupportedModelError(f"expected a ModuleList at {path!r}, found {type(found).__name__}")
    return found


def model_dims(config: Any) -> dict[str, int]:
    """The shape facts of a Transformers config that UniPELT and its checkpoints depend on.

    A staged model (Swin: ``depths`` and ``num_heads`` per stage) counts the blocks of every stage as its
    layers and gives the last stage's heads, whose width is ``hidden_size``."""
    hidden = int(config.hidden_size)
    heads = config.num_attention_heads
    heads = int(heads[-1] if isinstance(heads, (list, tuple)) else heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    depths = getattr(config, "depths", None)
    layers = sum(depths) if isinstance(depths, (list, tuple)) else config.num_hidden_layers
    return {
        "hidden_size": hidden,
        "num_hidden_layers": int(layers),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
    }
