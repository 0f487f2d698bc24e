"""The ``unipelt`` command line: params, train, eval, predict, gates.

Every error a user can fix (bad path, bad data, unsupported model, mismatched checkpoint) is printed as
one line and exits with status 2; only real bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from unipelt.errors import UniPELTError

GLUE_HELP = "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def _override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, booleans, lists), else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


# ------------------------------------------------------------------------------------------------ params


def _load_for_counting(model: str):
    """A model for counting parameters: real weights when present, random init from config.json otherwise."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from unipelt.pretrained import resolve_model

    hf_logging.set_verbosity_error()
    path = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UniPELTError(f"cannot read a model config from {path}: {error}") from error
    with torch.device("meta"):  # counting needs shapes only: no memory, no init time, works for any size
        return AutoModelForSequenceClassification.from_config(config)


def format_counts(counts: dict[str, int], base: int) -> str:
    rows = [
        ("lora", "LoRA"),
        ("prefix", "prefix vectors"),
        ("prefix_mlp", "prefix MLP (training only)"),
        ("adapter", "adapter"),
        ("gates", "gates"),
        ("head", "task head"),
        ("total_with_prefix_mlp", "total while training"),
        ("total_without_prefix_mlp", "total at inference"),
    ]
    lines = [f"{'sub-module':<28}{'parameters':>14}{'% of base':>11}"]
    for key, title in rows:
        if key.startswith("total"):
            lines.append("-" * 53)
        lines.append(f"{title:<28}{counts[key]:>14,}{100 * counts[key] / base:>10.2f}%")
    lines.append(f"{'frozen base model':<28}{base:>14,}")
    return "\n".join(lines)


def cmd_params(args: argparse.Namespace) -> int:
    from unipelt.config import UniPELTConfig
    from unipelt.model import UniPELTModel

    config = UniPELTConfig.from_preset(args.method, **dict(args.set or []))
    unipelt = UniPELTModel(_load_for_counting(args.model), config)
    counts = unipelt.parameter_counts()
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        print(
            f"{args.method} on {args.model} ({unipelt.base_model.config.model_type}, "
            f"{unipelt.dims['num_hidden_layers']} layers, hidden {unipelt.dims['hidden_size']})"
        )
        print(format_counts(counts, counts["base_model"]))
    return 0


# ------------------------------------------------------------------------------------------------- train


def _train_config(args: argparse.Namespace):
    from unipelt.training import TrainConfig

    data_dir = args.data_dir or os.environ.get("UNIPELT_DATA_DIR")
    task = None if args.train else args.task
    name = task or Path(args.train).stem
    out = args.out or str(Path("runs") / f"{name}-{args.method}" + (f"-k{args.k}" if args.k else ""))
    fields = {
        "output_dir": out,
        "model": args.model,
        "method": args.method,
        "unipelt": dict(args.set or []),
        "task": task,
        "data_dir": data_dir,
        "train_file": args.train,
        "valid_file": args.valid,
        "test_file": args.test,
        "text_columns": args.text_columns.split(","),
        "label_column": args.label_column,
        "regression": args.regression,
        "k": args.k,
        "n_valid": args.n_valid,
        "seed": args.seed,
        "max_length": args.max_length,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_gates": args.lr_gates,
        "lr_head": args.lr_head,
        "lr_backbone": args.lr_backbone,
        "weight_decay": args.weight_decay,
        "warmup_ratio": args.warmup_ratio,
        "scheduler": args.scheduler,
        "max_grad_norm": args.max_grad_norm,
        "patience": args.patience,
        "gate_warmup_steps": args.gate_warmup_steps,
        "gate_penalty": args.gate_penalty,
        "gate_penalty_weight": args.gate_penalty_weight,
        "precision": args.precision,
        "max_steps": args.max_steps,
        "threads": args.threads,
    }
    if args.router_temperature is not None:
        fields["unipelt"]["router_temperature"] = args.router_temperature
    return TrainConfig(**fields)


def _score(metrics: dict[str, float], metric: str) -> str:
    return f"{100 * metrics[metric]:.2f}" if metric in metrics else "n/a"


def cmd_train(args: argparse.Namespace) -> int:
    from unipelt.training import train, train_seeds

    config = _train_config(args)
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
    metric = result["metric"]
    split = "test" if result["test"] else "valid"
    print(
        f"{config.method} on {config.task or config.train_file}: {split} {metric} {_score(result[split], metric)} "
        f"(valid {_score(result['valid'], metric)}, {result['train_seconds']:.0f} s)"
    )
    run = Path(config.output_dir)
    print(f"run folder: {run}")
    if (run / "gates.png").is_file():
        print(f"gate heatmap: {run / 'gates.png'}")
    return 0


# ----------------------------------------------------------------------------------------- eval, predict


def cmd_eval(args: argparse.Namespace) -> int:
    from unipelt.inference import Run

    run = Run(args.run)
    data = run.data(task=args.task, data_dir=args.data_dir, path=args.data)
    metrics = run.evaluate(data)
    if args.json:
        print(json.dumps({"data": data.source, "examples": len(data), **metrics}, indent=2))
    else:
        print(f"{data.source}: {len(data)} examples")
        for name, value in metrics.items():
            print(f"  {name:<12}{100 * value:8.2f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from unipelt.inference import Run, read_inputs

    run = Run(args.run)
    examples = read_inputs(args.input, run.config.text_columns)
    for record in run.predict(examples, progress=args.input != "-" and len(examples) > 256):
        if args.format == "jsonl":
            print(json.dumps(record))
        else:
            value = (
                f"{record['score']:.4f}"
                if "score" in record
                else (f"{record['label']}\t{record['probabilities'][record['label']]:.4f}")
            )
            print(f"{value}\t{record['text'][:80]}")
    return 0


def cmd_gates(args: argparse.Namespace) -> int:
    from unipelt.analysis import gates_command

    path = gates_command(args.runs, args.output)
    print(f"gate heatmap: {path}")
    return 0


# ----------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from unipelt.config import PRESETS

    methods = list(PRESETS)
    parser = argparse.ArgumentParser(prog="unipelt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="count trainable parameters per sub-module")
    p.add_argument(
        "model", help="model folder (a folder with only config.json works), minilm, mpnet or Hub name"
    )
    p.add_argument("--method", default="unipelt", choices=methods)
    p.add_argument(
        "--set", action="append", type=_override, metavar="FIELD=VALUE", help="override a config field"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("train", help="train on a GLUE task or your own CSV/TSV/JSONL")
    p.add_argument(
        "--model", default="minilm", help="minilm (packaged, default), mpnet, a folder or a Hub name"
    )
    p.add_argument("--method", default="unipelt", choices=["ft", *methods])
    p.add_argument(
        "--set",
        action="append",
        type=_override,
        metavar="FIELD=VALUE",
        help="override a UniPELT config field",
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
        "--k", type=int, help="low-resource protocol: K training examples (+ --n-valid for validation)"
    )
    p.add_argument("--n-valid", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", type=_int_list, help="several seeds, e.g. 1,2,3: mean and std are reported")
    p.add_argument("--out", help="run folder (default runs/TASK-METHOD[-kK])")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, help="learning rate of the added modules (default per method)")
    p.add_argument("--lr-gates", type=float)
    p.add_argument("--lr-head", type=float)
    p.add_argument("--lr-backbone", type=float, help="backbone learning rate for --method ft")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--patience", type=int, default=5, help="early stopping: evaluations without improvement")
    p.add_argument(
        "--gate-warmup-steps", type=int, default=0, help="hold gates at their initial value this long"
    )
    p.add_argument("--gate-penalty", default="none", choices=["none", "sparsity", "entropy"])
    p.add_argument("--gate-penalty-weight", type=float, default=0.0)
    p.add_argument("--router-temperature", type=float, help="softmax router temperature")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run (its test set, or --task / --data)")
    p.add_argument("run")
    p.add_argument("--task", help=GLUE_HELP)
    p.add_argument("--data-dir")
    p.add_argument("--data", help="a labelled file with the run's columns")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="labels and probabilities (or scores) for new texts")
    p.add_argument("run")
    p.add_argument(
        "--input", required=True, help="file (.csv/.tsv/.jsonl with the run's text columns, or lines) or -"
    )
    p.add_argument("--format", default="jsonl", choices=["jsonl", "table"])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("gates", help="redraw gate heatmaps of one run, or compare several side by side")
    p.add_argument("runs", nargs="+")
    p.add_argument("--output", help="PNG path when comparing several runs")
    p.set_defaults(func=cmd_gates)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UniPELTError as error:
        print(f"unipelt: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head or similar
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("unipelt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
