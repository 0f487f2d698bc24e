"""``unipelt tune``: hyper-parameter search on Optuna, with the data, model and method flags of ``train``.

Trials are chosen on the validation split only. The study lives in a database (SQLite in the output folder
by default, any SQLAlchemy URL with ``--storage``): run the same command in several shells, or on several
machines against one server, and the workers share the study; run it again after a kill and it resumes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from unipelt.cli.common import int_list


def _study_name(config: Any) -> str:
    data = config.task or Path(config.train_file).stem
    return f"{data}-{config.method}" + (f"-k{config.k}" if config.k else "")


def run(args: argparse.Namespace) -> int:
    from unipelt.cli.train import train_config
    from unipelt.training.search_space import default_space, load_space
    from unipelt.training.tuning import (
        SearchSettings,
        best_config,
        best_trial,
        default_storage,
        parse_objectives,
        retrain_best,
        search,
    )
    from unipelt.training.tuning_report import write_outputs

    config = train_config(args)
    out = Path(args.out or Path("runs") / f"tune-{_study_name(config)}")
    if args.trials < 1:
        from unipelt.errors import UniPELTError

        raise UniPELTError(f"--trials must be at least 1, got {args.trials}")
    settings = SearchSettings(
        out=out,
        storage=args.storage or default_storage(out),
        study=args.study or _study_name(config),
        trials=args.trials,
        timeout=args.timeout,
        objectives=parse_objectives(args.objective),
        pruner=args.pruner,
        heartbeat=args.heartbeat,
        sampler_seed=args.sampler_seed,
        space=load_space(args.space) if args.space else default_space(config.method),
    )
    found = search(config, settings)
    study = found["study"]
    report = write_outputs(study, out, settings.storage)
    finished = sum(1 for row in report["rows"] if row["state"] in ("COMPLETE", "PRUNED"))
    print(
        f"study {settings.study} in {settings.storage}: {finished} finished trial(s), "
        f"{found['ran']} run by this worker in {found['seconds']:.0f} s"
    )
    if report["best"] is None:
        print("no trial has finished yet")
        return 0
    best = report["best"]["tuning"]
    scores = ", ".join(f"{name} {value:.4g}" for name, value in zip(best["objectives"], best["values"]))
    print(f"best trial {best['trial']}: valid {found['metric']} ({scores}); values {best['params']}")
    print(f"best.json, trials.csv, trials.md and plots in {out}")
    if args.retrain_seeds:
        summary = retrain_best(best_config(best_trial(study)), args.retrain_seeds, out)
        metric = summary["metric"]
        split = "test" if summary["test"] else "valid"
        stat = summary[split].get(metric, {"mean": math.nan, "std": math.nan})
        print(
            f"best configuration retrained on seeds {summary['seeds']}: {split} {metric} "
            f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f} (summary in {out / 'retrain'})"
        )
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from unipelt.cli.train import add_run_arguments

    p = subparsers.add_parser(
        "tune",
        help="hyper-parameter search on Optuna (validation split only; workers share a study database)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument(
        "--out", help="study folder: trials/, best.json, trials.csv/.md, plots (default runs/tune-STUDY)"
    )
    p.add_argument("--trials", type=int, default=20, help="total trials of the study, over all workers")
    p.add_argument("--timeout", type=float, help="this worker starts no new trial after this many seconds")
    p.add_argument(
        "--space", metavar="FILE", help="YAML or JSON search space (default: a space per method, see README)"
    )
    p.add_argument(
        "--objective",
        default="metric",
        help="metric (validation score), or metric,modules / metric,latency / metric,modules,latency for a "
        "Pareto search (active gated modules, validation ms per example)",
    )
    p.add_argument("--storage", help="SQLAlchemy URL of the study database (default sqlite:///OUT/study.db)")
    p.add_argument("--study", help="study name (default TASK-METHOD[-kK]); workers with one name share it")
    p.add_argument("--pruner", default="median", choices=["median", "halving", "none"])
    p.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="seconds between a trial's heartbeats; a trial silent for twice this is failed and re-queued",
    )
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (give each worker its own)")
    p.add_argument(
        "--retrain-seeds",
        type=int_list,
        help="retrain the best trial on these seeds, e.g. 1,2,3 (test mean, std)",
    )
    p.set_defaults(func=run)
    return p
