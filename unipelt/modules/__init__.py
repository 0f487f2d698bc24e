"""PEFT sub-modules, one file each, behind one interface (:mod:`unipelt.modules.base`).

Importing this package registers every kind in :data:`MODULES`, kept sorted by each class's ``order``: the
order of the softmax router's outputs, of modules acting on one projection, and of rows in parameter tables.
"""

from __future__ import annotations

from unipelt.modules import adapter, bitfit, ia3, lora, prefix  # noqa: F401  (registration)
from unipelt.modules.adapter import BottleneckAdapter
from unipelt.modules.base import MODULES, BuildSpec, PeftModule, register
from unipelt.modules.bitfit import BitFit
from unipelt.modules.ia3 import IA3
from unipelt.modules.lora import LoRA, LoRALayer
from unipelt.modules.prefix import PrefixEncoder

__all__ = [
    "MODULES",
    "BitFit",
    "BottleneckAdapter",
    "BuildSpec",
    "IA3",
    "LoRA",
    "LoRALayer",
    "PeftModule",
    "PrefixEncoder",
    "register",
]
