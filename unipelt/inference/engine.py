"""Many trained runs on ONE frozen backbone, answered by one mixed-task forward per batch.

Every run trained with a UniPELT method on the same base model only adds its task modules and head; the
backbone is loaded once and each run's checkpoint becomes a named task of one
:class:`~unipelt.model.UniPELTModel`. A batch may hold rows of any of these tasks: ``model(**batch,
task=[...])`` routes each row through its own task's modules inside every layer, so the answer for a row does
not depend on what else is in the batch (up to float rounding of padding).

The engine is not thread-safe on purpose: exactly one thread (the batcher's worker) calls :meth:`forward`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipelt.backbones import load_base_model
from unipelt.devices import Placement
from unipelt.errors import UniPELTError
from unipelt.inference.onnx_runtime import is_export
from unipelt.inference.runs import Run
from unipelt.inference.served_tasks import (
    Row,
    ServedTask,
    default_name,
    pair_task,
    run_score,
    served_task,
    split_name,
    unique_names,
)
from unipelt.model import UniPELTModel
from unipelt.pretrained import resolve_model
from unipelt.running.loop import forward_batches


def pad_id_of(preprocessor: Any) -> int:
    """The id that pads input ids: the tokenizer's pad token, 0 for a preprocessor without one (images)."""
    return getattr(preprocessor, "pad_token_id", None) or 0


def pad_rows(rows: Sequence[Row], pad_id: int, side: str = "right") -> dict[str, np.ndarray]:
    """Rows of any tasks as one batch: token sequences padded to one (B, T) int64 array (pad id for input ids,
    0 elsewhere), fixed-shape arrays (an image's pixels) stacked."""
    width = max(r.length for r in rows)
    batch: dict[str, np.ndarray] = {}
    for key in rows[0].ids:
        if isinstance(rows[0].ids[key], np.ndarray):
            batch[key] = np.stack([row.ids[key] for row in rows])
            continue
        fill = pad_id if key == "input_ids" else 0
        array = np.full((len(rows), width), fill, dtype=np.int64)
        for i, row in enumerate(rows):
            values = row.ids[key]
            if side == "left":
                array[i, width - len(values) :] = values
            else:
                array[i, : len(values)] = values
        batch[key] = array
    return batch


class TorchEngine:
    """One backbone, one task per run folder; ``forward(rows)`` answers rows of mixed tasks in one call per group.

    Tasks whose kinds share a serving group (classification and regression: one head per sequence) share one
    model; each other group (a head per token for tagging) runs on a model of its own head class whose backbone
    weights are the very same tensors (one copy in memory). Rows of several groups in one call are split by
    group.
    """

    runtime = "torch"

    def __init__(
        self, specs: Sequence[str | Path], placement: Placement | None = None, compile: str | None = None
    ) -> None:
        self.placement = placement  # where the models go (default: the CPU)
        if not specs:
            raise UniPELTError("give at least one run folder to serve")
        named = [split_name(str(s)) for s in specs]
        for _, folder in named:
            if is_export(folder):
                raise UniPELTError(f"{folder} is an ONNX export; serve it with --runtime onnx")
        runs = [Run(folder) for _, folder in named]
        first = runs[0]
        for run in runs:
            if not run.method.adds_modules:
                raise UniPELTError(
                    f"{run.folder} is a full fine-tuning run: it has its own backbone and cannot share one; "
                    "serve runs trained with a UniPELT method"
                )
        base_path = resolve_model(first.config.model)
        for run in runs[1:]:
            other = resolve_model(run.config.model)
            if Path(other).resolve() != Path(base_path).resolve():
                raise UniPELTError(
                    f"{run.folder} was trained on {run.config.model!r} ({other}) but {first.folder} on "
                    f"{first.config.model!r} ({base_path}); one server shares one backbone"
                )
        self.preprocessors = self._load_preprocessors(runs)
        self.tokenizer = self.preprocessors[0]  # the first run's (pad id and side of text batches)
        names = unique_names(
            [name or default_name(run.config, run.folder) for (name, _), run in zip(named, runs)]
        )
        self.tasks: dict[str, ServedTask] = {}
        for name, run, preprocessor in zip(names, runs, self.preprocessors):
            metric, score = run_score(run.folder)
            self.tasks[name] = served_task(
                run.kind,
                name=name,
                source=str(run.folder),
                labels=run.labels,
                regression=run.regression,
                pair=pair_task(run.config),
                max_length=run.config.max_length,
                tokenizer=preprocessor,
                metric=metric,
                score=score,
            )
        self.models = self._load_models(runs, names)
        for model in self.models.values():
            if compile:  # batches of one task run the compiled graph; mixed ones and gate readouts stay eager
                model.compile(backend=compile)
        for name in names:
            self.tasks[name].parameters = self.models[self.tasks[name].group].parameter_counts(name)
        self.pad_id = pad_id_of(self.tokenizer)
        self.padding_side = getattr(self.tokenizer, "padding_side", "right")

    @staticmethod
    def _load_preprocessors(runs: Sequence[Any]) -> list[Any]:
        """Each run's preprocessor, loaded once per way of loading one (the runs share a base model, so runs
        whose kinds load it alike share it: one tokenizer for every text kind)."""
        loaded: dict[Any, Any] = {}
        out = []
        for run in runs:
            how = type(run.kind).load_preprocessor
            if how not in loaded:
                loaded[how] = run.kind.load_preprocessor(run.folder / "tokenizer", local=True)
            out.append(loaded[how])
        return out

    def _load_models(self, runs: Sequence[Any], names: Sequence[str]) -> dict[str, Any]:
        """One UniPELT model per group of tasks, all groups on the same backbone tensors."""
        models: dict[str, Any] = {}
        shared = None
        for group in dict.fromkeys(self.tasks[n].group for n in names):
            lead, name = next((run, n) for run, n in zip(runs, names) if self.tasks[n].group == group)
            base = load_base_model(
                lead.config.model,
                lead.kind.head,
                labels=lead.labels,
                pad_token_id=getattr(self.tasks[name].tokenizer, "pad_token_id", None),
            )
            if shared is None:
                shared = base
            else:
                share_backbone(shared, base)
            models[group] = UniPELTModel(base)
        for run, name in zip(runs, names):
            model = models[self.tasks[name].group]
            model.load_task(name, run.folder / "checkpoint")
            model.eject_prefix_mlp(name)  # inference keeps only the prefix vectors it produces
        for model in models.values():
            if self.placement is not None:
                self.placement.place(model)  # shared backbone tensors move once, in place
            model.eval()
        return models

    def group(self, row: Row) -> str:
        return self.tasks[row.task].group

    def forward(self, rows: Sequence[Row], gates: bool = False) -> tuple[list[np.ndarray], list[dict] | None]:
        """Logits of every row (cut to its task's outputs; per token for tagging) and, when asked, its gate
        values per layer and site."""
        outputs: list[Any] = [None] * len(rows)
        values: list[Any] = [None] * len(rows)
        for group in dict.fromkeys(self.group(r) for r in rows):
            index = [i for i, r in enumerate(rows) if self.group(r) == group]
            part = [rows[i] for i in index]
            logits, part_gates = self._forward(self.models[group], part, gates)
            for j, i in enumerate(index):
                outputs[i] = logits[j]
                values[i] = part_gates[j] if part_gates is not None else None
        return outputs, values if gates else None

    def _forward(self, model: Any, rows: Sequence[Row], gates: bool) -> tuple[list[np.ndarray], Any]:
        padded = pad_rows(rows, self.pad_id, self.padding_side)
        batch = {k: torch.from_numpy(v) for k, v in padded.items()}
        names = [r.task for r in rows]
        with model.eager() if gates else contextlib.nullcontext():
            for output, _ in forward_batches(model, [batch], task=names):
                logits = output.numpy()
            values = row_gates(model.gate_values(), batch.get("attention_mask"), len(rows)) if gates else None
        return row_outputs(logits, rows, self.tasks, self.padding_side), values


def row_outputs(
    logits: np.ndarray, rows: Sequence[Row], tasks: dict[str, Any], side: str
) -> list[np.ndarray]:
    """Each row's logits cut to its task's labels: (labels,) per sequence, or (its tokens, labels) per token
    (the padding positions left out, on whichever side the tokenizer pads)."""
    out = []
    for i, row in enumerate(rows):
        labels = tasks[row.task].num_labels
        if logits.ndim == 3:
            lo = logits.shape[1] - row.length if side == "left" else 0
            out.append(logits[i, lo : lo + row.length, :labels])
        else:
            out.append(logits[i, :labels])
    return out


def share_backbone(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Make ``target``'s backbone use ``source``'s backbone weights (same tensors, no copy), by name."""
    weights = dict(source.base_model.named_parameters())
    for module_name, module in target.base_model.named_modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            full = f"{module_name}.{name}" if module_name else name
            if full in weights and weights[full].shape == parameter.shape:
                setattr(module, name, weights[full])


def row_gates(
    values: dict[int, dict[str, torch.Tensor]], mask: torch.Tensor | None, count: int
) -> list[dict[str, Any]]:
    """Per row of ``count``: {layer: {site: gate}}; per-token gates are averaged over the row's real tokens
    (every token without a mask: an image's patches), and sites a row's task does not have (NaN in a mixed
    batch) are left out."""
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for layer, sites in sorted(values.items()):
        for site, tensor in sites.items():
            tensor = tensor.detach().float().cpu()
            if tensor.dim() == 2:
                weights = mask.float() if mask is not None else torch.ones_like(tensor)
                per_row = (tensor * weights).sum(1) / weights.sum(1).clamp(min=1)
            else:
                per_row = tensor.reshape(tensor.shape[0], -1).mean(1)
            for i, value in enumerate(per_row.tolist()):
                if value == value:  # not NaN
                    rows[i].setdefault(str(layer), {})[site] = round(value, 6)
    return rows
