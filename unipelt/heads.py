"""Task heads: what each task adds on top of the shared backbone, and the loss for each kind of task.

A task's head is a private copy of the base model's own head modules (``classifier``, ``score``, ``pooler``...,
found through the architecture table), with the output projection resized to the task's number of labels. So
the base model's head code runs unchanged (pooling, dropout, the last-token pick of decoders) and a new
architecture needs no head code of ours; the base model's own head stays frozen and is what ``disabled()``
shows. A forward hook on each base head module runs the head of each row's task instead.

Kinds of task, decided here and nowhere else:

- ``classification`` and ``regression``: one output per sequence or image (``...ForSequenceClassification``,
  ``...ForImageClassification``);
- ``token-classification``: one output per token (``...ForTokenClassification``);
- ``causal-lm``: next-token prediction with the frozen LM head (no head of its own);
- ``features``: a bare backbone (``AutoModel``), no head and no loss.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unipelt.errors import UniPELTError

KINDS = ("classification", "regression", "token-classification", "causal-lm", "features")
LABELLED = ("classification", "regression", "token-classification")


def base_kind(model: nn.Module) -> str:
    """The kind of task a Transformers model class was built for."""
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if name.endswith("ForTokenClassification"):
        return "token-classification"
    if name.endswith(("ForSequenceClassification", "ForImageClassification")):
        config = model.config
        if config.problem_type == "regression" or int(getattr(config, "num_labels", 2)) == 1:
            return "regression"
        return "classification"
    return "features"


def compatible(base: str, kind: str) -> bool:
    """Whether a task of ``kind`` can run on a base model built for ``base`` (sequence heads mix freely)."""
    sequence = ("classification", "regression")
    return kind == base or (kind in sequence and base in sequence)


def find_head_paths(model: nn.Module, wanted: list[str] | tuple[str, ...], explicit: bool) -> list[str]:
    """Full module paths of the head modules (``classifier``, ``bert.pooler``...), searched at the top and in
    the backbone."""
    backbone_prefix = getattr(model, "base_model_prefix", "")
    names = []
    for name, _ in model.named_modules():
        short = name.removeprefix(backbone_prefix + ".") if backbone_prefix else name
        if short in wanted or name in wanted:
            names.append(name)
    if explicit and not names:
        raise UniPELTError(f"none of head_modules {list(wanted)} exists in the model")
    return names


def head_key(path: str) -> str:
    """A ModuleDict key for a dotted module path (keys may not hold dots)."""
    return path.replace(".", "-")


def output_layer(head: nn.ModuleDict, width: int) -> tuple[nn.Module, str, nn.Linear] | None:
    """The last Linear with ``width`` outputs in the head copies (classifier / score / out_proj): (parent,
    attribute, layer)."""
    found = None
    for module in head.values():
        for name, child in module.named_modules():
            if isinstance(child, nn.Linear) and child.out_features == width:
                parent_name, _, attribute = name.rpartition(".")
                parent = module.get_submodule(parent_name) if parent_name else None
                found = (parent if parent is not None else module, attribute, child)
    return found


def _copy_without_hooks(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose hook tables start empty.

    The base head modules carry our routing hooks, which are bound to the injector; copying them along would
    copy the injector and through it the whole model (about 100 MB per task on MiniLM), only to drop it.
    """
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for name, value in vars(sub).items():
            if name.startswith(("_forward", "_backward", "_state_dict", "_load_state_dict")) and isinstance(
                value, dict
            ):
                memo[id(value)] = type(value)()
    return copy.deepcopy(module, memo)


def copy_head(model: nn.Module, paths: list[str], num_labels: int | None) -> nn.ModuleDict:
    """Private, trainable copies of the base head modules, the output layer resized to ``num_labels``."""
    head = nn.ModuleDict()
    for path in paths:
        module = _copy_without_hooks(model.get_submodule(path))
        module.requires_grad_(True)
        head[head_key(path)] = module
    base_labels = int(getattr(model.config, "num_labels", 0) or 0)
    if num_labels is not None and paths and num_labels != base_labels:
        found = output_layer(head, base_labels)
        if found is None:
            raise UniPELTError(
                f"cannot find the output layer ({base_labels} outputs) of the head {paths} to resize it to "
                f"{num_labels} labels"
            )
        parent, attribute, old = found
        new = nn.Linear(old.in_features, num_labels, bias=old.bias is not None, device=old.weight.device)
        new.to(old.weight.dtype)
        std = float(getattr(model.config, "initializer_range", 0.02))
        if new.weight.device.type != "meta":
            nn.init.normal_(new.weight, std=std)
            if new.bias is not None:
                nn.init.zeros_(new.bias)
        if parent is old:  # the head module is the Linear itself (classifier, score)
            head[next(k for k, v in head.items() if v is old)] = new
        else:
            setattr(parent, attribute, new)
    return head


def task_loss(
    kind: str, logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy for (token) classification, mean squared error for regression."""
    if kind == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.to(torch.float32).view(-1))
    weight = None if class_weights is None else class_weights.to(logits.device, torch.float32)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1).long(),
        weight=weight,
        ignore_index=-100,
    )


def with_task_loss(output: Any, labels: torch.Tensor, tasks: Any, request: Any, names: list[str]) -> Any:
    """``output`` with the loss of each row's task: one task's loss, or the row-weighted mean over the tasks of
    a mixed batch (``request`` is the per-row list of names). Logits are sliced to each task's labels."""
    logits = output.logits
    if not isinstance(request, (list, tuple)) or len(names) == 1:
        spec = tasks[names[0]]
        loss = task_loss(spec.kind, logits[..., : spec.num_labels], labels, spec.class_weights)
    else:
        loss = logits.new_zeros((), dtype=torch.float32)
        for name in names:
            spec = tasks[name]
            rows = torch.tensor([i for i, n in enumerate(request) if n == name], device=logits.device)
            part = task_loss(
                spec.kind, logits[rows][..., : spec.num_labels], labels[rows], spec.class_weights
            )
            loss = loss + part * len(rows) / len(request)
    return type(output)(**{"loss": loss, **{k: v for k, v in output.items() if k != "loss"}})
