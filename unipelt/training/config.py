"""What defines a training run: :class:`TrainConfig`, saved as RUN/config.json.

Each field's ``metadata`` holds its command-line help (and choices): the ``train`` and ``tune`` flags are made
from it (:mod:`unipelt.cli.flags`). Method-specific defaults (learning rates, gate warm-up, regression start)
belong to the method objects of :mod:`unipelt.methods`; task kinds are those of :mod:`unipelt.kinds`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unipelt.data import DATA_DIR_ENV, GLUE_TASKS, is_glue_task
from unipelt.data.files import check_encoding
from unipelt.errors import UniPELTError
from unipelt.kinds import get_kind, kind_names
from unipelt.methods import get_method, method_names

METHODS: tuple[str, ...] = method_names()  # the built-in methods (benchmark scripts); runs ask the registry
DEFAULT_LR: dict[str, float] = {
    name: get_method(name).lr for name in METHODS if get_method(name).lr is not None
}
TASK_TYPES: tuple[str, ...] = ("auto", *kind_names())  # what --task-type accepts; auto: from the data


def option(
    default: Any = None,
    help: str = "",
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    metavar: str | None = None,
    factory: Callable[[], Any] | None = None,
    cli: bool = True,
) -> Any:
    """A :class:`TrainConfig` field with what its command-line flag needs: the flag (default ``--field-name``),
    its help, its choices (a tuple, or a function that asks a registry) and metavar; ``cli=False``: no flag."""
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def choices_of(item: dataclasses.Field) -> tuple[str, ...] | None:
    """A field's allowed values (asking the registry where they come from one), or None when any value goes."""
    choices = item.metadata.get("choices")
    return choices() if callable(choices) else choices


def _task_types() -> tuple[str, ...]:
    return ("auto", *kind_names())


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as RUN/config.json and reloaded by ``--resume`` and ``eval``."""

    output_dir: str = option("runs/rte-unipelt", cli=False)  # ``--out`` of train and tune
    model: str = option("minilm", "minilm (packaged, default), mpnet, a folder or a Hub name")
    method: str = option(
        "unipelt", "training method (ft, a UniPELT preset, autopelt, ...)", choices=method_names
    )
    unipelt: dict[str, Any] = option(
        help="override a UniPELT config field", flag="--set", metavar="FIELD=VALUE", factory=dict
    )
    init_from: str | None = option(
        help="start the method's modules from a PEFT or AdapterHub adapter folder (LoRA, IA3, prefix...)",
        metavar="ADAPTER_DIR",
    )
    # data: a GLUE task, or the user's files
    task: str | None = option("rte", f"GLUE task: {', '.join(GLUE_TASKS)}")
    data_dir: str | None = option(help=f"folder in the GLUE layout (default: ${DATA_DIR_ENV}, else the Hub)")
    train_file: str | None = option(
        help="your own training file (.csv, .tsv, .jsonl); replaces --task", flag="--train"
    )
    valid_file: str | None = option(
        help="your own validation file (default: 10%% of --train)", flag="--valid"
    )
    test_file: str | None = option(help="your own test file", flag="--test")
    text_columns: list[str] = option(
        help="comma-separated text column(s) of your files (default text)", factory=lambda: ["text"]
    )
    label_column: str = option("label", "label column of your files")
    regression: bool = option(False, "numeric labels: a regression head")
    task_type: str = option(
        "auto",
        "kind of task (default auto: token-classification for CoNLL or {tokens, tags} JSONL files, causal-lm "
        "for chats, regression with --regression, else classification); token-classification with --task "
        "NAME reads a tagged Hub dataset such as conll2003",
        choices=_task_types,
    )
    tag_column: int = option(-1, "CoNLL files: column of the tag (default -1, the last)")
    class_weights: str = option(
        "none",
        "weighted cross-entropy: balanced = inverse class frequency on the training data, or one weight per "
        "class in label order",
        metavar="none|balanced|W1,W2,...",
    )
    oversample: bool = option(
        False,
        "repeat minority-class examples (seeded) up to the majority count; a tagged sentence counts for its "
        "rarest tag",
    )
    answer_choices: str = option(
        "auto",
        "causal-lm: short answers scored by greedy generation (accuracy, exact match); auto detects them when "
        "the training answers are a few short labels",
        metavar="auto|none|A,B,...",
    )
    packing: bool = option(False, "causal-lm: pack several chats into one row")
    max_new_tokens: int = option(16, "causal-lm: tokens generated when scoring answers")
    retention: str | None = option(
        None,
        "causal-lm: after training, how many facts (JSON lines of prompt/answer) the base model answers "
        "correctly the run still answers correctly, in metrics.json; 'facts' names the packaged file",
        metavar="FACTS.jsonl",
    )
    gradient_checkpointing: bool = option(
        False, "recompute activations in the backward pass: less memory, slower steps"
    )
    # the paper's low-resource protocol
    k: int | None = option(help="low-resource protocol: K training examples (+ --n-valid for validation)")
    n_valid: int = option(1000, "validation examples (held out of training data)")
    seed: int = option(1, "random seed (data sample, initialisation, order)")
    max_length: int = option(128, "tokens per input (longer ones are cut)")
    # optimisation
    epochs: float = option(20.0, "training epochs")
    batch_size: int = option(16, "training batch size")
    eval_batch_size: int = option(64, cli=False)
    lr: float | None = option(help="learning rate of the added modules (default per method)")
    lr_gates: float | None = option(
        help="learning rate of the gates (default: --lr; autopelt: 0.05). 10x --lr helped 100-example runs but "
        "saturated the gates at 1000 examples"
    )
    lr_head: float | None = option(help="learning rate of the task head (default: --lr)")
    lr_prefix: float | None = option(
        help="learning rate of the prefix encoder (default: --lr, at most 1e-3 next to other modules)"
    )
    lr_backbone: float | None = option(help="backbone learning rate for --method ft")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.06, "share of the steps the learning rate warms up")
    scheduler: str = option("linear", "learning-rate schedule (a Transformers scheduler name)")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    patience: int = option(5, "early stopping: evaluations without improvement")
    gate_warmup_steps: int | None = option(
        help="hold gates at their initial value this long (default 0; autopelt: a third of the steps)"
    )
    gate_penalty: str = option(
        "none", "penalty on the gates' values", choices=("none", "sparsity", "entropy")
    )
    gate_penalty_weight: float = option(0.0, "weight of --gate-penalty in the loss")
    gate_init_std: float | None = option(help="gate weights from N(0, STD), biases zero")
    latency_weight: float = option(
        1.0, "--method autopelt: weight of the expected latency (fraction of the base forward) in the loss"
    )
    sparsity_weight: float = option(
        0.01, "--method autopelt: weight of the mean open probability of the gates (L1/L0) in the loss"
    )
    precision: str = option("auto", "training precision", choices=("auto", "fp32", "bf16", "fp16"))
    backbone_dropout: float | None = option(
        help="dropout of the frozen base model (default: the model's own); added modules keep theirs",
        metavar="P",
    )
    regression_bias: str | None = option(
        help="start a regression head's output bias at zero or at the training labels' mean (default: the "
        "method's: label-mean for prefix and autopelt, else zero)",
        choices=("zero", "label-mean"),
    )
    max_steps: int = option(-1, "stop after this many optimizer steps (-1: the epochs decide)")
    logging_steps: int = option(10, cli=False)
    threads: int | None = option(help="torch CPU threads")
    device: str = option(
        "auto", "where the run trains: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or mps"
    )
    keep_trainer_checkpoints: bool = option(False, cli=False)
    encoding: str = option(
        "utf-8", "text encoding of your --train/--valid/--test files, e.g. cp1252 for an Excel CSV"
    )
    on_divergence: str = option(
        "stop",
        "a non-finite or exploding training loss stops the run (default), or is only recorded",
        choices=("stop", "continue"),
    )

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
        if self.task_type != "auto":
            get_kind(self.task_type)
        if self.retention and self.task_type != "causal-lm":
            raise UniPELTError("--retention measures chat models: it needs --task-type causal-lm")
        for item in dataclasses.fields(self):
            choices, value = choices_of(item), getattr(self, item.name)
            if (
                choices
                and value is not None
                and value not in choices
                and item.name not in ("method", "task_type")
            ):
                raise UniPELTError(f"{item.name} must be one of {', '.join(choices)}, not {value!r}")
        if self.gate_warmup_steps is not None and self.gate_warmup_steps < 0:
            raise UniPELTError(f"gate_warmup_steps must be 0 or more, got {self.gate_warmup_steps}")
        if self.backbone_dropout is not None and not 0.0 <= self.backbone_dropout < 1.0:
            raise UniPELTError(f"backbone_dropout must be in [0, 1), got {self.backbone_dropout}")
        if self.gate_init_std is not None and self.gate_init_std < 0:
            raise UniPELTError(f"gate_init_std must be >= 0, got {self.gate_init_std}")
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
