"""Merging a UniPELT model's modules into its base weights, and saving and loading its tasks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unipelt import checkpoint
from unipelt.errors import UniPELTError
from unipelt.inject.architectures import layer_list
from unipelt.interop import loading as interop_loading
from unipelt.interop.peft_export import save_peft
from unipelt.tasks import TaskModules

if TYPE_CHECKING:
    from unipelt.model import UniPELTModel


class Weights:
    """Merging modules into the base weights, and a task's checkpoints: save, load, PEFT export."""

    def eject_prefix_mlp(self, task: str | None = None) -> None:
        """Drop the prefix reparameterisation MLP, keeping the prefix it produces (outputs unchanged)."""
        spec = self._task(task)
        if spec.prefix is not None:
            spec.prefix.eject()
            spec.config = spec.config.replace(prefix_reparam=False)

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
