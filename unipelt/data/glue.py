"""GLUE: the task table (layout on disk and on the Hub, label order, metrics) and the reader of its TSV files.

The table is the single description of each task: the reader, the Hub fallback and :mod:`unipelt.metrics` all
read it, so label ids and metric choices can never disagree between training and scoring.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from unipelt.data.examples import Example, TaskData
from unipelt.data.files import _check_columns, _fields_to_record, _read_text, _split_tsv
from unipelt.errors import DataError, UniPELTError

DATA_DIR_ENV = "UNIPELT_DATA_DIR"
"""Environment variable naming the folder that holds the GLUE task folders (CoLA/, RTE/, ...)."""

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
# GLUE files, and the Hub fallback
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
