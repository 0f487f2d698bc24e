"""What the gates learned: gate statistics, heatmaps, learning curves (being split into modules)."""

from unipelt.analysis.gate_stats import (
    GateStats,
    collect_gate_stats,
    gates_command,
    order_sites,
    plot_gate_heatmap,
    plot_learning_curves,
)

__all__ = [
    "GateStats",
    "collect_gate_stats",
    "gates_command",
    "order_sites",
    "plot_gate_heatmap",
    "plot_learning_curves",
]
