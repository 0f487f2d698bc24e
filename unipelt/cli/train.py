"""``unipelt train``: one run, or several seeds, on a GLUE task or the user's own CSV/TSV/JSONL files.

The flags map one to one onto :class:`~unipelt.training.TrainConfig` fields, so a run folder's config.json
says exactly what the command line asked for.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipelt.cli.common import int_list
from unipelt.cli.flags import add_dataclass_flags, given_fields
from unipelt.data import DATA_DIR_ENV

if TYPE_CHECKING:
    from unipelt.training import TrainConfig


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run configuration the flags describe, on top of ``--config FILE`` when given.

    A field of the file is kept unless its flag is given. ``--train`` replaces the GLUE task; the GLUE folder
    defaults to ``$UNIPELT_DATA_DIR``; the run folder to runs/TASK-METHOD[-kK].
    """
    from unipelt.training import TrainConfig

    given = given_fields(args, TrainConfig)
    fields = read_config_file(args.config) if getattr(args, "config", None) else {}
    fields.update({k: v for k, v in given.items() if k != "unipelt"})
    fields["unipelt"] = {**fields.get("unipelt", {}), **given.get("unipelt", {})}
    if getattr(args, "router_temperature", None) is not None:
        fields["unipelt"]["router_temperature"] = args.router_temperature
    if "train_file" in given or (fields.get("train_file") and "task" not in fields):
        fields["task"] = None  # your own files replace the GLUE task
    fields.setdefault("data_dir", os.environ.get(DATA_DIR_ENV))
    if getattr(args, "out", None) or "output_dir" not in fields:
        defaults = {"method": TrainConfig.method, "k": None, **fields}
        fields["output_dir"] = getattr(args, "out", None) or _default_out(
            defaults.get("task", "rte"), defaults
        )
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
    """The data, model, method and optimisation flags of one run, shared by ``train`` and ``tune``: one per
    :class:`~unipelt.training.TrainConfig` field (:mod:`unipelt.cli.flags`), plus ``--config`` and the
    router temperature (a UniPELT field with its own flag)."""
    from unipelt.training import TrainConfig

    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON of TrainConfig fields (a run's config.json, tune's best.json); flags override it",
    )
    add_dataclass_flags(p, TrainConfig)
    p.add_argument("--router-temperature", type=float, help="softmax router temperature")
