"""A structure plan: which sub-module of which layer is pruned, which has its gate folded to a constant.

A *unit* is one gated sub-module in one layer: each LoRA pair (``lora_query``, ``lora_value``, ...), the layer's
slice of the prefix (``prefix``) and the adapter (``adapter``). A plan maps units to one of

- ``prune``: the unit is taken out of the forward, no compute left (its weights stay in the checkpoint);
- ``fold``: its gate is replaced by a constant ``c`` that is folded into its weights, so the gate is not
  computed any more; a LoRA pair with a folded gate is then merged into the projection weight when the task
  has the backbone to itself (otherwise it stays as an ungated LoRA with ``c`` folded into B);
- anything not named is kept as trained.

A plan may also shorten the prefix: ``positions`` names, per layer whose prefix is kept, which of the P trained
prefix positions stay (the same number in every layer, so the prefix keeps one (layers, 2, P', width) form).

Applying a plan is a capability of the core (this module); choosing one is autopelt's (:mod:`unipelt.autopelt`).
The checkpoint keeps the weights as trained and the plan travels in its ``unipelt_config.json`` (section
``autopelt``). Loading applies the plan (:func:`apply_plan`), so the deployed model has the cheaper structure,
and dropping the plan (``unipelt optimize RUN --restore``) brings every module back exactly as trained. The task
keeps its plan and the trained weights in its declared fields ``plan`` and ``trained_state``, so saving a
planned task writes the same checkpoint again.

Folding is exact: ``c * B(A(x))`` is ``(cB)(A(x))``, and merged ``W + cBA``; ``h + c * up(z)`` has
``up`` scaled by ``c``; the attention code multiplies the prefix keys and values by the gate, so a constant
gate is the prefix scaled by ``c``. For a per-token gate (decoders) the attention applies the gate per query,
which for a constant gate is again the prefix scaled by ``c``. What is *not* exact is freezing a gate that
varies (the search freezes a gate to its validation mean only when its spread is below epsilon), and pruning a
prefix whose gate is near zero: a prefix scaled to zero still takes attention mass (its keys score 0), so
removing it changes the softmax normalisation, unlike LoRA and adapters, whose zero gate is exactly no module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.modules.lora import merge_into
from unipelt.modules.projections import locate

if TYPE_CHECKING:
    from unipelt.model import UniPELTModel
    from unipelt.tasks import TaskModules

PLAN_KEY = "autopelt"  # the section of a task checkpoint's config that holds its plan
PLAN_FORMAT = 2  # 2: a shortened prefix (``prefix_positions``); plans without one are still written as 1
ACTIONS = ("keep", "prune", "fold")


@dataclass(frozen=True)
class Unit:
    """One gated sub-module in one layer: ``site`` is ``lora_<target>``, ``prefix`` or ``adapter``."""

    layer: int
    site: str

    @property
    def kind(self) -> str:
        return "lora" if self.site.startswith("lora_") else self.site

    @property
    def target(self) -> str | None:
        return self.site[len("lora_") :] if self.kind == "lora" else None


@dataclass
class Plan:
    """Units to prune, units whose gate is folded to a constant (the value), and the prefix positions each layer
    keeps (none named: all of them); the rest is kept."""

    prune: set[Unit] = field(default_factory=set)
    fold: dict[Unit, float] = field(default_factory=dict)
    positions: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def action(self, unit: Unit) -> str:
        if unit in self.prune:
            return "prune"
        return "fold" if unit in self.fold else "keep"

    @property
    def empty(self) -> bool:
        return not self.prune and not self.fold and not self.positions

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": PLAN_FORMAT if self.positions else 1,
            "prune": [[u.layer, u.site] for u in sorted(self.prune, key=_order)],
            "fold": [
                [u.layer, u.site, float(c)] for u, c in sorted(self.fold.items(), key=lambda i: _order(i[0]))
            ],
        }
        if self.positions:
            data["prefix_positions"] = [[layer, list(kept)] for layer, kept in sorted(self.positions.items())]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        try:
            if data.get("format", PLAN_FORMAT) > PLAN_FORMAT:
                raise UniPELTError(
                    "the checkpoint's autopelt plan is from a newer unipelt; upgrade to load it"
                )
            prune = {Unit(int(layer), str(site)) for layer, site in data.get("prune", [])}
            fold = {Unit(int(layer), str(site)): float(c) for layer, site, c in data.get("fold", [])}
            positions = {
                int(layer): tuple(int(p) for p in kept) for layer, kept in data.get("prefix_positions", [])
            }
        except (AttributeError, TypeError, ValueError) as error:
            raise UniPELTError(f"the checkpoint's autopelt plan is malformed ({error})") from error
        overlap = prune & set(fold)
        if overlap:
            raise UniPELTError(f"the autopelt plan both prunes and folds {sorted(map(_order, overlap))}")
        return cls(prune, fold, positions)


def _order(unit: Unit) -> tuple[int, str]:
    return (unit.layer, unit.site)


# ------------------------------------------------------------------------------------------ reading units


def task_units(task: TaskModules) -> list[Unit]:
    """Every unit of a task in layer order (LoRA targets, then prefix, then adapter)."""
    units = []
    for index, layer_modules in enumerate(task.layers):
        lora = getattr(layer_modules, "lora", None)
        if lora is not None:
            units += [Unit(index, f"lora_{target}") for target in lora.slots]
        if task.prefix is not None:
            units.append(Unit(index, "prefix"))
        if getattr(layer_modules, "adapter", None) is not None:
            units.append(Unit(index, "adapter"))
    return units


def gate_site(unit: Unit, gate: str) -> str:
    """The name under which the forward records this unit's gate (the softmax router has one ``lora``)."""
    return "lora" if gate == "softmax" and unit.kind == "lora" else unit.site


# ------------------------------------------------------------------------------------------ applying


def apply_plan(model: UniPELTModel, name: str, plan: Plan, merge: bool | None = None) -> None:
    """Prune and fold the units of task ``name`` as ``plan`` says, then re-hook the model.

    ``merge`` (default: when the task is the model's only one) merges LoRA pairs with folded gates into the
    shared base weights; the model then refuses new tasks, as after ``model.merge()``.
    """
    task = model.tasks[name]
    if task.plan is not None:
        raise UniPELTError(
            f"task {name!r} already has an autopelt plan applied; load it afresh to apply another"
        )
    if plan.empty:
        return
    known = set(task_units(task))
    stray = sorted(map(_order, (plan.prune | set(plan.fold)) - known))
    if stray:
        raise UniPELTError(f"the autopelt plan names units this task does not have: {stray[:5]}")
    if task.config.gate == "none" and plan.fold:
        raise UniPELTError("an ungated task has no gates to fold; a plan for it can only prune")
    _check_router(task, plan)
    _check_positions(task, plan)
    merge = len(model.tasks) == 1 if merge is None else merge
    if merge and len(model.tasks) != 1:
        raise UniPELTError(
            "merging changes the shared base weights; it needs the task to be the model's only one"
        )
    original = {k: v.detach().clone() for k, v in task.added_state_dict().items()}
    layers = model.injector.layers
    merged = False
    with torch.no_grad():
        if task.prefix is not None and any(u.kind == "prefix" for u in plan.fold):
            task.prefix.eject()  # the flat prefix tensor, which a folded gate scales per layer
        for unit, value in plan.fold.items():
            merged |= _fold(task, unit, value, layers[unit.layer], model.arch, merge)
        for unit in plan.prune:
            _prune(task, unit)
        if plan.positions:
            _shorten_prefix(task, plan)
        for index, layer_modules in enumerate(task.layers):
            _shrink_gate(task, index, layer_modules, plan)
            layer_modules.index_sites()
        if task.prefix is not None and len(getattr(task.prefix, "pruned_layers", ())) == len(task.layers):
            task.prefix = None  # no layer attends to a prefix any more
    task.plan, task.trained_state = plan, original
    if merged and "lora" not in model.merged:
        model.merged.append("lora")
    model.injector.sync()


def planned_copy(model: UniPELTModel, name: str, plan: Plan) -> UniPELTModel:
    """A deep copy of ``model`` in eval mode with ``plan`` applied to task ``name`` (LoRA folds merged when
    the task is the copy's only one); ``model`` itself is left as it is."""
    clone = copy.deepcopy(model)
    apply_plan(clone, name, plan, merge=len(clone.tasks) == 1)
    return clone.eval()


def _fold(task: TaskModules, unit: Unit, value: float, layer: nn.Module, arch: Any, merge: bool) -> bool:
    layer_modules = task.layers[unit.layer]
    if unit.kind == "lora":
        lora_layer = layer_modules.lora
        pair = getattr(lora_layer, unit.target)
        pair.lora_B.weight.mul_(value)  # gated LoRA: the gate is the whole scale, so c * B(A(x)) = (cB)(A(x))
        if not merge:
            return False
        module, part, parts = locate(layer, arch, unit.target)
        merge_into(module, pair.lora_B.weight @ pair.lora_A.weight, part, parts)
        _drop_lora(layer_modules, unit.target)
        return True
    if unit.kind == "adapter":
        adapter = layer_modules.adapter
        adapter.up.weight.mul_(value)
        adapter.up.bias.mul_(value)  # h + c * up(z) = h + (c W_up) z + c b_up
        adapter.gate = None
        adapter.routed = False
        return False
    task.prefix.fold_gate(unit.layer, value)
    return False


def _check_positions(task: TaskModules, plan: Plan) -> None:
    """Shortening names, for every layer whose prefix is kept, the same number of distinct trained positions."""
    if not plan.positions:
        return
    encoder = task.prefix
    if encoder is None:
        raise UniPELTError("the autopelt plan shortens a prefix, but this task has none")
    kept = {index for index in range(len(task.layers)) if Unit(index, "prefix") not in plan.prune}
    if set(plan.positions) != kept:
        raise UniPELTError(
            f"the autopelt plan shortens the prefix of layers {sorted(plan.positions)}; it must name exactly the "
            f"layers whose prefix it keeps, {sorted(kept)}"
        )
    counts = {len(positions) for positions in plan.positions.values()}
    for layer, positions in plan.positions.items():
        if len(set(positions)) != len(positions) or not all(0 <= p < encoder.length for p in positions):
            raise UniPELTError(
                f"the autopelt plan keeps prefix positions {list(positions)} in layer {layer}: they must be "
                f"distinct, in 0..{encoder.length - 1}"
            )
    if len(counts) != 1 or 0 in counts:
        raise UniPELTError(
            "the autopelt plan must keep the same, non-zero number of prefix positions per layer"
        )


def _shorten_prefix(task: TaskModules, plan: Plan) -> None:
    """Keep each layer's planned prefix positions; a pruned layer's prefix (never read) keeps the first ones."""
    length = len(next(iter(plan.positions.values())))
    first = tuple(range(length))
    task.prefix.keep_positions([plan.positions.get(i, first) for i in range(len(task.layers))])


def _prune(task: TaskModules, unit: Unit) -> None:
    layer_modules = task.layers[unit.layer]
    if unit.kind == "lora":
        if hasattr(layer_modules, "lora") and unit.target in layer_modules.lora.slots:
            _drop_lora(layer_modules, unit.target)
    elif unit.kind == "adapter":
        del layer_modules.adapter
    else:
        task.prefix.pruned_layers = set(getattr(task.prefix, "pruned_layers", ())) | {unit.layer}


def _drop_lora(layer_modules: nn.Module, target: str) -> None:
    lora_layer = layer_modules.lora
    delattr(lora_layer, target)
    del lora_layer.slots[target]
    if not lora_layer.slots:
        del layer_modules.lora


def _shrink_gate(task: TaskModules, index: int, layer_modules: nn.Module, plan: Plan) -> None:
    """Compute only the gate values some kept unit still reads; no gate at all when none does."""
    gate = layer_modules.gate
    if gate is None:
        return
    done = {gate_site(u, task.config.gate) for u in plan.prune | set(plan.fold) if u.layer == index}
    live = [site for site in gate.sites if site not in done]
    if len(live) == len(gate.sites):
        return
    if hasattr(gate, "subset"):
        layer_modules.gate = gate.subset(live) if live else None
        return
    if not live:
        layer_modules.gate = None
    # else a router: pruned units simply do not run; it keeps its other weights as trained (_check_router)


def _check_router(task: TaskModules, plan: Plan) -> None:
    """A softmax router couples its outputs: fold its units only when the whole layer is folded or pruned."""
    units = task_units(task)
    for index, layer_modules in enumerate(task.layers):
        gate = layer_modules.gate
        if gate is None or hasattr(gate, "subset"):
            continue
        mine = [u for u in units if u.layer == index]
        folded = [u.site for u in mine if u in plan.fold]
        if folded and any(plan.action(u) == "keep" for u in mine):
            raise UniPELTError(
                f"layer {index}: the softmax router couples its outputs, so {folded} can only be folded "
                "when every other unit of the layer is folded or pruned too"
            )


# ------------------------------------------------------------------------------------------ checkpoints


def plan_from_meta(meta: dict[str, Any]) -> Plan | None:
    """The plan in a task checkpoint's config (its ``autopelt`` section), or None."""
    data = meta.get(PLAN_KEY)
    return None if data is None else Plan.from_dict(data)
