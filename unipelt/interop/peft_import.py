"""PEFT adapter folders (LoRA, IA3, prefix-tuning) read into an equivalent unipelt task.

The folder's ``adapter_config.json`` gives the sizes; each saved tensor is placed by its module path: the
path names a layer and a projection, which the architecture table turns into one of our roles (``query``,
``ffn_output``...). A module PEFT adapted that has no role (a pooler projection, an embedding) or a PEFT
option we do not model (DoRA, rsLoRA, per-module ranks, trained biases) is refused by name rather than
loaded approximately. LoRA pairs or IA3 vectors missing in some layers start as exact no-ops there (B = 0,
scale 1). Modules saved in ``modules_to_save`` become the task head.

A prefix is PEFT's KV-cache prefix; on rotary-position models its keys are rotated back by P positions
(:mod:`unipelt.interop.rope`). On absolute-position models PEFT's prefix shifts every token's position, which
ours does not, so such a prefix is refused (loaded, it would give other logits than under PEFT).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unipelt.config import UniPELTConfig
from unipelt.errors import UniPELTError
from unipelt.inject.architectures import layer_list, parse_projection, role_path
from unipelt.interop.naming import module_paths
from unipelt.interop.peft_export import CONFIG_FILE, WEIGHTS_FILE
from unipelt.interop.rope import rotary, rotate_prefix_keys

PEFT_TYPES = ("LORA", "IA3", "PREFIX_TUNING")
LEGACY_FILE = "adapter_model.bin"  # what PEFT wrote before safetensors
UNSUPPORTED_LORA = {
    "use_dora": "DoRA",
    "use_rslora": "rank-stabilised scaling (rsLoRA)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "lora_bias": "trained LoRA biases",
}


@dataclass
class Imported:
    """A foreign adapter in our terms: the config, tensors under our task's state names, the head modules."""

    config: UniPELTConfig
    state: dict[str, torch.Tensor]
    head_modules: list[str] = field(default_factory=list)
    num_labels: int | None = None
    source: str = ""


def is_peft_folder(path: Path) -> bool:
    if not (path / CONFIG_FILE).is_file() or not any(
        (path / f).is_file() for f in (WEIGHTS_FILE, LEGACY_FILE)
    ):
        return False
    try:
        return "peft_type" in json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _where(model: Any) -> dict[str, tuple[int, str]]:
    """Full module path -> (layer index, role) for every role of every layer of the model."""
    base, arch = model.base_model, model.arch
    paths = module_paths(base)
    roles = {**{r: r for r in arch.projections}, "ffn_input": "ffn_input", "ffn_output": "ffn_output"}
    where = {}
    for index, layer in enumerate(layer_list(base.base_model, arch)):
        for role in roles:
            path, _, parts = parse_projection(role_path(arch, role))
            if parts == 1:
                where[paths[id(layer.get_submodule(path))]] = (index, role)
    return where


def _split_key(key: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    """``base_model.model.<path>.<suffix>`` -> (path, suffix), None for other keys."""
    for prefix in ("base_model.model.", "base_model."):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            for suffix in suffixes:
                if rest.endswith("." + suffix):
                    return rest[: -len(suffix) - 1], suffix
    return None


def _head(model: Any, tensors: dict[str, torch.Tensor], modules: list[str] | None) -> tuple[dict, list[str]]:
    """Saved ``modules_to_save`` tensors as ``head.<path>.<param>``, and the head module paths they fill."""
    names = [name for name, _ in model.base_model.named_modules()]
    wanted = [n for n in names if n and any(n == m or n.endswith("." + m) for m in modules or [])]
    state, found = {}, []
    for key, value in tensors.items():
        rest = key.removeprefix("base_model.").removeprefix("model.")
        owner = next((p for p in sorted(wanted, key=len, reverse=True) if rest.startswith(p + ".")), None)
        if owner is not None:
            state[f"head.{rest}"] = value
            if owner not in found:
                found.append(owner)
    return state, found


def read_peft(model: Any, path: str | Path) -> Imported:
    """A PEFT folder as an :class:`Imported` for ``model``'s architecture."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if (path / WEIGHTS_FILE).is_file():
            tensors = load_file(str(path / WEIGHTS_FILE))
        else:
            tensors = torch.load(path / LEGACY_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as error:
        raise UniPELTError(f"{path} is not a readable PEFT adapter folder ({error})") from error
    kind = config.get("peft_type")
    if kind not in PEFT_TYPES:
        raise UniPELTError(
            f"{path}: PEFT type {kind!r} has no unipelt equivalent; readable types: {', '.join(PEFT_TYPES)}"
        )
    reader = {"LORA": _lora, "IA3": _ia3, "PREFIX_TUNING": _prefix}[kind]
    imported = reader(model, config, tensors, path)
    head, head_modules = _head(model, tensors, config.get("modules_to_save"))
    imported.state.update(head)
    imported.head_modules = head_modules
    for key, value in head.items():
        if value.dim() == 2 and key.rsplit(".", 2)[-2] in ("classifier", "score", "out_proj"):
            imported.num_labels = int(value.shape[0])
    imported.source = str(path)
    return imported


def _lora(model: Any, config: dict, tensors: dict, path: Path) -> Imported:
    for option, title in UNSUPPORTED_LORA.items():
        if config.get(option):
            raise UniPELTError(f"{path}: the LoRA adapter uses {title}, which unipelt's LoRA does not model")
    if config.get("bias", "none") != "none":
        raise UniPELTError(f"{path}: the LoRA adapter trains biases (bias={config['bias']!r}); not modelled")
    where = _where(model)
    state, roles = {}, []
    for key, value in tensors.items():
        split = _split_key(key, ("lora_A.weight", "lora_B.weight"))
        if split is None:
            continue
        module, suffix = split
        if module not in where:
            raise UniPELTError(f"{path}: LoRA on {module!r}, which is no projection unipelt can adapt")
        index, role = where[module]
        if role not in model.arch.projections:
            raise UniPELTError(f"{path}: LoRA on the feed-forward {module!r}; unipelt's LoRA targets q/k/v/o")
        state[f"layers.{index}.lora.{role}.{suffix}"] = value
        roles.append(role)
    if not state:
        raise UniPELTError(f"{path}: the LoRA adapter holds no lora_A / lora_B weights")
    targets = [r for r in model.arch.projections if r in roles]
    rank = int(config["r"])
    unipelt = UniPELTConfig.from_preset(
        "lora",
        lora_rank=rank,
        lora_alpha=float(config.get("lora_alpha", rank)),
        lora_dropout=float(config.get("lora_dropout", 0.0)),
        lora_targets=targets,
    )
    return Imported(unipelt, state)


def _ia3(model: Any, config: dict, tensors: dict, path: Path) -> Imported:
    where = _where(model)
    state, targets = {}, []
    for key, value in tensors.items():
        split = _split_key(key, ("ia3_l",))
        if split is None:
            continue
        module = split[0]
        index, role = where.get(module, (None, None))
        feedforward = value.shape[0] == 1 and value.dim() == 2 and value.shape[1] != 1
        target = "ffn" if role == "ffn_output" and feedforward else role
        if target not in ("key", "value", "ffn") or (target == "ffn") != feedforward:
            raise UniPELTError(
                f"{path}: IA3 on {module!r} ({'input' if feedforward else 'output'} scaling); unipelt's IA3 "
                "scales the key and value outputs and the input of the feed-forward output projection"
            )
        state[f"layers.{index}.ia3.{target}"] = value.reshape(-1)
        targets.append(target)
    if not state:
        raise UniPELTError(f"{path}: the IA3 adapter holds no ia3_l vectors")
    order = [t for t in ("key", "value", "ffn") if t in targets]
    return Imported(UniPELTConfig.from_preset("ia3", ia3_targets=order), state)


def _prefix(model: Any, config: dict, tensors: dict, path: Path) -> Imported:
    if rotary(model.base_model) is None:
        raise UniPELTError(
            f"{path}: a PEFT prefix on {model.base_model.config.model_type} numbers the real tokens from the "
            "prefix length on (learned absolute positions); unipelt's prefix keeps positions 0..T-1, so the "
            "same prefix would give other outputs. Only rotary-position models (LLaMA, Qwen2, Mistral) convert"
        )
    if int(config.get("num_transformer_submodules") or 1) != 1:
        raise UniPELTError(f"{path}: an encoder-decoder prefix (two sub-modules) has no unipelt equivalent")
    embedding = tensors.get("prompt_embeddings")
    if embedding is None:
        raise UniPELTError(f"{path}: the prefix adapter holds no prompt_embeddings")
    dims = model.dims
    layers, kv_dim = dims["num_hidden_layers"], dims["num_key_value_heads"] * dims["head_dim"]
    length = int(embedding.shape[0])
    if embedding.shape[1] != layers * 2 * kv_dim:
        raise UniPELTError(
            f"{path}: the prefix has {embedding.shape[1]} values per virtual token; this model needs "
            f"{layers} layers x 2 x {kv_dim}. Was it made for another base model?"
        )
    prefix = embedding.float().reshape(length, layers, 2, kv_dim).permute(1, 2, 0, 3).contiguous()
    prefix[:, 0] = rotate_prefix_keys(model.base_model, prefix[:, 0], length, dims, inverse=True)
    unipelt = UniPELTConfig.from_preset(
        "prefix", prefix_length=length, prefix_reparam=False, prefix_form="concat"
    )
    return Imported(unipelt, {"prefix.prefix": prefix})
