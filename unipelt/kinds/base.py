"""A kind of task as an object: what a run and the verbs that use it need to know about its data.

Each kind says how its data is read and split, tokenised, batched and scored (the metrics of metrics.json and
the one that selects the best checkpoint), what a run folder records about it (labels.json), how outputs become
predictions, and what ``serve`` and ``export`` need (encode a request, decode an output, whether ONNX export
is possible). The run life cycle and the verbs call these; none of them asks for a kind by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unipelt.data import k_shot_split, load_glue, load_table, tokenize_examples
from unipelt.data.inputs import read_inputs
from unipelt.data.tokenize import token_counts
from unipelt.errors import UniPELTError
from unipelt.kinds.imbalance import apply_oversampling
from unipelt.kinds.serving import Serving
from unipelt.metrics import compute_task_metrics, main_metric

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unipelt.training.config import TrainConfig


@dataclass
class Splits:
    """A run's data, read and checked before anything is written."""

    train: Any
    valid: Any
    test: Any | None
    kind: TaskKind
    labels: list[str] | None = None  # class or tag names; None for regression and causal-lm
    glue_task: str | None = None  # the GLUE task whose metrics score the run, when the data is GLUE's
    answer_choices: list[str] | None = None  # causal-lm: short answers scored by generation

    @property
    def label_list(self) -> list[str] | None:
        return self.labels

    @property
    def regression(self) -> bool:
        return self.kind.regression


class TaskKind(Serving):
    """The base of every kind; subclasses override what differs. ``name`` is the ``--task-type`` value."""

    name: str = ""
    metrics_as: str = ""  # what unipelt.metrics scores the kind's outputs as (default: its name)
    head: str = "classification"  # the head unipelt.backbones.load_base_model builds for it
    regression: bool = False
    onnx_export: bool = False  # whether `unipelt export` can write an ONNX model of its runs
    onnx_reason: str = ""  # why it cannot, when it cannot
    greater_is_better: bool = True  # of the metric that selects the best checkpoint
    compiles: bool = True  # whether `--compile` (torch.compile) applies to its finished runs
    example_noun: str = "examples"  # what `eval` calls the items it scored

    def __repr__(self) -> str:
        return f"<task kind {self.name}>"

    # ------------------------------------------------------------------ training: data

    def detect(self, config: TrainConfig) -> bool:
        """Whether ``--task-type auto`` makes this kind of the run's data (tried in registration order)."""
        return False

    def read_splits(self, config: TrainConfig) -> Splits:
        """Read and check train, validation and test data (bad data fails here, before the run folder)."""
        raise NotImplementedError

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Refuse a tokenizer the kind cannot use (e.g. no chat template)."""

    def base_model(self, config: TrainConfig, splits: Splits, tokenizer: Any) -> nn.Module:
        """The base model with a fresh head sized from the data."""
        from unipelt.backbones import load_base_model  # transformers: loaded by a run, not by the CLI

        return load_base_model(
            config.model, self.head, labels=splits.labels, pad_token_id=tokenizer.pad_token_id
        )

    def datasets(
        self, splits: Splits, tokenizer: Any, config: TrainConfig, evaluate_test: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the tokenised splits in file order, what tokenising cut, per split; empty when nothing)."""
        raise NotImplementedError

    def eval_datasets(self, datasets: dict[str, Any]) -> dict[str, Any]:
        """The splits the Trainer evaluates (validation, test), in the order that scores them fastest."""
        return {name: dataset for name, dataset in datasets.items() if name != "train"}

    def collator(self, tokenizer: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ training: scoring

    def main_metric(self, splits: Splits) -> str:
        """The metric that selects the best checkpoint and is reported first."""
        raise NotImplementedError

    def checkpoint_metric(self, splits: Splits) -> str:
        """The Trainer's name of the metric that selects the best checkpoint."""
        return self.main_metric(splits)

    def compute_metrics(self, splits: Splits) -> Any:
        """The Trainer's ``compute_metrics`` (None: the Trainer reports the loss only)."""
        return None

    def scores(self, splits: Splits, predictions: Any, labels: Any) -> dict[str, float]:
        """Every metric of model outputs against gold labels (what metrics.json reports per split)."""
        raise UniPELTError(f"{self.name} runs are scored by their run, not from outputs and labels")

    def configure_trainer(self, args: Any) -> None:
        """Adjust the Trainer's settings for the kind (e.g. no logits kept)."""

    def score(self, context: Any, trainer: Any, evaluate: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Final metrics per split (``valid``, ``test``) of the best model, as metrics.json holds them."""
        return {
            split: _strip(trainer.evaluate(dataset, metric_key_prefix=split), f"{split}_")
            for split, dataset in evaluate.items()
        }

    def result_extra(self, splits: Splits, cuts: dict[str, Any]) -> dict[str, Any]:
        """What metrics.json adds for the kind (e.g. a majority-class baseline)."""
        return {"train_examples": len(splits.train)}

    def gate_report_data(self, evaluate: dict[str, Any]) -> Any:
        """The split the gate report of a gated run is measured on (None: no report)."""
        return evaluate.get("test") or evaluate.get("valid")

    # ------------------------------------------------------------------ the run folder

    def run_info(self, splits: Splits) -> dict[str, Any]:
        """RUN/labels.json, also stored in the checkpoint: label names, regression, what scores the run."""
        return {
            "labels": splits.labels,
            "regression": self.regression,
            "metric_kind": splits.glue_task or self.metrics_as or self.name,
            "task_type": self.name,
        }

    def auto_class(self) -> Any:
        """The Transformers Auto class that loads a fully fine-tuned model of this kind."""
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    # ------------------------------------------------------------------ what turns inputs into model inputs

    def load_preprocessor(self, path: str | Path, local: bool = False) -> Any:
        """What turns the kind's inputs into model inputs: a tokenizer for text (an image processor for images),
        from a model folder or a run's ``tokenizer/`` folder (``local``: never from the Hub)."""
        from unipelt.backbones import load_tokenizer

        return load_tokenizer(path, local=local)

    def prediction_inputs(
        self, source: str, columns: list[str], encoding: str, task: str | None, tag_column: int = -1
    ) -> list[Any]:
        """What ``predict --input SOURCE`` reads: texts from a table, a file of lines or standard input
        (``columns``: the run's text fields; ``task`` names it in messages; ``tag_column``: a CoNLL file's)."""
        return read_inputs(source, columns, encoding, task)

    def prediction_batches(
        self, examples: list[Any], tokenizer: Any, max_length: int
    ) -> tuple[list[Any], Any]:
        """(one item per example, the collator that batches them) for ``eval`` and ``predict``."""
        from transformers import DataCollatorWithPadding

        dataset = tokenize_examples(examples, tokenizer, max_length)
        dataset = dataset.remove_columns([c for c in ("labels",) if c in dataset.column_names])
        return [dataset[i] for i in range(len(dataset))], DataCollatorWithPadding(tokenizer)

    def input_record(self, example: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
        """What a prediction record says about its input (the texts; whether only their start was read)."""
        record: dict[str, Any] = {"text": example.text_a}
        if example.text_b is not None:
            record["text_b"] = example.text_b
        count = token_counts([example], tokenizer)[0]
        if count > max_length:
            record.update(truncated=True, tokens=count)
        return record

    # ------------------------------------------------------------------ using a finished run
    # ``run`` is a finished run as ``eval``, ``predict`` and ``export`` hold it, in PyTorch
    # (:class:`unipelt.inference.Run`) or in ONNX Runtime (an export): ``forward`` (batches -> outputs, a
    # :data:`unipelt.running.loop.Forward`), ``preprocessor``, ``max_length``, ``labels``, ``metric_kind`` (what
    # scores it) and ``folder``; a PyTorch run also has ``config`` (its TrainConfig), ``info`` (labels.json) and
    # ``load()`` (model, preprocessor).

    def ready(self, model: nn.Module) -> None:
        """Prepare a loaded run's model for inference (e.g. turn its KV cache back on)."""

    def run_data(
        self, run: Any, task: str | None, data_dir: str | None, path: str | None, encoding: str | None
    ) -> Any:
        """What ``eval`` scores: the file ``path``; else the dev split of ``task`` (or of the run's own task);
        else the run's test file."""
        if path is not None:
            return self.read_file(path, run.config, run.labels, encoding)
        task = task or run.config.task
        if task is not None:
            return self.read_task(task, data_dir or run.config.data_dir, run.labels)
        if run.config.test_file is None:
            raise UniPELTError(
                "this run was trained on your own files and has no test file: pass --data FILE"
            )
        return self.read_file(run.config.test_file, run.config, run.labels, None)

    def read_file(
        self, path: str, config: TrainConfig, labels: list[str] | None, encoding: str | None
    ) -> Any:
        """A labelled file in the run's own format, its labels read as the run's ``labels``."""
        return load_table(
            path,
            config.text_columns,
            config.label_column,
            labels,
            regression=self.regression,
            encoding=encoding or config.encoding,
        )

    def read_task(self, task: str, data_dir: str | None, labels: list[str] | None) -> Any:
        """The held-out split of a named task (a GLUE task's dev split)."""
        return load_glue(task, data_dir, "dev")

    def outputs(
        self, run: Any, examples: list[Any], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """The run's outputs (logits) for ``examples``, one row each."""
        from tqdm.auto import tqdm  # with torch (the batch loop): loaded by a run, not by the CLI

        from unipelt.running.loop import chunks

        items, collate = self.prediction_batches(examples, run.preprocessor, run.max_length)
        batches = chunks(items, collate, batch_size)
        total = -(-len(items) // batch_size)
        batches = tqdm(batches, total=total, disable=not progress, desc="predict", unit="batch")
        return np.concatenate(list(run.forward(batches)))

    def predictions(self, run: Any, examples: list[Any], progress: bool = False) -> Iterator[dict[str, Any]]:
        """One record per example: its input, its answer, then ``truncated`` and the full ``tokens`` count when
        only its start was read."""
        outputs = self.outputs(run, examples, progress=progress)
        for example, row in zip(examples, outputs):
            record = self.input_record(example, run.preprocessor, run.max_length)
            cut = {key: record.pop(key) for key in ("truncated", "tokens") if key in record}
            yield {**record, **self.decode_output(row, run.labels), **cut}

    def labelled(self, examples: list[Any]) -> bool:
        """Whether every example has its gold answer (so ``eval`` and ``export`` can score outputs)."""
        return all(e.label is not None for e in examples)

    def evaluate_run(
        self, run: Any, data: Any, progress: bool = True, task: str | None = None
    ) -> dict[str, float]:
        """The run's metrics on ``data`` (labelled examples), as metrics.json reports them; ``task`` names the
        task of a multi-task model that answers (where the kind has such models)."""
        if not self.labelled(data.examples):
            raise UniPELTError(f"{data.source} has unlabelled examples; `eval` needs labels (use `predict`)")
        logits = self.outputs(run, data.examples, progress=progress)
        return compute_task_metrics(run.metric_kind, logits, np.array([e.label for e in data.examples]))

    def run_metric(self, metric_kind: str) -> str:
        """The main metric of a finished run scored as ``metric_kind`` (labels.json)."""
        return main_metric(metric_kind)

    def retention(self, run: Any, facts: str, task: str | None = None) -> dict[str, Any]:
        """How many of the facts file's answers the base model knows the run still knows (chat models)."""
        raise UniPELTError(
            f"--retention measures chat models; {run.folder} is a {self.name} run, not causal-lm"
        )

    def prediction_line(self, record: dict[str, Any], max_length: int) -> str:
        """One prediction as ``predict --format table`` prints it."""
        if "score" in record:
            value = f"{record['score']:.4f}"
        else:
            value = f"{record['label']}\t{record['probabilities'][record['label']]:.4f}"
        cut = (
            f"\t(truncated: {record['tokens']} tokens, the first {max_length} read)"
            if "truncated" in record
            else ""
        )
        return f"{value}\t{record.get('text', record.get('image', ''))[:80]}{cut}"

    def encode_request(self, tokenizer: Any, texts: list[Any], max_length: int) -> dict[str, Any]:
        """Tokenise inputs of a request (``serve``, ``predict``) as the run's training did."""
        raise UniPELTError(f"{self.name} runs cannot be served")

    def decode_output(self, outputs: np.ndarray, labels: list[str] | None) -> dict[str, Any]:
        """One input's answer from its model outputs (already cut to the task's outputs)."""
        raise UniPELTError(f"{self.name} runs cannot be served")

    # ------------------------------------------------------------------ ONNX export (where ``onnx_export``)

    def trace_inputs(self, preprocessor: Any, pair: bool, max_length: int) -> dict[str, torch.Tensor]:
        """A 2-row batch to trace the graph with, its second row padded, so that the traced graph takes the
        padding-aware path (a Python branch on the batch becomes a constant of the trace)."""
        first = ["a longer first example sentence for tracing the graph", "short"]
        second = ["and its second text", "pair"] if pair else None
        encoded = preprocessor(
            first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        if bool(encoded["attention_mask"].all()):
            raise UniPELTError("could not build a padded sample batch to trace the model with")
        return {k: encoded[k] for k in TEXT_INPUTS if k in encoded}

    def onnx_axes(self, names: tuple[str, ...]) -> dict[str, dict[int, str]]:
        """The dynamic axes of the graph's inputs and of its output ``logits``."""
        return {**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}}

    def timing_inputs(self, names: list[str], preprocessor: Any, length: int) -> dict[str, np.ndarray]:
        """One input of ``length`` tokens for timing a graph whose inputs are ``names``."""
        batch = {n: np.ones((1, length), dtype=np.int64) for n in names}
        if "token_type_ids" in batch:
            batch["token_type_ids"] = np.zeros((1, length), dtype=np.int64)
        batch["input_ids"] = np.full((1, length), 1000, dtype=np.int64)
        return batch


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        k.removeprefix(prefix): v for k, v in metrics.items() if not k.endswith(("runtime", "per_second"))
    }


def sample_valid(items: list[Any], n_valid: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, valid): ``n_valid`` items (at most a tenth) held out of ``items``, seeded, order kept."""
    n = min(n_valid, max(1, len(items) // 10))
    order = np.random.default_rng(seed).permutation(len(items))
    held = set(order[:n].tolist())
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def is_file(path: str | None) -> bool:
    return path is not None and Path(path).is_file()


def hold_out(config: TrainConfig, train: Any, valid: Any) -> tuple[Any, Any]:
    """(train, valid) of a kind's own data: with ``--k``, K training examples and a validation set drawn from the
    rest (the paper's protocol); without a validation file, a seeded share of the training data held out."""
    if config.k is not None:
        kept, held = k_shot_split(train.examples, config.k, config.seed, config.n_valid)
    elif valid is None:
        kept, held = sample_valid(train.examples, config.n_valid, config.seed)
    else:
        return train, valid
    return dataclasses.replace(train, examples=kept), dataclasses.replace(train, examples=held)


def own_splits(kind: TaskKind, config: TrainConfig, train: Any, valid: Any, test: Any) -> Splits:
    """The Splits of a kind's own labelled files: K-shot or held-out validation, then oversampling of train."""
    train, valid = hold_out(config, train, valid)
    return Splits(
        train=apply_oversampling(config, train), valid=valid, test=test, kind=kind, labels=train.label_list
    )


def class_answer(outputs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """One input's label and class probabilities from its logits."""
    shifted = np.exp(outputs - outputs.max())
    probabilities = shifted / shifted.sum()
    return {
        "label": labels[int(probabilities.argmax())],
        "probabilities": {n: round(float(p), 6) for n, p in zip(labels, probabilities)},
    }
