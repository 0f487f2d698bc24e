"""One task's share of a UniPELT model: its config, its gated sub-modules in every layer, its head.

A :class:`TaskModules` is a plain ``nn.Module`` in ``UniPELTModel.tasks[name]``; its state dict is exactly what
a task checkpoint holds (``layers.{i}.{kind}...``, ``layers.{i}.gate...``, ``prefix...``, ``head.{path}...``).
Building it asks each registered module kind for its per-layer (or per-task) part, then gives each layer one
gate over the sites its modules read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from unipelt.config import UniPELTConfig
from unipelt.errors import UniPELTError
from unipelt.gates import GATE_TYPES, SigmoidGate, build_layer_gate
from unipelt.heads import copy_head, head_key
from unipelt.inject.architectures import Architecture
from unipelt.modules import MODULES, BuildSpec, PeftModule
from unipelt.modules.base import RowGroup
from unipelt.modules.joined import joined
from unipelt.modules.projections import layer_width

if TYPE_CHECKING:
    from unipelt.plan import Plan


def count_keys() -> tuple[str, ...]:
    """Rows of a parameter table: every module kind (the prefix MLP beside the prefix), gates, head."""
    keys: list[str] = []
    for kind in MODULES:
        keys.append(kind)
        if kind == "prefix":
            keys.append("prefix_mlp")
    return (*keys, "gates", "head")


class LayerModules(nn.Module):
    """One task's modules in one transformer layer: the layer gate and one child per module kind."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: nn.Module | None = None
        self.by_site: dict[tuple[str, str], list[tuple[str, PeftModule]]] = {}
        self._at: dict[tuple[tuple[str, ...], str], list[tuple[str, PeftModule]]] = {}  # answers of at()

    def parts(self) -> list[PeftModule]:
        return [m for m in self.children() if isinstance(m, PeftModule)]

    def index_sites(self) -> None:
        """Which module acts where, in registry order (additive modules before the IA3 scaling)."""
        by_site: dict[tuple[str, str], list[tuple[str, PeftModule]]] = {}
        for kind in MODULES:
            module = getattr(self, kind, None)
            if isinstance(module, PeftModule):
                for role, when in module.sites():
                    by_site.setdefault((role, when), []).append((role, module))
        self.by_site = by_site
        self._at = {}

    def at(self, roles: tuple[str, ...], when: str) -> list[tuple[str, PeftModule]]:
        """The modules acting on the projections ``roles`` at ``when``, in order (kept: asked once per site
        per call)."""
        found = self._at.get((roles, when))
        if found is None:
            found = [entry for role in roles for entry in self.by_site.get((role, when), ())]
            self._at[(roles, when)] = found
        return found

    def prepare(self, x: torch.Tensor, group: RowGroup, pooling: str) -> None:
        """Before attention, from its input ``x`` (these rows): the layer gate's values into ``group.gates``
        and the modules' projections of ``x`` into ``group.prepared``, in one matmul (with the gate's logits
        when the gate reads the raw state)."""
        gate = self.gate
        projections = [entry for part in self.parts() for entry in part.attention_input_projections()]
        joint = isinstance(gate, SigmoidGate) and gate.joinable
        if gate is not None and not joint:
            group.gates.update(gate(x, group.mask_for(x), pooling))
        if not projections and not joint:
            return
        weights = ([gate.linear.weight] if joint else []) + [weight for _, weight in projections]
        sources = weights + ([gate.linear.bias] if joint else [])
        weight, bias = joined(self, "attention_input", sources, lambda: _stacked(weights, sources[-1], joint))
        y = F.linear(x, weight, bias)
        start = len(gate.sites) if joint else 0
        if joint:
            group.gates.update(gate.named(gate.values(y[..., :start], group.mask_for(x), pooling)))
        for name, part in projections:
            group.prepared[name] = y[..., start : start + part.shape[0]]
            start += part.shape[0]


def _stacked(
    weights: list[torch.Tensor], bias: torch.Tensor, biased: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of ``weights`` as one matrix and, when ``biased``, ``bias`` (the first matrix's) padded with
    zeros for the other rows."""
    weight = weights[0] if len(weights) == 1 else torch.cat(weights)
    if not biased:
        return weight, None
    if weight.shape[0] > bias.shape[0]:
        bias = torch.cat([bias, bias.new_zeros(weight.shape[0] - bias.shape[0])])
    return weight, bias


class TaskModules(nn.Module):
    def __init__(
        self,
        config: UniPELTConfig,
        spec: BuildSpec,
        kind: str,
        num_labels: int | None,
        head: nn.ModuleDict,
        head_paths: list[str],
        labels: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.kind = kind
        self.num_labels = num_labels
        self.labels = labels
        self.head_paths = list(head_paths)
        self.pooling = config.resolved_pooling(spec.arch)
        if spec.arch.windowed and self.pooling == "token":
            raise UniPELTError(
                "gate_pooling='token' is not available on windowed attention (Swin): attention sees the tokens "
                "shifted, padded and cut into windows, so a gate per token has no place there; use 'mean'"
            )
        self.class_weights: torch.Tensor | None = None
        # A structure plan applied to this task (unipelt.plan) and the weights as trained, which a planned
        # task's checkpoint keeps: both None until a plan is applied.
        self.plan: Plan | None = None
        self.trained_state: dict[str, torch.Tensor] | None = None
        self.layers = nn.ModuleList(LayerModules() for _ in spec.layers)
        self.prefix = None
        for kind_name in config.ordered_modules:
            cls = MODULES[kind_name]
            if cls.per_layer:
                for index, layer_modules in enumerate(self.layers):
                    part = cls.build(spec, index)
                    if part is not None:
                        layer_modules.add_module(kind_name, part)
            else:
                setattr(self, kind_name, cls.build(spec, None))
        normalise = config.resolved_gate_input(spec.arch) == "rms"
        for layer, layer_modules in zip(spec.layers, self.layers):
            # Sites in registry order: the softmax router's outputs are indexed by it.
            parts = [
                getattr(layer_modules, k, None) or getattr(self, k, None) for k in config.ordered_modules
            ]
            sites = [site for part in parts if part is not None for site in part.gate_sites(config.gate)]
            layer_modules.gate = build_layer_gate(
                config.gate, layer_width(layer, spec.arch), sites, config, normalise=normalise
            )
            layer_modules.index_sites()
        self.head = head

    # --------------------------------------------------------------------------------------- queries

    def head_module(self, path: str) -> nn.Module | None:
        key = head_key(path)
        return self.head[key] if key in self.head else None  # noqa: SIM401 (ModuleDict has no get)

    def gate_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() if isinstance(m, GATE_TYPES) for p in m.parameters()]

    def gated(self) -> bool:
        return bool(self.gate_parameters())

    def shared_parts(self) -> list[PeftModule]:
        return [m for m in self.children() if isinstance(m, PeftModule)]

    def parameter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in self.shared_parts() + [p for layer in self.layers for p in layer.parts()]:
            for key, value in part.parameter_counts().items():
                counts[key] = counts.get(key, 0) + value
        layer_gates = sum(
            p.numel() for layer in self.layers if layer.gate is not None for p in layer.gate.parameters()
        )
        counts["gates"] = counts.get("gates", 0) + layer_gates
        counts["head"] = sum(p.numel() for p in self.head.parameters())
        return counts

    def parameter_table(self, base: nn.Module) -> dict[str, int]:
        """Trainable parameters per module kind (the prefix MLP beside the prefix), gates and head, totals with
        and without the prefix MLP, and the frozen base model without its own head."""
        counts = dict.fromkeys(count_keys(), 0)
        counts.update(self.parameter_counts())
        without_mlp = sum(v for k, v in counts.items() if k != "prefix_mlp")
        counts["total_with_prefix_mlp"] = (
            without_mlp - counts["prefix"] * bool(counts["prefix_mlp"]) + counts["prefix_mlp"]
        )
        counts["total_without_prefix_mlp"] = without_mlp
        base_head = sum(p.numel() for path in self.head_paths for p in base.get_submodule(path).parameters())
        counts["base_model"] = sum(p.numel() for p in base.parameters()) - base_head
        return counts

    def merge_into(self, layers: list[nn.Module], arch: Architecture, kinds: list[str]) -> bool:
        """Fold this task's modules of ``kinds`` into the frozen ``layers`` and drop them; False if none."""
        found = False
        for kind in kinds:
            for layer_modules, layer in zip(self.layers, layers):
                part = getattr(layer_modules, kind, None)
                if part is None:
                    continue
                found = True
                part.merge(layer, arch)
                delattr(layer_modules, kind)
                layer_modules.index_sites()
        return found

    # ---------------------------------------------------------------------------------- checkpoints

    def added_state_dict(self) -> dict[str, torch.Tensor]:
        """The task's weights under checkpoint names (head modules by their dotted path in the base model)."""
        keys = {head_key(path): path for path in self.head_paths}
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith("head."):
                module_key, _, rest = key[len("head.") :].partition(".")
                key = f"head.{keys.get(module_key, module_key)}.{rest}"
            state[key] = value.detach().contiguous()
        return state

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_labels": self.num_labels,
            "labels": self.labels,
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
        }


def build_task(
    config: UniPELTConfig,
    base: nn.Module,
    arch: Architecture,
    dims: dict[str, int],
    layers: list[nn.Module],
    kind: str,
    num_labels: int | None,
    head_paths: list[str],
    labels: list[str] | None = None,
) -> TaskModules:
    spec = BuildSpec(config=config, arch=arch, dims=dims, layers=list(layers))
    head = copy_head(base, head_paths, num_labels) if config.train_head else nn.ModuleDict()
    task = TaskModules(config, spec, kind, num_labels, head, head_paths if config.train_head else [], labels)
    return task.to(next(iter(base.parameters())).device)
