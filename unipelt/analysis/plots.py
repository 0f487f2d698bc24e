"""Pictures of what training wrote: gate heatmaps (one run or several side by side), learning curves, and
the ``unipelt gates`` command that redraws them from finished run folders.

Plotting uses matplotlib's ``Figure`` with the Agg canvas directly (no pyplot state, no screen), and every PNG
is written to a temporary sibling and renamed into place, so a crash never leaves a half-written picture.
Everything here only reads files and :class:`~unipelt.analysis.gate_stats.GateStats`; no model is needed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipelt.analysis.gate_stats import GATES_JSON, GateStats
from unipelt.atomic import atomic_file
from unipelt.errors import UniPELTError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

GATES_PNG = "gates.png"
LOG_JSONL = "log.jsonl"
RUN_CONFIG = "config.json"
CURVES_PNG = "learning_curves.png"
COMPARE_PNG = "gates_compare.png"

# eval_* keys that describe the evaluation itself rather than the model's quality.
_NOT_METRICS = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch"}
_PNG_DPI = 120


def _save_figure(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` to PNG in a temporary sibling of ``path`` and rename it into place."""
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=_PNG_DPI)
    return path


def plot_gate_heatmap(
    stats: GateStats | list[tuple[str, GateStats]],
    path: str | Path,
    title: str | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """Draw gate means as a layers x sub-modules heatmap, the value written in each cell (paper, Figure 4).

    A list of ``(title, stats)`` gives one panel per run, side by side, for comparing tasks or methods.
    All panels share one colour scale, fixed by default at [0, 1]: sigmoid gates and softmax router
    weights both live there, so colours also compare across separate figures. Layer 0 is the bottom row,
    so the picture stacks like the network. Cells without a value are grey.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    panels = [(title or "", stats)] if isinstance(stats, GateStats) else list(stats)
    if not panels:
        raise UniPELTError("no gate statistics given to plot")
    empty = [name or "(untitled)" for name, panel in panels if panel.empty]
    if empty:
        raise UniPELTError(
            f"no gate values to draw for {', '.join(empty)}: the model has no gates "
            "(methods with gate='none', such as lora, adapter or prefix alone, have nothing to show)"
        )

    most_layers = max(len(panel.layers) for _, panel in panels)
    panel_widths = [0.85 * len(panel.sites) + 0.9 for _, panel in panels]
    colorbar_width = 0.9
    width = sum(panel_widths) + colorbar_width + 0.4
    height = max(2.8, 0.32 * most_layers + 1.6)
    font = 8 if most_layers <= 24 else 6

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(1, len(panels) + 1, gridspec_kw={"width_ratios": [*panel_widths, 0.2]})
    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")
    norm = Normalize(vmin=vmin, vmax=vmax)
    image = None
    for index, (axis, (name, panel)) in enumerate(zip(axes[:-1], panels)):
        image = _draw_panel(axis, name, panel, cmap, norm, font, first=index == 0)
    figure.colorbar(image, cax=axes[-1], label="mean gate value")
    return _save_figure(figure, path)


def _draw_panel(axis: Any, name: str, panel: GateStats, cmap: Any, norm: Any, font: int, first: bool) -> Any:
    """One run's heatmap on ``axis``, each cell's value written in it; returns the image (for the colour bar)."""
    import numpy as np

    values = np.array(panel.mean, dtype=float)
    image = axis.imshow(values, cmap=cmap, norm=norm, origin="lower", aspect="auto")
    axis.set_xticks(range(len(panel.sites)), panel.sites, rotation=30, ha="right", fontsize=font + 1)
    axis.set_yticks(range(len(panel.layers)), [str(layer) for layer in panel.layers], fontsize=font)
    if first:
        axis.set_ylabel("layer")
    if name:
        axis.set_title(name, fontsize=10)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            cell = values[i, j]
            if math.isnan(cell):
                axis.text(j, i, "–", ha="center", va="center", fontsize=font, color="black")
                continue
            # viridis is dark at the low end: white text there, black on the bright end.
            colour = "white" if norm(cell) < 0.6 else "black"
            axis.text(j, i, f"{cell:.2f}", ha="center", va="center", fontsize=font, color=colour)
    return image


def _number(value: Any) -> float | None:
    """A finite float from a JSON value, or None (bools, strings, NaN and null are not plottable)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_log(path: Path) -> tuple[list[tuple[float, float]], dict[str, list[tuple[float, float]]], int]:
    """(training loss points, eval series by key, lines skipped) from a log.jsonl.

    A run killed while writing leaves a partial last line; such lines are skipped, not fatal. A line
    without a numeric "step" is placed at its position in the file.
    """
    train: list[tuple[float, float]] = []
    evals: dict[str, list[tuple[float, float]]] = {}
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(entry, dict):
                skipped += 1
                continue
            step = _number(entry.get("step"))
            x = float(number) if step is None else step
            loss = _number(entry.get("loss"))
            if loss is not None:
                train.append((x, loss))
            for key, value in entry.items():
                y = _number(value)
                if key.startswith("eval_") and y is not None:
                    evals.setdefault(key, []).append((x, y))
    return train, evals, skipped


def plot_learning_curves(
    log_jsonl_path: str | Path, path: str | Path, title: str | None = None
) -> Path | None:
    """Training and eval loss against step, and the eval metrics in a second panel, from a run's log.jsonl.

    Returns the PNG's path, or None (with a one-line log message) when the log holds no loss and no
    eval metric, e.g. a run stopped before its first logging step.
    """
    from matplotlib.figure import Figure

    log = Path(log_jsonl_path)
    if not log.is_file():
        raise UniPELTError(f"training log not found: {log}")
    train, evals, skipped = _read_log(log)
    eval_loss = evals.get("eval_loss", [])
    metrics = {
        key.removeprefix("eval_"): points
        for key, points in evals.items()
        if key.removeprefix("eval_") not in _NOT_METRICS
    }
    if not train and not eval_loss and not metrics:
        logger.warning("learning curves: nothing to plot in %s (no 'loss' or eval_* entries)", log)
        return None
    if skipped:
        logger.warning("learning curves: skipped %d unreadable line(s) in %s", skipped, log)

    panels = int(bool(train or eval_loss)) + int(bool(metrics))
    figure = Figure(figsize=(5.2 * panels, 3.8), layout="constrained")
    axes = list(figure.subplots(1, panels, squeeze=False)[0])
    if train or eval_loss:
        axis = axes.pop(0)
        if train:
            axis.plot(*zip(*sorted(train)), label="train loss", linewidth=1.2)
        if eval_loss:
            axis.plot(*zip(*sorted(eval_loss)), marker="o", markersize=3, label="eval loss")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if metrics:
        axis = axes.pop(0)
        for name, points in sorted(metrics.items()):
            axis.plot(*zip(*sorted(points)), marker="o", markersize=3, label=name)
        axis.set_xlabel("step")
        axis.set_ylabel("eval metric")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save_figure(figure, path)


# ------------------------------------------------------------------------------------------- command


def _run_title(run: Path) -> str:
    """'task / method' from the run's config.json, else the folder name (a damaged config is no error)."""
    try:
        config = json.loads((run / RUN_CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        config = None
    if isinstance(config, dict):
        parts = [str(config[key]) for key in ("task", "method") if config.get(key) not in (None, "")]
        if parts:
            return " / ".join(parts)
    return run.resolve().name


def _load_run(run: Path) -> GateStats:
    if not run.is_dir():
        raise UniPELTError(f"run folder not found: {run}")
    if not (run / GATES_JSON).is_file():
        raise UniPELTError(
            f"{run} has no {GATES_JSON}: gate heatmaps need the folder of a finished `unipelt train` run "
            "(it writes gates.json when training ends)"
        )
    return GateStats.load(run / GATES_JSON)


def gates_command(runs: list[str], output: str | None = None) -> Path:
    """Redraw gate heatmaps from finished runs; returns the heatmap PNG's path.

    One run: RUN/gates.png (or ``output``), plus RUN/learning_curves.png when RUN/log.jsonl exists. Several
    runs: one side-by-side PNG at ``output`` (default ./gates_compare.png), panels titled "task / method"
    from each RUN/config.json, else by folder name; equal titles (e.g. two seeds) get the folder added.
    Runs without gates are left out of a comparison with a message; if no run has any, that is an error.
    """
    if not runs:
        raise UniPELTError("name at least one run folder (written by `unipelt train`)")
    folders = [Path(run) for run in runs]
    loaded = [(folder, _load_run(folder)) for folder in folders]  # check every folder before drawing any

    if len(loaded) == 1:
        folder, stats = loaded[0]
        log = folder / LOG_JSONL
        if log.is_file():
            plot_learning_curves(log, folder / CURVES_PNG, title=_run_title(folder))
        if stats.empty:
            raise UniPELTError(
                f"{folder} has no gate values: its method has no gates (gate='none'), so there is no heatmap"
            )
        return plot_gate_heatmap(
            stats, Path(output) if output else folder / GATES_PNG, title=_run_title(folder)
        )

    titles = [_run_title(folder) for folder, _ in loaded]
    panels = []
    for (folder, stats), title in zip(loaded, titles):
        if stats.empty:
            logger.warning("gates: %s has no gate values (a method without gates); left out", folder)
            continue
        if titles.count(title) > 1 and title != folder.resolve().name:
            title = f"{title} ({folder.resolve().name})"
        panels.append((title, stats))
    if not panels:
        raise UniPELTError("none of the runs has gate values (all were trained with gate='none')")
    return plot_gate_heatmap(panels, Path(output) if output else Path(COMPARE_PNG))
