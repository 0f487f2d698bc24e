"""``unipelt optimize``: from a trained run to a new run folder with a pruned and folded structure.

Steps: load the run (its base model and task), measure every unit on the run's validation split
(:mod:`unipelt.autopelt.measure`), choose what to prune and fold (:mod:`unipelt.autopelt.search`), shorten the
prefix (:mod:`unipelt.autopelt.prefix_step`), check each step on validation data and the result on test data,
time every step against the base model (:mod:`unipelt.autopelt.steps`), and write a new run folder. The new folder is a copy of the run
whose checkpoint carries the plan, so ``eval``, ``predict`` and anything else that opens runs through
:class:`~unipelt.inference.Run` loads the optimized structure; ``--restore`` writes a copy without the plan.

    NEW_RUN/optimize.json    units (gate mean, spread, contribution, action), thresholds, metrics before and
                             after, inference ratios, per step (prune, fold, shorten) what it saved, the
                             search trace
    NEW_RUN/optimize.png     layers x units: kept / folded / pruned, with each unit's contribution
    NEW_RUN/metrics.json     the optimized run's metrics, in the training format (plus "before")
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from unipelt.autopelt.measure import UnitStats, measure_units
from unipelt.autopelt.plan import read_plan, write_plan
from unipelt.autopelt.prefix_step import can_shorten, prefix_mass, shorten
from unipelt.autopelt.report import plot_units
from unipelt.autopelt.search import plan_from_thresholds, search
from unipelt.autopelt.steps import step_report, step_table
from unipelt.backbones import load_base_model
from unipelt.checkpoint import atomic_directory, write_json
from unipelt.data import tokenize_examples
from unipelt.errors import UniPELTError
from unipelt.kinds import Splits, load_splits
from unipelt.plan import Plan, Unit, planned_copy, task_units
from unipelt.running.loop import chunks, logits_and_labels

REPORT_JSON = "optimize.json"
REPORT_PNG = "optimize.png"
_COPIED = ("config.json", "labels.json", "tokenizer", "checkpoint", "log.jsonl", "learning_curves.png")


def labelled_batches(data: Any, tokenizer: Any, max_length: int, batch_size: int = 64) -> list[dict]:
    """Collated batches with labels, in order of length (less padding, faster); labels keep their rows."""
    dataset = tokenize_examples(data.examples, tokenizer, max_length)
    order = np.argsort([len(ids) for ids in dataset["input_ids"]], kind="stable")
    rows = [dataset[int(i)] for i in order]
    return list(chunks(rows, DataCollatorWithPadding(tokenizer), batch_size))


def score_batches(model: torch.nn.Module, batches: list[dict], splits: Splits) -> dict[str, float]:
    """Every metric of the run's kind for ``model`` on collated, labelled batches."""
    return splits.kind.scores(splits, *logits_and_labels(model, batches))


def _router_filter(model: Any, name: str) -> Any:
    """Under a softmax router, drop folds from layers where some unit would still be kept (see plan.py)."""

    task = model.tasks[name]
    if task.config.gate != "softmax":
        return None
    units = task_units(task)

    def keep_legal(plan: Plan) -> Plan:
        fold = dict(plan.fold)
        for layer in {u.layer for u in fold}:
            mine = [u for u in units if u.layer == layer]
            if any(plan.action(u) == "keep" for u in mine):
                for u in mine:
                    fold.pop(u, None)
        return Plan(set(plan.prune), fold)

    return keep_legal


def optimize_run(
    run: Any,
    out: str | Path | None = None,
    max_drop: float = 0.5,
    threshold: float | None = None,
    epsilon: float | None = None,
    timing: bool = True,
    log: Any = print,
    shorten_prefix: bool = True,
) -> dict[str, Any]:
    """Optimize a finished run (a :class:`unipelt.inference.Run`, opened by the caller) into ``out`` (default:
    ``RUN-optimized``) and return the report; the model is measured, scored and timed where the run's placement
    puts it. ``shorten_prefix``: run the prefix step (within ``max_drop``, also when thresholds are given)."""
    run_dir = Path(run.folder)
    out = _check_request(run, run_dir, out, threshold, epsilon)
    started = time.time()
    model, tokenizer = run.load()
    if len(model.tasks) != 1:
        raise UniPELTError("optimize works on single-task runs; this checkpoint holds several tasks")
    name = next(iter(model.tasks))
    splits = load_splits(run.config)
    valid = labelled_batches(splits.valid, tokenizer, run.config.max_length)
    test = labelled_batches(splits.test, tokenizer, run.config.max_length) if splits.test is not None else []
    log(f"measuring {name!r} on {len(splits.valid)} validation examples")
    stats = measure_units(model, name, valid)
    before_valid = score_batches(model, valid, splits)
    evaluate = _evaluator(model, name, valid, splits, log)
    limits = (threshold, epsilon, max_drop)
    plan, chosen = _choose_plan(model, name, stats, before_valid, splits, limits, evaluate, log)
    steps = [("trained", Plan()), ("prune", Plan(set(plan.prune))), ("fold", plan)]
    if shorten_prefix and can_shorten(model, name, plan):
        floor = before_valid[splits.kind.main_metric(splits)] - max_drop / 100.0
        plan = _shorten(model, name, plan, valid, evaluate, floor, chosen)
        steps.append(("shorten", plan))
    rows, models = step_report(
        model, name, steps, lambda m: score_batches(m, valid, splits), _base(run) if timing else None
    )
    optimized = models[steps[-1][0]]
    report = {
        "run": str(run_dir),
        "task": run.config.task,
        "method": run.config.method,
        "metric": splits.kind.main_metric(splits),
        "max_drop": max_drop,
        **chosen,
        "plan": plan.to_dict(),
        "counts": _counts(stats, plan),
        "units": [{**s.to_dict(), "action": plan.action(s.unit)} for s in stats],
        "steps": rows,
        "valid": {"before": before_valid, "after": rows[-1]["valid"]},
        "test": {
            "before": score_batches(model, test, splits) if test else {},
            "after": score_batches(optimized, test, splits) if test else {},
        },
        "inference_ratio": _ratios(rows),
        "seconds": round(time.time() - started, 1),
    }
    _write(run_dir, out, plan, report, stats)
    log(_summary(report))
    return report


def _evaluator(model: Any, name: str, valid: list[dict], splits: Splits, log: Any) -> Any:
    """The validation main metric of ``model`` with a plan applied to task ``name`` (logged as it goes)."""
    metric = splits.kind.main_metric(splits)

    def evaluate(plan: Plan) -> float:
        value = score_batches(planned_copy(model, name, plan), valid, splits)[metric]
        shortened = f"  prefix {len(next(iter(plan.positions.values())))}" if plan.positions else ""
        log(
            f"  prune {len(plan.prune):3d}  fold {len(plan.fold):3d}{shortened}  -> valid {metric} "
            f"{100 * value:.2f}"
        )
        return value

    return evaluate


def _shorten(
    model: Any,
    name: str,
    plan: Plan,
    valid: list[dict],
    evaluate: Any,
    floor: float,
    chosen: dict[str, Any],
) -> Plan:
    """The prefix step on top of ``plan`` (validation metric at least ``floor``): its evaluations join the
    trace, the measured attention per position and the layers emptied and length left the report."""
    mass, weight = prefix_mass(model, name, plan, valid)
    chosen["prefix_mass"] = _rounded(mass)
    chosen["prefix_score"] = _rounded(weight)
    kept = [i for i in range(mass.shape[0]) if Unit(i, "prefix") not in plan.prune]
    if any(bool(mass[i].isnan().any()) for i in kept):
        chosen["prefix_step"] = {"skipped": "the attention of this model did not report its weights"}
        return plan

    def score(candidate: Plan) -> float:
        value = evaluate(candidate)
        chosen["trace"].append(
            {
                "step": "shorten",
                "pruned": len(candidate.prune),
                "folded": len(candidate.fold),
                "score": value,
            }
        )
        return value

    shortened, outcome = shorten(plan, weight, score, floor)
    chosen["prefix_step"] = outcome
    return shortened


def _check_request(
    run: Any, run_dir: Path, out: str | Path | None, threshold: float | None, epsilon: float | None
) -> Path:
    """The output folder, once the run and the flags are checked to make sense together."""
    if not run.method.adds_modules:
        raise UniPELTError("a fully fine-tuned run has no sub-modules to prune; optimize a UniPELT run")
    if read_plan(run_dir / "checkpoint") is not None:
        raise UniPELTError(
            f"{run_dir} is already optimized; optimize the original run, or `unipelt optimize {run_dir} --restore`"
        )
    out = Path(out) if out is not None else run_dir.with_name(run_dir.name + "-optimized")
    if out.resolve() == run_dir.resolve():
        raise UniPELTError("--out must be a new folder, not the run itself")
    if (out / "metrics.json").exists():
        raise UniPELTError(f"{out} already holds a run; choose another --out or delete it")
    if (threshold is None) != (epsilon is None):
        raise UniPELTError("give both --threshold and --epsilon, or neither (then --max-drop chooses them)")
    return out


def _rounded(table: Any) -> list[list[float | None]]:
    """A (layers, P) tensor as JSON: NaN (a layer without prefix) as null."""
    return [[None if v != v else round(float(v), 6) for v in row] for row in table.tolist()]


def _choose_plan(
    model: Any,
    name: str,
    stats: list[UnitStats],
    before: dict[str, float],
    splits: Splits,
    limits: tuple[float | None, float | None, float],
    evaluate: Any,
    log: Any,
) -> tuple[Plan, dict[str, Any]]:
    """What to prune and fold: from the flags' thresholds, or the search's under the validation budget, and how
    it was chosen."""
    threshold, epsilon, max_drop = limits
    metric = splits.kind.main_metric(splits)
    gated = model.tasks[name].config.gate != "none"
    router = _router_filter(model, name)
    if threshold is not None:
        plan = plan_from_thresholds(stats, threshold, epsilon, gated)
        plan = router(plan) if router else plan
        return plan, {"threshold": threshold, "epsilon": epsilon, "chosen_by": "flags", "trace": []}
    log(f"searching thresholds: validation {metric} {100 * before[metric]:.2f}, budget {max_drop} points")
    choice = search(stats, evaluate, before[metric], max_drop, gated, router)
    chosen = {"threshold": choice.threshold, "epsilon": choice.epsilon, "chosen_by": "max_drop"}
    return choice.plan, {**chosen, "trace": choice.trace}


def _base(run: Any) -> Any:
    """The run's base model, placed as the run is, for timing."""
    base = load_base_model(run.config.model, run.kind.head, labels=run.labels).eval()
    if run.placement is not None:
        run.placement.place(base)
    return base


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per timed shape: the trained model's and the last step's ratio to the base model."""
    first, last = rows[0]["inference_ratio"], rows[-1]["inference_ratio"]
    return {
        shape: {"base_ms": rows[0]["base_ms"][shape], "before": first[shape], "after": last[shape]}
        for shape in first
    }


def _counts(stats: list[UnitStats], plan: Plan) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for s in stats:
        kind = "lora" if s.site.startswith("lora_") else s.site
        row = counts.setdefault(kind, {"keep": 0, "fold": 0, "prune": 0})
        row[plan.action(s.unit)] += 1
    return counts


def _write(run_dir: Path, out: Path, plan: Plan, report: dict[str, Any], stats: list[UnitStats]) -> None:
    def write(folder: Path) -> None:
        _copy_run(run_dir, folder)
        write_plan(folder / "checkpoint", plan)
        write_json(folder / REPORT_JSON, report)
        plot_units(
            stats, plan, folder / REPORT_PNG, title=f"{report['task'] or run_dir.name}: {report['method']}"
        )
        write_json(folder / "metrics.json", _metrics(run_dir, report))

    atomic_directory(out, write)


def _copy_run(source: Path, folder: Path) -> None:
    for item in _COPIED:
        path = source / item
        if path.is_dir():
            shutil.copytree(path, folder / item)
        elif path.is_file():
            shutil.copy2(path, folder / item)
    config = json.loads((folder / "config.json").read_text())
    config["output_dir"] = str(folder.parent / folder.name)
    write_json(folder / "config.json", config)


def _metrics(run_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    original = {}
    if (run_dir / "metrics.json").is_file():
        original = json.loads((run_dir / "metrics.json").read_text())
    return {
        **original,
        "valid": report["valid"]["after"],
        "test": report["test"]["after"],
        "before": {"valid": report["valid"]["before"], "test": report["test"]["before"]},
        "optimized_from": str(run_dir),
        "inference_ratio": report["inference_ratio"],
    }


def restore_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """A copy of an optimized run with every module back as trained (the plan removed from its checkpoint)."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint").is_dir():
        raise UniPELTError(f"{run_dir} is not a finished unipelt run (no checkpoint)")
    if read_plan(run_dir / "checkpoint") is None:
        raise UniPELTError(f"{run_dir} has no autopelt plan: nothing to restore")
    out = Path(out) if out is not None else run_dir.with_name(run_dir.name + "-restored")
    if out.exists():
        raise UniPELTError(f"{out} already exists; choose another --out or delete it")

    def write(folder: Path) -> None:
        _copy_run(run_dir, folder)
        write_plan(folder / "checkpoint", None)
        if (run_dir / "metrics.json").is_file():
            metrics = json.loads((run_dir / "metrics.json").read_text())
            before = metrics.get("before") or {}
            metrics.update({k: v for k, v in before.items() if v})
            for key in ("before", "optimized_from", "inference_ratio"):
                metrics.pop(key, None)
            metrics["restored_from"] = str(run_dir)
            write_json(folder / "metrics.json", metrics)

    return atomic_directory(out, write)


def _summary(report: dict[str, Any]) -> str:
    metric = report["metric"]
    lines = []
    for kind, row in report["counts"].items():
        lines.append(f"  {kind:<8} kept {row['keep']:3d}  folded {row['fold']:3d}  pruned {row['prune']:3d}")
    for split in ("valid", "test"):
        before, after = report[split]["before"].get(metric), report[split]["after"].get(metric)
        if before is not None:
            lines.append(f"  {split:<6} {metric}: {100 * before:.2f} -> {100 * after:.2f}")
    for shape, row in report["inference_ratio"].items():
        lines.append(f"  inference at {shape}: {row['before']:.3f}x -> {row['after']:.3f}x the base model")
    lines.append("what each step leaves (cumulative; inference as a ratio to the base model):")
    lines.append(step_table(report["steps"], metric))
    return "\n".join(lines)
