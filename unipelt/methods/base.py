"""A training method as an object: what ``--method NAME`` decides in a run.

A method decides how the model to train is made from the base model (wrapped by UniPELT, or trained whole),
its default learning rates (modules, gates, head, prefix, backbone), the optimizer's parameter groups, where a
regression head starts, the trainer callbacks it adds, the step that finishes a run, how its checkpoint is
saved and loaded, and its default search space. The run life cycle (:mod:`unipelt.training.lifecycle`) only
calls these; it never asks for a method by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipelt.config import UniPELTConfig
from unipelt.errors import UniPELTError

if TYPE_CHECKING:
    from torch import nn

    from unipelt.kinds.base import TaskKind
    from unipelt.training.config import TrainConfig

# The prefix's cap in a mix when instruction-tuning a causal LM (--task-type causal-lm). Adam's first steps move
# every weight of the ~10 M-parameter reparameterisation MLP by about the rate, so the prefix keys and values of
# all layers shift together; a decoder generating open text is far more fragile to that than a classifier head.
# On SmolLM2-135M, four steps at 5e-4 on eight chats turned "Paris" into "Boulanger" (unipelt, seed 1; with the
# prefix's gate closed the run answered "Paris"), and 1e-4 kept the answer (benchmarks/RESULTS.md). Prefix-tuning
# on GPT-2 (Li & Liang 2021) used 5e-5 to 8e-5.
CAUSAL_LM_PREFIX_LR_CAP = 1e-4


@dataclass
class RunContext:
    """What a method sees of a run once the model is built: the hooks of :class:`Method` receive it."""

    config: TrainConfig
    run_dir: Path
    model: nn.Module  # what the Trainer trains: the UniPELT model, or the base model for full fine-tuning
    unipelt: Any  # the UniPELT model, or None when the method trains the base model itself
    tokenizer: Any
    kind: TaskKind
    splits: Any
    datasets: dict[str, Any] = field(default_factory=dict)  # tokenised splits, in file order
    collate: Any = None
    compute_metrics: Any = None
    class_weights: list[float] | None = None  # --class-weights, counted on the training data
    cuts: dict[str, Any] = field(default_factory=dict)  # what tokenising cut, per split (tagged sentences)
    evaluate: dict[str, Any] = field(default_factory=dict)  # the splits the Trainer scores, as it scores them


class MethodRun:
    """A method's part of one run: trainer callbacks beside every run's own, and the step that finishes the run
    once its final checkpoint is saved (e.g. autopelt's prune-and-fold), which returns the metrics to write."""

    callbacks: list[Any] = []

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        return result


@dataclass(frozen=True)
class Method:
    """A method that adds UniPELT modules to a frozen base model (the presets and user mixes).

    ``preset`` names the :data:`unipelt.config.PRESETS` entry it starts from (default: its own name); a user's
    ``--set modules=[...]`` overrides make a mix of it. ``lr`` is the default learning rate of everything the
    method trains (None: the run must give ``--lr``).
    """

    name: str
    lr: float | None
    preset: str | None = None
    label_mean_start: bool = False  # a regression head starts at the training labels' mean by default
    prefix_lr_cap: float = 1e-3  # the prefix's rate next to other modules: RESULTS.md, "What the defaults..."
    constant_rate_groups: tuple[str, ...] = ()  # optimizer groups that keep their rate (no decay schedule)
    adds_modules: bool = True  # False: the base model itself is trained, and saved whole

    # ------------------------------------------------------------------ configuration

    def unipelt_config(self, config: TrainConfig) -> UniPELTConfig:
        """The UniPELT configuration of a run: the preset with the run's ``--set`` overrides."""
        return UniPELTConfig.from_preset(self.preset or self.name, **config.unipelt)

    def validate(self, config: TrainConfig) -> None:
        """Refuse a run configuration this method cannot train (raises :class:`UniPELTError`)."""
        if config.lr is None and self.lr is None:
            raise UniPELTError(f"method {self.name!r} has no default learning rate yet; give one with --lr")
        self.unipelt_config(config)  # raises on unknown fields

    def gated(self, config: TrainConfig) -> bool:
        return self.unipelt_config(config).gate != "none"

    def learning_rates(self, config: TrainConfig) -> dict[str, float]:
        """The rate of each optimizer group: the flags where given, else the method's defaults."""
        base = config.lr if config.lr is not None else self.lr
        if base is None:
            raise UniPELTError(f"method {self.name!r} has no default learning rate yet; give one with --lr")
        given = {
            "gates": config.lr_gates,
            "head": config.lr_head,
            "prefix": config.lr_prefix,
            "backbone": config.lr_backbone,
        }
        defaults = {
            "gates": self.default_gate_lr(base),
            "head": base,
            "prefix": self.default_prefix_lr(config, base),
            "backbone": base,
        }
        return {"added": base, **{k: given[k] if given[k] is not None else defaults[k] for k in given}}

    def default_gate_lr(self, base: float) -> float:
        return base

    def default_prefix_lr(self, config: TrainConfig, base: float) -> float:
        """Next to other modules the prefix learns at most at :attr:`prefix_lr_cap` (at most
        CAUSAL_LM_PREFIX_LR_CAP when instruction-tuning a causal LM); alone, at ``base``."""
        modules = self.unipelt_config(config).modules
        if "prefix" not in modules or len(modules) == 1:
            return base
        cap = self.prefix_lr_cap
        if config.task_type == "causal-lm":
            cap = min(cap, CAUSAL_LM_PREFIX_LR_CAP)
        return min(base, cap)

    def gate_warmup(self, config: TrainConfig, max_steps: int) -> int:
        """Optimizer steps during which the gates are held at their initial value (the flag, else 0)."""
        return config.gate_warmup_steps if config.gate_warmup_steps is not None else 0

    def regression_start(self, config: TrainConfig) -> str:
        """Where a regression head's output bias starts: the flag, else the method's default."""
        if config.regression_bias is not None:
            return config.regression_bias
        return "label-mean" if self.label_mean_start else "zero"

    def search_space(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The default ``unipelt tune`` space: the rate around its default, then what the modules have
        (``overrides``: the run's ``--set`` fields, which can change the modules and the gate)."""
        base_lr = self.lr if self.lr is not None else 1e-3
        unipelt = UniPELTConfig.from_preset(self.preset or self.name, **(overrides or {}))
        space: dict[str, Any] = {"lr": {"low": base_lr / 4, "high": base_lr * 4, "log": True}}
        if unipelt.gate != "none":
            space["gate_penalty"] = {"choices": ["sparsity", "entropy"]}
            space["gate_penalty_weight"] = {"low": 1e-6, "high": 1e-2, "log": True}
            space["gate_init_std"] = {"low": 1e-3, "high": 0.1, "log": True}
            space["gate_warmup"] = {"low": 0.0, "high": 0.3}  # a fraction of the run's steps
            if unipelt.gate == "softmax":
                space["router_temperature"] = {"low": 0.5, "high": 5.0, "log": True}
        if "lora" in unipelt.modules:
            space["lora_rank"] = {"choices": [4, 8, 16]}
        if "adapter" in unipelt.modules:
            space["adapter_reduction"] = {"choices": [8, 16, 32]}
        if "prefix" in unipelt.modules:
            space["prefix_length"] = {"low": 5, "high": 30, "step": 5}
        return space

    # ------------------------------------------------------------------ building and training

    def build(self, base: nn.Module, config: TrainConfig) -> tuple[nn.Module, Any]:
        """(the model to train, the UniPELT model or None): the base model with the method's modules added;
        with ``init_from`` (a PEFT or AdapterHub folder) they start from that adapter's weights
        (:func:`unipelt.interop.loading.start_from`: the method decides the gates, the adapter the sizes)."""
        # torch: loaded when a model is built, not for the CLI's parser
        from unipelt.interop.loading import start_from
        from unipelt.model import DEFAULT_TASK, UniPELTModel

        if not config.init_from:
            unipelt = UniPELTModel(base, self.unipelt_config(config))
            return unipelt, unipelt
        unipelt = UniPELTModel(base)
        start_from(unipelt, DEFAULT_TASK, self.unipelt_config(config), config.init_from)
        unipelt.set_task(DEFAULT_TASK)
        return unipelt, unipelt

    def optimizer_groups(self, model: nn.Module, rates: dict[str, float], decay: float) -> list[dict]:
        """AdamW parameter groups: added modules, prefix, gates (named, no decay), head."""
        groups = model.parameter_groups()
        if (
            rates["prefix"] == rates["added"]
        ):  # one group, so checkpoints made before the prefix's rate resume
            groups["added"] += groups.pop("prefix")
        return [
            {"params": groups["added"], "lr": rates["added"], "weight_decay": decay},
            {"params": groups.get("prefix", []), "lr": rates["prefix"], "weight_decay": decay},
            {"params": groups["gates"], "lr": rates["gates"], "weight_decay": 0.0, "name": "gates"},
            {"params": groups["head"], "lr": rates["head"], "weight_decay": decay},
        ]

    def attach(self, context: RunContext) -> MethodRun:
        """What the method adds to one run: its trainer callbacks and its finish step."""
        return MethodRun()

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        return model.parameter_counts()

    # ------------------------------------------------------------------ checkpoints

    def save(self, model: nn.Module, folder: Path, extra: dict[str, Any]) -> None:
        """The run's final checkpoint: the added weights and head, with ``extra`` in its config."""
        model.save_pretrained(folder, extra=extra)

    def load(self, checkpoint: Path, kind: TaskKind, base: Any) -> nn.Module:
        """A saved run's model; ``base()`` builds the base model (for ``kind``) exactly as training did."""
        from unipelt.model import UniPELTModel

        return UniPELTModel.from_pretrained(base(), checkpoint)
