"""What the gates learned: per-layer gate statistics over a data set, heatmaps of them, learning curves.

:mod:`~unipelt.analysis.gate_stats` runs a model over data and reduces its gate values to a mean and spread per
(layer, site), saved as gates.json / gates.csv; :mod:`~unipelt.analysis.plots` draws those statistics and a
run's training log, and holds the ``unipelt gates`` command. Training calls both when a run ends.
"""

from unipelt.analysis.gate_stats import GateStats, collect_gate_stats, order_sites
from unipelt.analysis.plots import gates_command, plot_gate_heatmap, plot_learning_curves

__all__ = [
    "GateStats",
    "collect_gate_stats",
    "gates_command",
    "order_sites",
    "plot_gate_heatmap",
    "plot_learning_curves",
]
