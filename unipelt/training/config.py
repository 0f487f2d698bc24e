"""What defines a training run: :class:`TrainConfig`, saved as RUN/config.json.

Each field's ``metadata`` holds its command-line help (and choices): the ``train`` and ``tune`` flags are made
from it (:mod:`unipelt.cli.flags`). Method-specific defaults (learning rates, gate warm-up, regression start)
belong to the method objects of :mod:`unipelt.methods`; task kinds are those of :mod:`unipelt.kinds`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from unipelt.data import is_glue_task
from unipelt.data.files import check_encoding
from unipelt.errors import UniPELTError
from unipelt.kinds import get_kind, kind_names
from unipelt.methods import get_method, method_names

METHODS: tuple[str, ...] = method_names()  # the built-in methods (benchmark scripts); runs ask the registry
DEFAULT_LR: dict[str, float] = {
    name: get_method(name).lr for name in METHODS if get_method(name).lr is not None
}
TASK_TYPES: tuple[str, ...] = ("auto", *kind_names())  # what --task-type accepts; auto: from the data


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
        method = get_method(self.method)  # one clear error for an unknown method
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
        if self.task_type != "auto":
            get_kind(self.task_type)
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
        method.validate(self)

    def gate_warmup(self, max_steps: int) -> int:
        """Optimizer steps during which the gates are held at their initial value."""
        return get_method(self.method).gate_warmup(self, max_steps)

    def regression_start(self) -> str:
        """Where a regression head's output bias starts: the flag, else the method's default."""
        return get_method(self.method).regression_start(self)

    def learning_rates(self) -> dict[str, float]:
        """The rate of each optimizer group (added, gates, head, prefix, backbone): flags, else the method's."""
        return get_method(self.method).learning_rates(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
