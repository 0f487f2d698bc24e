"""Using a token-classification run from the command line: read sentences to tag, print tagged sentences.

Tagging itself (word probabilities, tags, entity spans, scores) lives in :mod:`unipelt.running.tagging` and is
re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unipelt.data.conll import JSONL_SUFFIXES, TokenExample, load_tokens
from unipelt.data.files import input_lines
from unipelt.errors import UniPELTError
from unipelt.running.tagging import (
    as_sentence,
    decode,
    entity_spans,
    evaluate_tagged,
    tag_sentences,
    word_probabilities,
)

__all__ = [
    "as_sentence",
    "bracketed",
    "decode",
    "entity_spans",
    "evaluate_tagged",
    "print_tagged",
    "read_sentences",
    "tag_sentences",
    "word_probabilities",
]


def read_sentences(source: str, tag_column: int = -1, encoding: str = "utf-8") -> list[TokenExample]:
    """Sentences to tag: JSON lines with ``tokens``, a CoNLL file (its first column), or plain text lines from a
    file or '-' (one sentence a line, words split on whitespace); files in ``encoding``."""
    suffix = Path(source).suffix.lower()
    if source != "-" and (
        suffix in JSONL_SUFFIXES or suffix in (".conll", ".iob", ".iob2", ".bio", ".bioes")
    ):
        return load_tokens(source, tag_column, labelled=False, encoding=encoding).examples
    if source != "-" and not Path(source).is_file():
        raise UniPELTError(f"input file not found: {source}")
    lines = input_lines(source, encoding)
    sentences = [
        TokenExample(tuple(line.split()), None, i) for i, line in enumerate(lines, 1) if line.strip()
    ]
    if not sentences:
        raise UniPELTError(f"no sentences to tag in {source!r}")
    return sentences


def bracketed(record: dict[str, Any]) -> str:
    """A sentence with its entities in brackets: ``[PER John Smith] met [LOC Paris] .``"""
    tokens = record["tokens"]
    starts = {e["start"]: e for e in record["entities"]}
    out, i = [], 0
    while i < len(tokens):
        if i in starts:
            entity = starts[i]
            out.append(f"[{entity['type']} {entity['text']}]")
            i = entity["end"]
        else:
            out.append(tokens[i])
            i += 1
    return " ".join(out)


def print_tagged(run: Any, source: str, fmt: str, encoding: str = "utf-8", tag_column: int = -1) -> int:
    """``unipelt predict`` for a tagging run: JSON lines with spans and scores, or bracketed sentences."""
    sentences = read_sentences(source, tag_column, encoding)
    for record in run.tag(sentences):
        print(json.dumps(record) if fmt == "jsonl" else bracketed(record))
    return 0
