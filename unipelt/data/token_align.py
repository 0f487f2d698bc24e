"""Words to sub-tokens for token classification: the first sub-token of each word carries the word's tag, the
others (and special tokens) carry -100, which the loss and the metrics ignore.

Words that the maximum length cuts off are counted, never dropped silently: :class:`AlignmentReport` says how many
words (in how many sentences) the model never sees; training logs it and writes it to metrics.json, and
``unipelt eval`` scores a cut word as tagged ``O``, so cutting costs recall instead of hiding errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unipelt.data.conll import TokenExample
from unipelt.errors import DataError, UniPELTError

if TYPE_CHECKING:
    import datasets

IGNORE = -100


@dataclass
class AlignmentReport:
    """What tokenising a set of sentences lost: words past the maximum length (and words with no sub-token)."""

    sentences: int = 0
    words: int = 0
    words_cut: int = 0
    sentences_cut: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "sentences": self.sentences,
            "words": self.words,
            "words_cut": self.words_cut,
            "sentences_cut": self.sentences_cut,
        }

    def message(self, split: str, max_length: int) -> str | None:
        if not self.words_cut:
            return None
        return (
            f"{split}: {self.words_cut} of {self.words} words in {self.sentences_cut} of {self.sentences} "
            f"sentences are past --max-length {max_length} and are not tagged (raise --max-length to keep them)"
        )


def pretokenized_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer, made able to take words already split (byte-level BPE needs ``add_prefix_space``)."""
    if not getattr(tokenizer, "is_fast", False):
        raise UniPELTError(
            f"token classification needs a fast tokenizer (it maps sub-tokens back to words); "
            f"{type(tokenizer).__name__} is not one"
        )
    if getattr(tokenizer, "add_prefix_space", None) is False:
        from transformers import AutoTokenizer

        fixed = AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_prefix_space=True)
        if fixed.pad_token is None:
            fixed.pad_token = tokenizer.pad_token
        return fixed
    return tokenizer


def word_positions(encoding: Any, index: int, n_words: int) -> list[int]:
    """For each word, the position of its first sub-token, or -1 when the word has none (cut, or empty)."""
    first = [-1] * n_words
    for position, word in enumerate(encoding.word_ids(index)):
        if word is not None and first[word] == -1:
            first[word] = position
    return first


def encode_words(
    examples: Sequence[TokenExample], tokenizer: Any, max_length: int
) -> tuple[Any, list[list[int]], AlignmentReport]:
    """(the tokenizer's batch encoding, first sub-token position of each word, what was cut)."""
    examples = list(examples)
    if not examples:
        raise DataError("No sentences to tokenise.")
    tokenizer = pretokenized_tokenizer(tokenizer)
    encoding = tokenizer(
        [list(e.tokens) for e in examples],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        padding=False,
    )
    report = AlignmentReport(sentences=len(examples))
    positions = []
    for i, example in enumerate(examples):
        first = word_positions(encoding, i, len(example.tokens))
        positions.append(first)
        report.words += len(first)
        last_seen = max((w for w, p in enumerate(first) if p >= 0), default=-1)
        cut = len(first) - 1 - last_seen  # words after the last one that kept a sub-token
        if cut:
            report.words_cut += cut
            report.sentences_cut += 1
    return encoding, positions, report


def tokenize_tagged(
    examples: Sequence[TokenExample], tokenizer: Any, max_length: int = 128
) -> tuple[datasets.Dataset, AlignmentReport]:
    """A ``datasets.Dataset`` (input_ids, attention_mask, token_type_ids, labels per sub-token) and the report.

    ``labels`` is left out when the sentences are untagged. Padding is left to the collator (labels are padded
    with -100 there).
    """
    import datasets

    encoding, positions, report = encode_words(examples, tokenizer, max_length)
    columns = {
        name: encoding[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoding
    }
    labelled = {e.tags is not None for e in examples}
    if labelled == {True, False}:
        raise UniPELTError("Some sentences have tags and some do not; tag all or none.")
    if labelled == {True}:
        labels = []
        for example, first, ids in zip(examples, positions, encoding["input_ids"]):
            row = [IGNORE] * len(ids)
            for tag, position in zip(example.tags, first):
                if position >= 0:
                    row[position] = tag
            labels.append(row)
        columns["labels"] = labels
    return datasets.Dataset.from_dict(columns), report
