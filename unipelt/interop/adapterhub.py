"""Folders saved by AdapterHub ``adapters`` (``save_adapter``) read into an equivalent unipelt task.

Readable: its ``UniPELTConfig`` (a union of prefix-tuning, a bottleneck adapter and LoRA, all gated) and the
single ``LoRAConfig``, ``PrefixTuningConfig`` and ``SeqBnConfig``. The maths is the same as ours: a gated
LoRA's gate replaces alpha / r, the prefix MLP has our layout (embedding -> Linear -> tanh -> Linear, keys
and values of layer l at columns [2l, 2l + 1] x kv), every gate is the mean of sigmoid(Linear(x)) over tokens.
Two differences are checked, not guessed:

- ``adapters`` averages its gates over every token, padding included; ours over real tokens only. Without
  padding the logits agree; with it they differ (a gate is then a property of the batch there, not of the
  example).
- Its bottleneck sits where its config says. ``original_ln_before=False`` (Houlsby's placement, on the
  feed-forward output before the residual sum and layer norm) is ours and converts; the default of
  ``SeqBnConfig`` and of its ``UniPELTConfig`` (Pfeiffer's: the adapter reads LayerNorm(output + residual))
  has no unipelt equivalent and is refused with that reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from unipelt.config import UniPELTConfig
from unipelt.errors import UniPELTError
from unipelt.interop.peft_import import Imported

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("pytorch_adapter.bin", "adapter_model.safetensors")
ROLES = {"q": "query", "k": "key", "v": "value"}
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "tanh": "tanh", "swish": "silu", "silu": "silu"}
# The bottleneck placement unipelt implements (see the module docstring), and options it does not model.
PLACEMENT = {"original_ln_before": False, "original_ln_after": True, "residual_before_ln": True}
NOT_MODELLED = ("mh_adapter", "ln_before", "ln_after", "phm_layer", "is_parallel", "inv_adapter")


def _meta(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (
        data if isinstance(data, dict) and isinstance(data.get("config"), dict) and "name" in data else None
    )


def is_adapterhub_folder(path: Path) -> bool:
    return _meta(path) is not None and any((path / f).is_file() for f in WEIGHT_FILES)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if (path / WEIGHT_FILES[1]).is_file():
            from safetensors.torch import load_file

            return load_file(str(path / WEIGHT_FILES[1]))
        return torch.load(path / WEIGHT_FILES[0], map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged pickle raises many kinds of error
        raise UniPELTError(f"{path}: the adapter weights cannot be read ({error})") from error


def _one(tensors: dict, pattern: str, path: Path) -> torch.Tensor:
    found = [v for k, v in tensors.items() if k.endswith(pattern)]
    if len(found) != 1:
        raise UniPELTError(f"{path}: expected one tensor ending {pattern!r}, found {len(found)}")
    return found[0]


def read_adapterhub(model: Any, path: str | Path) -> Imported:
    """An AdapterHub folder as an :class:`Imported` for ``model`` (BERT-like encoders: layer paths ``.layer.N.``)."""
    path = Path(path)
    meta = _meta(path)
    if meta is None:
        raise UniPELTError(
            f"{path} is not an AdapterHub adapter folder (no adapter_config.json with a config)"
        )
    name = meta["name"]
    config = meta["config"]
    parts = config["configs"] if config.get("architecture") == "union" else [config]
    tensors = _weights(path)
    layers = model.dims["num_hidden_layers"]
    fields: dict[str, Any] = {"modules": [], "gate_pooling": "mean"}
    state: dict[str, torch.Tensor] = {}
    gated = set()
    gates: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(layers)}
    for part in parts:
        kind = _kind(part, path)
        gated.add(bool(part.get("use_gating")))
        reader = {"lora": _lora, "prefix": _prefix, "adapter": _bottleneck}[kind]
        reader(part, tensors, name, layers, fields, state, gates, path)
    if len(gated) != 1:
        raise UniPELTError(f"{path}: some parts are gated and some not; a unipelt task gates all or none")
    fields["gate"] = "sigmoid" if gated.pop() else "none"
    fields["modules"] = [k for k in ("lora", "prefix", "adapter") if k in fields["modules"]]
    unipelt = UniPELTConfig(**fields)
    if unipelt.gate == "sigmoid":
        for index, sites in gates.items():
            order = [f"lora_{t}" for t in unipelt.lora_targets if unipelt.lora] + ["prefix"] * unipelt.prefix
            if order:
                rows = [sites[s] for s in order]
                state[f"layers.{index}.gate.linear.weight"] = torch.cat([w for w, _ in rows])
                state[f"layers.{index}.gate.linear.bias"] = torch.cat([b for _, b in rows])
    return Imported(unipelt, state, source=str(path))


def _kind(part: dict, path: Path) -> str:
    architecture = part.get("architecture")
    if architecture == "lora" and part.get("composition_mode", "add") == "add":
        return "lora"
    if architecture == "prefix_tuning":
        return "prefix"
    if architecture in (None, "bottleneck") and "reduction_factor" in part:
        return "adapter"
    raise UniPELTError(
        f"{path}: an adapters {architecture!r} configuration has no unipelt equivalent; readable: UniPELTConfig, "
        "LoRAConfig, PrefixTuningConfig, SeqBnConfig"
    )


def _lora(part, tensors, name, layers, fields, state, gates, path) -> None:
    if part.get("intermediate_lora") or part.get("output_lora") or not part.get("selfattn_lora", True):
        raise UniPELTError(f"{path}: LoRA outside the attention q/k/v projections is not modelled by unipelt")
    if part.get("use_dora") or part.get("vera_d") is not None:
        raise UniPELTError(f"{path}: DoRA / VeRA variants of LoRA are not modelled by unipelt")
    targets = [ROLES[m] for m in part.get("attn_matrices", ["q", "v"])]
    rank = int(part["r"])
    fields.update(
        modules=fields["modules"] + ["lora"],
        lora_rank=rank,
        lora_alpha=float(part["alpha"]),
        lora_dropout=float(part.get("dropout", 0.0)),
        lora_targets=targets,
    )
    for index in range(layers):
        for role in targets:
            stem = f".layer.{index}.attention.self.{role}.loras.{name}."
            state[f"layers.{index}.lora.{role}.lora_A.weight"] = _one(tensors, stem + "lora_A", path)
            state[f"layers.{index}.lora.{role}.lora_B.weight"] = _one(tensors, stem + "lora_B", path)
            if part.get("use_gating"):
                gate = (_one(tensors, stem + "gate.weight", path), _one(tensors, stem + "gate.bias", path))
                if gate[0].shape[0] != 1:
                    raise UniPELTError(f"{path}: LoRA gates with several heads are not modelled by unipelt")
                gates[index][f"lora_{role}"] = gate


def _prefix(part, tensors, name, layers, fields, state, gates, path) -> None:
    if part.get("use_gating") and not part.get("shared_gating", True):
        raise UniPELTError(
            f"{path}: separate key and value prefix gates are not modelled by unipelt (one gate)"
        )
    length = int(part["prefix_length"])
    stem = f"prefix_tuning.prefix_tunings.{name}.self_prefix."
    fields.update(modules=fields["modules"] + ["prefix"], prefix_length=length)
    if part.get("flat"):
        flat = _one(tensors, stem + "control_trans", path)
        state["prefix.prefix"] = flat.reshape(length, layers, 2, -1).permute(1, 2, 0, 3).contiguous()
        fields.update(prefix_reparam=False, prefix_form="concat")
    else:
        if part.get("non_linearity", "tanh") != "tanh":
            raise UniPELTError(f"{path}: a prefix MLP with {part['non_linearity']!r} (unipelt's uses tanh)")
        fields.update(prefix_reparam=True, prefix_hidden=int(part["bottleneck_size"]), prefix_form="concat")
        state["prefix.embedding.weight"] = _one(tensors, stem + "wte.weight", path)
        for ours, theirs in (("0", "0"), ("2", "2")):
            for p in ("weight", "bias"):
                state[f"prefix.mlp.{ours}.{p}"] = _one(tensors, f"{stem}control_trans.{theirs}.{p}", path)
    if part.get("use_gating"):
        for index in range(layers):
            stem = f".layer.{index}.attention.self.prefix_tuning.prefix_gates.{name}."
            gates[index]["prefix"] = (
                _one(tensors, stem + "weight", path),
                _one(tensors, stem + "bias", path),
            )


def _bottleneck(part, tensors, name, layers, fields, state, gates, path) -> None:
    wrong = {k: part.get(k) for k, v in PLACEMENT.items() if part.get(k) != v}
    if wrong:
        raise UniPELTError(
            f"{path}: this bottleneck adapter reads LayerNorm(feed-forward output + residual) ({wrong}: "
            "Pfeiffer's placement, the default of adapters' SeqBnConfig and UniPELTConfig); unipelt's adapter, "
            "like the UniPELT reference code, reads the feed-forward output before the residual and layer norm "
            "(original_ln_before=False), so this one has no unipelt equivalent"
        )
    used = [k for k in NOT_MODELLED if part.get(k)] + (
        ["not output_adapter"] if not part.get("output_adapter") else []
    )
    if used:
        raise UniPELTError(f"{path}: bottleneck options {used} are not modelled by unipelt")
    activation = ACTIVATIONS.get(str(part.get("non_linearity", "relu")).lower())
    scaling = part.get("scaling", 1.0)
    if activation is None or not isinstance(scaling, (int, float)):
        raise UniPELTError(
            f"{path}: activation {part.get('non_linearity')!r} / scaling {scaling!r} not modelled"
        )
    for index in range(layers):
        stem = f".layer.{index}.output.adapters.{name}."
        down = _one(tensors, stem + "adapter_down.0.weight", path)
        state[f"layers.{index}.adapter.down.weight"] = down
        state[f"layers.{index}.adapter.down.bias"] = _one(tensors, stem + "adapter_down.0.bias", path)
        state[f"layers.{index}.adapter.up.weight"] = _one(tensors, stem + "adapter_up.weight", path) * scaling
        state[f"layers.{index}.adapter.up.bias"] = _one(tensors, stem + "adapter_up.bias", path) * scaling
        if part.get("use_gating"):
            state[f"layers.{index}.adapter.gate.linear.weight"] = _one(tensors, stem + "gate.weight", path)
            state[f"layers.{index}.adapter.gate.linear.bias"] = _one(tensors, stem + "gate.bias", path)
    fields.update(
        modules=fields["modules"] + ["adapter"],
        adapter_size=int(down.shape[0]),
        adapter_activation=activation,
        adapter_input="raw",  # AdapterHub's adapter reads the feed-forward output as it is
    )
