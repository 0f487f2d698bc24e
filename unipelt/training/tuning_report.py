"""What a search leaves behind: best.json, the table of trials (CSV and markdown) and Optuna's plots.

best.json holds the best trial's run configuration (TrainConfig fields, without the trial's folder) and, under
``tuning``, where it came from: study, trial number, objective values, the searched values and the TrainConfig
overrides they became. ``unipelt train --config best.json`` trains it; benchmarks/grid.py reads the overrides.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from unipelt.checkpoint import atomic_write_text, write_json

logger = logging.getLogger(__name__)

TRIAL_FIELDS = ("trial", "state", "worker", "seconds")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, objective values, searched values, worker and wall time."""
    objectives = study.user_attrs.get("objectives", ["metric"])
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": trial.state.name,
            "worker": trial.user_attrs.get("worker", ""),
            "seconds": round(seconds, 1) if seconds is not None else None,
        }
        for i, name in enumerate(objectives):
            row[name] = trial.values[i] if trial.values else None
        if trial.state.name == "PRUNED" and trial.intermediate_values:
            last = max(trial.intermediate_values)
            row["metric"] = trial.intermediate_values[last]
        row.update(trial.params)
        rows.append(row)
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def trials_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def trials_markdown(rows: list[dict[str, Any]], metric_name: str) -> str:
    """Finished trials best first (by the metric), then the others in trial order."""
    columns = _columns(rows)
    done = sorted(
        (r for r in rows if r["state"] == "COMPLETE"), key=lambda r: -(r.get("metric") or -math.inf)
    )
    rest = [r for r in rows if r["state"] != "COMPLETE"]
    header = [metric_name if c == "metric" else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in done + rest]
    return "\n".join(lines) + "\n"


def best_json(study: Any, trial: Any, storage: str) -> dict[str, Any]:
    """The best trial's TrainConfig fields (no output folder) plus where they came from."""
    from optuna.trial import TrialState

    config = dict(trial.user_attrs["config"])
    config.pop("output_dir", None)
    values = trial.user_attrs.get("values", trial.params)
    overrides = {
        key: config[key]
        for key in (*values, "gate_warmup_steps", "unipelt")
        if key in config and (key != "gate_warmup_steps" or "gate_warmup" in values)
    }
    return {
        **config,
        "tuning": {
            "study": study.study_name,
            "storage": storage,
            "trial": trial.number,
            "objectives": study.user_attrs.get("objectives", ["metric"]),
            "metric": study.user_attrs.get("metric"),
            "values": list(trial.values),
            "params": values,
            "overrides": overrides,
            # complete trials only: a failed (killed) trial was queued again and is counted when that one ends
            "complete_trials": len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
        },
    }


def write_plots(study: Any, out: Path) -> list[Path]:
    """Optimisation history, parameter importances and (multi-objective) the Pareto front, as PNGs.

    A plot Optuna cannot draw yet (too few finished trials, a single searched value) is skipped with a
    log line instead of failing the search.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    objectives = study.user_attrs.get("objectives", ["metric"])
    metric = study.user_attrs.get("metric", "metric")
    multi = len(objectives) > 1
    target = (lambda t: t.values[0]) if multi else None
    plots = {
        "optimization_history.png": lambda: ovm.plot_optimization_history(
            study, target=target, target_name=metric
        ),
        "param_importances.png": lambda: ovm.plot_param_importances(study, target=target, target_name=metric),
    }
    if multi:
        names = [metric if n == "metric" else n for n in objectives]
        plots["pareto_front.png"] = lambda: ovm.plot_pareto_front(
            study, target_names=names if len(names) in (2, 3) else None
        )
    written = []
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = draw()
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.tight_layout()
            figure.savefig(out / name, dpi=110)
            plt.close(figure)
            written.append(out / name)
        except Exception as error:  # noqa: BLE001 - a plot must never lose a finished search
            logger.warning("%s skipped: %s", name, error)
            plt.close("all")
    return written


def write_outputs(study: Any, out: Path, storage: str) -> dict[str, Any]:
    """Rewrite OUT/best.json, trials.csv, trials.md and the plots from the study as it is now."""
    from unipelt.training.tuning import best_trial

    rows = trial_rows(study)
    atomic_write_text(out / "trials.csv", trials_csv(rows))
    atomic_write_text(out / "trials.md", trials_markdown(rows, study.user_attrs.get("metric", "metric")))
    result: dict[str, Any] = {"rows": rows, "best": None, "plots": []}
    try:
        trial = best_trial(study)
    except ValueError:
        return result  # nothing finished yet
    best = best_json(study, trial, storage)
    write_json(out / "best.json", best)
    result["best"] = best
    result["plots"] = write_plots(study, out)
    return result
