"""``unipelt tune``: search spaces, the study database shared by workers, resuming, outputs, ``train --config``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unipelt.cli import main
from unipelt.errors import UniPELTError
from unipelt.training import TrainConfig
from unipelt.training.search_space import apply_values, default_space, load_space, parse_space, total_steps

optuna = pytest.importorskip("optuna")

FAST = ["--epochs", "2", "--batch-size", "16", "--max-length", "32", "--threads", "1", "--patience", "5"]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    """Tiny sentiment CSVs (train 48, valid 24, test 24) whose test split is recognisably different."""
    folder = tmp_path_factory.mktemp("reviews")
    words = {"pos": ["great", "lovely", "superb"], "neg": ["awful", "poor", "dull"]}
    for name, n in (("train", 48), ("valid", 24), ("test", 24)):
        rows = ["text,label"]
        for i in range(n):
            label = "pos" if i % 2 else "neg"
            rows.append(f"the {name} film number {i} was {words[label][i % 3]},{label}")
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return folder


def data_flags(model: Path, reviews: Path) -> list:
    return [
        "--model",
        model,
        "--train",
        reviews / "train.csv",
        "--valid",
        reviews / "valid.csv",
        "--test",
        reviews / "test.csv",
        *FAST,
    ]


# ---------------------------------------------------------------- search spaces (no training)


def test_space_file_yaml_and_json(tmp_path):
    (tmp_path / "space.yaml").write_text(
        "lr: {low: 1e-4, high: 1e-2, log: true}\n"  # YAML 1.1 reads 1e-4 as a string: still a number here
        "lora_rank: {choices: [4, 8]}\n"
        "prefix_length: {low: 5, high: 20, step: 5}\n"
        "gate_warmup: {low: 0.0, high: 0.5}\n"
        "gate_penalty: sparsity\n"
    )
    space = {p.name: p for p in load_space(tmp_path / "space.yaml")}
    assert (space["lr"].kind, space["lr"].low, space["lr"].high, space["lr"].log) == (
        "float",
        1e-4,
        1e-2,
        True,
    )
    assert space["lora_rank"].choices == (4, 8)
    assert space["prefix_length"].kind == "int" and space["prefix_length"].step == 5
    assert space["gate_penalty"].kind == "fixed" and space["gate_penalty"].value == "sparsity"
    (tmp_path / "space.json").write_text(
        json.dumps({"router_temperature": {"low": 0.5, "high": 5, "log": True}})
    )
    (only,) = load_space(tmp_path / "space.json")
    assert only.name == "router_temperature" and only.kind == "float"


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"learning_rate": {"low": 1e-4, "high": 1e-3}}, "unknown hyper-parameter 'learning_rate'"),
        ({"lr": {"low": 1e-3, "high": 1e-4}}, "lr has an empty range"),
        ({"lora_rank": {"low": 8, "high": 8}}, "lora_rank has an empty range"),
        ({"adapter_reduction": {"choices": []}}, "adapter_reduction has an empty list of choices"),
        ({"lr": {"low": 0.0, "high": 1e-3, "log": True}}, "lr is on a log scale"),
        ({"lr": {"low": 1e-4}}, "lr needs both low and high"),
        ({"lr": {"low": 1e-4, "high": 1e-3, "scale": "log"}}, "lr has unknown key(s) scale"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_space_names_the_problem(space, message):
    with pytest.raises(UniPELTError) as error:
        parse_space(space)
    assert message in str(error.value)


def test_default_spaces_follow_the_method():
    names = {
        method: {p.name for p in default_space(method)}
        for method in ("unipelt", "unipelt-router", "lora", "ft")
    }
    gate = {"gate_penalty", "gate_penalty_weight", "gate_init_std", "gate_warmup"}
    assert gate | {"lr", "lora_rank", "adapter_reduction", "prefix_length"} <= names["unipelt"]
    assert "router_temperature" in names["unipelt-router"] and "router_temperature" not in names["unipelt"]
    assert names["lora"] == {"lr", "lora_rank"}  # ungated: no gate hyper-parameters
    assert names["ft"] == {"lr", "weight_decay"}
    lr = next(p for p in default_space("unipelt") if p.name == "lr")
    assert lr.log and lr.low < 5e-4 < lr.high  # around the method's default rate


def test_values_land_in_train_config_and_unipelt_overrides():
    base = TrainConfig(method="unipelt", epochs=3, batch_size=8, unipelt={"lora_alpha": 32})
    assert total_steps(base, 40) == 15  # 5 batches (the last one partial) x 3 epochs
    config = apply_values(
        base, {"lr": 2e-3, "lora_rank": 4, "gate_warmup": 0.2, "gate_init_std": 0.01}, train_examples=40
    )
    assert config.lr == 2e-3 and config.gate_init_std == 0.01
    assert config.unipelt == {"lora_alpha": 32, "lora_rank": 4}
    assert config.gate_warmup_steps == 3  # 20 % of 15 steps
    assert base.unipelt == {"lora_alpha": 32} and base.lr is None  # the base config is not changed


def test_gate_init_std_sets_every_gate():
    import torch
    from tiny_models import batch, tiny_model

    from unipelt.gates import GATE_TYPES
    from unipelt.gates.init import init_gate_weights
    from unipelt.model import UniPELTModel

    model = UniPELTModel(tiny_model("bert"), "unipelt")
    gates = [m for m in model.modules() if isinstance(m, GATE_TYPES)]
    assert gates and init_gate_weights(model, 0.0) == len(gates)
    model.eval()
    with torch.no_grad():
        model(**batch("bert"))
    cells = [value for layer in model.gate_values().values() for value in layer.values()]
    assert len(cells) >= 4  # lora_query, lora_value, prefix, adapter of every layer
    for value in cells:
        assert torch.allclose(value, torch.full_like(value, 0.5))  # zero weights and bias: sigmoid(0)


# ---------------------------------------------------------------- one-line errors of the command line


def test_unopenable_storage_is_one_line(tiny_model_dir, reviews, tmp_path, capsys):
    for url in (f"sqlite:///{tmp_path}/missing/dir/study.db", "nosuchdatabase://host/db"):
        code = cli("tune", *data_flags(tiny_model_dir, reviews), "--out", tmp_path / "t", "--storage", url)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1
        assert err.startswith(f"unipelt: error: cannot open the study storage {url}")


def test_bad_space_file_and_objective_from_the_command_line(tiny_model_dir, reviews, tmp_path, capsys):
    (tmp_path / "space.json").write_text(json.dumps({"lr": {"low": 1e-3, "high": 1e-3}}))
    flags = [*data_flags(tiny_model_dir, reviews), "--out", tmp_path / "t"]
    assert cli("tune", *flags, "--space", tmp_path / "space.json") == 2
    assert "lr has an empty range" in capsys.readouterr().err
    assert cli("tune", *flags, "--objective", "metric,speed") == 2
    assert "--objective must be" in capsys.readouterr().err
    assert cli("tune", *flags, "--method", "lora", "--objective", "metric,modules") == 2
    assert "needs a gated method" in capsys.readouterr().err
    assert not (tmp_path / "t" / "study.db").exists()  # nothing is made before the input is checked


def test_full_data_glue_refuses_to_tune_on_its_dev_set(tiny_model_dir, glue_dir, tmp_path, capsys):
    code = cli("tune", "--model", tiny_model_dir, "--task", "rte", "--data-dir", glue_dir, "--out", tmp_path)
    assert code == 2 and "tune with --k" in capsys.readouterr().err


def test_train_config_file_errors(tmp_path, capsys):
    assert cli("train", "--config", tmp_path / "none.json") == 2
    assert "cannot read --config" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"lr": 1e-3, "learning_rate": 2}))
    assert cli("train", "--config", tmp_path / "bad.json") == 2
    assert "unknown field(s) learning_rate" in capsys.readouterr().err


# ---------------------------------------------------------------- searches on a tiny model


@pytest.mark.slow
def test_search_outputs_and_train_config_round_trip(tiny_model_dir, reviews, tmp_path, capsys):
    out = tmp_path / "search"
    flags = data_flags(tiny_model_dir, reviews)
    assert cli("tune", *flags, "--out", out, "--trials", "3", "--sampler-seed", "0") == 0
    printed = capsys.readouterr().out
    assert "3 finished trial(s), 3 run by this worker" in printed
    names = {p.name for p in out.iterdir()}
    assert {"best.json", "trials.csv", "trials.md", "study.db", "optimization_history.png"} <= names
    assert (out / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("trial,state,worker,seconds,metric,lr,")
    # the test split is never evaluated during the search
    for trial in sorted((out / "trials").iterdir()):
        metrics = json.loads((trial / "metrics.json").read_text())
        assert metrics["test"] == {} and "accuracy" in metrics["valid"]
    best = json.loads((out / "best.json").read_text())
    study = optuna.load_study(study_name=best["tuning"]["study"], storage=f"sqlite:///{out / 'study.db'}")
    assert best["tuning"]["values"][0] == pytest.approx(study.best_value)
    assert best["lr"] == pytest.approx(study.best_params["lr"])
    assert best["unipelt"]["lora_rank"] == study.best_params["lora_rank"]
    assert best["tuning"]["overrides"]["lr"] == best["lr"]
    assert "output_dir" not in best
    # unipelt train --config best.json trains it; an explicit flag overrides the file
    run = tmp_path / "retrained"
    assert cli("train", "--config", out / "best.json", "--out", run, "--epochs", "1") == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["lr"] == pytest.approx(best["lr"]) and saved["unipelt"] == best["unipelt"]
    assert saved["gate_init_std"] == pytest.approx(best["gate_init_std"]) and saved["epochs"] == 1.0
    assert json.loads((run / "metrics.json").read_text())["test"]  # a normal run evaluates its test split


@pytest.mark.slow
def test_multi_objective_pareto_and_retrain(tiny_model_dir, reviews, tmp_path, capsys):
    out = tmp_path / "pareto"
    code = cli(
        "tune",
        *data_flags(tiny_model_dir, reviews),
        "--out",
        out,
        "--trials",
        "2",
        "--objective",
        "metric,modules",
        "--retrain-seeds",
        "1,2",
    )
    assert code == 0
    assert "retrained on seeds [1, 2]: test accuracy" in capsys.readouterr().out
    assert (out / "pareto_front.png").read_bytes()[:4] == b"\x89PNG"
    best = json.loads((out / "best.json").read_text())
    modules = best["tuning"]["values"][1]
    assert (
        best["tuning"]["objectives"] == ["metric", "modules"] and 0 <= modules <= 2 * 4
    )  # 2 layers x 4 sites
    summary = json.loads((out / "retrain" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and "accuracy" in summary["test"]


def _worker(
    model: Path, reviews: Path, out: Path, storage: str, trials: int, *extra: str, study: str = "shared"
) -> subprocess.Popen:
    command = [sys.executable, "-m", "unipelt.cli", "tune", *map(str, data_flags(model, reviews))]
    command += ["--out", str(out), "--storage", storage, "--study", study, "--trials", str(trials), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tiny_model_dir, reviews, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [
        _worker(
            tiny_model_dir, reviews, tmp_path / f"w{i}", storage, 4, "--sampler-seed", str(i), "--epochs", "1"
        )
        for i in (1, 2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 0 and states.count("RUNNING") == 0
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # the budget is the study's: 4 in all (a race at the end may add one per extra worker), not 4 each
    assert 4 <= len(finished) <= 5
    ran = [int(out.split(" run by this worker")[0].rsplit(", ", 1)[1]) for out, _ in outputs]
    assert sum(ran) == len(finished)  # every trial of the study was run by one of the two workers
    by_worker = {t.user_attrs["worker"] for t in finished}
    assert len(by_worker) == sum(1 for n in ran if n)
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))  # no number lost


@pytest.mark.slow
def test_a_killed_workers_trial_is_requeued(tiny_model_dir, reviews, tmp_path):
    """A RUNNING trial whose worker died (no heartbeat) is failed and run again with the same values."""
    from optuna.distributions import FloatDistribution

    from unipelt.training.tuning import SearchSettings, open_storage, open_study

    (tmp_path / "space.json").write_text(json.dumps({"lr": {"low": 1e-4, "high": 1e-2, "log": True}}))
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    settings = SearchSettings(out=tmp_path, storage=storage_url, study="resume", heartbeat=1)
    storage = open_storage(storage_url, heartbeat=1)
    study = open_study(settings, storage)
    stale = study.ask({"lr": FloatDistribution(1e-4, 1e-2, log=True)})
    storage.record_heartbeat(stale._trial_id)  # ...and then the worker is killed: no more heartbeats
    lr = stale.params["lr"]
    time.sleep(2.5)  # past the grace period (2 x heartbeat)
    space = ["--heartbeat", "1", "--space", str(tmp_path / "space.json")]
    worker = _worker(tiny_model_dir, reviews, tmp_path, storage_url, 2, *space, study="resume")
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="resume", storage=storage_url)
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state.name == "FAIL"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params["lr"] == pytest.approx(lr)
    assert sum(1 for t in study.trials if t.state.name == "COMPLETE") == 2


def test_grid_reads_best_json_next_to_hyper_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import grid

    (tmp_path / "hyper.json").write_text(json.dumps({"unipelt": {"lr": 1e-3}, "stsb/unipelt": {"lr": 2e-3}}))
    best = {
        "task": "stsb",
        "method": "unipelt",
        "lr": 7e-4,
        "tuning": {"overrides": {"lr": 7e-4, "gate_init_std": 0.01, "unipelt": {"lora_rank": 4}}},
    }
    (tmp_path / "best.json").write_text(json.dumps(best))
    hyper = grid.read_hyper([str(tmp_path / "hyper.json"), str(tmp_path / "best.json")])
    assert hyper["unipelt"] == {"lr": 1e-3}  # other tasks keep the per-method rate
    assert hyper["stsb/unipelt"] == {"lr": 7e-4, "gate_init_std": 0.01, "unipelt": {"lora_rank": 4}}


def _finished_run(folder: Path, lr: float, valid: float) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"lr": lr, "output_dir": str(folder)}))
    metrics = {"metric": "accuracy", "valid": {"accuracy": valid}, "test": {"accuracy": 0.5}, "seed": 1}
    metrics.update(train_seconds=1.0, steps=10)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_grid_tune_puts_the_best_validation_rate_in_the_grid_cell_and_reuses_the_grid_run(
    tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import argparse

    import grid
    import grid_tune

    hyper = {"lora": {"lr": 3e-3}}
    args = argparse.Namespace(out=tmp_path, k=1000, seed=1, scales=[1 / 3, 1.0, 3.0])
    assert grid_tune.candidates(args, hyper, "rte", "lora") == [3e-3, 1e-3, 9e-3]
    cell = grid.cell_dir(tmp_path, "rte", 1000, "lora", 1)
    _finished_run(cell, 3e-3, 0.55)  # the grid's own seed-1 run is the first candidate
    _finished_run(grid_tune.candidate_dir(tmp_path, "rte", 1000, "lora", 1e-3, 1), 1e-3, 0.60)
    assert grid_tune.choose(args, hyper, "rte", "lora") is None  # 9e-3 has not run: no choice yet
    _finished_run(grid_tune.candidate_dir(tmp_path, "rte", 1000, "lora", 9e-3, 1), 9e-3, 0.58)

    chosen = grid_tune.choose(args, hyper, "rte", "lora")
    assert chosen["lr"] == 1e-3 and chosen["scores"] == {3e-3: 0.55, 1e-3: 0.60, 9e-3: 0.58}
    # the winner now is the grid's cell, and the grid's old run became the 3e-3 candidate
    assert grid_tune.run_rate(cell) == 1e-3
    assert json.loads((cell / "config.json").read_text())["output_dir"] == str(cell)
    assert grid_tune.run_rate(grid_tune.candidate_dir(tmp_path, "rte", 1000, "lora", 3e-3, 1)) == 3e-3
    assert grid_tune.choose(args, hyper, "rte", "lora")["lr"] == 1e-3  # choosing again changes nothing
    assert [row["lr"] for row in grid.gather(tmp_path)] == [1e-3]  # candidates stay out of the grid's table


def test_grid_tune_keeps_the_grid_rate_on_a_tie(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import argparse

    import grid
    import grid_tune

    args = argparse.Namespace(out=tmp_path, k=100, seed=1, scales=[0.5, 1.0])
    hyper = {"adapter": {"lr": 2e-3}}
    _finished_run(grid.cell_dir(tmp_path, "mrpc", 100, "adapter", 1), 2e-3, 0.7)
    _finished_run(grid_tune.candidate_dir(tmp_path, "mrpc", 100, "adapter", 1e-3, 1), 1e-3, 0.7)
    assert grid_tune.choose(args, hyper, "mrpc", "adapter")["lr"] == 2e-3


def test_grid_sets_aside_a_cell_trained_at_a_rate_no_longer_chosen(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import grid

    cell = grid.cell_dir(tmp_path, "rte", 1000, "unipelt", 2)
    _finished_run(cell, 5e-4, 0.6)
    grid.set_aside_if_stale(cell, 5e-4, tmp_path)  # the chosen rate: kept
    assert (cell / "metrics.json").is_file()
    grid.set_aside_if_stale(cell, 1.5e-3, tmp_path)  # the choice changed: moved aside, to be trained again
    assert not (cell / "metrics.json").is_file()
    moved = tmp_path / "stale" / "rte" / "k1000" / "unipelt" / "seed-2-lr-0.0005"
    assert json.loads((moved / "config.json").read_text())["lr"] == 5e-4
    assert grid.gather(tmp_path) == []  # set-aside runs stay out of the grid's table


@pytest.mark.slow
def test_a_worker_waits_for_a_killed_workers_trial_and_finishes_the_study(tiny_model_dir, reviews, tmp_path):
    """kill -9 of a worker mid-trial, another started at once on a study whose budget is then all started: it
    waits (saying so) until the dead trial is stale, runs it again, and leaves a complete study, only the
    folders of complete trials, and a best.json that counts complete trials."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    flags = ["--heartbeat", "30", "--epochs", "1"]  # stale 60 s after the last heartbeat: the second worker
    first = _worker(
        tiny_model_dir, reviews, tmp_path, storage, 1, *flags, study="killed"
    )  # is up long before
    deadline = time.monotonic() + 300
    while not (tmp_path / "trials" / "trial-0000").is_dir() and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()[1][-2000:]
        time.sleep(0.05)
    first.kill()  # SIGKILL: trial 0 stays RUNNING in the database, its heartbeat stops
    first.communicate()
    second = _worker(tiny_model_dir, reviews, tmp_path, storage, 1, *flags, study="killed")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    assert "the study's 1 trials are all started; waiting for trial 0 still running" in err
    study = optuna.load_study(study_name="killed", storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "FAIL", 1: "COMPLETE"}
    assert study.trials[1].system_attrs.get("failed_trial") == 0  # the same trial, queued again
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["tuning"]["complete_trials"] == 1 and best["tuning"]["trial"] == 1
    assert [p.name for p in (tmp_path / "trials").iterdir()] == ["trial-0001"]
    assert "1 finished trial(s), 1 run by this worker" in out
