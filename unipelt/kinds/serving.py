"""What ``unipelt serve`` asks of a task kind: which routes answer its runs, what one input of a request is,
how it is checked and encoded into rows that batch with other tasks' rows, and how an answer is written.

:class:`Serving` is a base of :class:`~unipelt.kinds.TaskKind`; its defaults serve a kind from its
``encode_request`` and ``decode_output`` alone, so a kind only overrides what differs (a pair of texts, words to
tag, an image).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unipelt.errors import InputError


@dataclass
class Row:
    """One input of a request, encoded and ready to be batched with rows of other tasks of one model group.

    ``ids`` maps model inputs to a token sequence (a list, padded in a batch) or a fixed-shape array (stacked,
    e.g. an image's pixels); ``tokens`` is the input's length before any cut; ``detail`` is what the kind's
    answer needs besides the outputs (a tagged sentence's words)."""

    task: str
    ids: dict[str, Any]
    truncated: bool
    tokens: int
    detail: Any = None

    @property
    def length(self) -> int:
        """Its length in a batch: its token count as fed (what the token budget and length buckets count)."""
        ids = self.ids.get("input_ids")
        return len(ids) if ids is not None else self.tokens


SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, where: str, max_chars: int | None) -> None:
    """Refuse a text over ``max_chars`` characters (413) or one that cannot be encoded as UTF-8 (422), before
    any tokeniser sees it."""
    if max_chars is not None and len(text) > max_chars:
        raise InputError(
            f"{where} has {len(text)} characters; this server takes at most {max_chars} per text "
            "(--max-text-chars)",
            413,
        )
    bad = SURROGATE.search(text)
    if bad is not None:
        raise InputError(
            f"{where} cannot be encoded as UTF-8: a lone surrogate (U+{ord(bad.group()):04X}) at character "
            f"{bad.start()}",
            422,
        )


class Serving:
    """The serving hooks of a task kind (mixed into :class:`~unipelt.kinds.TaskKind`, which supplies ``head``,
    ``encode_request`` and ``decode_output``)."""

    head: str

    # Which routes of ``unipelt serve`` answer the kind's runs: "predict" (POST /v1/predict, rows batched across
    # tasks), "generate" (the OpenAI-compatible completions, continuous batching), None (not served). A kind
    # served on "predict" needs only encode_request and decode_output; the hooks below default to them.
    serves: str | None = None

    def serving_group(self) -> str:
        """Runs of kinds with one group share one model in a server (their heads are of one model class), so
        rows of their tasks can share a forward."""
        return self.head

    def serving_preprocessor(self, preprocessor: Any) -> Any:
        """What a server encodes requests with: the run's own preprocessor, unless the kind adapts it."""
        return preprocessor

    def request_inputs(self, pair: bool) -> str:
        """What one input of a request is, as ``GET /v1/tasks`` names it (single, pair, words, image)."""
        return "single"

    def request_schema(self, pair: bool, max_chars: int) -> dict[str, Any]:
        """The JSON schema of one input of a request (published in /openapi.json)."""
        return {"type": "string", "maxLength": max_chars}

    def check_request(self, inputs: Sequence[Any], pair: bool, max_chars: int | None) -> None:
        """Refuse inputs of the wrong shape (400) or over the server's limits (413, 422), before encoding."""
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise InputError(f"inputs[{i}] must be a text")
            check_text(item, f"inputs[{i}]", max_chars)

    def request_rows(
        self, preprocessor: Any, inputs: Sequence[Any], pair: bool, max_length: int, task: str
    ) -> list[Row]:
        """A request's inputs as rows of ``task``, encoded as the run's training encoded them."""
        encoded = self.encode_request(preprocessor, list(inputs), max_length)
        keys = [key for key, value in encoded.items() if len(value) == len(inputs)]
        rows = []
        for i in range(len(inputs)):
            ids = {key: encoded[key][i] for key in keys}
            ids = {key: v if isinstance(v, np.ndarray) else list(v) for key, v in ids.items()}
            rows.append(Row(task, ids, False, len(ids.get("input_ids", ())) or 1))
        return rows

    def answer(self, outputs: np.ndarray, row: Row, labels: list[str] | None) -> dict[str, Any]:
        """One input's answer from its outputs (cut to its task's), flagged ``truncated`` with its full token
        count when only its start was read."""
        record = self.decode_output(outputs, labels)
        if row.truncated:
            record.update(truncated=True, tokens=row.tokens)
        return record
