"""Task kinds as objects (:class:`TaskKind`), in one registry.

classification, regression, token-classification, causal-lm and image-classification are registered here. A new kind is one file
with a :class:`TaskKind` subclass and a :func:`register_kind` call.
"""

from __future__ import annotations

from unipelt.kinds.base import Splits, TaskKind
from unipelt.kinds.chat import CausalLM
from unipelt.kinds.images import ImageClassification
from unipelt.kinds.registry import (
    get_kind,
    kind_names,
    kind_of_run,
    load_splits,
    register_kind,
    resolve_kind,
    unregister_kind,
)
from unipelt.kinds.sentences import Classification, Regression
from unipelt.kinds.tokens import TokenClassification

for _kind in (Classification(), Regression(), TokenClassification(), CausalLM(), ImageClassification()):
    register_kind(_kind)

__all__ = [
    "Splits",
    "TaskKind",
    "get_kind",
    "kind_names",
    "kind_of_run",
    "load_splits",
    "register_kind",
    "resolve_kind",
    "unregister_kind",
]
