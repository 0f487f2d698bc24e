"""Running an exported task with ONNX Runtime: for ``unipelt predict --runtime onnx`` and ``unipelt serve
--runtime onnx``.

An export folder (written by :mod:`unipelt.inference.export`) holds ``model.onnx`` (and ``model.int8.onnx``
when quantised), the tokenizer (or image processor), ``labels.json`` and ``export.json`` (task kind, inputs, max
length, parity). Nothing of transformers' models is needed to answer from it, only the preprocessor; what
differs between kinds of task is asked of the kind (:mod:`unipelt.kinds`), as for a PyTorch run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unipelt.data import Example
from unipelt.errors import UniPELTError
from unipelt.inference.served_tasks import Row, ServedTask, served_task, split_name, unique_names
from unipelt.kinds import TaskKind, kind_of_run

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


def run_session(sess: Any, batch: Mapping[str, Any]) -> np.ndarray:
    """Logits for one padded batch; only the inputs the graph declares are passed, as the types it declares
    (int64 ids and masks, float32 pixels)."""
    names = {i.name: i.type for i in sess.get_inputs()}
    missing = [n for n in names if n not in batch]
    if missing:
        raise UniPELTError(f"the ONNX model needs inputs {missing} that the preprocessor did not give")
    feed = {}
    for name, kind in names.items():
        value = batch[name]
        value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        feed[name] = value.astype(np.float32 if kind == "tensor(float)" else np.int64)
    return sess.run(None, feed)[0]


class OnnxRun:
    """An ONNX Runtime session of one exported task, used as a finished run: the task kind's ``outputs``,
    ``predictions`` and ``evaluate_run`` take it as they take a :class:`~unipelt.inference.Run`."""

    def __init__(
        self,
        sess: Any,
        kind: TaskKind,
        preprocessor: Any,
        max_length: int,
        labels: list[str] | None,
        metric_kind: str,
        folder: str | Path,
    ) -> None:
        self.session = sess
        self.kind = kind
        self.preprocessor = preprocessor
        self.max_length = max_length
        self.labels = labels
        self.metric_kind = metric_kind
        self.folder = Path(folder)

    def forward(self, batches: Iterable[Mapping[str, Any]]) -> Iterator[np.ndarray]:
        for batch in batches:
            yield run_session(self.session, batch)

    def logits(self, examples: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.kind.outputs(self, list(examples), batch_size, progress)

    def predict(self, examples: list[Any], progress: bool = False) -> Iterator[dict[str, Any]]:
        return self.kind.predictions(self, examples, progress)

    def evaluate(self, data: Any, progress: bool = False) -> dict[str, float]:
        return self.kind.evaluate_run(self, data, progress)


class OnnxModel(OnnxRun):
    """One export folder: its session, preprocessor and label map, with :class:`~unipelt.inference.Run`'s
    ``logits`` / ``predict`` / ``evaluate`` interface."""

    def __init__(self, folder: str | Path, quantized: bool = False, threads: int | None = None) -> None:
        folder = Path(folder)
        if not is_export(folder):
            raise UniPELTError(
                f"{folder} is not a unipelt ONNX export (no {EXPORT_INFO}); see `unipelt export`"
            )
        self.info = json.loads((folder / EXPORT_INFO).read_text())
        name = "model.int8.onnx" if quantized else "model.onnx"
        if not (folder / name).is_file():
            raise UniPELTError(
                f"{folder} has no {name}" + (" (export with --quantize int8)" if quantized else "")
            )
        kind = kind_of_run({"task_type": self.info.get("kind"), "regression": self.info["regression"]})
        super().__init__(
            session(folder / name, threads),
            kind,
            kind.load_preprocessor(folder / "tokenizer", local=True),
            self.info["max_length"],
            self.info["labels"],
            self.info.get("metric_kind") or self.info.get("task") or kind.metrics_as or kind.name,
            folder,
        )
        self.tokenizer = self.preprocessor
        self.regression: bool = self.info["regression"]
        self.pair: bool = self.info["pair"]
        self.tag_column: int = self.info.get("tag_column", -1)

    @property
    def input_columns(self) -> list[str]:
        """The text fields of a prediction input, as the run named them."""
        return self.info.get("text_columns") or (["text_a", "text_b"] if self.pair else ["text"])

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
        from unipelt.inference.engine import pad_id_of, pad_rows, row_outputs

        outputs: list[np.ndarray | None] = [None] * len(rows)
        for name in dict.fromkeys(r.task for r in rows):
            index = [i for i, r in enumerate(rows) if r.task == name]
            part = [rows[i] for i in index]
            tokenizer = self.tasks[name].tokenizer
            side = getattr(tokenizer, "padding_side", "right")
            logits = run_session(self.models[name].session, pad_rows(part, pad_id_of(tokenizer), side))
            for i, out in zip(index, row_outputs(logits, part, self.tasks, side)):
                outputs[i] = out
        return outputs, None  # type: ignore[return-value]
