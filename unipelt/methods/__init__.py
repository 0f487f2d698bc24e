"""Training methods as objects (:class:`Method`), in one registry.

``ft`` (full fine-tuning), every preset of :data:`unipelt.config.PRESETS` and ``autopelt`` are registered
here; a user's mix is a preset with ``--set modules=[...]`` overrides. A new method is one file with a
:class:`Method` (or subclass) instance and a :func:`register_method` call.
"""

from __future__ import annotations

from unipelt.config import PRESETS
from unipelt.methods.autopelt import AUTOPELT
from unipelt.methods.base import Method, MethodRun, RunContext
from unipelt.methods.ft import FT
from unipelt.methods.presets import PRESET_METHODS
from unipelt.methods.registry import get_method, method_names, register_method, unregister_method

for _method in (FT, *PRESET_METHODS, AUTOPELT):
    register_method(_method)
for _preset in PRESETS:  # a preset without its own entry is a method too (it needs --lr)
    if _preset not in method_names():
        register_method(Method(_preset, lr=None))

__all__ = [
    "Method",
    "MethodRun",
    "RunContext",
    "get_method",
    "method_names",
    "register_method",
    "unregister_method",
]
