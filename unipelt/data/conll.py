"""Tagged sentences for token classification (NER and other sequence labelling): CoNLL files, JSON lines and
Hub datasets, read into :class:`TokenData`.

- CoNLL: one word per line with its columns split on tabs or spaces, a blank line between sentences,
  ``-DOCSTART-`` lines skipped; the tag is in one column (``tag_column``, default the last). Every line of a
  file must have the same number of columns (else a DataError names the file and line).
- JSON lines: ``{"tokens": [...], "tags": [...]}``, one sentence per line (``tags`` may be left out for
  unlabelled text to tag).
- The Hub (e.g. ``conll2003``) through ``datasets``: a ``tokens`` column and a ClassLabel tag column.

Tag names become ids in training order: ``O`` first, then by entity type and B/I/E/S prefix; an evaluation file
with tags the training data never had is refused with the unseen tags named. A sentence with no words is skipped
and counted (``TokenData.skipped_empty``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipelt.data.examples import TaskData
from unipelt.data.files import JSONL_SUFFIXES, _jsonl_records, _lines, _read_text, first_jsonl_record
from unipelt.errors import DataError, UniPELTError, plural

CONLL_SUFFIXES = (".conll", ".conllu", ".iob", ".iob1", ".iob2", ".bio", ".bioes", ".iobes", ".txt", ".ner")
TAG_PATTERN = re.compile(r"^(O|[BIESLU]-\S+|\S+-[BIESLU])$")
"""What a tag looks like (O, B-PER, I-LOC, S-MISC..., or PER-B): tells a CoNLL .tsv from a table."""


@dataclass(frozen=True)
class TokenExample:
    """One sentence: its words and, when labelled, one tag id per word."""

    tokens: tuple[str, ...]
    tags: tuple[int, ...] | None
    line: int = 0  # where the sentence starts in its file (0 when unknown), for messages

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True)
class TokenData(TaskData):
    """Tagged sentences (``examples`` are :class:`TokenExample`), the tag names, and what was skipped."""

    skipped_empty: int = 0


def tag_order(tags: set[str]) -> list[str]:
    """Tag names in id order: ``O`` first, then by entity type, then by prefix (B before I, E, S)."""

    def key(tag: str) -> tuple[int, str, str]:
        if tag == "O":
            return (0, "", "")
        prefix, sep, kind = tag.partition("-")
        if sep and len(prefix) == 1:
            return (1, kind, prefix)
        return (1, tag, "")

    return sorted(tags, key=key)


def is_token_file(path: str | os.PathLike[str], encoding: str = "utf-8") -> bool:
    """Whether a data file holds tagged words rather than one labelled text per row (for ``task_type=auto``).

    CoNLL extensions and JSON lines whose first record has a ``tokens`` key are; so is a .tsv/.csv whose first
    line ends in a tag (``O``, ``B-PER``...), which a table's header line never does.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return True
    if not file.is_file():
        return False
    if suffix in JSONL_SUFFIXES:
        record = first_jsonl_record(file, encoding)
        return record is not None and "tokens" in record
    if suffix in (".tsv", ".csv", ".tab"):
        for raw in _lines(_read_text(file, encoding)):
            if raw.strip():
                fields = raw.split("," if suffix == ".csv" else None)
                return len(fields) >= 2 and bool(TAG_PATTERN.match(fields[-1].strip()))
    return False


def _ids(
    path: str, sentences: list[tuple[int, list[str], list[str] | None]], label_list: Sequence[str] | None
) -> tuple[list[TokenExample], list[str] | None]:
    """Sentences with tag names turned into ids; unseen tags are refused all at once, by name."""
    labelled = [tags for _, _, tags in sentences if tags is not None]
    if not labelled:
        names = list(label_list) if label_list is not None else None
        return [TokenExample(tuple(tokens), None, line) for line, tokens, _ in sentences], names
    found = {tag for tags in labelled for tag in tags}
    if label_list is None:
        names = tag_order(found)
    else:
        names = [str(n) for n in label_list]
        unseen = sorted(found - set(names))
        if unseen:
            raise DataError(
                f"{path}: tags not seen in training: {', '.join(unseen)} (training tags: {', '.join(names)}). "
                f"Fix the tags or train on data that has them."
            )
    index = {name: i for i, name in enumerate(names)}
    examples = [
        TokenExample(tuple(tokens), None if tags is None else tuple(index[t] for t in tags), line)
        for line, tokens, tags in sentences
    ]
    return examples, names


def read_conll(
    path: str | os.PathLike[str],
    tag_column: int = -1,
    label_list: Sequence[str] | None = None,
    labelled: bool = True,
    encoding: str = "utf-8",
) -> TokenData:
    """A CoNLL-style file: word and tag columns split on tabs (when the line has any) or runs of spaces."""
    file = Path(path).expanduser()
    text = _read_text(file, encoding)
    sentences: list[tuple[int, list[str], list[str] | None]] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    width: tuple[int, int] | None = None  # (columns, first line with that many)

    def close() -> None:
        if tokens:
            sentences.append((start, list(tokens), list(tags) if labelled else None))
        tokens.clear()
        tags.clear()

    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if not line:
            close()
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if fields[0] == "-DOCSTART-":
            close()
            continue
        if width is None:
            width = (len(fields), number)
            if labelled and len(fields) < 2:
                raise DataError(
                    f"{file}, line {number}: one column, but a tagged CoNLL line needs the word and its tag "
                    f"(separated by a tab or spaces)."
                )
            if labelled and not -len(fields) <= tag_column < len(fields):
                raise DataError(
                    f"{file}, line {number}: {plural(len(fields), 'column')}, so tag column {tag_column} does not exist. "
                    f"Pass --tag-column between 0 and {len(fields) - 1} (or -1 for the last)."
                )
        elif len(fields) != width[0]:
            raise DataError(
                f"{file}, line {number}: {plural(len(fields), 'column')}, but line {width[1]} has {width[0]}. Every "
                f"word line needs the same columns (a word with a space in it, or a missing tag?): fix that line."
            )
        if not tokens:
            start = number
        tokens.append(fields[0])
        if labelled:
            tags.append(fields[tag_column])
    close()
    if not sentences:
        raise DataError(f"{file} holds no sentences: give one word and tag per line, blank lines between.")
    examples, names = _ids(str(file), sentences, label_list)
    return TokenData(examples, names, False, str(file))


def read_token_jsonl(
    path: str | os.PathLike[str],
    label_list: Sequence[str] | None = None,
    labelled: bool = True,
    encoding: str = "utf-8",
) -> TokenData:
    """JSON lines ``{"tokens": [...], "tags": [...]}``; a sentence with no tokens is skipped and counted."""
    file = Path(path).expanduser()
    sentences: list[tuple[int, list[str], list[str] | None]] = []
    skipped = 0
    for number, record in _jsonl_records(
        _read_text(file, encoding), file, '{"tokens": [...], "tags": [...]}'
    ):
        if not isinstance(record.get("tokens"), list):
            raise DataError(
                f'{file}, line {number}: no "tokens" list. Each line must be {{"tokens": [...], ...}}.'
            )
        tokens = [str(t) for t in record["tokens"]]
        tags = record.get("tags", record.get("ner_tags"))
        if labelled:
            if not isinstance(tags, list):
                raise DataError(f'{file}, line {number}: no "tags" list beside "tokens".')
            if len(tags) != len(tokens):
                raise DataError(f"{file}, line {number}: {len(tokens)} tokens but {len(tags)} tags.")
        if not tokens or not any(t.strip() for t in tokens):
            skipped += 1
            continue
        sentences.append((number, tokens, [str(t) for t in tags] if labelled else None))
    if not sentences:
        raise DataError(f"{file} holds no sentences with tokens.")
    examples, names = _ids(str(file), sentences, label_list)
    return TokenData(examples, names, False, str(file), skipped_empty=skipped)


def load_tokens(
    path: str | os.PathLike[str],
    tag_column: int = -1,
    label_list: Sequence[str] | None = None,
    labelled: bool = True,
    encoding: str = "utf-8",
) -> TokenData:
    """A token-classification file, JSON lines or CoNLL by its extension, in ``encoding`` (``--encoding``)."""
    if Path(path).suffix.lower() in JSONL_SUFFIXES:
        return read_token_jsonl(path, label_list, labelled, encoding)
    return read_conll(path, tag_column, label_list, labelled, encoding)


def load_hub_tokens(name: str, split: str, label_list: Sequence[str] | None = None) -> TokenData:
    """A split of a tagged Hub dataset (``conll2003``: ``tokens`` and ``ner_tags``) through ``datasets``."""
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as error:  # noqa: BLE001 -- offline, unknown name, missing split: all one message
        raise UniPELTError(f"cannot load the {split} split of {name!r} from the Hub: {error}") from error
    column = next((c for c in ("ner_tags", "tags", "pos_tags") if c in data.column_names), None)
    if "tokens" not in data.column_names or column is None:
        raise UniPELTError(f"{name!r} has no tokens and ner_tags/tags columns: {data.column_names}")
    names = _feature_names(data.features[column])
    sentences = []
    skipped = 0
    for number, row in enumerate(data, start=1):
        if not row["tokens"]:
            skipped += 1
            continue
        tags = [names[t] if names is not None else str(t) for t in row[column]]
        sentences.append((number, [str(t) for t in row["tokens"]], tags))
    if label_list is None and names is not None:
        label_list = names  # keep the dataset's own id order
    examples, tag_names = _ids(f"{name}[{split}]", sentences, label_list)
    return TokenData(examples, tag_names, False, f"{name}[{split}]", skipped_empty=skipped)


def _feature_names(feature: Any) -> list[str] | None:
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names else None
