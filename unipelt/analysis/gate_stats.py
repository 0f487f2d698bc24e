"""Gate statistics: the mean and spread of every gate per (layer, site) over a data set, and their files.

UniPELT's claim is that the gates pick, per task and per layer, which sub-module matters (Mao et al. 2022,
Figure 4). To see that, the gate values of many examples are reduced to one mean and spread per
(layer, site), saved next to the run (gates.json for programs, gates.csv for spreadsheets) and drawn by
:mod:`unipelt.analysis.plots`.

Collecting only reads the model (its train/eval mode and recording switches are restored afterwards), and
every file is written to a temporary sibling and renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipelt.atomic import atomic_write_text, write_json
from unipelt.errors import UniPELTError

if TYPE_CHECKING:
    import torch

    from unipelt.model import UniPELTModel

GATES_JSON = "gates.json"
GATES_CSV = "gates.csv"
STATS_FORMAT = 1


def _site_rank(site: str) -> int:
    """Fixed column order of the paper's figures: LoRA sites, then prefix, then adapter, then anything else."""
    if site == "lora" or site.startswith("lora_"):
        return 0
    return {"prefix": 1, "adapter": 2}.get(site, 3)


def order_sites(sites: Iterable[str]) -> list[str]:
    """Sites sorted by kind (lora*, prefix, adapter), keeping first-seen order within a kind.

    First-seen order within LoRA keeps the config's target order (query before value), which is also
    the order the gate computes them in.
    """
    unique = list(dict.fromkeys(sites))
    return sorted(unique, key=_site_rank)  # sorted() is stable


@dataclass
class _Running:
    """Streaming count, mean and sum of squared deviations (Chan et al.'s parallel update).

    This is the same O(1) state as (count, sum, sum of squares) but without the cancellation of
    ``E[x^2] - E[x]^2``: gates near a constant would otherwise get a spurious std of ~1e-8.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: Any) -> None:
        """Merge a 1-D float64 numpy array of per-example values."""
        n = int(values.size)
        if n == 0:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(((values - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population std (ddof=0): the spread of the gate over the examples seen, not an estimate."""
        return math.sqrt(max(self.m2, 0.0) / self.count) if self.count else math.nan


@dataclass
class GateStats:
    """Mean and std of each gate over examples, indexed ``[i][j]`` for ``layers[i]`` and ``sites[j]``.

    A cell whose site never produced a value (count 0) holds NaN in memory and null in gates.json.
    """

    layers: list[int] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    mean: list[list[float]] = field(default_factory=list)
    std: list[list[float]] = field(default_factory=list)
    count: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(self.sites))
        for name in ("mean", "std", "count"):
            table = getattr(self, name)
            if len(table) != shape[0] or any(len(row) != shape[1] for row in table):
                raise UniPELTError(
                    f"gate statistics are malformed: {name} is not {shape[0]} layers x {shape[1]} sites"
                )

    @property
    def empty(self) -> bool:
        """True for a model without gates (e.g. the ungated 'lora' or 'adapter' presets)."""
        return not self.layers or not self.sites

    @property
    def examples(self) -> int:
        """How many examples the statistics were computed over."""
        return max((c for row in self.count for c in row), default=0)

    def value(self, layer: int, site: str) -> tuple[float, float, int]:
        """(mean, std, count) of one cell, by layer index and site name."""
        try:
            i, j = self.layers.index(layer), self.sites.index(site)
        except ValueError:
            raise KeyError((layer, site)) from None
        return self.mean[i][j], self.std[i][j], self.count[i][j]

    def rows(self) -> Iterable[tuple[int, str, float, float, int]]:
        """(layer, site, mean, std, count) per cell, layers outer: the rows of gates.csv."""
        for i, layer in enumerate(self.layers):
            for j, site in enumerate(self.sites):
                yield layer, site, self.mean[i][j], self.std[i][j], self.count[i][j]

    def to_dict(self) -> dict[str, Any]:
        def clean(table: list[list[float]]) -> list[list[float | None]]:
            return [[None if math.isnan(v) else v for v in row] for row in table]

        return {
            "format": STATS_FORMAT,
            "layers": list(self.layers),
            "sites": list(self.sites),
            "mean": clean(self.mean),
            "std": clean(self.std),
            "count": [list(row) for row in self.count],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateStats:
        def floats(table: Any) -> list[list[float]]:
            return [[math.nan if v is None else float(v) for v in row] for row in table]

        try:
            return cls(
                layers=[int(x) for x in data["layers"]],
                sites=[str(x) for x in data["sites"]],
                mean=floats(data["mean"]),
                std=floats(data["std"]),
                count=[[int(v) for v in row] for row in data["count"]],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UniPELTError(f"gate statistics are malformed ({type(error).__name__}: {error})") from error

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["layer", "site", "mean", "std", "count"])
        for layer, site, mean, std, count in self.rows():
            writer.writerow(
                [
                    layer,
                    site,
                    "" if math.isnan(mean) else repr(mean),
                    "" if math.isnan(std) else repr(std),
                    count,
                ]
            )
        return buffer.getvalue()

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/gates.json`` and ``folder/gates.csv``, each atomically; returns the folder."""
        folder = Path(folder)
        write_json(folder / GATES_JSON, self.to_dict())
        atomic_write_text(folder / GATES_CSV, self.to_csv())
        return folder

    @classmethod
    def load(cls, path: str | Path) -> GateStats:
        """Read gates.json from a run folder (or the file itself)."""
        path = Path(path)
        file = path / GATES_JSON if path.is_dir() else path
        if not file.is_file():
            raise UniPELTError(f"{file} not found")
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UniPELTError(f"{file} is not valid JSON ({error}); rerun the gate analysis") from error
        if not isinstance(data, dict):
            raise UniPELTError(f"{file} does not hold gate statistics (expected a JSON object)")
        return cls.from_dict(data)


def _per_example(value: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One gate value per example, and which examples are real.

    A per-token gate (B, T) is averaged over the example's real tokens: padding positions still get a
    gate value from the frozen model, but it never scales anything that reaches the output. ``mask`` is
    the batch's attention mask; its last T columns line up with the gate (as in Runtime.mask_for). An
    example without a single real token is no example and is left out.
    """
    import torch

    value = value.float()
    batch = value.shape[0]
    usable = mask is not None and mask.dim() == 2 and mask.shape[0] == batch
    keep = (mask != 0).any(dim=1) if usable else torch.ones(batch, dtype=torch.bool, device=value.device)
    if value.dim() == 1:
        return value, keep
    value = value.reshape(batch, value.shape[1], -1).mean(dim=2)  # (B, T); trailing dims are not expected
    tokens = value.shape[1]
    if usable and mask.shape[1] >= tokens:
        weights = (mask[:, -tokens:] != 0).to(value.dtype)
        per_example = (value * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return per_example, keep & (weights.sum(dim=1) > 0)
    return value.mean(dim=1), keep


def _add_gates(running: dict[tuple[int, str], _Running], gates: dict[int, dict[str, Any]], mask: Any) -> None:
    """Add one batch's per-example gate values (``model.gate_values()``) to the running statistics."""
    import numpy as np
    import torch

    cells, values, keeps = [], [], []
    for layer, sites in gates.items():
        for site, gate in sites.items():
            per_example, keep = _per_example(gate, None if mask is None else mask.to(gate.device))
            cells.append((layer, site))
            values.append(per_example)
            keeps.append(keep)
    if not cells:
        return
    # One device-to-host copy per batch rather than one per (layer, site).
    stacked = torch.stack(values).double().cpu().numpy()
    kept = torch.stack(keeps).cpu().numpy()
    for cell, row, row_keep in zip(cells, stacked, kept):
        running.setdefault(cell, _Running()).add(np.asarray(row[row_keep], dtype=np.float64))


def collect_gate_stats(
    model: UniPELTModel, batches: Iterable[Mapping[str, Any]], progress: bool = False
) -> GateStats:
    """Mean and std of every gate over the examples of ``batches``, one number per example.

    Each batch is a dict for ``model(**batch)`` (a ``labels`` key is dropped: only gates are wanted, and a
    loss would be wasted work). The model runs in eval mode, so dropout does not blur the gates, under
    ``torch.inference_mode``; its previous train/eval mode is restored afterwards, so this can be called
    in the middle of training. Accumulation is streaming: memory does not grow with the data set.
    """
    import torch  # late, like the other torch imports here: reading saved statistics needs no torch
    from tqdm.auto import tqdm

    from unipelt.running.loop import forward_batches

    if not model.enabled:
        raise UniPELTError(
            "the UniPELT modules are switched off (called inside model.disabled()); no gate runs, "
            "so there is nothing to collect"
        )
    running: dict[tuple[int, str], _Running] = {}
    # Restore each module's own mode afterwards: a trainer may keep parts of the model in eval on purpose.
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        shown = tqdm(batches, desc="gate statistics", unit="batch", disable=not progress)
        for _, batch in forward_batches(model, shown):
            mask = batch.get("attention_mask")
            _add_gates(running, model.gate_values(), torch.as_tensor(mask) if mask is not None else None)
    finally:
        for module, training in modes.items():
            module.training = training
    layers = sorted({layer for layer, _ in running})
    sites = order_sites(site for _, site in running)
    empty = _Running()
    table = [[running.get((layer, site), empty) for site in sites] for layer in layers]
    return GateStats(
        layers=layers,
        sites=sites,
        mean=[[cell.mean if cell.count else math.nan for cell in row] for row in table],
        std=[[cell.std for cell in row] for row in table],
        count=[[cell.count for cell in row] for row in table],
    )
