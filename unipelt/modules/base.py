"""The one interface every PEFT sub-module implements, and the registry that makes a new one a single file.

A sub-module (LoRA, adapter, IA3, BitFit, prefix) belongs to one task and, for most kinds, to one transformer
layer. It never touches the base model: it tells the injector *where* it acts, as roles from the
architecture table (``("key", "output")`` = on the output of the key projection, ``("ffn_output", "input")``
= on the input of the feed-forward output projection), and *what* it does there, in :meth:`PeftModule.apply`.
The injector (:mod:`unipelt.inject.hooks`) owns the hooks, groups the rows of a batch by task and calls
``apply`` on each group, so a module is written for one task and one batch and knows nothing of routing.

What a module file provides:

- ``kind`` (the name in configs, checkpoints and counts) and ``title`` (for tables), and ``options``:
  extra config fields with their defaults (e.g. ``{"ia3_targets": [...]}``), so config.py needs no edit;
- ``build(spec, index)``: the module for layer ``index`` (or the whole task when ``per_layer`` is False);
- ``gate_sites(gate)``: which values it reads from its layer's gate (none when ungated or self-gated);
- ``sites()`` and ``apply(role, x, out, gates)``;
- ``merge(layer)`` when the module can be folded into the base weights (ungated LoRA, IA3, BitFit);
- ``parameter_counts()`` when the plain parameter count is not the whole story (the prefix MLP).

Register it with ``@register`` and import the file in :mod:`unipelt.modules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.inject.architectures import Architecture

# An inference call with at most this many token rows (a cached decoding step, a short request) adds a module's
# full-width update with a fresh product and one in-place sum: fewer operations, which is what such a call
# costs. Longer calls accumulate into the output with addmm instead, reading and writing it once.
FEW_ROWS = 16


def few_rows(out: torch.Tensor) -> bool:
    """Whether ``out`` (rows..., width) is an eager inference output small enough for the few-operations update
    (a compiled graph fuses either form; gradients need the output kept, not summed into)."""
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and out.numel() <= FEW_ROWS * out.shape[-1]
    )


@dataclass
class BuildSpec:
    """What a module needs to size itself: the task's config and the frozen model's shape and layers."""

    config: Any  # UniPELTConfig (not imported here to keep the dependency one way)
    arch: Architecture
    dims: dict[str, int]
    layers: list[nn.Module]

    @property
    def gate(self) -> str:
        return self.config.gate

    def option(self, name: str) -> Any:
        return self.config.option(name)


class PeftModule(nn.Module):
    """One PEFT sub-module of one task (in one layer, unless ``per_layer`` is False)."""

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    per_layer: ClassVar[bool] = True
    # Place in the fixed order of kinds: the softmax router's outputs and the order in which modules acting
    # on the same projection output are applied (additive ones before IA3's scaling, which comes last).
    order: ClassVar[int] = 100

    @classmethod
    def build(cls, spec: BuildSpec, index: int | None) -> PeftModule | None:
        raise NotImplementedError

    def gate_sites(self, gate: str) -> list[str]:
        """Names of the values this module reads from its layer's gate ("sigmoid" or "softmax" gate)."""
        return []

    def sites(self) -> list[tuple[str, str]]:
        """(role, "input" | "output") pairs this module acts on; the prefix acts inside attention instead."""
        return []

    def attention_input_projections(self) -> list[tuple[str, torch.Tensor]]:
        """Linear maps of the self-attention module's input this module wants computed, as (name, weight).

        The layer computes them together with its gate in one matmul before attention and leaves each result
        in ``group.prepared[name]`` for :meth:`apply` (LoRA's down projections of the query, key and value).
        Empty by default.
        """
        return []

    def apply(self, role: str, x: torch.Tensor, out: torch.Tensor | None, group: RowGroup) -> torch.Tensor:
        """Return the new output of ``role`` (or, for an "input" site, its new input ``x``).

        ``group`` is the rows of the batch that belong to this module's task: ``group.gates`` holds this
        layer's gate values for them (a module with its own gate adds its value there, so it is recorded with
        the others) and ``group.mask_for(h)`` their padding mask aligned with ``h``.
        """
        raise NotImplementedError

    def reads_input(self, role: str, group: RowGroup) -> bool:
        """Whether :meth:`apply` at an output site of ``role`` reads ``x``, the projection's input, for these rows.

        When no module at a site does, the rows of a mixed-task batch are gathered from the output alone and
        ``x`` is None. True unless a module knows better.
        """
        return True

    def merge(self, layer: nn.Module, arch: Architecture) -> None:
        """Fold this module into the frozen weights of ``layer``; refused unless the maths allows it."""
        raise UniPELTError(f"{self.kind} cannot be merged into the base weights")

    def mergeable(self) -> bool:
        return False

    def parameter_counts(self) -> dict[str, int]:
        return {self.kind: sum(p.numel() for p in self.parameters())}


class RowGroup(Protocol):
    """The rows of one forward that one task handles, as the injector hands them to a module."""

    gates: dict[str, torch.Tensor]
    prepared: dict[str, torch.Tensor]  # computed from the attention input by the layer (LayerModules.prepare)

    def mask_for(self, hidden: torch.Tensor) -> torch.Tensor | None: ...


MODULES: dict[str, type[PeftModule]] = {}


def register(cls: type[PeftModule]) -> type[PeftModule]:
    """Make a module kind known to configs, model building, counting and checkpoints."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} needs a kind")
    MODULES[cls.kind] = cls
    ordered = dict(sorted(MODULES.items(), key=lambda item: item[1].order))
    MODULES.clear()
    MODULES.update(ordered)
    return cls
