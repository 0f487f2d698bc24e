"""UniPELTModel: one frozen Transformers model and any number of named tasks, each with its own gated
LoRA / prefix / adapter / IA3 / BitFit modules and head.

Nothing in the base model is replaced or renamed: every added parameter lives in ``model.tasks[name]``
(:class:`~unipelt.tasks.TaskModules`), and forward hooks (:mod:`unipelt.inject.hooks`) let the frozen model's
own code call them. A call runs the active task, a named one (``model(**batch, task="sst2")``) or one task per
row (``task=["sst2", "stsb", ...]``): rows are grouped by task inside every layer, so a mixed batch gives each
row what running it alone with its task gives. State of a call lives in context variables, never on the
model, so threads, gradient checkpointing and ``copy.deepcopy`` are safe.

``with model.disabled():`` gives the base model bit for bit (its own head included).

The class holds tasks and calling; its other parts are mixins in :mod:`unipelt.modeling`: compiled calls,
switches and gates (``disabled``, ``gate_values``, ``observe``, parameter groups), merging and checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from unipelt.config import UniPELTConfig
from unipelt.errors import UniPELTError
from unipelt.heads import LABELLED, base_kind, compatible, find_head_paths, with_task_loss
from unipelt.inject.architectures import architecture_for, checkpoint_layers_only, layer_list, model_dims
from unipelt.inject.context import (
    ACTIVE,
    LAST_GATES,
    ROUTE,
    set_for_model,
    tracing,
)
from unipelt.inject.hooks import Injector
from unipelt.modeling.compiled import CompiledCalls
from unipelt.modeling.switches import Switches
from unipelt.modeling.weights import Weights
from unipelt.tasks import TaskModules, build_task

DEFAULT_TASK = "default"


class UniPELTModel(CompiledCalls, Switches, Weights, nn.Module):
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

    # --------------------------------------------------------------------------- merge and unload

    # ------------------------------------------------------------------------------ checkpointing


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
