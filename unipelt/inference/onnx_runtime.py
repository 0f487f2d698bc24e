"""Running an exported task with ONNX Runtime: for ``unipelt predict --runtime onnx`` and ``unipelt serve
--runtime onnx``.

An export folder (written by :mod:`unipelt.inference.export`) holds ``model.onnx`` (and ``model.int8.onnx``
when quantised), the tokenizer, ``labels.json`` and ``export.json`` (task, inputs, max length, parity). Nothing
of torch or transformers' models is needed to answer from it, only the tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unipelt.data import Example
from unipelt.data.tokenize import token_counts
from unipelt.errors import UniPELTError
from unipelt.inference.served_tasks import Row, ServedTask, served_task, split_name, unique_names

EXPORT_INFO = "export.json"


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / EXPORT_INFO).is_file()


def session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path``; ``threads`` caps its intra-op threads (None: its default)."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise UniPELTError("the onnx runtime needs the onnx extra: pip install 'unipelt[onnx]'") from error
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UniPELTError(f"cannot load ONNX model {path}: {error}") from error


def run_session(sess: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Logits for one padded batch; only the inputs the graph declares are passed."""
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in batch]
    if missing:
        raise UniPELTError(f"the ONNX model needs inputs {missing} that the tokenizer did not give")
    return sess.run(None, {n: batch[n].astype(np.int64) for n in names})[0]


class OnnxModel:
    """One exported task: its session, tokenizer and label map, with :class:`~unipelt.inference.Run`'s
    ``logits`` / ``predict`` interface."""

    def __init__(self, folder: str | Path, quantized: bool = False, threads: int | None = None) -> None:
        from unipelt.backbones import load_tokenizer

        self.folder = Path(folder)
        if not is_export(self.folder):
            raise UniPELTError(
                f"{self.folder} is not a unipelt ONNX export (no {EXPORT_INFO}); see `unipelt export`"
            )
        self.info = json.loads((self.folder / EXPORT_INFO).read_text())
        name = "model.int8.onnx" if quantized else "model.onnx"
        if not (self.folder / name).is_file():
            raise UniPELTError(
                f"{self.folder} has no {name}" + (" (export with --quantize int8)" if quantized else "")
            )
        self.session = session(self.folder / name, threads)
        self.tokenizer = load_tokenizer(self.folder / "tokenizer", local=True)
        self.labels: list[str] | None = self.info["labels"]
        self.regression: bool = self.info["regression"]
        self.max_length: int = self.info["max_length"]
        self.pair: bool = self.info["pair"]
        self.kind: str = self.info.get("kind") or ("regression" if self.regression else "classification")
        self.is_tagger = self.kind == "token-classification"
        self.tag_column: int = self.info.get("tag_column", -1)

    def batches(self, examples: Sequence[Example], batch_size: int = 64) -> Iterator[dict[str, np.ndarray]]:
        yield from encode_batches(examples, self.tokenizer, self.max_length, batch_size)

    def logits(self, examples: Sequence[Example], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return np.concatenate([run_session(self.session, b) for b in self.batches(examples, batch_size)])

    def predict(self, examples: list[Example], progress: bool = False) -> Iterator[dict[str, Any]]:
        task = self.served(self.info.get("task") or "task")
        logits = self.logits(examples)
        counts = token_counts(examples, self.tokenizer)
        for example, row, count in zip(examples, logits, counts):
            record: dict[str, Any] = {"text": example.text_a}
            if example.text_b is not None:
                record["text_b"] = example.text_b
            cut = Row(task.name, {}, count > self.max_length, count)
            yield {**record, **task.answer(row[: task.num_labels], cut)}

    def tag(self, sentences: Sequence[Any], batch_size: int = 32) -> Iterator[dict[str, Any]]:
        """Tags, word scores and entity spans of an exported tagging run, as :meth:`Run.tag` gives them."""
        from unipelt.inference.engine import pad_rows, row_outputs
        from unipelt.inference.tagging import as_sentence

        task = self.served(self.info.get("task") or "task")
        rows = task.encode([list(as_sentence(s).tokens) for s in sentences])
        side = getattr(task.tokenizer, "padding_side", "right")
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            logits = run_session(self.session, pad_rows(part, task.tokenizer.pad_token_id or 0, side))
            for out, row in zip(row_outputs(logits, part, {task.name: task}, side), part):
                yield task.answer(out, row)

    def served(self, name: str) -> ServedTask:
        return served_task(
            self.kind,
            name=name,
            source=str(self.folder),
            labels=self.labels,
            regression=self.regression,
            pair=self.pair,
            max_length=self.max_length,
            tokenizer=self.tokenizer,
            metric=self.info.get("metric"),
            score=self.info.get("score"),
            parameters=self.info.get("parameters") or {},
        )


def open_export(folder: str | Path, quantized: bool = False, threads: int | None = None) -> OnnxModel:
    """The export in ``folder``; a run folder is exported first into a temporary folder (removed at exit)."""
    import atexit
    import shutil
    import sys
    import tempfile

    if is_export(folder) or not (Path(folder) / "checkpoint").exists():
        return OnnxModel(folder, quantized, threads)
    from unipelt.inference.export import export_run

    tmp = tempfile.mkdtemp(prefix="unipelt-onnx-")
    atexit.register(shutil.rmtree, tmp, True)
    print(
        f"unipelt: exporting {folder} to ONNX for this process (keep it with `unipelt export`)",
        file=sys.stderr,
    )
    export_run(
        folder, f"{tmp}/export", quantize="int8" if quantized else None, max_examples=64, threads=threads
    )
    return OnnxModel(f"{tmp}/export", quantized, threads)


def encode_batches(
    examples: Sequence[Example], tokenizer: Any, max_length: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Padded int64 batches of examples, truncated like training (longest first for pairs)."""
    keys = ("input_ids", "attention_mask", "token_type_ids")
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        pairs = [e.text_b for e in part] if part[0].text_b is not None else None
        encoded = tokenizer(
            [e.text_a for e in part],
            pairs,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="np",
        )
        yield {k: encoded[k].astype(np.int64) for k in keys if k in encoded}


class OnnxEngine:
    """``unipelt serve --runtime onnx``: one session per exported task; a mixed batch runs each task's rows
    through its own session (there is no shared backbone in an ONNX file)."""

    runtime = "onnx"
    has_gates = False

    def __init__(
        self, specs: Sequence[str | Path], quantized: bool = False, threads: int | None = None
    ) -> None:
        if not specs:
            raise UniPELTError("give at least one export folder to serve")
        named = [split_name(str(s)) for s in specs]
        models = [open_export(folder, quantized, threads) for _, folder in named]
        names = unique_names(
            [name or m.info.get("task") or m.folder.resolve().name for (name, _), m in zip(named, models)]
        )
        self.models = dict(zip(names, models))
        self.tasks = {name: m.served(name) for name, m in self.models.items()}

    def forward(self, rows: Sequence[Row], gates: bool = False) -> tuple[list[np.ndarray], None]:
        from unipelt.inference.engine import pad_rows, row_outputs

        outputs: list[np.ndarray | None] = [None] * len(rows)
        for name in dict.fromkeys(r.task for r in rows):
            index = [i for i, r in enumerate(rows) if r.task == name]
            part = [rows[i] for i in index]
            tokenizer = self.tasks[name].tokenizer
            side = getattr(tokenizer, "padding_side", "right")
            logits = run_session(self.models[name].session, pad_rows(part, tokenizer.pad_token_id or 0, side))
            for i, out in zip(index, row_outputs(logits, part, self.tasks, side)):
                outputs[i] = out
        return outputs, None  # type: ignore[return-value]
