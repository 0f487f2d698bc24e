"""Task data: GLUE in its TSV layout, the user's own CSV/TSV/JSONL tables, the K-shot protocol, tokenisation.

Everything here turns raw files into one small typed form (:class:`TaskData`, a list of :class:`Example`) so the
trainer never has to know where the data came from. Every data problem a user can fix is raised as
:class:`~unipelt.errors.DataError` naming the file, the line and what to do about it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from unipelt.errors import DataError, UniPELTError

if TYPE_CHECKING:
    import datasets

DATA_DIR_ENV = "UNIPELT_DATA_DIR"
"""Environment variable naming the folder that holds the GLUE task folders (CoLA/, RTE/, ...)."""

Label = int | float | None


@dataclass(frozen=True)
class Example:
    """One input: one or two texts and a class id (classification), a float (regression) or None (unlabelled)."""

    text_a: str
    text_b: str | None
    label: Label


@dataclass(frozen=True)
class TaskData:
    """Examples plus what the model head needs to know about their labels.

    ``label_list`` gives the name of each class id (``None`` for regression), so the head size and the
    ``id2label`` map come from the data and never from a guess.
    """

    examples: list[Example]
    label_list: list[str] | None
    regression: bool
    source: str

    @property
    def num_labels(self) -> int:
        """Size of the output head: 1 for regression, else the number of classes."""
        return 1 if self.regression else len(self.label_list or [])

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


# --------------------------------------------------------------------------------------------------------------
# GLUE task table
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out on disk and on the Hub, and how it is scored.

    ``labels`` are the label strings as written in the TSV, in class-id order; that order matches the Hugging Face
    ``glue`` ClassLabel ids, so local files and the Hub fallback give the same ids. ``label_names`` are readable
    names for the same ids. Both are ``None`` for STS-B, which is regression.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    label_names: tuple[str, ...] | None
    has_header: bool
    dev_file: str
    metrics: tuple[str, ...]
    main_metric: str
    hf_text_columns: tuple[str, ...]
    hf_dev_split: str = "validation"
    columns: tuple[str, ...] | None = None  # column names for a file without a header row
    train_file: str = "train.tsv"

    @property
    def regression(self) -> bool:
        return self.labels is None


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask(
            name="cola",
            folder="CoLA",
            text_columns=("sentence",),
            label_column="label",
            labels=("0", "1"),
            label_names=("unacceptable", "acceptable"),
            has_header=False,
            columns=("source", "label", "original_label", "sentence"),
            dev_file="dev.tsv",
            metrics=("matthews", "accuracy"),
            main_metric="matthews",
            hf_text_columns=("sentence",),
        ),
        GlueTask(
            name="sst2",
            folder="SST-2",
            text_columns=("sentence",),
            label_column="label",
            labels=("0", "1"),
            label_names=("negative", "positive"),
            has_header=True,
            dev_file="dev.tsv",
            metrics=("accuracy",),
            main_metric="accuracy",
            hf_text_columns=("sentence",),
        ),
        GlueTask(
            name="mrpc",
            folder="MRPC",
            text_columns=("#1 String", "#2 String"),
            label_column="Quality",
            labels=("0", "1"),
            label_names=("not_equivalent", "equivalent"),
            has_header=True,
            dev_file="dev.tsv",
            metrics=("f1", "accuracy"),
            main_metric="f1",
            hf_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            name="stsb",
            folder="STS-B",
            text_columns=("sentence1", "sentence2"),
            label_column="score",
            labels=None,
            label_names=None,
            has_header=True,
            dev_file="dev.tsv",
            metrics=("pearson", "spearman"),
            main_metric="spearman",
            hf_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            name="qqp",
            folder="QQP",
            text_columns=("question1", "question2"),
            label_column="is_duplicate",
            labels=("0", "1"),
            label_names=("not_duplicate", "duplicate"),
            has_header=True,
            dev_file="dev.tsv",
            metrics=("f1", "accuracy"),
            main_metric="f1",
            hf_text_columns=("question1", "question2"),
        ),
        GlueTask(
            name="mnli",
            folder="MNLI",
            text_columns=("sentence1", "sentence2"),
            label_column="gold_label",
            labels=("entailment", "neutral", "contradiction"),
            label_names=("entailment", "neutral", "contradiction"),
            has_header=True,
            dev_file="dev_matched.tsv",
            metrics=("accuracy",),
            main_metric="accuracy",
            hf_text_columns=("premise", "hypothesis"),
            hf_dev_split="validation_matched",
        ),
        GlueTask(
            name="qnli",
            folder="QNLI",
            text_columns=("question", "sentence"),
            label_column="label",
            labels=("entailment", "not_entailment"),
            label_names=("entailment", "not_entailment"),
            has_header=True,
            dev_file="dev.tsv",
            metrics=("accuracy",),
            main_metric="accuracy",
            hf_text_columns=("question", "sentence"),
        ),
        GlueTask(
            name="rte",
            folder="RTE",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            labels=("entailment", "not_entailment"),
            label_names=("entailment", "not_entailment"),
            has_header=True,
            dev_file="dev.tsv",
            metrics=("accuracy",),
            main_metric="accuracy",
            hf_text_columns=("sentence1", "sentence2"),
        ),
        GlueTask(
            name="wnli",
            folder="WNLI",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            labels=("0", "1"),
            label_names=("not_entailment", "entailment"),
            has_header=True,
            dev_file="dev.tsv",
            metrics=("accuracy",),
            main_metric="accuracy",
            hf_text_columns=("sentence1", "sentence2"),
        ),
    ]
}


def _normalise_task_name(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def glue_task(name: str) -> GlueTask:
    """Look up a GLUE task by name; folder spellings such as ``SST-2`` or ``STS-B`` are accepted too."""
    key = _normalise_task_name(name)
    if key not in GLUE_TASKS:
        raise UniPELTError(f"Unknown GLUE task {name!r}. Known tasks: {', '.join(GLUE_TASKS)}.")
    return GLUE_TASKS[key]


def is_glue_task(name: str) -> bool:
    """True when ``name`` names a GLUE task (in any accepted spelling)."""
    return _normalise_task_name(name) in GLUE_TASKS


# --------------------------------------------------------------------------------------------------------------
# Low-level readers shared by GLUE and user tables
# --------------------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """Read a whole file as UTF-8 (a BOM is dropped), turning decode errors into a DataError with a line number.

    Decoding the bytes ourselves, instead of iterating a text file, lets the message say on which line the
    bad byte sits: that is what a user needs to find a stray Latin-1 or Windows-1252 character.
    """
    if not path.exists():
        raise DataError(f"Data file {path} does not exist. Check the path (current folder: {Path.cwd()}).")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a data file. Pass the path of a .csv, .tsv or .jsonl file.")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: byte 0x{raw[err.start]:02x} is not valid UTF-8 (the file was read as UTF-8, "
            f"with or without a BOM). The file is probably in another encoding such as Latin-1 or Windows-1252: "
            f"re-save it as UTF-8 (e.g. 'CSV UTF-8' in Excel, or `iconv -f cp1252 -t utf-8 in > out`)."
        ) from None


def _lines(text: str) -> list[str]:
    """Split on newlines only: ``str.splitlines`` also breaks on form feeds and U+2028, which occur inside text."""
    return [line.removesuffix("\r") for line in text.split("\n")]


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
            f"{path}, line {line}: {len(fields)} fields, but the header has {len(header)}. A field probably "
            f"contains an unquoted separator, or a value is missing: fix or remove that line."
        )
    index = {name: i for i, name in enumerate(header)}
    return {name: fields[index[name]] for name in wanted}


def _check_columns(path: Path, present: Sequence[str], wanted: Sequence[str]) -> None:
    missing = [name for name in wanted if name not in present]
    if missing:
        raise DataError(
            f"{path}: no column named {', '.join(repr(m) for m in missing)}. Columns present: "
            f"{', '.join(repr(p) for p in present)}. Pass the right column names (they are case-sensitive)."
        )


# --------------------------------------------------------------------------------------------------------------
# GLUE
# --------------------------------------------------------------------------------------------------------------


def _find_task_folder(root: Path, task: GlueTask) -> Path | None:
    """Find the task's folder under ``root``; ``root`` may also be the task folder itself.

    Matching ignores case and dashes so ``sst2/`` and ``SST-2/`` both work.
    """
    wanted = {_normalise_task_name(task.folder), task.name}
    has_files = (root / task.train_file).exists() or (root / task.dev_file).exists()
    if _normalise_task_name(root.name) in wanted and has_files:
        return root
    exact = root / task.folder
    if exact.is_dir():
        return exact
    for child in sorted(root.iterdir()):
        if child.is_dir() and _normalise_task_name(child.name) in wanted:
            return child
    return None


def _present_tasks(root: Path) -> list[str]:
    present = []
    for task in GLUE_TASKS.values():
        folder = _find_task_folder(root, task)
        if folder is not None and folder != root:
            present.append(f"{task.name} ({folder.name}/)")
    return present


def _split_file(task: GlueTask, split: str) -> str:
    key = split.strip().lower()
    if key == "train":
        return task.train_file
    if key in ("dev", "validation"):
        return task.dev_file
    if key == "test":
        raise UniPELTError(
            "GLUE test files have no labels. Use split='dev' as the test set (the paper's protocol) and "
            "k_shot_split() on the training set for validation."
        )
    raise UniPELTError(f"Unknown split {split!r}: use 'train' or 'dev'.")


def _glue_label(task: GlueTask, value: str, path: Path, line: int) -> int | float:
    value = value.strip()
    if not value:
        raise DataError(
            f"{path}, line {line}: the label column {task.label_column!r} is empty. Fix that line."
        )
    if task.labels is None:
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{path}, line {line}: score {value!r} is not a number. Fix that line.") from None
    if value not in task.labels:
        raise DataError(
            f"{path}, line {line}: label {value!r} is not one of {', '.join(task.labels)}. Is this the right "
            f"file for {task.name}?"
        )
    return task.labels.index(value)


def _read_glue_file(task: GlueTask, path: Path) -> list[Example]:
    rows = _split_tsv(_read_text(path))
    if task.has_header:
        first = next(rows, None)
        if first is None:
            raise DataError(f"{path} is empty. Download the GLUE data again.")
        header = [name.strip() for name in first[1]]
    else:
        header = list(task.columns or ())
    wanted = [*task.text_columns, task.label_column]
    _check_columns(path, header, wanted)
    examples = []
    for line, fields in rows:
        record = _fields_to_record(path, line, header, fields, wanted)
        texts = [record[c] for c in task.text_columns]
        label = _glue_label(task, record[task.label_column], path, line)
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples:
        raise DataError(f"{path} has no data rows. Download the GLUE data again.")
    return examples


def _load_glue_from_hub(task: GlueTask, split: str) -> list[Example]:
    """Fallback when no local folder is given: the Hugging Face ``glue`` dataset (needs the network)."""
    hf_split = task.hf_dev_split if split != "train" else "train"
    try:
        import datasets

        rows = datasets.load_dataset("nyu-mll/glue", task.name, split=hf_split)
    except Exception as err:  # any failure means "no data": say how to give it locally
        raise UniPELTError(
            f"No local GLUE folder was given and the Hugging Face dataset glue/{task.name} could not be loaded "
            f"({type(err).__name__}: {err}). Pass --data-dir PATH (a folder holding {task.folder}/) or set "
            f"{DATA_DIR_ENV}=PATH."
        ) from err
    columns = task.hf_text_columns
    examples = []
    for row in rows:
        label = float(row["label"]) if task.regression else int(row["label"])
        text_b = row[columns[1]] if len(columns) > 1 else None
        examples.append(Example(row[columns[0]], text_b, label))
    return examples


def load_glue(task: str, data_dir: str | os.PathLike[str] | None = None, split: str = "train") -> TaskData:
    """Load one split of a GLUE task as :class:`TaskData`.

    ``data_dir`` (or the ``UNIPELT_DATA_DIR`` variable) is a folder in the GLUE layout (``RTE/train.tsv``...);
    the task folder itself is accepted too. With neither, the Hugging Face ``glue`` dataset is tried, which needs
    the network. A folder that was named but does not exist is an error rather than a silent download, because
    a typo should not turn into a network call.
    """
    spec = glue_task(task)
    file_name = _split_file(spec, split)
    split = "train" if file_name == spec.train_file else "dev"
    label_list = list(spec.label_names) if spec.label_names else None

    origin = "--data-dir"
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir, origin = os.environ[DATA_DIR_ENV], DATA_DIR_ENV
    if data_dir is None:
        examples = _load_glue_from_hub(spec, split)
        return TaskData(examples, label_list, spec.regression, f"hf:glue/{spec.name}/{split}")

    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"GLUE folder {root} (from {origin}) does not exist. Pass the folder that holds CoLA/, RTE/..."
        )
    folder = _find_task_folder(root, spec)
    if folder is None:
        present = _present_tasks(root)
        raise DataError(
            f"{root / spec.folder} does not exist: {root} has no folder for {spec.name}. Tasks present: "
            f"{', '.join(present) if present else 'none'}. Put the {spec.folder}/ folder there or pick another task."
        )
    path = folder / file_name
    if not path.exists():
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        raise DataError(
            f"{path} does not exist (files in {folder}: {', '.join(files) if files else 'none'}). "
            f"Add {file_name} from the GLUE download."
        )
    return TaskData(_read_glue_file(spec, path), label_list, spec.regression, str(path))


# --------------------------------------------------------------------------------------------------------------
# User tables
# --------------------------------------------------------------------------------------------------------------

_TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _jsonl_records(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, raw in enumerate(_lines(text), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {line}: not valid JSON ({err.msg} at column {err.colno}). Each line of a .jsonl "
                f'file must be one JSON object, e.g. {{"text": "...", "label": "pos"}}: fix or remove that line.'
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {line}: a JSON {type(record).__name__}, not an object. Each line must be one "
                f'object such as {{"text": "...", "label": "pos"}}.'
            )
        yield line, record


def _table_records(path: Path, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line, {column: value}) for the wanted columns of a CSV, TSV or JSONL file."""
    kind = _TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix or '(no extension)'!r}. Use a .csv, .tsv or .jsonl file."
        )
    text = _read_text(path)
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


def _label_key(value: Any) -> str:
    """Labels are compared as text, so 1 in JSON and "1" in a CSV are the same class."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _sorted_labels(labels: set[str]) -> list[str]:
    """Sort numerically when every label is an integer, so "10" comes after "2"; else sort as text."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def load_table(
    path: str | os.PathLike[str],
    text_columns: Sequence[str],
    label_column: str | None,
    label_list: Sequence[str] | None = None,
    regression: bool = False,
) -> TaskData:
    """Load the user's own CSV, TSV or JSONL file (chosen by extension) as :class:`TaskData`.

    CSV follows the usual quoting rules; TSV is split on tabs with no quoting, as GLUE files are. Class labels
    become ids in ``label_list`` order, or in sorted order of the labels found when no list is given; pass the
    list when scoring a file that may lack some classes, so ids match the ones used in training. With
    ``regression`` the labels must be numbers and stay floats. ``label_column=None`` loads unlabelled text.
    """
    file = Path(path).expanduser()
    if not 1 <= len(text_columns) <= 2:
        raise UniPELTError(f"Give one or two text columns, not {len(text_columns)} ({list(text_columns)}).")
    if regression and label_list is not None:
        raise UniPELTError("A label list makes no sense for regression: drop one of the two.")
    wanted = [*text_columns, *([label_column] if label_column is not None else [])]

    texts: list[tuple[str, str | None]] = []
    raw_labels: list[tuple[int, Any]] = []
    for line, record in _table_records(file, wanted):
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

    labels: list[Label]
    names: list[str] | None
    if label_column is None:
        labels, names = [None] * len(texts), (list(label_list) if label_list is not None else None)
    elif regression:
        labels, names = [_float_label(file, line, value) for line, value in raw_labels], None
    else:
        keys = [(line, _label_key(value)) for line, value in raw_labels]
        names = (
            [str(n) for n in label_list] if label_list is not None else _sorted_labels({k for _, k in keys})
        )
        if label_list is None and len(names) < 2:
            raise DataError(
                f"{file}: every row has the label {names[0]!r}; classification needs at least two classes. Pass the "
                f"full label list if this file is a subset, or use regression for numeric targets."
            )
        ids = {name: i for i, name in enumerate(names)}
        labels = []
        for line, key in keys:
            if key not in ids:
                raise DataError(
                    f"{file}, line {line}: label {key!r} is not in the label list ({', '.join(names)}). Fix the "
                    f"label or add it to the label list."
                )
            labels.append(ids[key])

    examples = [Example(a, b, y) for (a, b), y in zip(texts, labels)]
    return TaskData(examples, names, regression, str(file))


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


# --------------------------------------------------------------------------------------------------------------
# Low-resource protocol
# --------------------------------------------------------------------------------------------------------------

T = TypeVar("T")


def k_shot_split(
    train_examples: Sequence[T], k: int, seed: int, n_valid: int = 1000
) -> tuple[list[T], list[T]]:
    """Sample ``k`` training and up to ``n_valid`` validation examples, disjoint, from the training set.

    This is the paper's low-resource protocol: K examples (not K per class) are drawn at random, a separate
    validation set of ``min(n_valid, rest)`` comes from the remaining training data, and the GLUE dev set is used
    as the test set. The same seed always gives the same split; the original file order is kept inside each part.
    """
    n = len(train_examples)
    if k < 1:
        raise UniPELTError(f"k must be at least 1, not {k}.")
    if n_valid < 0:
        raise UniPELTError(f"n_valid must be 0 or more, not {n_valid}.")
    if k > n or (k == n and n_valid > 0):
        raise DataError(
            f"Asked for {k} training examples plus a validation set, but the training set has only {n}. "
            f"Use a smaller k."
        )
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n_valid, n - k)
    train_idx = np.sort(order[:k])
    valid_idx = np.sort(order[k : k + n_val])
    return [train_examples[i] for i in train_idx], [train_examples[i] for i in valid_idx]


# --------------------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------------------


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, max_length: int = 128) -> datasets.Dataset:
    """Tokenise examples into a ``datasets.Dataset`` with input_ids, attention_mask, (token_type_ids), labels.

    Nothing is padded here: the collator pads each batch to its own longest row, which is much faster than
    padding everything to ``max_length``. Pairs are truncated longest-first so both texts keep some tokens.
    ``labels`` is left out when the examples are unlabelled.
    """
    import datasets

    examples = list(examples)
    if not examples:
        raise DataError("No examples to tokenise.")
    pairs = {e.text_b is not None for e in examples}
    if len(pairs) > 1:
        raise UniPELTError("Some examples have a second text and some do not; give all or none a text_b.")
    labelled = {e.label is not None for e in examples}
    if len(labelled) > 1:
        raise UniPELTError("Some examples have a label and some do not; give all or none a label.")

    text_a = [e.text_a for e in examples]
    text_b = [e.text_b for e in examples] if pairs == {True} else None
    encoded = tokenizer(text_a, text_b, truncation=True, max_length=max_length, padding=False)
    columns = {
        name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded
    }
    if labelled == {True}:
        columns["labels"] = [e.label for e in examples]
    dataset = datasets.Dataset.from_dict(columns)
    if "labels" in columns:
        is_float = any(isinstance(e.label, float) for e in examples)
        dataset = dataset.cast_column("labels", datasets.Value("float32" if is_float else "int64"))
    return dataset
