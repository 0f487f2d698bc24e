"""Low-level text-file readers shared by the GLUE reader and the user-table reader.

They keep the line number of every row, because each data problem a user can fix is raised as
:class:`~unipelt.errors.DataError` naming the file and the line: a bad byte, a broken CSV quote, a row with the
wrong number of fields, a missing column.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from unipelt.errors import DataError, plural

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
"""Extensions read as JSON lines (one object per line)."""

STDIN = "standard input"


def check_encoding(name: str) -> str:
    """The canonical name of a text encoding (``--encoding``), or a DataError for one Python does not know."""
    try:
        return codecs.lookup(name).name
    except (LookupError, TypeError):
        raise DataError(
            f"unknown text encoding {name!r}; use a name such as utf-8, cp1252 (Excel on Windows), latin-1 or "
            "utf-16"
        ) from None


def decode_text(raw: bytes, source: str, encoding: str = "utf-8") -> str:
    """``raw`` decoded in ``encoding`` (UTF-8: a BOM is dropped), or a DataError naming ``source`` (a path, or
    "standard input") and the line of the first bad byte, with the ``--encoding`` hint.

    Decoding the bytes ourselves, instead of iterating a text stream, lets the message say on which line the
    bad byte sits: that is what a user needs to find a stray Latin-1 or Windows-1252 character. Every input
    (data files, JSON lines, predict inputs, standard input) goes through here, so all give the same message.
    """
    codec = check_encoding(encoding)
    try:
        return raw.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        if codec != "utf-8":
            raise DataError(
                f"{source}, line {line}: byte 0x{raw[err.start]:02x} is not valid {codec} (--encoding {encoding}). "
                f"Give the encoding the text was saved in."
            ) from None
        raise DataError(
            f"{source}, line {line}: byte 0x{raw[err.start]:02x} is not valid UTF-8 (the text was read as UTF-8, "
            f"with or without a BOM). It is probably in another encoding such as Latin-1 or Windows-1252: "
            f"pass --encoding cp1252 (or the text's encoding), or re-save it as UTF-8 (e.g. 'CSV UTF-8' in Excel)."
        ) from None


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """Read a whole file in ``encoding`` with :func:`decode_text`'s rules; a missing file or a folder is a
    DataError too."""
    if not path.exists():
        raise DataError(f"Data file {path} does not exist. Check the path (current folder: {Path.cwd()}).")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a data file. Pass the path of a .csv, .tsv or .jsonl file.")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err})") from None
    return decode_text(raw, str(path), encoding)


def read_source(source: str | Path, encoding: str = "utf-8") -> tuple[str, str]:
    """(name for messages, text) of an input given as a path or ``-`` (standard input, read as bytes and
    decoded by the same rules as a file)."""
    if str(source) == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # replaced by a text stream (an embedding program, a test): already decoded
            return STDIN, sys.stdin.read()
        return STDIN, decode_text(stream.read(), STDIN, encoding)
    return str(source), _read_text(Path(source), encoding)


def input_lines(source: str | Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a plain-text input (a file or ``-``), split on line breaks only."""
    return _lines(read_source(source, encoding)[1])


def _lines(text: str) -> list[str]:
    """Split on newlines only: ``str.splitlines`` also breaks on form feeds and U+2028, which occur inside text."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def json_lines(text: str, path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ("FILE:LINE", record) for each non-blank line of a JSON-lines text; a malformed line is one error
    naming its file and line."""
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg})") from None


def _split_tsv(text: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for each non-blank line, splitting on tabs with no quote handling.

    GLUE files hold unbalanced ``"`` characters, so any CSV quoting rule would merge lines; a plain split on
    tabs is what the official GLUE readers do.
    """
    for number, line in enumerate(_lines(text), start=1):
        if line.strip():
            yield number, line.split("\t")


def _split_csv(text: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for each non-blank CSV record; quoted fields may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(
                f"{path}, line {reader.line_num}: not valid CSV ({err}). Put fields that contain commas, quotes "
                f'or line breaks in double quotes and double any quote inside them ("").'
            ) from None
        if any(field.strip() for field in row):
            yield reader.line_num, row


def _fields_to_record(
    path: Path, line: int, header: list[str], fields: list[str], wanted: Sequence[str]
) -> dict[str, str]:
    """Map one row's fields to the wanted header names, refusing rows whose field count does not fit."""
    extra = fields[len(header) :]
    if len(fields) < len(header) or any(f.strip() for f in extra):
        raise DataError(
            f"{path}, line {line}: {plural(len(fields), 'field')}, but the header has {len(header)}. A field probably "
            f"contains an unquoted separator, or a value is missing: fix or remove that line."
        )
    index = {name: i for i, name in enumerate(header)}
    return {name: fields[index[name]] for name in wanted}


def _check_columns(path: Path, present: Sequence[str], wanted: Sequence[str]) -> None:
    """Refuse a header that lacks a wanted column or names one twice (which of the two is meant is a guess)."""
    for name in dict.fromkeys(wanted):
        places = [i + 1 for i, column in enumerate(present) if column == name]
        if len(places) > 1:
            raise DataError(
                f"{path}: the header names column {name!r} {len(places)} times (columns "
                f"{', '.join(map(str, places))}); rename or remove all but the one to use"
            )
    missing = [name for name in wanted if name not in present]
    if missing:
        raise DataError(
            f"{path}: no column named {', '.join(repr(m) for m in missing)}. Columns present: "
            f"{', '.join(repr(p) for p in present)}. Pass the right column names (they are case-sensitive)."
        )


class _DuplicateKey(ValueError):
    """A JSON object names a key twice (json keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKey(key)
        record[key] = value
    return record


def _jsonl_records(
    text: str, path: Path, example: str = '{"text": "...", "label": "pos"}'
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file; one-line errors naming file and line."""
    for line, raw in enumerate(_lines(text), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw, object_pairs_hook=_unique_keys)
        except _DuplicateKey as err:
            raise DataError(
                f"{path}, line {line}: key {err.args[0]!r} appears twice in one object; keep only the one to use"
            ) from None
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {line}: not valid JSON ({err.msg} at column {err.colno}). Each line of a .jsonl "
                f"file must be one JSON object, e.g. {example}: fix or remove that line."
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {line}: a JSON {type(record).__name__}, not an object. Each line must be one "
                f"object such as {example}."
            )
        yield line, record


def first_jsonl_record(path: str | Path, encoding: str = "utf-8") -> dict[str, Any] | None:
    """The first non-blank line of a JSON-lines file as an object, or None (not a file, not JSON, not an
    object). Used to guess what a file holds for ``task_type=auto``; reading it properly reports errors."""
    file = Path(path)
    if not file.is_file():
        return None
    try:
        text = _read_text(file, encoding)
    except DataError:
        return None
    for raw in _lines(text):
        if raw.strip():
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                return None
            return record if isinstance(record, dict) else None
    return None
