"""``ft``: full fine-tuning of the base model, the baseline every UniPELT method is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipelt.errors import UniPELTError
from unipelt.methods.base import Method

if TYPE_CHECKING:
    from torch import nn

    from unipelt.kinds.base import TaskKind
    from unipelt.training.config import TrainConfig


@dataclass(frozen=True)
class FullFineTuning(Method):
    """Trains every weight of the base model (backbone and head groups); saves the whole model."""

    adds_modules: bool = False

    def unipelt_config(self, config: TrainConfig) -> Any:
        raise UniPELTError(f"method {self.name!r} adds no UniPELT modules")

    def validate(self, config: TrainConfig) -> None:
        if config.lr is None and self.lr is None:
            raise UniPELTError(f"method {self.name!r} has no default learning rate yet; give one with --lr")

    def gated(self, config: TrainConfig) -> bool:
        return False

    def default_prefix_lr(self, config: TrainConfig, base: float) -> float:
        return base

    def search_space(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"lr": {"low": 1e-5, "high": 2e-4, "log": True}, "weight_decay": {"low": 0.0, "high": 0.1}}

    def build(self, base: nn.Module, config: TrainConfig) -> tuple[nn.Module, Any]:
        from unipelt.inject.architectures import architecture_for

        architecture_for(base)  # the same supported set as UniPELT's, so comparisons are like for like
        return base, None

    def optimizer_groups(self, model: nn.Module, rates: dict[str, float], decay: float) -> list[dict]:
        """The head (the modules UniPELT keeps trainable) and the rest of the backbone, each at its rate."""
        from unipelt.inject.architectures import architecture_for

        head_names = architecture_for(model).head
        head, backbone = [], []
        for name, parameter in model.named_parameters():
            (head if any(part in head_names for part in name.split(".")) else backbone).append(parameter)
        return [
            {"params": backbone, "lr": rates["backbone"], "weight_decay": decay},
            {"params": head, "lr": rates["head"], "weight_decay": decay},
        ]

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"total_with_prefix_mlp": total, "total_without_prefix_mlp": total}

    def save(self, model: nn.Module, folder: Path, extra: dict[str, Any]) -> None:
        from unipelt.checkpoint import atomic_directory

        atomic_directory(folder, lambda target: model.save_pretrained(target))

    def load(self, checkpoint: Path, kind: TaskKind, base: Any) -> nn.Module:
        """The whole fine-tuned model, with one clear error when its files are damaged."""
        from safetensors import SafetensorError

        try:
            return kind.auto_class().from_pretrained(checkpoint, local_files_only=True)
        except (OSError, ValueError, SafetensorError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UniPELTError(
                f"{checkpoint} cannot be loaded ({first}); the run's model files are truncated or damaged"
            ) from None


FT = FullFineTuning("ft", lr=5e-5)  # rate: RESULTS.md, "Accuracy"
