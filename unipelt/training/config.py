"""What defines a training run: the method names, their default learning rates and :class:`TrainConfig`.

This is the one list of methods (full fine-tuning ``ft`` plus every UniPELT preset of :mod:`unipelt.config`)
and of their default learning rates: the command line's choices, the trainer and the benchmark scripts all
import them from here, so a new preset appears everywhere at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from unipelt.config import PRESETS, UniPELTConfig
from unipelt.data import is_glue_task
from unipelt.data.files import check_encoding
from unipelt.errors import UniPELTError

TASK_TYPES: tuple[str, ...] = ("auto", "classification", "regression", "token-classification", "causal-lm")
"""What ``--task-type`` accepts; ``auto`` infers it from the data (and ``--regression``)."""

METHODS: tuple[str, ...] = ("ft", *PRESETS)
"""Every method a run can use: full fine-tuning, then the UniPELT presets in their table order."""

# Learning rates that worked on MiniLM/BERT-sized models in low-resource GLUE (chosen on validation data).
# A method without an entry needs an explicit --lr (TrainConfig.validate says so).
DEFAULT_LR: dict[str, float] = {
    "ft": 5e-5,
    "adapter": 1e-3,
    "lora": 1e-3,
    "prefix": 1e-3,
    "unipelt-ap": 5e-4,
    "unipelt": 5e-4,
    "unipelt-router": 5e-4,
    "ap-nogate": 5e-4,
    "autopelt": 5e-4,
    # Not tuned here: the usual rates of the IA3 (Liu et al. 2022) and BitFit (Ben Zaken et al. 2022) papers.
    "ia3": 3e-3,
    "bitfit": 1e-3,
}


# The prefix encoder's rate when the prefix shares the model with other modules (unipelt, AP, autopelt, ...) and
# --lr-prefix is not given: the modules' rate, at most this. Its reparameterisation MLP grows the prefix keys
# fast: on STS-B (K = 1000, seed 2) at the validation-chosen rate 3e-3 they grew from norm 5 to 53-90 (token keys
# about 20), layers 2 and 4 put 83 % of their attention on the prefix, every input got the same representation,
# and the run stayed at the labels' mean (validation Spearman 0.19, test 4.02). With the prefix at 1e-3 and the
# rest at 3e-3 the same run reached validation 0.797 (benchmarks/RESULTS.md, "The prefix that captures
# attention"). 1e-3 is the prefix-only method's validation-tuned rate. The prefix-only method keeps --lr: there
# the one rate is the prefix's, and its search sees the collapse.
PREFIX_LR_CAP = 1e-3

AUTOPELT_GATE_LR = 0.05
# autopelt holds its gates for this share of the training steps (when --gate-warmup-steps is not given). Its
# gates learn at AUTOPELT_GATE_LR from the first step, while the head and the modules are still at their random
# start; on STS-B (K = 1000, 3 epochs, latency weight 3, seed 1) that cost 12 test points against holding them
# for the first third (62.65 -> 75.23 Spearman; benchmarks/RESULTS.md, AutoPELT; with a zero head start seeds 2 and 3
# stay at the mean either way). The gates then choose among modules that have learnt something.
AUTOPELT_GATE_WARMUP = 1 / 3
# Methods whose regression heads start at the training labels' mean when --regression-bias is not given (all
# others start at zero, which measured better for the adapter and APL on STS-B at K = 100).
# - autopelt: STS-B, K = 1000, 3 epochs, 3 seeds x 3 latency weights: with a zero start 6 of 9 runs stayed at the
#   labels' mean (test Spearman 3.7-21.1), with the mean 3 of 9 (19.4-30.7, all on seed 1), the others at
#   75.7-79.6; starting the gates half open instead did not help. At 3 epochs the gates are held for one epoch
#   only: whether the modules leave the mean before the sampled gates start is down to the seed; over 10 epochs
#   all 3 seeds left it (81.2-83.2 test Spearman; RESULTS.md, AutoPELT, session 6).
# - prefix: the prefix is its only trainable path, so the quickest way to close a zero-started head's offset is a
#   constant output, which the prefix gets by taking the attention (59-95 % of it per layer, output std 0.000).
#   With a zero start every STS-B run of the K = 1000 grid stayed at the mean at every rate tried (validation
#   Spearman 17.7-24.5, test 3.9-6.8); with the mean start the same configs reached validation 78-81 (RESULTS.md,
#   "Prefix-tuning's STS-B", session 11).
LABEL_MEAN_START = frozenset({"autopelt", "prefix"})


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as RUN/config.json and reloaded by ``--resume`` and ``eval``."""

    output_dir: str = "runs/rte-unipelt"
    model: str = "minilm"
    method: str = "unipelt"
    unipelt: dict[str, Any] = field(default_factory=dict)  # overrides of UniPELTConfig fields
    # a PEFT or AdapterHub adapter folder the method's modules start from (unipelt.interop.loading.start_from)
    init_from: str | None = None
    # data: a GLUE task, or the user's files
    task: str | None = "rte"
    data_dir: str | None = None
    train_file: str | None = None
    valid_file: str | None = None
    test_file: str | None = None
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    regression: bool = False
    # auto: regression with --regression, token-classification for CoNLL / {"tokens","tags"} files, else
    # classification (unipelt.training.task_setup.resolve_task_type)
    task_type: str = "auto"
    tag_column: int = -1  # CoNLL files: which whitespace-separated column holds the tag (default the last)
    # class imbalance: "none", "balanced" (inverse class frequency) or comma-separated weights in label order
    class_weights: str = "none"
    oversample: bool = False  # resample minority classes (sentences, for tokens) to the majority count
    # causal-lm (JSON-lines chats, unipelt.data.chat): short answers scored by greedy generation (comma-separated;
    # "auto" detects them from the training answers, "none" scores loss and perplexity only); packing puts
    # several conversations in one row
    answer_choices: str = "auto"
    packing: bool = False
    max_new_tokens: int = 16
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    # the paper's low-resource protocol
    k: int | None = None
    n_valid: int = 1000
    seed: int = 1
    max_length: int = 128
    # optimisation
    epochs: float = 20.0
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float | None = None
    lr_gates: float | None = None
    lr_head: float | None = None
    lr_prefix: float | None = None  # the prefix encoder's rate; None: lr, at most PREFIX_LR_CAP in a mix
    lr_backbone: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    patience: int = 5
    gate_warmup_steps: int | None = None  # None: the method's default (0, autopelt a third of the steps)
    gate_penalty: str = "none"  # none | sparsity | entropy
    gate_penalty_weight: float = 0.0
    # std of a normal initialisation of the gate weights (biases zero); None keeps PyTorch's default init
    gate_init_std: float | None = None
    # --method autopelt: loss = task + latency_weight * expected latency + sparsity_weight * mean open gate
    latency_weight: float = 1.0
    sparsity_weight: float = 0.01
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    # dropout of the base model (hidden, attention, its classifier); None keeps the model's own. The added
    # modules keep theirs. See unipelt.training.model_init.
    backbone_dropout: float | None = None
    # where a regression head's output bias starts: zero (the layer's default) or the training labels' mean;
    # None: the method's default (regression_start()). zero measured better on STS-B at K = 100 with the tuned
    # rates for the gated and single methods (benchmarks/RESULTS.md, issue 15); autopelt needs the mean.
    regression_bias: str | None = None  # zero | label-mean | None
    max_steps: int = -1
    logging_steps: int = 10
    threads: int | None = None
    device: str = "auto"  # auto (a CUDA GPU when there is one) | cpu | cuda | mps: where the run trains
    keep_trainer_checkpoints: bool = False
    # text encoding of the user's own files (train/valid/test, predict inputs); GLUE files are always UTF-8
    encoding: str = "utf-8"
    # what a non-finite or exploding training loss does: stop the run, or continue (see training/guards.py)
    on_divergence: str = "stop"  # stop | continue

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UniPELTError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.lr is None and self.method not in DEFAULT_LR:
            raise UniPELTError(f"method {self.method!r} has no default learning rate yet; give one with --lr")
        for name in ("lr", "lr_gates", "lr_head", "lr_prefix", "lr_backbone"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # AdamW would only fail later, with a traceback
                raise UniPELTError(f"{name} must be > 0, got {value}")
        if self.task is None and self.train_file is None:
            raise UniPELTError("give a GLUE task (--task rte) or your own data (--train FILE)")
        if self.task is not None and not is_glue_task(self.task) and self.task_type != "token-classification":
            raise UniPELTError(f"unknown GLUE task {self.task!r}; for your own data use --train FILE")
        if self.gate_penalty not in ("none", "sparsity", "entropy"):
            raise UniPELTError(f"gate_penalty must be none, sparsity or entropy, not {self.gate_penalty!r}")
        if self.task_type not in TASK_TYPES:
            raise UniPELTError(f"task_type must be one of {', '.join(TASK_TYPES)}, not {self.task_type!r}")
        if self.gate_warmup_steps is not None and self.gate_warmup_steps < 0:
            raise UniPELTError(f"gate_warmup_steps must be 0 or more, got {self.gate_warmup_steps}")
        if self.backbone_dropout is not None and not 0.0 <= self.backbone_dropout < 1.0:
            raise UniPELTError(f"backbone_dropout must be in [0, 1), got {self.backbone_dropout}")
        if self.regression_bias not in (None, "label-mean", "zero"):
            raise UniPELTError(f"regression_bias must be label-mean or zero, not {self.regression_bias!r}")
        if self.gate_init_std is not None and self.gate_init_std < 0:
            raise UniPELTError(f"gate_init_std must be >= 0, got {self.gate_init_std}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UniPELTError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if self.on_divergence not in ("stop", "continue"):
            raise UniPELTError(f"on_divergence must be stop or continue, not {self.on_divergence!r}")
        check_encoding(self.encoding)
        if self.method != "ft":
            UniPELTConfig.from_preset(self.method, **self.unipelt)  # raises on unknown fields

    def gate_warmup(self, max_steps: int) -> int:
        """Optimizer steps during which the gates are held at their initial value."""
        if self.gate_warmup_steps is not None:
            return self.gate_warmup_steps
        return int(round(AUTOPELT_GATE_WARMUP * max_steps)) if self.method == "autopelt" else 0

    def regression_start(self) -> str:
        """Where a regression head's output bias starts: the flag, else the method's default."""
        if self.regression_bias is not None:
            return self.regression_bias
        return "label-mean" if self.method in LABEL_MEAN_START else "zero"

    def _default_gate_lr(self, base: float) -> float:
        # A hard-concrete gate's log_alpha must travel several units to close within a run: a rate of 5e-4
        # moves it by ~0.3 over 600 steps, so autopelt's gates learn at a fixed, much higher rate.
        return AUTOPELT_GATE_LR if self.method == "autopelt" else base

    def _default_prefix_lr(self, base: float) -> float:
        if self.method == "ft":
            return base
        modules = UniPELTConfig.from_preset(self.method, **self.unipelt).modules
        return min(base, PREFIX_LR_CAP) if "prefix" in modules and len(modules) > 1 else base

    def learning_rates(self) -> dict[str, float]:
        base = self.lr if self.lr is not None else DEFAULT_LR[self.method]
        return {
            "added": base,
            "gates": self.lr_gates if self.lr_gates is not None else self._default_gate_lr(base),
            "head": self.lr_head if self.lr_head is not None else base,
            "prefix": self.lr_prefix if self.lr_prefix is not None else self._default_prefix_lr(base),
            "backbone": self.lr_backbone if self.lr_backbone is not None else base,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
