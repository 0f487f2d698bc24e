"""A new method and a new task kind, each defined and registered in this file, used end to end.

The method is LoRA with its own default rate, a trainer callback and a finish step; the kind labels lines of a
plain text file by the parity of their word count. Both train through the one run life cycle and are read back
by ``Run`` like the built-in ones, with no change to the library.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tiny_runs import tiny_run_config
from transformers import TrainerCallback

from unipelt.cli import build_parser
from unipelt.data import Example, TaskData
from unipelt.inference import Run
from unipelt.kinds import Splits, register_kind, resolve_kind, unregister_kind
from unipelt.kinds.sentences import Classification
from unipelt.methods import Method, MethodRun, RunContext, register_method, unregister_method
from unipelt.training import TrainConfig, train


class CountSteps(MethodRun):
    """A method's part of one run: counts optimizer steps, and records them when the run finishes."""

    def __init__(self) -> None:
        self.steps = 0
        counter = self

        class Count(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                counter.steps += 1

        self.callbacks = [Count()]

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        return {**result, "counted_steps": self.steps}


@dataclass(frozen=True)
class CountingLoRA(Method):
    def attach(self, context: RunContext) -> MethodRun:
        return CountSteps()


class WordParity(Classification):
    """Lines of a ``.words`` file, labelled ``even`` or ``odd`` by their number of words."""

    name = "word-parity"

    def detect(self, config: TrainConfig) -> bool:
        return str(config.train_file or "").endswith(".words")

    def read_splits(self, config: TrainConfig) -> Splits:
        def read(path: str) -> TaskData:
            lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
            examples = [Example(line, None, len(line.split()) % 2) for line in lines]
            return TaskData(examples, ["even", "odd"], False, path)

        train_data, test = read(config.train_file), read(config.test_file)
        valid = dataclasses.replace(train_data, examples=train_data.examples[-8:])
        train_data = dataclasses.replace(train_data, examples=train_data.examples[:-8])
        return Splits(train_data, valid, test, kind=self, labels=["even", "odd"])


@pytest.fixture
def counting_lora():
    method = register_method(CountingLoRA("counting-lora", lr=2e-3, preset="lora"))
    yield method
    unregister_method(method.name)


@pytest.fixture
def word_parity():
    kind = register_kind(WordParity())
    yield kind
    unregister_kind(kind.name)


def _words(path, count: int, seed: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    lines = [" ".join(words[: 1 + (i * 7 + seed) % 5]) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.slow
def test_a_method_registered_in_a_test_file_trains_and_loads(
    counting_lora, tiny_model_dir, glue_dir, tmp_path
):
    args = build_parser().parse_args(["train", "--method", "counting-lora", "--task", "rte"])
    assert args.method == "counting-lora"  # the CLI's choices come from the registry
    config = tiny_run_config(tiny_model_dir, glue_dir, tmp_path / "run", method="counting-lora", lr=None)
    assert config.learning_rates()["added"] == 2e-3 and config.learning_rates()["gates"] == 2e-3
    result = train(config)
    assert result["counted_steps"] == result["steps"] == 4
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["counted_steps"] == 4 and saved["method"] == "counting-lora"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resolved_unipelt"]["modules"] == [
        "lora"
    ]
    run = Run(tmp_path / "run")
    scores = run.evaluate(run.data(), progress=False)
    assert scores["accuracy"] == pytest.approx(saved["test"]["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_task_kind_registered_in_a_test_file_trains_and_scores(word_parity, tiny_model_dir, tmp_path):
    train_file = _words(tmp_path / "train.words", 40, 1)
    test_file = _words(tmp_path / "test.words", 12, 3)
    config = TrainConfig(
        model=str(tiny_model_dir), method="lora", task=None, train_file=train_file, test_file=test_file,
        epochs=2, batch_size=8, max_length=32, threads=1, lr=1e-2, output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    assert resolve_kind(config) is word_parity  # --task-type auto asks each registered kind
    result = train(config)
    assert result["task_type"] == "word-parity" and result["metric"] == "accuracy"
    assert result["train_examples"] == 32 and result["steps"] == 8
    # the kind's data, as the run read it: the majority baseline is always answering the commonest train label
    train_labels = [len(line.split()) % 2 for line in Path(train_file).read_text().splitlines()[:32]]
    test_labels = [len(line.split()) % 2 for line in Path(test_file).read_text().splitlines()]
    commonest = max((0, 1), key=train_labels.count)
    expected = test_labels.count(commonest) / len(test_labels)
    assert result["majority_class"]["test"]["accuracy"] == pytest.approx(expected)
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert labels["task_type"] == "word-parity" and labels["labels"] == ["even", "odd"]
    run = Run(tmp_path / "run")
    assert run.kind is word_parity
    scores = run.evaluate(word_parity.read_splits(run.config).test, progress=False)
    assert scores["accuracy"] == pytest.approx(result["test"]["accuracy"], abs=1e-6)
