"""One task as PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``.

What PEFT has, exported exactly: LoRA (rank, alpha, dropout, the projections it adapts), IA3 (scaled outputs,
and the feed-forward module whose input is scaled), prefix-tuning (the per-layer keys and values as PEFT's
prefix embedding) and the task head (``modules_to_save``). A module under a gate exports only when the gate is
gone: an ungated task, or units whose gate ``unipelt optimize`` folded into the weights (a folded LoRA pair then
carries its constant in B, so its PEFT scale is 1). A gate that still varies with the input has no PEFT
form, and bottleneck adapters and BitFit deltas have no PEFT type: those are refused with the reason.

PEFT loads one kind of adapter per model, so LoRA + IA3 is written as two adapters: LoRA in the folder itself
and IA3 in ``ia3/`` inside it. Loading LoRA, merging it, then loading IA3 reproduces our order (LoRA adds to
a projection's output, IA3 then scales that output).

Prefix-tuning: PEFT hands the prefix to the model as a filled KV cache, so the model numbers the real tokens
from P on, where ours attend to the prefix at the attention function and keep positions 0..T-1
(:mod:`unipelt.inject.attention`). With rotary positions (LLaMA, Qwen2, Mistral) only differences of
positions matter between real tokens, and a query at T + P sees an unrotated prefix key k as ours sees R(P)k
at T, so the exported keys are pre-rotated by P positions: logits match without anything passed. With learned
absolute positions (BERT, RoBERTa, MiniLM, GPT-2) the shift changes every token's input, which no prefix
can undo, and PEFT drops ``position_ids`` given to a prefix model: such a prefix is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from unipelt.atomic import atomic_directory, write_json
from unipelt.errors import UniPELTError
from unipelt.inject.architectures import layer_list
from unipelt.interop.naming import exact_regex, module_paths, role_paths, target_expression
from unipelt.interop.rope import rotary, rotate_prefix_keys

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SECOND_ADAPTER = "ia3"  # sub-folder of the IA3 half of a LoRA + IA3 export

# Our task kinds -> PEFT task types. PEFT's prefix forward for sequence and token classification looks for a
# ``past_key_values`` argument that transformers 5 renamed, so a prefix of those kinds is exported with the
# feature-extraction wrapper, which passes the cache through and returns the base model's own output (logits).
TASK_TYPES = {
    "classification": "SEQ_CLS",
    "regression": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "causal-lm": "CAUSAL_LM",
    "features": "FEATURE_EXTRACTION",
}
NO_PEFT_TYPE = {
    "adapter": "bottleneck adapters have no PEFT equivalent (PEFT has no adapter type of that shape)",
    "bitfit": "BitFit bias deltas have no PEFT equivalent",
}


def exportable_kinds(task: Any) -> list[str]:
    """Module kinds the task holds now (after any pruning), each checked to have a PEFT form."""
    kinds = [k for k in task.config.ordered_modules if _present(task, k)]
    for kind in kinds:
        if kind in NO_PEFT_TYPE:
            raise UniPELTError(f"cannot export to PEFT: the task has {kind} modules; {NO_PEFT_TYPE[kind]}")
    if not kinds:
        raise UniPELTError("cannot export to PEFT: the task holds no LoRA, IA3 or prefix module")
    return kinds


def _present(task: Any, kind: str) -> bool:
    if kind == "prefix":
        return task.prefix is not None
    return any(getattr(layer, kind, None) is not None for layer in task.layers)


def live_gate_sites(task: Any) -> list[str]:
    """``layer N: site`` for every unit whose gate is still computed from the input."""
    found = []
    for index, layer in enumerate(task.layers):
        if layer.gate is not None:
            found += [f"layer {index}: {site}" for site in layer.gate.sites]
    return found


def check_gates(task: Any, run: str | None) -> None:
    live = live_gate_sites(task)
    if not live:
        return
    command = f"unipelt optimize {run or 'RUN'} --epsilon 0.05"
    raise UniPELTError(
        f"cannot export to PEFT: {len(live)} unit(s) are still gated ({', '.join(live[:4])}"
        f"{', ...' if len(live) > 4 else ''}); a gate computed from each input has no PEFT form. "
        f"`{command}` folds gates that are near-constant over the validation set into the weights (it "
        "reports the metric change); export the optimized run, or train with --method lora / ia3 / prefix "
        "(ungated)"
    )


# ------------------------------------------------------------------------------------------ adapters


def lora_adapter(model: Any, task: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    base, arch = model.base_model, model.arch
    config = task.config
    paths = module_paths(base)
    layers = layer_list(base.base_model, arch)
    state, targets, ranks, conv = {}, [], set(), False
    for index, layer_modules in enumerate(task.layers):
        lora = getattr(layer_modules, "lora", None)
        if lora is None:
            continue
        for role, pair in lora.pairs().items():
            role_paths(base, arch, role)  # refuses fused slices
            module = layers[index].get_submodule(arch.projections[role])
            path = paths[id(module)]
            conv |= not isinstance(module, nn.Linear)
            targets.append(path)
            ranks.add(pair.lora_A.weight.shape[0])
            state[f"base_model.model.{path}.lora_A.weight"] = pair.lora_A.weight.detach()
            state[f"base_model.model.{path}.lora_B.weight"] = pair.lora_B.weight.detach()
    rank = int(config.lora_rank)
    # Ungated: B(A(x)) * alpha / r, as in PEFT. Folded gates: the constant is inside B, the scale is 1.
    alpha = float(config.lora_alpha) if config.gate == "none" else float(rank)
    every = [name for name, _ in base.named_modules()]
    peft_config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": float(config.lora_dropout),
        "target_modules": target_expression(targets, every),
        "fan_in_fan_out": conv,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
    }
    return peft_config, state


def ia3_adapter(model: Any, task: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    base, arch = model.base_model, model.arch
    paths = module_paths(base)
    layers = layer_list(base.base_model, arch)
    state, targets, feedforward = {}, [], []
    for index, layer_modules in enumerate(task.layers):
        ia3 = getattr(layer_modules, "ia3", None)
        if ia3 is None:
            continue
        for target, vector in ia3.vectors().items():
            role = "ffn_output" if target == "ffn" else target
            role_paths(base, arch, role)  # refuses fused slices
            module = layers[index].get_submodule(
                arch.ffn_output if target == "ffn" else arch.projections[role]
            )
            path = paths[id(module)]
            targets.append(path)
            if target == "ffn":
                feedforward.append(path)
                state[f"base_model.model.{path}.ia3_l"] = vector.detach().reshape(1, -1)
            else:
                state[f"base_model.model.{path}.ia3_l"] = vector.detach().reshape(-1, 1)
    every = [name for name, _ in base.named_modules()]
    # IA3 matches list entries of feedforward_modules by a bare suffix test, so both are exact expressions.
    peft_config = {
        "peft_type": "IA3",
        "target_modules": target_expression(targets, every) if not feedforward else exact_regex(targets),
        "feedforward_modules": exact_regex(feedforward) if feedforward else [],
        "fan_in_fan_out": False,
        "init_ia3_weights": True,
    }
    return peft_config, state


def prefix_adapter(model: Any, task: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    encoder = task.prefix
    pruned = sorted(getattr(encoder, "pruned_layers", ()))
    if pruned:
        raise UniPELTError(
            f"cannot export to PEFT: the prefix of layer(s) {pruned} was pruned, and PEFT's prefix covers every "
            "layer (a zero prefix still takes attention mass, so it is not the same as none)"
        )
    if encoder.parallel:
        raise UniPELTError(
            "cannot export to PEFT: this prefix has its own softmax (prefix_form=parallel, the default for a "
            "gated prefix on decoders), and PEFT's prefix-tuning shares the real keys' softmax. Train with "
            "--set prefix_form=concat for a prefix PEFT can hold"
        )
    if rotary(model.base_model) is None:
        raise UniPELTError(
            f"cannot export a prefix to PEFT on {model.base_model.config.model_type}: PEFT passes the prefix as a "
            "filled KV cache, so the model numbers the real tokens from the prefix length on and (with learned "
            "absolute positions) every token's input changes; no prefix can undo that, and PEFT ignores "
            "position_ids given to a prefix model. Rotary-position models (LLaMA, Qwen2, Mistral) export exactly"
        )
    dims = model.dims
    with torch.no_grad():
        prefix = encoder().detach().clone()  # (layers, 2, P, kv_dim)
    layers, _, length, kv_dim = prefix.shape
    prefix[:, 0] = rotate_prefix_keys(model.base_model, prefix[:, 0], length, dims)
    embedding = prefix.permute(2, 0, 1, 3).reshape(length, layers * 2 * kv_dim)
    peft_config = {
        "peft_type": "PREFIX_TUNING",
        "num_virtual_tokens": int(length),
        "num_layers": int(layers),
        "token_dim": int(kv_dim),
        "num_attention_heads": int(dims["num_key_value_heads"]),
        "num_transformer_submodules": 1,
        "encoder_hidden_size": int(kv_dim),
        "prefix_projection": False,
    }
    return peft_config, {"prompt_embeddings": embedding.contiguous()}


ADAPTERS = {"lora": lora_adapter, "ia3": ia3_adapter, "prefix": prefix_adapter}


def head_state(task: Any, prompt_learning: bool) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The task head as PEFT ``modules_to_save`` (its paths) and their weights under PEFT's saved names."""
    prefix = "base_model." if prompt_learning else "base_model.model."
    state = {}
    for key, value in task.added_state_dict().items():
        if key.startswith("head."):
            state[prefix + key[len("head.") :]] = value
    return list(task.head_paths), state


# ------------------------------------------------------------------------------------------ writing


def peft_adapters(model: Any, name: str, run: str | None = None) -> list[tuple[str, dict, dict]]:
    """(sub-folder, adapter_config, tensors) of each PEFT adapter one task becomes ("" is the folder itself)."""
    if model.merged:
        raise UniPELTError(
            "cannot export to PEFT: modules were merged into the base weights; load the task unmerged "
            "(model.load_task(name, path)) and export that"
        )
    task = model._task(name)
    kinds = exportable_kinds(task)
    check_gates(task, run)
    if "prefix" in kinds and len(kinds) > 1:
        raise UniPELTError(
            f"cannot export to PEFT: the task mixes prefix-tuning with {', '.join(k for k in kinds if k != 'prefix')}, "
            "and PEFT cannot stack a prefix adapter with another kind"
        )
    task_type = TASK_TYPES.get(task.kind, "FEATURE_EXTRACTION")
    base_name = str(getattr(model.base_model.config, "_name_or_path", "") or "") or None
    out = []
    for kind in kinds:
        config, state = ADAPTERS[kind](model, task)
        prompt = kind == "prefix"
        modules, head = head_state(task, prompt)
        state.update(head)
        kind_task = "FEATURE_EXTRACTION" if prompt and task_type in ("SEQ_CLS", "TOKEN_CLS") else task_type
        config.update(
            {
                "task_type": kind_task,
                "base_model_name_or_path": base_name,
                "modules_to_save": modules or None,
                "inference_mode": True,
            }
        )
        out.append(("" if not out else SECOND_ADAPTER, config, {k: v.contiguous() for k, v in state.items()}))
    return out


def save_peft(
    model: Any, name: str, path: str | Path, run: str | None = None, card: str | None = None
) -> Path:
    """Write task ``name`` as PEFT adapter folder(s) at ``path`` (atomically); see the module docstring."""
    from safetensors.torch import save_file

    adapters = peft_adapters(model, name, run)

    def write(folder: Path) -> None:
        for sub, config, state in adapters:
            target = folder / sub if sub else folder
            target.mkdir(parents=True, exist_ok=True)
            save_file(state, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
            write_json(target / CONFIG_FILE, config)
        if card is not None:
            (folder / "README.md").write_text(card, encoding="utf-8")

    return atomic_directory(path, write)
