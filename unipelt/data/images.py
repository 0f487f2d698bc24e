"""Image classification data: a folder per class, an image folder with a metadata file, or a table of paths.

Three layouts, all read into :class:`ImageExample` rows of a :class:`~unipelt.data.examples.TaskData`, so the
K-shot split, class weights and oversampling work on images as on texts:

- ``train/cat/1.png, train/dog/2.jpg, ...``: one sub-folder per class, the folder name is the label (the
  layout of the Hugging Face ``imagefolder`` builder);
- a folder with ``metadata.csv`` or ``metadata.jsonl`` holding ``file_name`` and a label column (the
  ``imagefolder`` metadata convention);
- a ``.csv``/``.tsv``/``.jsonl`` file with an image-path column and a label column; relative paths are read
  from the file's folder.

Pixels are made by the model folder's own image processor (``preprocessor_config.json``); a model folder without
one gets a plain resize to the model's ``image_size`` and a normalisation to [-1, 1], with a warning.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipelt.data.examples import TaskData
from unipelt.errors import DataError

log = logging.getLogger("unipelt")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
METADATA_FILES = ("metadata.csv", "metadata.jsonl")


@dataclass(frozen=True)
class ImageExample:
    """One image: its file and a class id (None when unlabelled)."""

    path: str
    label: int | None


def is_image_source(path: str | Path) -> bool:
    """Whether ``path`` is image data: a folder of class folders or with a metadata file holding images."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    if any((folder / name).is_file() for name in METADATA_FILES):
        return True
    return any(
        child.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in child.iterdir())
        for child in folder.iterdir()
    )


def load_images(
    path: str | Path,
    labels: list[str] | None = None,
    path_column: str = "image",
    label_column: str = "label",
) -> TaskData:
    """Read one split; ``labels`` (the training split's label list) fixes the class ids of other splits."""
    source = Path(path)
    if not source.exists():
        raise DataError(f"{source}: no such image folder or file")
    if source.is_dir():
        metadata = next((source / n for n in METADATA_FILES if (source / n).is_file()), None)
        if metadata is None:
            rows = _class_folders(source)
        else:
            rows = _table(metadata, "file_name", label_column)
    else:
        rows = _table(source, path_column, label_column)
    if not rows:
        raise DataError(f"{source}: no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    names = (
        labels if labels is not None else sorted({name for _, name in rows if name is not None}, key=_order)
    )
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({name for _, name in rows if name is not None and name not in index})
    if unknown:
        raise DataError(f"{source}: labels not in the training data: {', '.join(unknown[:10])}")
    examples = [ImageExample(str(p), None if name is None else index[name]) for p, name in rows]
    return TaskData(examples=examples, label_list=list(names), regression=False, source=str(source))


def _order(name: str) -> tuple[int, float | str]:
    """Numeric labels in numeric order (2 before 10), then the others alphabetically."""
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


def _class_folders(folder: Path) -> list[tuple[Path, str]]:
    rows = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        for image in sorted(child.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                rows.append((image, child.name))
    return rows


def _table(file: Path, path_column: str, label_column: str) -> list[tuple[Path, str | None]]:
    """Rows of a CSV/TSV/JSON-lines file: (image path, label name or None)."""
    if file.suffix == ".jsonl":
        records = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{file}:{number}: not valid JSON ({error.msg})") from error
    else:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            records = list(csv.DictReader(handle, delimiter="\t" if file.suffix == ".tsv" else ","))
    rows = []
    for number, record in enumerate(records, 1):
        if path_column not in record:
            raise DataError(f"{file}: no column {path_column!r} (columns: {', '.join(record)})")
        image = Path(str(record[path_column]))
        image = image if image.is_absolute() else file.parent / image
        if not image.is_file():
            raise DataError(f"{file}: row {number}: image {image} does not exist")
        label = record.get(label_column)
        rows.append((image, None if label in (None, "") else str(label)))
    return rows


def load_image_processor(model_path: str | Path) -> Any:
    """The model folder's image processor, or a plain resize + [-1, 1] normalisation with a warning."""
    from transformers import AutoConfig, AutoImageProcessor, ViTImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "requires torchvision ... falling back to the PIL backend"
        try:
            return AutoImageProcessor.from_pretrained(model_path)
        except (OSError, ValueError):
            size = int(getattr(AutoConfig.from_pretrained(model_path), "image_size", 224))
            log.warning(
                "%s has no image processor (preprocessor_config.json): resizing images to %d x %d and "
                "normalising them to [-1, 1]",
                model_path,
                size,
                size,
            )
            return ViTImageProcessor(
                size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
            )


def read_image(path: str | Path) -> Any:
    """An RGB PIL image; a file that is not an image is a one-line DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error
