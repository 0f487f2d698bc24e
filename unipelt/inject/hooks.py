"""The injector: forward hooks that let the frozen model's own code call every task's sub-modules.

Nothing in the base model is replaced or renamed. The hooks, all owned by one :class:`Injector`:

- on the whole model: make a :class:`~unipelt.inject.context.ForwardContext` for the call (routing rows to
  tasks, the ``disabled()`` switch) and, at the end, publish its gate values to the caller;
- on the backbone: read the padding mask;
- on each transformer layer, its self-attention module, the projections some task uses and the base head
  modules: see :mod:`unipelt.inject.layer_hooks`.

The prefix enters through our attention function or seam (:mod:`unipelt.inject.attention`). Hooks are
partials of this object's methods, so ``copy.deepcopy`` of the model re-binds them to the copy.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import torch
from torch import nn

from unipelt.errors import UniPELTError
from unipelt.inject import windows
from unipelt.inject.architectures import Architecture, layer_list, parse_projection, role_path
from unipelt.inject.attention import LAYER_KEY, interface_name
from unipelt.inject.context import (
    ACTIVE,
    COLLECT,
    DISABLED,
    FORWARD,
    LAST_GATES,
    LAYER,
    OBSERVE,
    ROUTE,
    TRACED,
    ForwardContext,
    Group,
    current_forward,
    set_for_model,
    tracing,
)
from unipelt.inject.layer_hooks import LayerHooks
from unipelt.inject.seams import install_seam, remove_seam

_BATCH_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "pixel_values")


class Injector(LayerHooks):
    def __init__(
        self, base: nn.Module, arch: Architecture, tasks: nn.ModuleDict, dims: dict[str, int]
    ) -> None:
        self.base, self.arch, self.tasks = base, arch, tasks
        self.backbone = base.base_model
        self.layers = layer_list(self.backbone, arch)
        self.default_task: str | None = None
        self._signature = inspect.signature(self.base.forward)
        self._backbone_signature = inspect.signature(self.backbone.forward)
        self._handles: list[Any] = []
        self._site_handles: list[Any] = []
        self._head_handles: list[Any] = []
        self._original_attn: str | None = None
        self._handles.append(base.register_forward_pre_hook(self._begin, with_kwargs=True))
        self._handles.append(base.register_forward_hook(self._end, always_call=True))
        self._handles.append(self.backbone.register_forward_pre_hook(self._read_mask, with_kwargs=True))
        kv = (dims["num_key_value_heads"], dims["head_dim"])
        for index, layer in enumerate(self.layers):
            self._handles.append(
                layer.register_forward_pre_hook(partial(self._layer_begin, index), with_kwargs=True)
            )
            attention = layer.get_submodule(arch.attention)
            attention.__dict__[LAYER_KEY] = index
            attention.__dict__["_unipelt_kv_shape"] = kv
            gate_site = layer.get_submodule(arch.gate_site)
            self._handles.append(
                gate_site.register_forward_pre_hook(partial(self._gates, index), with_kwargs=True)
            )
            if arch.windowed:
                self._handles.extend(windows.install(attention, index))

    @property
    def key(self) -> int:
        return id(self)

    # ------------------------------------------------------------------------------------- routing

    def active_task(self) -> str | None:
        return ACTIVE.get().get(self.key) or self.default_task

    def batch_size(self, args: tuple, kwargs: dict) -> int | None:
        for name in _BATCH_KEYS:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        if args and isinstance(args[0], torch.Tensor):
            return args[0].shape[0]
        return None

    def groups(self, request: Any, batch: int | None, device: torch.device) -> list[Group]:
        """Rows per task for a call: ``task=None`` (the active task), a name, or one name per row."""
        if not len(self.tasks):
            return []
        if request is None:
            name = self.active_task()
            if name is None:
                if len(self.tasks) > 1:
                    raise UniPELTError(
                        f"this model holds several tasks ({', '.join(self.tasks)}); choose one with "
                        "model.set_task(name), `with model.task(name):` or model(..., task=name)"
                    )
                name = next(iter(self.tasks))
            request = name
        if isinstance(request, str):
            self._check(request)
            return [Group(request, None)]
        names = list(request)
        for name in set(names):
            self._check(name)
        if batch is not None and len(names) != batch:
            raise UniPELTError(f"task= names {len(names)} rows but the batch has {batch}")
        if len(set(names)) == 1:
            return [Group(names[0], None)]
        order: dict[str, list[int]] = {}
        for row, name in enumerate(names):
            order.setdefault(name, []).append(row)
        return [Group(name, torch.tensor(rows, device=device)) for name, rows in order.items()]

    def _check(self, name: str) -> None:
        if name not in self.tasks:
            raise UniPELTError(
                f"unknown task {name!r}; this model has: {', '.join(self.tasks) or 'no tasks'}"
            )

    # ---------------------------------------------------------------------------------- call hooks

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if tracing():
            self._begin_traced()
            return
        route = ROUTE.get()
        request = route[1] if route is not None and route[0] == self.key else None
        enabled = self.key not in DISABLED.get()
        groups = []
        if enabled:
            device = next((v.device for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            groups = self.groups(request, self.batch_size(args, kwargs), device or torch.device("cpu"))
        context = ForwardContext(model_id=self.key, groups=groups, enabled=enabled and bool(groups))
        context.tasks = self.tasks
        context.live = COLLECT.get().get(self.key)
        context.observer = OBSERVE.get().get(self.key)
        context.token = FORWARD.set(context)

    def _begin_traced(self) -> None:
        """The call's context while dynamo traces it: the task the model's forward routed, else the default.

        Only one task per call is traced (a mixed-task batch runs eagerly, see ``UniPELTModel.forward``), and
        the thread's ``with model.task()`` / ``disabled()`` / gate collection are not visible to a graph."""
        route = TRACED.route
        request = route[1] if route is not None and route[0] == self.key else None
        name = request if isinstance(request, str) else self.default_task
        if name is None:
            name = self.groups(None, None, torch.device("cpu"))[0].task if len(self.tasks) else None
        groups = [] if name is None else [Group(name, None)]
        context = ForwardContext(model_id=self.key, groups=groups, enabled=bool(groups))
        context.tasks = self.tasks
        TRACED.context = context

    def _end(self, module: nn.Module, args: tuple, output: Any) -> None:
        if tracing():
            TRACED.context = TRACED.layer = None
            return
        context = FORWARD.get()
        if context is None or context.model_id != self.key:
            return
        LAYER.set(None)
        try:
            FORWARD.reset(context.token)
        except ValueError:
            FORWARD.set(None)
        if not context.enabled:
            return
        if context.live is not None:
            context.live.extend(
                v for groups in context.gates.values() for g in groups for v in g.gates.values()
            )
        set_for_model(LAST_GATES, self.key, self._assemble(context))

    def _read_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = current_forward(self.key)
        if context is None:
            return
        mask = kwargs.get("attention_mask")
        if mask is None and args:
            mask = self._backbone_signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            mask = None
        elif not tracing() and bool(mask.all()):
            # No padding: plain means, fewer small ops in every layer. A traced call keeps the mask (a
            # branch on a tensor's value would split the graph); its masked means equal the plain ones.
            mask = None
        context.mask = mask

    def _assemble(self, context: ForwardContext) -> dict[int, dict[str, torch.Tensor]]:
        """Gate values per layer and site in batch order; rows of tasks without a site hold NaN."""
        recorded = {
            layer: {g.task: g.gates for g in groups if g.gates}
            for layer, groups in sorted(context.gates.items())
        }
        if context.single:
            task = context.groups[0].task
            return {layer: dict(by_task.get(task, {})) for layer, by_task in recorded.items()}
        rows = {g.task: g.rows for g in context.groups}
        batch = sum(len(r) for r in rows.values())
        out: dict[int, dict[str, torch.Tensor]] = {}
        for layer, by_task in recorded.items():
            sites: dict[str, torch.Tensor] = {}
            for task, values in by_task.items():
                for site, value in values.items():
                    if site not in sites:
                        sites[site] = value.new_full((batch, *value.shape[1:]), float("nan"))
                    target = sites[site]
                    if target.shape[1:] == value.shape[1:]:
                        target[rows[task]] = value
            out[layer] = sites
        return out

    # ------------------------------------------------------------------------------ (re)installing

    def sync(self) -> None:
        """Hook exactly the projections and heads that some task uses; switch attention when a prefix appears."""
        for handle in self._site_handles + self._head_handles:
            handle.remove()
        self._site_handles, self._head_handles = [], []
        needed: dict[tuple[int, str, str], list[str]] = {}
        heads: set[str] = set()
        prefix = False
        for task in self.tasks.values():
            heads.update(task.head_paths)
            prefix = prefix or task.prefix is not None
            for index, layer_modules in enumerate(task.layers):
                for role, when in layer_modules.by_site:
                    path = parse_projection(role_path(self.arch, role))[0]
                    roles = needed.setdefault((index, path, when), [])
                    if role not in roles:
                        roles.append(role)
        for (index, path, when), roles in needed.items():
            target = self.layers[index].get_submodule(path)
            if when == "output":
                hook = target.register_forward_hook(partial(self._site_output, index, tuple(roles)))
            else:
                hook = target.register_forward_pre_hook(partial(self._site_input, index, tuple(roles)))
            self._site_handles.append(hook)
        for path in sorted(heads):
            target = self.base.get_submodule(path)
            self._head_handles.append(
                target.register_forward_hook(partial(self._head, path), with_kwargs=True)
            )
        if prefix:
            self._enable_prefix()
        else:
            self._disable_prefix()  # e.g. the last prefix removed or pruned: the model's own attention again

    def _enable_prefix(self) -> None:
        if self._original_attn is not None or self.arch.seam != "interface":
            if self.arch.seam != "interface" and self._original_attn is None:
                for layer in self.layers:
                    install_seam(layer.get_submodule(self.arch.attention), self.arch.seam)
                self._original_attn = "seam"
            return
        self._original_attn = self.base.config._attn_implementation
        self.base.set_attn_implementation(interface_name(self._original_attn))

    def _disable_prefix(self) -> None:
        if self._original_attn == "seam":
            for layer in self.layers:
                remove_seam(layer.get_submodule(self.arch.attention))
        elif self._original_attn is not None:
            self.base.set_attn_implementation(self._original_attn)
        self._original_attn = None

    def remove(self) -> None:
        for handle in self._handles + self._site_handles + self._head_handles:
            handle.remove()
        self._handles, self._site_handles, self._head_handles = [], [], []
        for layer in self.layers:
            attention = layer.get_submodule(self.arch.attention)
            attention.__dict__.pop(LAYER_KEY, None)
            attention.__dict__.pop("_unipelt_kv_shape", None)
            remove_seam(attention)
        if self._original_attn not in (None, "seam"):
            self.base.set_attn_implementation(self._original_attn)
        self._original_attn = None
