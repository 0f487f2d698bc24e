"""The user's own data: CSV, TSV or JSONL files with named text and label columns.

Labels become class ids in a stated or sorted order, or stay floats for regression; every problem is a
DataError naming the line. Class labels are compared by meaning, the same way for every format: numbers that are
equal are one class whatever their spelling (``1``, ``"1"``, ``1.0``, ``"1.0"``, ``"+1"`` are class ``1``), and
numeric labels sort by value (``"10"`` after ``"2"``). A header or JSON object that names a wanted column twice
is refused, since which of the two is meant would be a guess.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from unipelt.data.examples import Example, Label, TaskData
from unipelt.data.files import (
    _check_columns,
    _fields_to_record,
    _jsonl_records,
    _read_text,
    _split_csv,
    _split_tsv,
)
from unipelt.errors import DataError, UniPELTError

_TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _table_records(
    path: Path, wanted: Sequence[str], encoding: str = "utf-8"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line, {column: value}) for the wanted columns of a CSV, TSV or JSONL file."""
    kind = _TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix or '(no extension)'!r}. Use a .csv, .tsv or .jsonl file."
        )
    text = _read_text(path, encoding)
    if not text.strip():
        raise DataError(f"{path} is empty. Give a file with a header line and at least one row.")

    if kind == "jsonl":
        # Columns are checked on the first record: JSONL has no header, and a key missing later is per line.
        for line, record in _jsonl_records(text, path):
            missing = [name for name in wanted if name not in record]
            if missing:
                raise DataError(
                    f"{path}, line {line}: no key {', '.join(repr(m) for m in missing)}. Keys present: "
                    f"{', '.join(repr(k) for k in record)}. Pass the right column names or fix that line."
                )
            yield line, {name: record[name] for name in wanted}
        return

    rows = _split_csv(text, path) if kind == "csv" else _split_tsv(text)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path} is empty. Give a file with a header line and at least one row.")
    header = [name.strip() for name in first[1]]
    _check_columns(path, header, wanted)
    for line, fields in rows:
        yield line, _fields_to_record(path, line, header, fields, wanted)


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def label_name(value: Any) -> str:
    """The class name of a label value as read from any format: numbers by value (``1.0``, ``"01"`` and ``1``
    are ``"1"``; ``"0.50"`` is ``"0.5"``), booleans as ``true``/``false``, other text stripped of blanks."""
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, float) else str(value).strip()
    if not _NUMBER.fullmatch(text):
        return text
    number = Decimal(text)
    if number.is_zero():
        return "0"
    number = number.normalize()
    return format(number, "f") if -30 <= number.adjusted() <= 30 else str(number)


def _spelling(value: Any) -> str:
    return str(value).strip() if isinstance(value, str) else str(value)


def _sorted_labels(labels: set[str]) -> list[str]:
    """Sort by value when every label is a number, so "10" comes after "2"; else sort as text."""
    if all(_NUMBER.fullmatch(label) for label in labels):
        return sorted(labels, key=Decimal)
    return sorted(labels)


def load_table(
    path: str | os.PathLike[str],
    text_columns: Sequence[str],
    label_column: str | None,
    label_list: Sequence[str] | None = None,
    regression: bool = False,
    encoding: str = "utf-8",
) -> TaskData:
    """Load the user's own CSV, TSV or JSONL file (chosen by extension) as :class:`TaskData`.

    CSV follows the usual quoting rules; TSV is split on tabs with no quoting, as GLUE files are. Class labels
    become ids in ``label_list`` order, or in sorted order of the labels found when no list is given; pass the
    list when scoring a file that may lack some classes, so ids match the ones used in training. With
    ``regression`` the labels must be numbers and stay floats. ``label_column=None`` loads unlabelled text.
    ``encoding`` is the file's text encoding (UTF-8 by default, e.g. ``cp1252`` for an Excel CSV).
    """
    file = Path(path).expanduser()
    if not 1 <= len(text_columns) <= 2:
        raise UniPELTError(f"Give one or two text columns, not {len(text_columns)} ({list(text_columns)}).")
    if regression and label_list is not None:
        raise UniPELTError("A label list makes no sense for regression: drop one of the two.")
    texts, raw_labels = _read_rows(file, text_columns, label_column, encoding)
    labels: list[Label]
    names: list[str] | None
    spellings: dict[str, list[str]] = {}
    if label_column is None:
        labels, names = [None] * len(texts), (list(label_list) if label_list is not None else None)
    elif regression:
        labels, names = [_float_label(file, line, value) for line, value in raw_labels], None
    else:
        labels, names, spellings = _class_labels(file, raw_labels, label_list)
    examples = [Example(a, b, y) for (a, b), y in zip(texts, labels)]
    return TaskData(examples, names, regression, str(file), {k: v for k, v in spellings.items() if v})


def _read_rows(
    file: Path, text_columns: Sequence[str], label_column: str | None, encoding: str
) -> tuple[list[tuple[str, str | None]], list[tuple[int, Any]]]:
    """(the text or text pair of every row, (line, raw label) of every row when there is a label column)."""
    wanted = [*text_columns, *([label_column] if label_column is not None else [])]
    texts: list[tuple[str, str | None]] = []
    raw_labels: list[tuple[int, Any]] = []
    for line, record in _table_records(file, wanted, encoding):
        pair = []
        for column in text_columns:
            value = record[column]
            if value is None:
                raise DataError(
                    f"{file}, line {line}: text column {column!r} is null. Fill it in or remove the line."
                )
            pair.append(value if isinstance(value, str) else str(value))
        texts.append((pair[0], pair[1] if len(pair) > 1 else None))
        if label_column is not None:
            value = record[label_column]
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(
                    f"{file}, line {line}: no label in column {label_column!r}. Fill in the label or remove the line."
                )
            raw_labels.append((line, value))
    if not texts:
        raise DataError(f"{file} has a header but no data rows. Add at least one row.")
    return texts, raw_labels


def _class_labels(
    file: Path, raw_labels: list[tuple[int, Any]], label_list: Sequence[str] | None
) -> tuple[list[Label], list[str], dict[str, list[str]]]:
    """(class ids, class names, the other spellings of each name) of raw labels read by value: ids in
    ``label_list`` order, or in sorted order of the labels found."""
    keys = [(line, label_name(value)) for line, value in raw_labels]
    names = [str(n) for n in label_list] if label_list is not None else _sorted_labels({k for _, k in keys})
    spellings: dict[str, list[str]] = {}
    for (_, value), (_, key) in zip(raw_labels, keys):
        if _spelling(value) != key and _spelling(value) not in spellings.setdefault(key, []):
            spellings[key].append(_spelling(value))
    if label_list is None and len(names) < 2:
        raise DataError(
            f"{file}: every row has the label {names[0]!r}; classification needs at least two classes. Pass the "
            f"full label list if this file is a subset, or use regression for numeric targets."
        )
    ids = {label_name(name): i for i, name in enumerate(names)}
    labels: list[Label] = []
    for line, key in keys:
        if key not in ids:
            raise DataError(
                f"{file}, line {line}: label {key!r} is not in the label list ({', '.join(names)}). Fix the "
                f"label or add it to the label list."
            )
        labels.append(ids[key])
    return labels, names, spellings


def _float_label(path: Path, line: int, value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{path}, line {line}: label {value!r} is not a number, but regression needs numeric labels. Fix "
            f"the label, or load the file as classification."
        ) from None
    if not np.isfinite(number):
        raise DataError(f"{path}, line {line}: label {value!r} is not a finite number. Fix that line.")
    return number
