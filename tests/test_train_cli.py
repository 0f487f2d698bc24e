"""End-to-end runs of the command line on a tiny model and small slices of real GLUE data."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import tiny_run_config

from unipelt.cli import main
from unipelt.errors import UniPELTError
from unipelt.methods import get_method
from unipelt.methods.autopelt import GATE_LR as AUTOPELT_GATE_LR
from unipelt.methods.base import CAUSAL_LM_PREFIX_LR_CAP
from unipelt.training import TrainConfig, train
from unipelt.training.model_init import regression_output_layer
from unipelt.training.run import build_model, load_splits

pytestmark = pytest.mark.slow
FAST = ["--epochs", "1", "--batch-size", "8", "--max-length", "64", "--threads", "1"]


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def kshot(model: Path, glue: Path, out: Path, method: str = "unipelt", *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        model,
        "--data-dir",
        glue,
        "--task",
        "rte",
        "--method",
        method,
        "--k",
        "16",
        "--n-valid",
        "16",
        "--out",
        out,
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, glue_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "rte"
    assert cli(*kshot(tiny_model_dir, glue_dir, out)) == 0
    return out


def test_train_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {
        "config.json",
        "labels.json",
        "checkpoint",
        "tokenizer",
        "log.jsonl",
        "metrics.json",
        "gates.json",
        "gates.csv",
        "gates.png",
        "learning_curves.png",
    } <= names
    assert "trainer" not in names  # resume checkpoints are removed once the run has finished
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["parameters"]["lora"] > 0
    assert json.loads((trained_run / "labels.json").read_text())["labels"] == ["entailment", "not_entailment"]
    for png in ("gates.png", "learning_curves.png"):
        assert (trained_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluations = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in record for record in evaluations)
    weights = load_file(str(trained_run / "checkpoint" / "unipelt_weights.safetensors"))
    assert not any("embeddings" in key for key in weights), (
        "checkpoint must hold only added weights and the head"
    )


def test_eval_reproduces_the_test_score(trained_run, glue_dir, capsys):
    assert cli("eval", trained_run, "--data-dir", glue_dir, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    expected = json.loads((trained_run / "metrics.json").read_text())["test"]["accuracy"]
    assert result["examples"] == 277
    assert result["accuracy"] == pytest.approx(expected, abs=1e-9)
    # a two-class run also reports the ROC AUC, in training's metrics.json and again in `eval`
    expected_auc = json.loads((trained_run / "metrics.json").read_text())["test"]["auc"]
    assert 0.0 <= expected_auc <= 1.0 and result["auc"] == pytest.approx(expected_auc, abs=1e-9)


def test_predict_from_file_and_stdin(trained_run, tmp_path, capsys, monkeypatch):
    lines = tmp_path / "pairs.txt"
    lines.write_text("A man is sleeping.\tA person rests.\nThe sky is green.\tThe sky is blue.\n")
    assert cli("predict", trained_run, "--input", lines) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and records[0]["text_b"] == "A person rests."
    for record in records:
        assert record["label"] in ("entailment", "not_entailment")
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("one text\tanother text\n"))
    assert cli("predict", trained_run, "--input", "-", "--format", "table") == 0
    assert "another" not in capsys.readouterr().out.split("\t")[0]


def test_gates_command_redraws_and_compares(trained_run, tmp_path, capsys):
    assert cli("gates", trained_run, trained_run, "--output", tmp_path / "cmp.png") == 0
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_custom_csv_with_label_mapping(tiny_model_dir, tmp_path):
    rows = ["text,sentiment"] + [
        f"this is {'great' if i % 2 else 'awful'} number {i},{'pos' if i % 2 else 'neg'}" for i in range(40)
    ]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert (
        cli(
            "train",
            "--model",
            tiny_model_dir,
            "--train",
            tmp_path / "reviews.csv",
            "--label-column",
            "sentiment",
            "--out",
            out,
            "--method",
            "lora",
            *FAST,
        )
        == 0
    )
    labels = json.loads((out / "labels.json").read_text())
    assert labels == {
        "labels": ["neg", "pos"],
        "regression": False,
        "metric_kind": "classification",
        "task_type": "classification",
    }
    assert json.loads((out / "metrics.json").read_text())["valid"]["accuracy"] >= 0.0


@pytest.mark.parametrize(
    "content,flags,message",
    [
        ("text,label\n", [], "empty|no data rows|no rows"),
        ("words,label\nhello,a\nbye,b\n", [], "text"),
        ("text,label\nhello,a\nbye,\n", [], "line 3"),
    ],
)
def test_bad_data_is_one_clear_error_and_writes_nothing(
    tiny_model_dir, tmp_path, capsys, content, flags, message
):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    out = tmp_path / "run"
    assert cli("train", "--model", tiny_model_dir, "--train", bad, "--out", out, *flags, *FAST) == 2
    err = capsys.readouterr().err
    assert err.startswith("unipelt: error:") and "bad.csv" in err and "Traceback" not in err
    import re

    assert re.search(message, err, re.I)
    assert not out.exists()


def test_missing_task_folder_and_bad_model_are_clear_errors(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    assert (
        cli(
            "train",
            "--model",
            tiny_model_dir,
            "--data-dir",
            tmp_path / "glue",
            "--task",
            "cola",
            "--out",
            tmp_path / "r",
            *FAST,
        )
        == 2
    )
    assert "CoLA" in capsys.readouterr().err
    assert cli("train", "--model", tmp_path / "nope", "--task", "rte", "--out", tmp_path / "r2", *FAST) == 2
    assert "does not exist" in capsys.readouterr().err


def _crash_after(step: int):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise RuntimeError("simulated crash")

    return Crash()


def test_resume_after_a_crash_ends_like_an_uninterrupted_run(tiny_model_dir, glue_dir, tmp_path):
    base = _tiny_config(tiny_model_dir, glue_dir, tmp_path, epochs=3, lr=None)
    straight = train(TrainConfig(**{**base.to_dict(), "output_dir": str(tmp_path / "straight")}))
    crashed = TrainConfig(**{**base.to_dict(), "output_dir": str(tmp_path / "crashed")})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, callbacks=[_crash_after(4)])
    assert not (tmp_path / "crashed" / "metrics.json").exists()
    assert any((tmp_path / "crashed" / "trainer").glob("checkpoint-4"))
    resumed = train(crashed, resume=True)
    assert resumed["steps"] == straight["steps"] == 6
    assert resumed["test"]["accuracy"] == pytest.approx(straight["test"]["accuracy"], abs=1e-9)
    assert resumed["test"]["loss"] == pytest.approx(straight["test"]["loss"], rel=1e-5)
    a = load_file(str(tmp_path / "straight" / "checkpoint" / "unipelt_weights.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "checkpoint" / "unipelt_weights.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_seeds_report_mean_and_std_and_skip_finished_runs(tiny_model_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "multi"
    args = kshot(tiny_model_dir, glue_dir, out, "ft", "--seeds", "1,2")
    assert cli(*args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and set(summary["test"]["accuracy"]) == {"mean", "std"}
    stamp = (out / "seed-1" / "metrics.json").stat().st_mtime_ns
    assert cli(*args) == 0
    assert (out / "seed-1" / "metrics.json").stat().st_mtime_ns == stamp
    assert "±" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_data_parallel_run(tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "unipelt.cli",
        *[str(a) for a in kshot(tiny_model_dir, glue_dir, out)],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    rank0 = "\n".join(line for line in result.stderr.splitlines() if "rank0" in line or "Error" in line)
    assert result.returncode == 0, rank0[-4000:] + "\n---\n" + result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["steps"] == 1
    )  # 16 examples, batch 8 per process, 2 processes: one optimizer step per epoch


def _capture_gates():
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def __init__(self):
            self.first = self.last = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.first = [p.detach().clone() for p in model.gate_parameters()]

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.last = [p.detach().clone() for p in model.gate_parameters()]

    return Capture()


_tiny_config = tiny_run_config


def test_gate_warmup_holds_gates_then_releases_them(tiny_model_dir, glue_dir, tmp_path):
    held, released = _capture_gates(), _capture_gates()
    train(_tiny_config(tiny_model_dir, glue_dir, tmp_path / "a", gate_warmup_steps=100), callbacks=[held])
    assert all(torch.equal(a, b) for a, b in zip(held.first, held.last))
    train(_tiny_config(tiny_model_dir, glue_dir, tmp_path / "b", gate_warmup_steps=1), callbacks=[released])
    assert not all(torch.equal(a, b) for a, b in zip(released.first, released.last))


def test_autopelt_holds_its_gates_for_a_third_then_moves_them_at_a_constant_rate(
    tiny_model_dir, glue_dir, tmp_path
):
    from transformers import TrainerCallback

    assert TrainConfig(method="unipelt").gate_warmup(90) == 0
    assert TrainConfig(method="autopelt").gate_warmup(90) == 30
    assert TrainConfig(method="autopelt", gate_warmup_steps=0).gate_warmup(90) == 0
    with pytest.raises(UniPELTError, match="gate_warmup_steps must be 0 or more"):
        TrainConfig(method="autopelt", task="sst2", gate_warmup_steps=-3).validate()

    class PerStep(TrainerCallback):
        def __init__(self):
            self.gates, self.sampling = [], []

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.gates.append([p.detach().clone() for p in model.gate_parameters()])
            self.rates = {group.get("name", "other"): group["lr"] for group in optimizer.param_groups}
            self.sampling.append({layer.gate.sampling for layer in model.tasks["default"].layers})

        def on_train_end(self, args, state, control, **kwargs):
            self.best = state.best_model_checkpoint

    steps = PerStep()
    config = _tiny_config(tiny_model_dir, glue_dir, tmp_path / "run", method="autopelt", epochs=3, patience=9)
    train(dataclasses.replace(config, latency_weight=0.0), callbacks=[steps])
    same = [all(torch.equal(a, b) for a, b in zip(steps.gates[0], step)) for step in steps.gates]
    held = round(len(steps.gates) / 3)
    assert held >= 1 and same[:held] == [True] * held and not same[-1]
    assert steps.rates["gates"] == AUTOPELT_GATE_LR and steps.rates["other"] < config.lr / 2  # others decay
    # held gates are noise-free, and the best checkpoint comes from after the warm-up (2 steps an epoch)
    assert steps.sampling[:held] == [{False}] * held and steps.sampling[-1] == {True}
    assert int(steps.best.rsplit("-", 1)[1]) > held


def test_prefix_encoder_trains_at_its_own_rate_and_the_groups_partition_the_trainable_weights(
    tiny_model_dir, glue_dir, tmp_path
):
    from transformers import TrainerCallback

    class Groups(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.model = model
            self.initial = [
                (group["initial_lr"], {id(p) for p in group["params"]}) for group in optimizer.param_groups
            ]

    seen = Groups()
    config = _tiny_config(tiny_model_dir, glue_dir, tmp_path / "run", lr=1e-3, lr_prefix=2e-4, epochs=1)
    train(config, callbacks=[seen])
    groups = seen.model.parameter_groups()
    trainable = {id(p) for p in seen.model.parameters() if p.requires_grad}
    ids = [{id(p) for p in params} for params in groups.values()]
    assert sum(map(len, ids)) == len(trainable) and set().union(*ids) == trainable  # disjoint, complete
    assert groups["prefix"] and all(p.requires_grad for p in groups["prefix"])
    prefix_ids = {id(p) for p in groups["prefix"]}
    assert [rate for rate, group in seen.initial if group == prefix_ids] == [2e-4]
    assert [rate for rate, group in seen.initial if group == {id(p) for p in groups["added"]}] == [1e-3]
    # at one rate the prefix stays in the added modules' group: checkpoints of earlier versions still resume
    same = Groups()
    train(dataclasses.replace(config, output_dir=str(tmp_path / "same"), lr_prefix=None), callbacks=[same])
    merged = {id(p) for name in ("added", "prefix") for p in same.model.parameter_groups()[name]}
    assert [rate for rate, group in same.initial if group == merged] == [1e-3] and len(same.initial) == 3
    # a run folder written before lr_prefix existed reads back with the prefix at the modules' rate, as it trained
    from unipelt.training.run_files import read_run_config

    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert read_run_config(tmp_path / "run").lr_prefix == 2e-4
    del saved["lr_prefix"]
    (tmp_path / "run" / "config.json").write_text(json.dumps({**saved, "lr": 3e-3}))
    assert read_run_config(tmp_path / "run").learning_rates()["prefix"] == 3e-3
    with pytest.raises(UniPELTError, match="lr_prefix must be > 0"):
        TrainConfig(method="unipelt", task="rte", lr_prefix=-1e-3).validate()
    PREFIX_LR_CAP = get_method("unipelt").prefix_lr_cap
    # default: the modules' rate, at most PREFIX_LR_CAP where the prefix shares the model; prefix-only keeps lr
    assert TrainConfig(method="unipelt", lr=5e-4).learning_rates()["prefix"] == 5e-4
    assert TrainConfig(method="unipelt", lr=3e-3).learning_rates()["prefix"] == PREFIX_LR_CAP == 1e-3
    assert TrainConfig(method="unipelt-ap", lr=3e-3).learning_rates()["prefix"] == PREFIX_LR_CAP
    assert TrainConfig(method="prefix", lr=3e-3).learning_rates()["prefix"] == 3e-3
    only_prefix = TrainConfig(method="unipelt", lr=3e-3, unipelt={"modules": ["prefix"]})
    assert only_prefix.learning_rates()["prefix"] == 3e-3
    assert TrainConfig(method="unipelt", lr=3e-3, lr_prefix=2e-3).learning_rates()["prefix"] == 2e-3
    # instruction-tuning a causal LM: at most CAUSAL_LM_PREFIX_LR_CAP in a mix; prefix-only still keeps lr
    causal = {"task": None, "task_type": "causal-lm"}
    assert (
        TrainConfig(method="unipelt", **causal).learning_rates()["prefix"] == CAUSAL_LM_PREFIX_LR_CAP == 1e-4
    )
    assert TrainConfig(method="unipelt-ap", lr=5e-5, **causal).learning_rates()["prefix"] == 5e-5
    assert TrainConfig(method="prefix", **causal).learning_rates()["prefix"] == 1e-3
    assert TrainConfig(method="unipelt", lr_prefix=5e-4, **causal).learning_rates()["prefix"] == 5e-4


def test_sparsity_penalty_pushes_gates_down(tiny_model_dir, glue_dir, tmp_path):
    def mean_gate(folder):
        stats = json.loads((folder / "gates.json").read_text())
        values = [v for row in stats["mean"] for v in row if v is not None]
        return sum(values) / len(values)

    train(_tiny_config(tiny_model_dir, glue_dir, tmp_path / "plain"))
    train(
        _tiny_config(
            tiny_model_dir, glue_dir, tmp_path / "sparse", gate_penalty="sparsity", gate_penalty_weight=50.0
        )
    )
    assert mean_gate(tmp_path / "sparse") < mean_gate(tmp_path / "plain") - 0.01


def test_regression_task_reports_spearman(tiny_model_dir, glue_dir, tmp_path):
    result = train(
        _tiny_config(tiny_model_dir, glue_dir, tmp_path / "stsb", task="stsb", method="lora", epochs=1)
    )
    assert result["metric"] == "spearman"
    assert {"pearson", "spearman"} <= set(result["test"])
    labels = json.loads((tmp_path / "stsb" / "labels.json").read_text())
    assert labels["regression"] is True and labels["labels"] is None


def test_autopelt_starts_a_regression_head_at_the_label_mean_and_warns_when_told_zero(
    tiny_model_dir, glue_dir, tmp_path, caplog
):
    default = _tiny_config(tiny_model_dir, glue_dir, tmp_path / "a", task="stsb", method="autopelt")
    assert default.regression_start() == "label-mean"
    assert _tiny_config(tiny_model_dir, glue_dir, tmp_path / "u", task="stsb").regression_start() == "zero"
    # prefix-only too: its zero start ends at the mean on STS-B (RESULTS.md); a flag still wins
    prefix = _tiny_config(tiny_model_dir, glue_dir, tmp_path / "p", task="stsb", method="prefix")
    assert prefix.regression_start() == "label-mean"
    assert dataclasses.replace(prefix, regression_bias="zero").regression_start() == "zero"
    zero = _tiny_config(
        tiny_model_dir,
        glue_dir,
        tmp_path / "z",
        task="stsb",
        method="autopelt",
        epochs=1,
        regression_bias="zero",
    )
    with caplog.at_level("WARNING", logger="unipelt"):
        train(zero)
    assert any("regression" in r.message and "label-mean" in r.message for r in caplog.records)
    caplog.clear()
    splits = load_splits(default)
    model, unipelt, _ = build_model(default, splits)
    mean = sum(float(e.label) for e in splits.train.examples) / len(splits.train.examples)
    assert regression_output_layer(model, unipelt).bias.item() == pytest.approx(mean, abs=1e-5)


def test_each_run_in_one_process_logs_into_its_own_tensorboard_folder(
    tiny_model_dir, glue_dir, tmp_path, monkeypatch
):
    pytest.importorskip("tensorboard")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        train(_tiny_config(tiny_model_dir, glue_dir, out, method="lora", epochs=1))
    for out in runs:
        assert list((out / "tensorboard").glob("events.out.tfevents.*")), f"no TensorBoard events in {out}"
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # a process-wide setting would leak into later runs
