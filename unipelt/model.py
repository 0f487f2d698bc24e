"""UniPELTModel: one frozen Transformers model and any number of named tasks, each with its own gated
LoRA / prefix / adapter / IA3 / BitFit modules and head.

Nothing in the base model is replaced or renamed: every added parameter lives in ``model.tasks[name]``
(:class:`~unipelt.tasks.TaskModules`), and forward hooks (:mod:`unipelt.inject.hooks`) let the frozen model's
own code call them. A call runs the active task, a named one (``model(**batch, task="sst2")``) or one task per
row (``task=["sst2", "stsb", ...]``): rows are grouped by task inside every layer, so a mixed batch gives each
row what running it alone with its task gives. State of a call lives in context variables, never on the
model, so threads, gradient checkpointing and ``copy.deepcopy`` are safe.

``with model.disabled():`` gives the base model bit for bit (its own head included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unipelt import checkpoint
from unipelt.compiling import CompiledForward
from unipelt.config import UniPELTConfig
from unipelt.errors import UniPELTError
from unipelt.heads import LABELLED, base_kind, compatible, find_head_paths, with_task_loss
from unipelt.inject.architectures import architecture_for, checkpoint_layers_only, layer_list, model_dims
from unipelt.inject.context import (
    ACTIVE,
    COLLECT,
    DISABLED,
    EAGER,
    LAST_GATES,
    OBSERVE,
    ROUTE,
    TRACED,
    Observer,
    set_for_model,
    tracing,
)
from unipelt.inject.hooks import Injector
from unipelt.interop import loading as interop_loading
from unipelt.interop.peft_export import save_peft
from unipelt.tasks import TaskModules, build_task

DEFAULT_TASK = "default"


class UniPELTModel(nn.Module):
    """A frozen Transformers model plus named tasks of gated sub-modules. Call it like the base model."""

    def __init__(
        self,
        model: nn.Module,
        config: UniPELTConfig | None = None,
        *,
        task: str = DEFAULT_TASK,
        num_labels: int | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, UniPELTModel):
            raise UniPELTError("this model already has UniPELT modules; add tasks with model.add_task(...)")
        self.arch = architecture_for(model)
        self.base_model = model
        self.dims = model_dims(model.config)
        self.base_kind = base_kind(model)
        self.tasks = nn.ModuleDict()
        self.merged: list[str] = []
        model.requires_grad_(False)
        self.injector = Injector(model, self.arch, self.tasks, self.dims)
        if config is not None:
            self.add_task(task, config, num_labels=num_labels, kind=kind)
            self.set_task(task)

    # -------------------------------------------------------------------------------------- tasks

    def add_task(
        self,
        name: str,
        config: str | UniPELTConfig = "unipelt",
        *,
        num_labels: int | None = None,
        kind: str | None = None,
        labels: list[str] | None = None,
        head_modules: list[str] | None = None,
        **overrides: Any,
    ) -> TaskModules:
        """Add a task: its own gated modules in every layer and a head for ``num_labels`` outputs.

        ``config`` is a preset name or a config; keyword overrides change single fields. ``kind`` defaults to
        the base model's (``classification`` / ``regression`` mix on a sequence-classification model).
        """
        if not name or "." in name:
            raise UniPELTError(f"a task name must be non-empty and hold no dots, got {name!r}")
        if name in self.tasks:
            raise UniPELTError(f"task {name!r} already exists; remove_task({name!r}) first")
        if self.merged:
            raise UniPELTError("modules were merged into the shared base weights; no task can be added now")
        config = UniPELTConfig.resolve(config, overrides)
        if kind is None:
            kind = "regression" if num_labels == 1 and self.base_kind == "classification" else self.base_kind
        if not compatible(self.base_kind, kind):
            raise UniPELTError(
                f"a {kind} task cannot run on this {self.base_kind} model ({type(self.base_model).__name__}); "
                "tasks on one backbone share the kind of head the base model class has"
            )
        if kind in LABELLED and num_labels is None:
            num_labels = 1 if kind == "regression" else int(self.base_model.config.num_labels)
        wanted = head_modules or config.head_modules or list(self.arch.head)
        paths = find_head_paths(self.base_model, wanted, explicit=bool(head_modules or config.head_modules))
        layers = layer_list(self.base_model.base_model, self.arch)
        task = build_task(
            config, self.base_model, self.arch, self.dims, layers, kind, num_labels, paths, labels
        )
        self.tasks[name] = task
        self.injector.sync()
        return task

    def remove_task(self, name: str) -> None:
        """Drop a task's modules and head; the backbone and the other tasks are untouched."""
        self._task(name)
        del self.tasks[name]
        if self.injector.default_task == name:
            self.injector.default_task = None
        self.injector.sync()

    def set_task(self, name: str | None) -> None:
        """The task a call runs when it names none (``None``: the only task, if there is one)."""
        if name is not None:
            self._task(name)
        self.injector.default_task = name

    @contextlib.contextmanager
    def task(self, name: str) -> Iterator[TaskModules]:
        """Run ``name`` inside this block, in this thread only."""
        task = self._task(name)
        token = set_for_model(ACTIVE, self.injector.key, name)
        try:
            yield task
        finally:
            ACTIVE.reset(token)

    @property
    def active_task(self) -> str | None:
        name = self.injector.active_task()
        if name is None and len(self.tasks) == 1:
            return next(iter(self.tasks))
        return name

    def _task(self, name: str | None = None) -> TaskModules:
        name = name or self.active_task
        if name is None:
            raise UniPELTError(f"no task chosen; this model has: {', '.join(self.tasks) or 'no tasks'}")
        if name not in self.tasks:
            raise UniPELTError(
                f"unknown task {name!r}; this model has: {', '.join(self.tasks) or 'no tasks'}"
            )
        return self.tasks[name]

    # ------------------------------------------------------------------------------ single-task view

    @property
    def unipelt_config(self) -> UniPELTConfig:
        return self._task().config

    @property
    def layers(self) -> nn.ModuleList:
        return self._task().layers

    @property
    def prefix(self):
        return self._task().prefix

    @property
    def head_names(self) -> list[str]:
        return self._task().head_paths

    @property
    def lora_merged(self) -> bool:
        return "lora" in self.merged

    # ------------------------------------------------------------------------------------- calling

    def forward(self, *args: Any, task: str | list[str] | None = None, **kwargs: Any) -> Any:
        """Call the base model with the chosen task(s); with ``labels``, the loss of each row's task."""
        if tracing():
            return self.traced_forward(args, kwargs, task)
        compiled = self.__dict__.get("_compiled")
        if compiled is not None:
            name = self._compiled_task(task, args, kwargs)
            if name is not None:
                if self.injector.key in LAST_GATES.get():  # a graph publishes no gate values
                    set_for_model(LAST_GATES, self.injector.key, None)
                return compiled(self, args, kwargs, name)
            # else: mixed tasks, thread state a graph cannot see, or a mistake the eager path reports
        names = self._names(task)
        labels = kwargs.get("labels")
        own_loss = labels is not None and names and all(self.tasks[n].kind in LABELLED for n in names)
        if own_loss:
            kwargs.pop("labels")
        token = ROUTE.set((self.injector.key, task))
        try:
            output = self.base_model(*args, **kwargs)
        finally:
            ROUTE.reset(token)
        if own_loss:
            output = with_task_loss(output, labels, self.tasks, task, names)
        return output

    def compile(self, **options: Any) -> UniPELTModel:
        """Compile the calls that run one task with ``torch.compile(**options)`` (see :mod:`unipelt.compiling`);
        the rest stays eager. Outputs equal the eager model's within float rounding. Returns the model."""
        self._compiled = CompiledForward(options)
        return self

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Run this model uncompiled inside this block (this thread), e.g. to read ``gate_values()``."""
        token = set_for_model(EAGER, self.injector.key, True)
        try:
            yield
        finally:
            EAGER.reset(token)

    def _compiled_task(self, task: str | list[str] | None, args: tuple, kwargs: dict) -> str | None:
        """The one task a call runs when the compiled graph may serve it, else None (run eagerly)."""
        key = self.injector.key
        if key in DISABLED.get() or key in EAGER.get() or key in OBSERVE.get() or key in COLLECT.get():
            return None
        if task is None:
            return self.active_task
        if isinstance(task, str):
            return task if task in self.tasks else None
        names = set(task)
        if len(names) != 1 or not names <= set(self.tasks):
            return None
        return next(iter(names)) if len(task) == self.injector.batch_size(args, kwargs) else None

    def traced_forward(self, args: tuple, kwargs: dict, task: str | list[str] | None) -> Any:
        """``forward`` while ``torch.compile`` traces it: one task (``task=`` or the default), routed through
        :data:`~unipelt.inject.context.TRACED` since a graph cannot read context variables."""
        if task is not None and not isinstance(task, str):
            raise UniPELTError(
                "a compiled model runs one task per call; run mixed-task batches on the uncompiled model"
            )
        name = (
            task or self.injector.default_task or (next(iter(self.tasks)) if len(self.tasks) == 1 else None)
        )
        labels = kwargs.get("labels")
        own_loss = labels is not None and name is not None and self.tasks[name].kind in LABELLED
        if own_loss:
            kwargs = {k: v for k, v in kwargs.items() if k != "labels"}
        TRACED.route = (self.injector.key, name)
        output = self.base_model(*args, **kwargs)
        TRACED.route = None
        if own_loss:
            output = with_task_loss(output, labels, self.tasks, name, [name])
        return output

    def _names(self, task: str | list[str] | None) -> list[str]:
        if task is None:
            return [self.active_task] if self.active_task is not None else []
        return [task] if isinstance(task, str) else sorted(set(task))

    def generate(self, *args: Any, task: str | list[str] | None = None, **kwargs: Any) -> Any:
        """The base model's ``generate`` with this model's modules, for one task or one task per row."""
        token = ROUTE.set((self.injector.key, task))
        try:
            return self.base_model.generate(*args, **kwargs)
        finally:
            ROUTE.reset(token)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "tasks", "injector"):
                raise
            return getattr(self.base_model, name)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the plain base model in this block (this thread): no added module, gate or task head."""
        token = DISABLED.set(DISABLED.get() | {self.injector.key})
        try:
            yield
        finally:
            DISABLED.reset(token)

    @property
    def enabled(self) -> bool:
        """False inside a ``disabled()`` block of this thread."""
        return self.injector.key not in DISABLED.get()

    def gate_values(self) -> dict[int, dict[str, torch.Tensor]]:
        """Gate values of this thread's latest forward, per layer and site: (B,) per example or (B, T) per token.

        In a mixed-task batch a row whose task has no such site holds NaN."""
        return {layer: dict(sites) for layer, sites in LAST_GATES.get().get(self.injector.key, {}).items()}

    @contextlib.contextmanager
    def collect_gates(self) -> Iterator[list[torch.Tensor]]:
        """Collect the live (differentiable) gate values of the forwards run in this block, e.g. for a penalty."""
        collected: list[torch.Tensor] = []
        token = set_for_model(COLLECT, self.injector.key, collected)
        try:
            yield collected
        finally:
            COLLECT.reset(token)

    @contextlib.contextmanager
    def observe(self, observer: Observer) -> Iterator[None]:
        """Show ``observer`` what every added module changes in the forwards run in this block (this thread
        only; see :class:`~unipelt.inject.context.Observer`). Meant for analysis passes: it costs a copy per
        module call and, with a prefix, a second attention call per layer."""
        token = set_for_model(OBSERVE, self.injector.key, observer)
        try:
            yield
        finally:
            OBSERVE.reset(token)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Gradient (activation) checkpointing of the base model; the re-entrant kind also needs inputs that
        require grad. Non-re-entrant is the default: a gate penalty needs the first run's graph."""
        kwargs = dict(gradient_checkpointing_kwargs or {"use_reentrant": False})
        enable = getattr(self.base_model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        checkpoint_layers_only(self.base_model, self.injector.layers)
        if kwargs.get("use_reentrant", True):
            self.base_model.enable_input_require_grads()

    # ------------------------------------------------------------------------------ parameters

    def gate_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """The gates' parameters of one task (or of all tasks), e.g. for their own learning rate."""
        tasks = [self._task(task)] if task else list(self.tasks.values())
        return [p for t in tasks for p in t.gate_parameters()]

    def parameter_groups(self, task: str | None = None) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by kind, for separate learning rates: the prefix encoder, the other added
        modules, gates and head. The prefix has its own group because its MLP can grow the prefix keys until
        attention goes mostly to the prefix and every input gets the same representation (benchmarks/RESULTS.md,
        STS-B seed 2 at K = 1000)."""
        tasks = [self._task(task)] if task else list(self.tasks.values())
        gate_ids = {id(p) for t in tasks for p in t.gate_parameters()}
        head = [p for t in tasks for p in t.head.parameters()]
        prefix = [p for t in tasks if t.prefix is not None for p in t.prefix.parameters()]
        other = gate_ids | {id(p) for p in head} | {id(p) for p in prefix}
        added = [p for t in tasks for p in t.parameters() if id(p) not in other]
        return {"added": added, "prefix": prefix, "gates": self.gate_parameters(task), "head": head}

    def parameter_counts(self, task: str | None = None) -> dict[str, int]:
        """Trainable parameters of a task per sub-module, and totals with and without the prefix MLP.

        ``prefix`` is the size of the prefix vectors (what inference keeps); ``prefix_mlp`` the
        reparameterisation MLP that exists only while training (0 once ejected or when stored flat).
        """
        return self._task(task).parameter_table(self.base_model)

    def freeze_gates(self, frozen: bool = True) -> None:
        """Hold gates at their current values (gate warm-up) or release them."""
        for parameter in self.gate_parameters():
            parameter.requires_grad_(not frozen)

    def eject_prefix_mlp(self, task: str | None = None) -> None:
        """Drop the prefix reparameterisation MLP, keeping the prefix it produces (outputs unchanged)."""
        spec = self._task(task)
        if spec.prefix is not None:
            spec.prefix.eject()
            spec.config = spec.config.replace(prefix_reparam=False)

    # --------------------------------------------------------------------------- merge and unload

    def merge(self, kinds: list[str] | None = None) -> None:
        """Fold the ungated modules of the only task into the base weights (LoRA, IA3, BitFit) and remove them.

        The backbone is shared, so this is refused while the model holds more than one task."""
        if len(self.tasks) != 1:
            raise UniPELTError(
                f"merging changes the shared base weights; it needs exactly one task, not {len(self.tasks)}"
            )
        spec = self._task(next(iter(self.tasks)))
        kinds = kinds or [k for k in spec.config.ordered_modules if k in ("lora", "ia3", "bitfit")]
        if not spec.merge_into(layer_list(self.base_model.base_model, self.arch), self.arch, kinds):
            raise UniPELTError(f"there is no unmerged {' / '.join(kinds)} in this model")
        self.merged += [kind for kind in kinds if kind not in self.merged]
        self.injector.sync()

    def merge_lora(self) -> None:
        """Fold an ungated LoRA into the base weights and remove it; a gated one cannot be merged."""
        spec = self._task()
        if not spec.config.lora or self.lora_merged:
            raise UniPELTError("there is no unmerged LoRA in this model")
        first = next(lm.lora for lm in spec.layers if hasattr(lm, "lora"))
        if not first.mergeable():
            first.merge(None, self.arch)  # raises the explanation
        self.merge(["lora"])

    def unload(self) -> nn.Module:
        """Remove every hook and added module and return the base model (still frozen, its own head)."""
        self.injector.remove()
        return self.base_model

    # ------------------------------------------------------------------------------ checkpointing

    def added_state_dict(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """Only what a task added, plus its head: the whole content of its checkpoint."""
        return self._task(task).added_state_dict()

    def load_added_state_dict(
        self, state: dict[str, torch.Tensor], task: str | None = None, source: str = "checkpoint"
    ) -> None:
        """Load a task's added weights and head from a state dict; ``source`` names it in error messages."""
        checkpoint.load_task_state(self._task(task), state, source)

    def fingerprint(self) -> dict[str, Any]:
        """The base model's identity (type and shapes) that a checkpoint records, to refuse another base."""
        return checkpoint.fingerprint(self.base_model, self.dims)

    def save_task(self, name: str, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write one task as unipelt_config.json + unipelt_weights.safetensors, atomically."""
        if self.merged:
            raise UniPELTError(
                "modules were merged into the base weights; an added-weights checkpoint cannot hold that. "
                "Save the merged model with model.base_model.save_pretrained(...) instead."
            )
        return checkpoint.save_task(self._task(name), self.fingerprint(), path, name, extra)

    def save_pretrained(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """One task: a task checkpoint at ``path``. Several: one folder per task and a tasks.json index."""
        if len(self.tasks) == 1:
            return self.save_task(next(iter(self.tasks)), path, extra)
        return checkpoint.save_all(self, path, extra)

    def load_task(self, name: str, path: str | Path, merge_plan: bool = False) -> TaskModules:
        """Add task ``name`` from a task checkpoint (any unipelt version's) made on this base model.

        A checkpoint with an autopelt plan (``unipelt optimize``, ``--method autopelt``) is pruned and folded
        as it says; with ``merge_plan`` its folded LoRA pairs are merged into the base weights (the model then
        takes no other task; ``from_pretrained`` of a single-task checkpoint does this), otherwise they stay
        as ungated LoRA pairs so that other tasks can share the backbone. See :mod:`unipelt.plan`.

        ``path`` may also be a PEFT adapter folder (LoRA, IA3, prefix-tuning) or one saved by AdapterHub
        ``adapters``: the task is then the equivalent unipelt task (:mod:`unipelt.interop`)."""
        if interop_loading.foreign_format(path) is not None:
            return interop_loading.load_foreign(self, name, path)
        return checkpoint.load_into(self, name, path, merge_plan)

    def save_peft(self, task: str, path: str | Path, card: str | None = None) -> Path:
        """Write ``task`` as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) that
        ``peft.PeftModel.from_pretrained(base, path)`` loads; refused, with the reason, for what PEFT cannot
        express (still-gated modules, bottleneck adapters). See :mod:`unipelt.interop.peft_export`."""
        return save_peft(self, task, path, card=card)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path) -> UniPELTModel:
        """Rebuild the tasks of a checkpoint (one task, or a multi-task folder) on a fresh base model."""
        unipelt = cls(model)
        names = checkpoint.task_folders(path)
        for name, folder in names.items():
            unipelt.load_task(name, folder, merge_plan=len(names) == 1)
        if len(names) == 1:
            unipelt.set_task(next(iter(names)))
        return unipelt


def add_unipelt(model: nn.Module, method: str | UniPELTConfig = "unipelt", **overrides: Any) -> UniPELTModel:
    """Turn a (frozen) Transformers model into a trainable UniPELT model with one task, ``default``.

    Args:
        model: a model from ``from_pretrained`` (or built from a config) of a supported architecture; its own
            weights are frozen, its code and parameter names are left as they are.
        method: a preset name (adapter, lora, prefix, unipelt-ap, unipelt, unipelt-router, ap-nogate, ia3,
            bitfit) or a :class:`UniPELTConfig`.
        **overrides: single config fields, e.g. ``add_unipelt(model, "unipelt", lora_rank=4)``.

    Returns:
        The wrapped model; call it like the base model.

    Raises:
        UnsupportedModelError: the architecture is not in the table of supported models.
    """
    return UniPELTModel(model, UniPELTConfig.resolve(method, overrides))


def load_unipelt(model: nn.Module, path: str | Path) -> UniPELTModel:
    """Load a UniPELT checkpoint (one task or several) onto a fresh base model.

    Args:
        model: a fresh base model of the same architecture and shapes as the one the checkpoint was made on.
        path: a checkpoint folder (``unipelt_config.json`` + ``unipelt_weights.safetensors``) or a folder of
            several tasks (``tasks.json``), e.g. a run's ``checkpoint/``.

    Returns:
        The model with every task of the checkpoint.

    Raises:
        CheckpointMismatchError: the checkpoint was made for another base model.
    """
    return UniPELTModel.from_pretrained(model, path)
