"""The UniPELT presets of :data:`unipelt.config.PRESETS` as methods (autopelt has its own file)."""

from __future__ import annotations

from unipelt.methods.base import Method

PRESET_METHODS = (
    Method("adapter", lr=1e-3),  # rates: chosen on validation data (RESULTS.md, "Accuracy")
    Method("lora", lr=1e-3),
    Method("prefix", lr=1e-3, label_mean_start=True),  # mean start: RESULTS.md, "What the defaults learnt..."
    Method("unipelt-ap", lr=5e-4),
    Method("unipelt", lr=5e-4),
    Method("unipelt-router", lr=5e-4),
    Method("ap-nogate", lr=5e-4),
    Method("ia3", lr=3e-3),  # the IA3 paper's usual rate (Liu et al. 2022), not tuned here
    Method("bitfit", lr=1e-3),  # the BitFit paper's usual rate (Ben Zaken et al. 2022), not tuned here
)
