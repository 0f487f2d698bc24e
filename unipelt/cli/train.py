"""``unipelt train``: one run, or several seeds, on a GLUE task or the user's own CSV/TSV/JSONL files.

The flags map one to one onto :class:`~unipelt.training.TrainConfig` fields, so a run folder's config.json
says exactly what the command line asked for.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipelt.cli.common import GLUE_HELP, int_list, override
from unipelt.data import DATA_DIR_ENV

if TYPE_CHECKING:
    from unipelt.training import TrainConfig


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run configuration the flags describe, on top of ``--config FILE`` when given.

    A field of the file is kept unless a flag sets it to something other than the flag's default (so a flag
    given with its default value does not override the file). The run folder defaults to
    runs/TASK-METHOD[-kK].
    """
    from unipelt.training import TrainConfig

    flags = _flag_fields(args)
    if not getattr(args, "config", None):
        return TrainConfig(**flags)
    defaults = _flag_fields(_default_args())
    fields = {**read_config_file(args.config)}
    for key, value in flags.items():
        if key == "unipelt":
            fields["unipelt"] = {**fields.get("unipelt", {}), **value}
        elif key != "output_dir" and (value != defaults[key] or key not in fields):
            fields[key] = value
    if getattr(args, "out", None) or "output_dir" not in fields:
        fields["output_dir"] = args.out or _default_out(fields.get("task"), fields)
    return TrainConfig(**fields)


def read_config_file(path: str) -> dict[str, Any]:
    """TrainConfig fields from a JSON file (a run's config.json or ``unipelt tune``'s best.json)."""
    import dataclasses
    import json

    from unipelt.errors import UniPELTError
    from unipelt.training import TrainConfig

    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise UniPELTError(f"cannot read --config {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise UniPELTError(f"--config {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UniPELTError(f"--config {path} must hold a JSON object of TrainConfig fields")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    ignored = {"tuning", "resolved_unipelt"}  # what best.json and a run's config.json add around the fields
    unknown = sorted(set(data) - known - ignored)
    if unknown:
        raise UniPELTError(f"--config {path}: unknown field(s) {', '.join(unknown)}")
    return {k: v for k, v in data.items() if k in known}


def _default_out(task: str | None, fields: dict[str, Any]) -> str:
    name = task or Path(fields["train_file"]).stem
    k = fields.get("k")
    return str(Path("runs") / (f"{name}-{fields['method']}" + (f"-k{k}" if k else "")))


def _default_args() -> argparse.Namespace:
    """The namespace of a command line that gives no run flag at all (to tell which flags were given)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_run_arguments(parser)
    return parser.parse_args([])


def _flag_fields(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields from the run flags alone."""
    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV)
    task = None if args.train else args.task
    out = getattr(args, "out", None)
    fields = {
        "output_dir": out
        or _default_out(task, {"train_file": args.train, "method": args.method, "k": args.k}),
        "model": args.model,
        "method": args.method,
        "unipelt": dict(args.set or []),
        "init_from": args.init_from,
        "task": task,
        "data_dir": data_dir,
        "train_file": args.train,
        "valid_file": args.valid,
        "test_file": args.test,
        "text_columns": args.text_columns.split(","),
        "label_column": args.label_column,
        "regression": args.regression,
        "task_type": args.task_type,
        "tag_column": args.tag_column,
        "class_weights": args.class_weights,
        "oversample": args.oversample,
        "answer_choices": args.answer_choices,
        "packing": args.packing,
        "max_new_tokens": args.max_new_tokens,
        "gradient_checkpointing": args.gradient_checkpointing,
        "k": args.k,
        "n_valid": args.n_valid,
        "seed": args.seed,
        "max_length": args.max_length,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_gates": args.lr_gates,
        "lr_head": args.lr_head,
        "lr_prefix": args.lr_prefix,
        "lr_backbone": args.lr_backbone,
        "weight_decay": args.weight_decay,
        "warmup_ratio": args.warmup_ratio,
        "scheduler": args.scheduler,
        "max_grad_norm": args.max_grad_norm,
        "patience": args.patience,
        "gate_warmup_steps": args.gate_warmup_steps,
        "gate_penalty": args.gate_penalty,
        "gate_penalty_weight": args.gate_penalty_weight,
        "latency_weight": args.latency_weight,
        "sparsity_weight": args.sparsity_weight,
        "gate_init_std": args.gate_init_std,
        "precision": args.precision,
        "backbone_dropout": args.backbone_dropout,
        "regression_bias": args.regression_bias,
        "max_steps": args.max_steps,
        "threads": args.threads,
        "device": args.device,
        "encoding": args.encoding,
        "on_divergence": args.on_divergence,
    }
    if args.router_temperature is not None:
        fields["unipelt"]["router_temperature"] = args.router_temperature
    return fields


def _score(metrics: dict[str, float], metric: str) -> str:
    return f"{100 * metrics[metric]:.2f}" if metric in metrics else "n/a"


def run(args: argparse.Namespace) -> int:
    from unipelt.training import train, train_seeds

    config = train_config(args)
    config.validate()
    if args.seeds:
        summary = train_seeds(config, args.seeds, resume=args.resume)
        metric = summary["metric"]
        split = "test" if summary["test"] else "valid"
        stat = summary[split].get(metric, {"mean": float("nan"), "std": float("nan")})
        print(
            f"{config.method} on {config.task or config.train_file}, seeds {summary['seeds']}: "
            f"{split} {metric} {100 * stat['mean']:.2f} ± {100 * stat['std']:.2f} "
            f"(wall time {summary['train_seconds']:.0f} s)"
        )
        print(f"runs and summary.json in {config.output_dir}")
        return 0
    result = train(config, resume=args.resume)
    for line in summary_lines(config, result):
        print(line)
    return 0


def summary_lines(config: TrainConfig, result: dict[str, Any]) -> list[str]:
    """The run summary: the main score (with macro-F1 and the majority-class baseline beside it), what the
    data held, and where the run folder is."""
    from unipelt.training.data_report import describe

    metric = result["metric"]
    split = "test" if result["test"] else "valid"
    scores = result[split]
    extra = (
        [f"macro-F1 {_score(scores, 'f1_macro')}"] if "f1_macro" in scores and metric != "f1_macro" else []
    )
    beside = f"valid {_score(result['valid'], metric)}, " if split == "test" else "no test file, "
    lines = [
        f"{config.method} on {config.task or config.train_file}: {split} {metric} {_score(scores, metric)}"
        f"{''.join(', ' + e for e in extra)} ({beside}{result['train_seconds']:.0f} s)"
    ]
    majority = (result.get("majority_class") or {}).get(split)
    if majority and metric in majority:
        accuracy = (
            f" (accuracy {_score(majority, 'accuracy')})"
            if metric != "accuracy" and "accuracy" in majority
            else ""
        )
        lines.append(
            f"majority class (always the commonest training label): {split} {metric} {_score(majority, metric)}"
            f"{accuracy}"
        )
    if "auc" in scores and metric != "auc":  # two classes: how well it ranks, whatever the threshold
        lines.append(f"ranking of the two classes (ROC AUC, 50 = chance): {split} {_score(scores, 'auc')}")
    lines += describe(result.get("data") or {})
    folder = Path(config.output_dir)
    lines.append(f"run folder: {folder}")
    if (folder / "gates.png").is_file():
        lines.append(f"gate heatmap: {folder / 'gates.png'}")
    return lines


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train on a GLUE task or your own CSV/TSV/JSONL")
    add_run_arguments(p)
    p.add_argument("--seeds", type=int_list, help="several seeds, e.g. 1,2,3: mean and std are reported")
    p.add_argument("--out", help="run folder (default runs/TASK-METHOD[-kK])")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.set_defaults(func=run)
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The data, model, method and optimisation flags of one run, shared by ``train`` and ``tune``."""
    from unipelt.training.config import METHODS, TASK_TYPES

    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON of TrainConfig fields (a run's config.json, tune's best.json); flags override it",
    )
    p.add_argument(
        "--model", default="minilm", help="minilm (packaged, default), mpnet, a folder or a Hub name"
    )
    p.add_argument("--method", default="unipelt", choices=list(METHODS))
    p.add_argument(
        "--set",
        action="append",
        type=override,
        metavar="FIELD=VALUE",
        help="override a UniPELT config field",
    )
    p.add_argument(
        "--init-from",
        metavar="ADAPTER_DIR",
        help="start the method's modules from a PEFT or AdapterHub adapter folder (LoRA, IA3, prefix...)",
    )
    p.add_argument("--task", default="rte", help=GLUE_HELP)
    p.add_argument("--data-dir", help="folder in the GLUE layout (default: $UNIPELT_DATA_DIR, else the Hub)")
    p.add_argument("--train", help="your own training file (.csv, .tsv, .jsonl); replaces --task")
    p.add_argument("--valid", help="your own validation file (default: 10%% of --train)")
    p.add_argument("--test", help="your own test file")
    p.add_argument("--text-columns", default="text", help="comma-separated text column(s) of your files")
    p.add_argument("--label-column", default="label")
    p.add_argument("--regression", action="store_true", help="numeric labels: a regression head")
    p.add_argument(
        "--task-type",
        default="auto",
        choices=list(TASK_TYPES),
        help="kind of task (default auto: token-classification for CoNLL or {tokens, tags} JSONL files, "
        "regression with --regression, else classification); token-classification with --task NAME reads "
        "a tagged Hub dataset such as conll2003",
    )
    p.add_argument(
        "--tag-column", type=int, default=-1, help="CoNLL files: column of the tag (default -1, the last)"
    )
    p.add_argument(
        "--class-weights",
        default="none",
        metavar="none|balanced|W1,W2,...",
        help="weighted cross-entropy: balanced = inverse class frequency on the training data, or one weight "
        "per class in label order",
    )
    p.add_argument(
        "--oversample",
        action="store_true",
        help="repeat minority-class examples (seeded) up to the majority count; a tagged sentence counts for "
        "its rarest tag",
    )
    p.add_argument(
        "--answer-choices",
        default="auto",
        metavar="auto|none|A,B,...",
        help="causal-lm: short answers scored by greedy generation (accuracy, exact match); auto detects "
        "them when the training answers are a few short labels",
    )
    p.add_argument("--packing", action="store_true", help="causal-lm: pack several chats into one row")
    p.add_argument(
        "--max-new-tokens", type=int, default=16, help="causal-lm: tokens generated when scoring answers"
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: less memory, slower steps",
    )
    p.add_argument(
        "--k", type=int, help="low-resource protocol: K training examples (+ --n-valid for validation)"
    )
    p.add_argument("--n-valid", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, help="learning rate of the added modules (default per method)")
    p.add_argument(
        "--lr-gates",
        type=float,
        help="learning rate of the gates (default: --lr; autopelt: 0.05). 10x --lr helped 100-example runs "
        "but saturated the gates at 1000 examples",
    )
    p.add_argument("--lr-head", type=float, help="learning rate of the task head (default: --lr)")
    p.add_argument(
        "--lr-prefix",
        type=float,
        help="learning rate of the prefix encoder (default: --lr, at most 1e-3 next to other modules)",
    )
    p.add_argument("--lr-backbone", type=float, help="backbone learning rate for --method ft")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--patience", type=int, default=5, help="early stopping: evaluations without improvement")
    p.add_argument(
        "--gate-warmup-steps",
        type=int,
        default=None,
        help="hold gates at their initial value this long (default 0; autopelt: a third of the steps)",
    )
    p.add_argument("--gate-penalty", default="none", choices=["none", "sparsity", "entropy"])
    p.add_argument("--gate-penalty-weight", type=float, default=0.0)
    p.add_argument(
        "--latency-weight",
        type=float,
        default=1.0,
        help="--method autopelt: weight of the expected latency (fraction of the base forward) in the loss",
    )
    p.add_argument(
        "--sparsity-weight",
        type=float,
        default=0.01,
        help="--method autopelt: weight of the mean open probability of the gates (L1/L0) in the loss",
    )
    p.add_argument("--router-temperature", type=float, help="softmax router temperature")
    p.add_argument("--gate-init-std", type=float, help="gate weights from N(0, STD), biases zero")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument(
        "--backbone-dropout",
        type=float,
        metavar="P",
        help="dropout of the frozen base model (default: the model's own); added modules keep theirs",
    )
    p.add_argument(
        "--regression-bias",
        choices=["zero", "label-mean"],
        help="start a regression head's output bias at zero or at the training labels' mean (default: zero; "
        "label-mean for prefix and autopelt)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument(
        "--device",
        default="auto",
        help="where the run trains: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or mps",
    )
    p.add_argument(
        "--encoding",
        default="utf-8",
        help="text encoding of your --train/--valid/--test files, e.g. cp1252 for an Excel CSV (default utf-8)",
    )
    p.add_argument(
        "--on-divergence",
        default="stop",
        choices=["stop", "continue"],
        help="a non-finite or exploding training loss stops the run (default), or is only recorded",
    )
