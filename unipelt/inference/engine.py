"""Many trained runs on ONE frozen backbone, answered by one mixed-task forward per batch.

Every run trained with a UniPELT method on the same base model only adds its task modules and head; the
backbone is loaded once and each run's checkpoint becomes a named task of one
:class:`~unipelt.model.UniPELTModel`. A batch may hold rows of any of these tasks: ``model(**batch,
task=[...])`` routes each row through its own task's modules inside every layer, so the answer for a row does
not depend on what else is in the batch (up to float rounding of padding).

The engine is not thread-safe on purpose: exactly one thread (the batcher's worker) calls :meth:`forward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipelt.backbones import load_base_model, load_tokenizer
from unipelt.devices import Placement
from unipelt.errors import UniPELTError
from unipelt.inference.loop import forward_batches
from unipelt.inference.runs import Run
from unipelt.inference.served_tasks import (
    Row,
    ServedTask,
    default_name,
    pair_task,
    run_score,
    split_name,
    unique_names,
)
from unipelt.model import UniPELTModel
from unipelt.pretrained import resolve_model


def pad_rows(rows: Sequence[Row], pad_id: int, side: str = "right") -> dict[str, np.ndarray]:
    """Pad tokenised rows of any tasks to one (B, T) int64 batch: pad id for input ids, 0 elsewhere."""
    width = max(len(r.ids["input_ids"]) for r in rows)
    batch: dict[str, np.ndarray] = {}
    for key in rows[0].ids:
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
    """One backbone, one task per run folder; ``forward(rows)`` answers rows of mixed tasks in one call."""

    runtime = "torch"

    def __init__(self, specs: Sequence[str | Path], placement: Placement | None = None) -> None:
        if not specs:
            raise UniPELTError("give at least one run folder to serve")
        named = [split_name(str(s)) for s in specs]
        runs = [Run(folder) for _, folder in named]
        first = runs[0]
        for run in runs:
            if run.config.method == "ft":
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
        self.tokenizer = load_tokenizer(first.folder / "tokenizer")
        base = load_base_model(
            first.config.model,
            "regression" if first.regression else "classification",
            labels=first.labels,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self.model = UniPELTModel(base)
        names = unique_names(
            [name or default_name(run.config, run.folder) for (name, _), run in zip(named, runs)]
        )
        self.tasks: dict[str, ServedTask] = {}
        for name, run in zip(names, runs):
            self.model.load_task(name, run.folder / "checkpoint")
            self.model.eject_prefix_mlp(name)  # inference keeps only the prefix vectors it produces
            metric, score = run_score(run.folder)
            self.tasks[name] = ServedTask(
                name=name,
                source=str(run.folder),
                labels=run.labels,
                regression=run.regression,
                pair=pair_task(run.config),
                max_length=run.config.max_length,
                tokenizer=self.tokenizer,
                metric=metric,
                score=score,
                parameters=self.model.parameter_counts(name),
            )
        if placement is not None:
            placement.place(self.model)
        self.model.eval()
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.padding_side = getattr(self.tokenizer, "padding_side", "right")

    def forward(self, rows: Sequence[Row], gates: bool = False) -> tuple[list[np.ndarray], list[dict] | None]:
        """Logits of every row (cut to its task's outputs) and, when asked, its gate values per layer and site."""
        batch = {k: torch.from_numpy(v) for k, v in pad_rows(rows, self.pad_id, self.padding_side).items()}
        names = [r.task for r in rows]
        for output, _ in forward_batches(self.model, [batch], task=names):
            logits = output.numpy()
            values = row_gates(self.model.gate_values(), batch["attention_mask"]) if gates else None
        return [logits[i, : self.tasks[n].num_labels] for i, n in enumerate(names)], values


def row_gates(values: dict[int, dict[str, torch.Tensor]], mask: torch.Tensor) -> list[dict[str, Any]]:
    """Per row: {layer: {site: gate}}; per-token gates are averaged over the row's real tokens, and sites a
    row's task does not have (NaN in a mixed batch) are left out."""
    rows: list[dict[str, Any]] = [{} for _ in range(mask.shape[0])]
    weights = mask.float()
    for layer, sites in sorted(values.items()):
        for site, tensor in sites.items():
            tensor = tensor.detach().float().cpu()
            if tensor.dim() == 2:
                per_row = (tensor * weights).sum(1) / weights.sum(1).clamp(min=1)
            else:
                per_row = tensor.reshape(tensor.shape[0], -1).mean(1)
            for i, value in enumerate(per_row.tolist()):
                if value == value:  # not NaN
                    rows[i].setdefault(str(layer), {})[site] = round(value, 6)
    return rows
