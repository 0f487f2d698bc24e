"""Pictures of a structure plan: which unit of which layer is kept, folded or pruned."""

from __future__ import annotations

from pathlib import Path

from unipelt.atomic import atomic_file
from unipelt.autopelt.measure import UnitStats
from unipelt.plan import Plan

COLOURS = {"keep": "#4c9a5a", "fold": "#4f7fc0", "prune": "#c9c9c9"}


def _site_key(site: str) -> tuple[int, str]:
    return (0 if site.startswith("lora_") else {"prefix": 1, "adapter": 2}.get(site, 3), site)


def plot_units(stats: list[UnitStats], plan: Plan, path: str | Path, title: str = "") -> Path:
    """Layers (rows, layer 0 at the bottom) x units (columns), coloured by action, contribution written in.

    The contribution (||delta|| / ||h||, see :mod:`unipelt.autopelt.measure`) is printed as a percentage."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    layers = sorted({s.layer for s in stats})
    sites = sorted({s.site for s in stats}, key=_site_key)
    code = {"keep": 0, "fold": 1, "prune": 2}
    grid = [[float("nan")] * len(sites) for _ in layers]
    figure = Figure(figsize=(1.2 + 1.1 * len(sites), 1.2 + 0.38 * len(layers)))
    axes = figure.add_subplot()
    for s in stats:
        i, j = layers.index(s.layer), sites.index(s.site)
        grid[i][j] = code[plan.action(s.unit)]
        axes.text(j, i, f"{100 * s.contribution:.1f}", ha="center", va="center", fontsize=7)
    cmap = ListedColormap([COLOURS["keep"], COLOURS["fold"], COLOURS["prune"]])
    axes.imshow(grid, cmap=cmap, vmin=-0.5, vmax=2.5, origin="lower", aspect="auto")
    axes.set_xticks(range(len(sites)), sites, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=8)
    axes.set_ylabel("layer")
    axes.set_title(title or "sub-modules per layer (contribution, %)", fontsize=9)
    figure.legend(
        handles=[Patch(color=c, label=name) for name, c in COLOURS.items()],
        loc="upper right",
        fontsize=7,
        ncols=3,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    return path
