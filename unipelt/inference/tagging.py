"""Tagging words with a token-classification run, re-exported from :mod:`unipelt.running.tagging` (and
:func:`read_sentences` from :mod:`unipelt.data.inputs`) for the serving modules."""

from unipelt.data.inputs import read_sentences
from unipelt.running.tagging import (
    as_sentence,
    bracketed,
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
    "read_sentences",
    "tag_sentences",
    "word_probabilities",
]
