"""Hyper-parameter search on Optuna: a study in a database that several ``unipelt tune`` workers share.

Every trial is one ordinary :func:`~unipelt.training.train` run on the validation split only (the test split is
never tokenised during a search), into OUT/trials/trial-NNNN. Optuna's TPE sampler proposes the values; a
median or successive-halving pruner stops a trial early from its per-epoch validation scores, which a Trainer
callback reports. The objective is the validation metric, or that metric together with the number of active
gated modules and/or the validation latency, as a multi-objective (Pareto) search.

The study lives in a SQLAlchemy database (SQLite in OUT by default), so

* workers started on the same storage and study name share it: each asks the database for its next trial,
  and ``--trials N`` is the study's total, not each worker's;
* a killed search resumes by running the same command again: finished trials stay, and a trial a killed
  worker left RUNNING is marked failed and queued again (with the same values) once its heartbeat is older
  than the grace period.

What the search leaves in OUT (rewritten by each worker when it stops): best.json (the best trial's run
configuration, which ``unipelt train --config best.json`` accepts), trials.csv and trials.md, and Optuna's
matplotlib plots as PNGs. The retraining of the best configuration on several seeds is in
:func:`retrain_best`; :mod:`unipelt.training.tuning_report` writes the files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unipelt.errors import UniPELTError
from unipelt.training.config import TrainConfig
from unipelt.training.search_space import Parameter, apply_values

OBJECTIVES = ("metric", "modules", "latency")
"""The validation metric (maximised), active gated modules and validation latency in ms/example (minimised)."""

ACTIVE_GATE = 0.1
"""A gated (layer, sub-module) counts as active when its mean gate on the validation set is at least this."""

WORST_SCORE = -1.0
"""Stands for a NaN metric (constant predictions make correlations undefined): below every real score."""


@dataclass
class SearchSettings:
    """How to search: the trial budget, the objective(s), the pruner, where the study lives."""

    out: Path
    storage: str
    study: str
    trials: int = 20
    timeout: float | None = None
    objectives: tuple[str, ...] = ("metric",)
    pruner: str = "median"  # median | halving | none
    heartbeat: int = 60
    sampler_seed: int | None = None
    space: list[Parameter] = field(default_factory=list)


def parse_objectives(text: str) -> tuple[str, ...]:
    """``metric``, ``metric,modules``, ``metric,latency`` or ``metric,modules,latency``."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names or names[0] != "metric" or len(set(names)) != len(names):
        raise UniPELTError(
            f"--objective must be 'metric' optionally followed by modules and/or latency "
            f"(e.g. metric,modules), got {text!r}"
        )
    return names


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_storage(url: str, heartbeat: int = 60) -> Any:
    """The study database, with heartbeats (stale trials of killed workers are failed and queued again)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and the stale-trial check are marked experimental; they are what lets a killed search resume
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # two workers on one SQLite file wait for each other's writes instead of failing at once
        engine = {"connect_args": {"timeout": 120}}
    last: Exception | None = None
    for attempt in range(5):
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        except (
            Exception
        ) as error:  # SQLAlchemy and driver errors: bad scheme, missing driver, unreachable host
            last = error
            if not _creation_race(error):
                break
            time.sleep(0.5 * (attempt + 1))  # another worker is making the tables right now: use them
    text = str(last).strip()
    reason = text.splitlines()[0] if text else type(last).__name__
    raise UniPELTError(f"cannot open the study storage {url}: {reason}") from None


def _creation_race(error: Exception) -> bool:
    """Two workers creating one new database at the same moment: the loser retries and finds the tables."""
    try:
        from sqlalchemy.exc import IntegrityError, OperationalError
    except ImportError:
        return False
    if isinstance(error, IntegrityError):
        return True
    return isinstance(error, OperationalError) and ("locked" in str(error) or "already exists" in str(error))


def open_study(settings: SearchSettings, storage: Any) -> Any:
    """Create the study, or load it when another worker (or an earlier run) made it."""
    import optuna

    directions = ["maximize"] + ["minimize"] * (len(settings.objectives) - 1)
    if len(settings.objectives) > 1 or settings.pruner == "none":
        pruner: Any = optuna.pruners.NopPruner()  # Optuna prunes single-objective studies only
    elif settings.pruner == "halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner()
    elif settings.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    else:
        raise UniPELTError(f"--pruner must be median, halving or none, not {settings.pruner!r}")
    sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed, n_startup_trials=5)
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study,
        directions=directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    wanted = [optuna.study.StudyDirection.MAXIMIZE] + [optuna.study.StudyDirection.MINIMIZE] * (
        len(settings.objectives) - 1
    )
    if list(study.directions) != wanted:
        raise UniPELTError(
            f"study {settings.study!r} in {settings.storage} was made with {len(study.directions)} objective(s); "
            f"give the same --objective or another --study"
        )
    saved = study.user_attrs.get("objectives")
    if saved is None:
        study.set_user_attr("objectives", list(settings.objectives))
    elif tuple(saved) != settings.objectives:
        raise UniPELTError(
            f"study {settings.study!r} searches {','.join(saved)}, not {','.join(settings.objectives)}; "
            f"give the same --objective or another --study"
        )
    return study


def check_search_config(config: TrainConfig, settings: SearchSettings) -> None:
    """Refuse searches that would choose on the test split or optimise a constant."""
    config.validate()
    if config.task is not None and config.k is None:
        raise UniPELTError(
            "full-data GLUE uses the dev set both to select and to report, so a search would tune on the "
            "test split; tune with --k (K-shot: validation examples come from the training set)"
        )
    if "modules" in settings.objectives:
        from unipelt.methods import get_method

        if not get_method(config.method).gated(config):
            raise UniPELTError(f"--objective modules needs a gated method; {config.method} has no gates")


class _TrialReporter:
    """Trainer callback of one trial: per-epoch validation scores to Optuna, pruning, evaluation speed."""

    def __new__(cls, trial: Any, metric: str, prune: bool):
        from transformers import TrainerCallback

        class Reporter(TrainerCallback):
            def __init__(self) -> None:
                self.seconds_per_example: float | None = None

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                metrics = metrics or {}
                for key, value in metrics.items():
                    if key.endswith("_samples_per_second") and value:
                        self.seconds_per_example = 1.0 / value
                score = metrics.get(f"eval_{metric}")
                if score is None or not prune:
                    return
                score = WORST_SCORE if math.isnan(score) else score
                epoch = max(1, int(round(state.epoch or 0)))
                trial.report(score, epoch)
                if trial.should_prune():
                    import optuna

                    raise optuna.TrialPruned(f"pruned after epoch {epoch} at {metric} {score:.4f}")

        return Reporter()


def active_modules(run_dir: Path, threshold: float = ACTIVE_GATE) -> int:
    """Gated (layer, sub-module) cells whose mean gate on the validation set reaches ``threshold``."""
    from unipelt.analysis import GateStats

    stats = GateStats.load(run_dir)
    return sum(1 for _, _, mean, _, count in stats.rows() if count and mean >= threshold)


def _objective(
    base: TrainConfig, settings: SearchSettings, metric: str, train_examples: int, worker: str
) -> Any:
    from unipelt.training.run import train

    def objective(trial: Any) -> float | tuple[float, ...]:
        values = {p.name: p.suggest(trial) for p in settings.space}
        run_dir = settings.out / "trials" / f"trial-{trial.number:04d}"
        config = apply_values(dataclasses.replace(base, output_dir=str(run_dir)), values, train_examples)
        config.validate()
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("values", values)
        trial.set_user_attr("config", config.to_dict())
        shutil.rmtree(run_dir, ignore_errors=True)  # a re-queued trial number never reuses a folder
        reporter = _TrialReporter(trial, metric, prune=len(settings.objectives) == 1)
        try:
            result = train(config, callbacks=[reporter], evaluate_test=False)
        finally:
            shutil.rmtree(run_dir / "trainer", ignore_errors=True)
        score = result["valid"].get(metric, float("nan"))
        score = WORST_SCORE if math.isnan(score) else float(score)
        trial.set_user_attr("valid", result["valid"])
        trial.set_user_attr("train_seconds", result["train_seconds"])
        trial.set_user_attr("steps", result["steps"])
        outputs = [score]
        for name in settings.objectives[1:]:
            if name == "modules":
                outputs.append(float(active_modules(run_dir)))
            else:
                outputs.append(1000.0 * (reporter.seconds_per_example or float("nan")))
        for name, value in zip(settings.objectives, outputs):
            trial.set_user_attr(f"objective_{name}", value)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    return objective


def counted_trials(study: Any) -> int:
    """Trials that use up the budget: finished (complete or pruned) and running ones."""
    from optuna.trial import TrialState

    return len(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    )


def search(base: TrainConfig, settings: SearchSettings) -> dict[str, Any]:
    """Run trials until the study holds ``settings.trials`` (or the timeout passes); returns this worker's share.

    Each loop asks the database how many trials exist before starting one, so workers that share the study
    stop together at the total; two workers that check at the same moment may each start the last one, so a
    study can end a trial or so above the total (never below it). A worker that finds every trial started but
    some still running waits for them (saying so): a live worker's trial finishes, a killed worker's goes
    stale and is queued again, and this worker runs it, so the study is complete when the last worker ends.
    """
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from unipelt.kinds import load_splits
    from unipelt.training.search_space import default_space

    check_search_config(base, settings)
    if not settings.space:
        settings = dataclasses.replace(settings, space=default_space(base.method, base.unipelt))
    splits = load_splits(base)  # bad data fails here, before a study is made
    metric = splits.kind.main_metric(splits)
    settings.out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(settings.storage, settings.heartbeat)
    study = open_study(settings, storage)
    study.set_user_attr("metric", metric)
    worker = f"{socket.gethostname()}-{os.getpid()}"
    objective = _objective(base, settings, metric, len(splits.train), worker)
    start = time.time()
    ran = 0
    waiting_for: set[int] = set()
    while True:
        fail_stale_trials(study)  # a killed worker's trial: failed, and queued again with the same values
        remove_dead_trial_folders(study, settings.out)
        if settings.timeout is not None and time.time() - start >= settings.timeout:
            break
        if counted_trials(study) < settings.trials:
            study.optimize(objective, n_trials=1, catch=())
            ran += 1
            continue
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if not running:
            break
        if running != waiting_for:  # say once per change what this worker waits for, and for how long at most
            waiting_for = running
            print(
                f"unipelt: the study's {settings.trials} trials are all started; waiting for "
                f"{_trial_list(running)} still running (another worker's, or a killed worker's: that one is "
                f"queued again here once its heartbeat is {2 * settings.heartbeat} s old)",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(min(settings.heartbeat, 10))
    return {"study": study, "metric": metric, "ran": ran, "worker": worker, "seconds": time.time() - start}


def _trial_list(numbers: set[int]) -> str:
    return ("trial " if len(numbers) == 1 else "trials ") + ", ".join(str(n) for n in sorted(numbers))


def remove_dead_trial_folders(study: Any, out: Path) -> None:
    """Remove OUT/trials/trial-N of failed trials (a killed worker's, now queued again under a new number):
    they hold a half-trained run that nothing reads."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        shutil.rmtree(out / "trials" / f"trial-{trial.number:04d}", ignore_errors=True)


def best_trial(study: Any) -> Any:
    """The best finished trial; for a multi-objective study, the Pareto trial with the best metric."""
    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    if not front:
        raise ValueError("no finished trial")
    return max(front, key=lambda t: t.values[0])


def best_config(trial: Any) -> TrainConfig:
    return TrainConfig.from_dict(trial.user_attrs["config"])


def retrain_best(config: TrainConfig, seeds: Sequence[int], out: Path) -> dict[str, Any]:
    """Train the chosen configuration on each seed (test split evaluated) into OUT/retrain/seed-S."""
    from unipelt.training.seeds import train_seeds

    return train_seeds(dataclasses.replace(config, output_dir=str(out / "retrain")), seeds, resume=True)
