"""Image classification: one label per image, on a Vision Transformer (ViT, DeiT).

The data are image folders or tables of image paths (:mod:`unipelt.data.images`); the "tokenizer" of an image
run is the model folder's image processor, saved in the run folder like a tokenizer and used the same way by
``eval``, ``predict``, ``serve`` and ``export``.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unipelt.data.images import (
    IMAGE_SUFFIXES,
    ImageExample,
    is_image_source,
    load_image_processor,
    load_images,
    read_image,
)
from unipelt.errors import DataError, InputError
from unipelt.kinds.base import Splits, TaskKind, class_answer, own_splits
from unipelt.kinds.baseline import majority_class_scores
from unipelt.kinds.serving import Row
from unipelt.metrics import compute_task_metrics

if TYPE_CHECKING:
    from unipelt.training.config import TrainConfig


class ImageDataset:
    """Images read and turned into pixels when a batch asks for them (a folder of images need not fit in RAM)."""

    def __init__(self, examples: list[ImageExample]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        item: dict[str, Any] = {"image": example.path}
        if example.label is not None:
            item["labels"] = example.label
        return item


class ImageCollator:
    """Reads a batch's images and makes ``pixel_values`` with the run's image processor."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        images = [
            item["image"] if not isinstance(item["image"], str) else read_image(item["image"])
            for item in items
        ]
        batch = {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}
        if all("labels" in item for item in items):
            batch["labels"] = torch.tensor([item["labels"] for item in items])
        return batch


class ImageClassification(TaskKind):
    name = "image-classification"
    head = "image-classification"
    onnx_export = True
    metrics_as = "classification"  # labels.json's metric_kind: scored exactly as text classification
    serves = "predict"

    def detect(self, config: TrainConfig) -> bool:
        return config.task is None and config.train_file is not None and is_image_source(config.train_file)

    def load_preprocessor(self, path: str | Path, local: bool = False) -> Any:
        return load_image_processor(path)

    def read_file(
        self, path: str, config: TrainConfig, labels: list[str] | None, encoding: str | None
    ) -> Any:
        return load_images(path, labels, **_columns(config))

    def base_model(self, config: TrainConfig, splits: Splits, tokenizer: Any) -> Any:
        from unipelt.backbones import load_base_model

        return load_base_model(config.model, self.head, labels=splits.labels)

    def prediction_inputs(
        self, source: str, columns: list[str], encoding: str, task: str | None, tag_column: int = -1
    ) -> list[Any]:
        """Image files: a folder (every image in it and its sub-folders), or a file or stdin of paths."""
        import sys

        root = Path(source)
        if source != "-" and root.is_dir():
            paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source != "-" and root.suffix.lower() in IMAGE_SUFFIXES:
            paths = [source]
        else:
            text = sys.stdin.read() if source == "-" else root.read_text(encoding=encoding)
            paths = [line.strip() for line in text.splitlines() if line.strip()]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise DataError(f"{len(missing)} image file(s) not found, e.g. {missing[0]}")
        if not paths:
            raise DataError(f"{source}: no image files to predict")
        return [ImageExample(path, None) for path in paths]

    def prediction_batches(
        self, examples: list[Any], tokenizer: Any, max_length: int
    ) -> tuple[list[Any], Any]:
        return [{"image": e.path} for e in examples], ImageCollator(tokenizer)

    def input_record(self, example: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
        return {"image": example.path}

    def read_splits(self, config: TrainConfig) -> Splits:
        if config.train_file is None:
            raise DataError(
                "an image-classification run needs --train (a folder of class folders or a table)"
            )
        columns = _columns(config)
        train = load_images(config.train_file, **columns)

        def split(path: str | None) -> Any:
            return None if path is None else load_images(path, train.label_list, **columns)

        valid, test = split(config.valid_file), split(config.test_file)
        return own_splits(self, config, train, valid, test)

    def datasets(
        self, splits: Splits, tokenizer: Any, config: TrainConfig, evaluate_test: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        datasets = {
            name: ImageDataset(data.examples)
            for name, data in (("train", splits.train), ("valid", splits.valid), ("test", splits.test))
            if data is not None and (name != "test" or evaluate_test)
        }
        return datasets, {}

    def collator(self, tokenizer: Any) -> Any:
        return ImageCollator(tokenizer)

    def main_metric(self, splits: Splits) -> str:
        return "accuracy"

    def scores(self, splits: Splits, predictions: Any, labels: Any) -> dict[str, float]:
        return compute_task_metrics("classification", predictions, labels)

    def compute_metrics(self, splits: Splits) -> Any:
        def compute(prediction: Any) -> dict[str, float]:
            return compute_task_metrics("classification", prediction.predictions, prediction.label_ids)

        return compute

    def result_extra(self, splits: Splits, cuts: dict[str, Any]) -> dict[str, Any]:
        return {"majority_class": majority_class_scores(splits), "train_examples": len(splits.train)}

    def auto_class(self) -> Any:
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def encode_request(self, tokenizer: Any, inputs: list[Any], max_length: int) -> dict[str, Any]:
        """Images given as file paths or as base64 strings (``serve``), as pixel values."""
        images = [_image(item) for item in inputs]
        return {"pixel_values": tokenizer(images=images, return_tensors="np")["pixel_values"]}

    def decode_output(self, outputs: np.ndarray, labels: list[str] | None) -> dict[str, Any]:
        return class_answer(outputs, labels)

    # ------------------------------------------------------------------ ONNX export: pixels in, logits out

    def trace_inputs(self, preprocessor: Any, pair: bool, max_length: int) -> dict[str, Any]:
        return {"pixel_values": _blank_pixels(preprocessor, 2, "pt")}

    def onnx_axes(self, names: tuple[str, ...]) -> dict[str, dict[int, str]]:
        return {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}

    def timing_inputs(self, names: list[str], preprocessor: Any, length: int) -> dict[str, np.ndarray]:
        return {"pixel_values": _blank_pixels(preprocessor, 1, "np")}

    # ------------------------------------------------------------------ serving: images sent as base64

    def request_inputs(self, pair: bool) -> str:
        return "image"

    def request_schema(self, pair: bool, max_chars: int) -> dict[str, Any]:
        return {
            "type": "string",
            "minLength": 1,
            "pattern": BASE64_IMAGE,
            "description": "an image file (PNG, JPEG, ...) in base64, or a data:image/...;base64, URL",
        }

    def check_request(self, inputs: Sequence[Any], pair: bool, max_chars: int | None) -> None:
        """A base64 text per input; the request's size is bounded by the body limit, not by --max-text-chars."""
        for i, item in enumerate(inputs):
            if not isinstance(item, str) or not item:
                raise InputError(f"inputs[{i}] must be an image in base64 or a data:image/...;base64, URL")

    def request_rows(
        self, preprocessor: Any, inputs: Sequence[Any], pair: bool, max_length: int, task: str
    ) -> list[Row]:
        """Images decoded from base64 (never read from the server's files) and turned into pixels by the run's
        image processor; each row counts as the tokens of its 16 x 16 patches in the batcher's token budget."""
        images = []
        for i, item in enumerate(inputs):
            try:
                images.append(decode_image(item))
            except DataError as error:
                raise InputError(f"inputs[{i}] is {error}", 422) from None
            except InputError as error:
                raise InputError(f"inputs[{i}] {error}", error.status) from None
        pixels = preprocessor(images=images, return_tensors="np")["pixel_values"]
        return [Row(task, {"pixel_values": p}, False, p.shape[-2] * p.shape[-1] // 256 + 1) for p in pixels]


def _columns(config: TrainConfig) -> dict[str, str]:
    """The image-path and label columns of a table of images: ``image`` unless --text-columns names one."""
    path_column = "image" if config.text_columns == ["text"] else config.text_columns[0]
    return {"path_column": path_column, "label_column": config.label_column}


def _blank_pixels(processor: Any, count: int, tensors: str) -> Any:
    """Pixel values of ``count`` plain grey images, sized by the run's image processor."""
    from PIL import Image

    images = [Image.new("RGB", (32, 32), (96 + 32 * i,) * 3) for i in range(count)]
    return processor(images=images, return_tensors=tensors)["pixel_values"]


BASE64_IMAGE = "^(data:image/[-+.\\w]+;base64,)?[A-Za-z0-9+/]+={0,2}$"
MAX_PIXELS = 40_000_000  # the largest image a server decodes (a small file can hold a huge image)


def _image(item: Any) -> Any:
    """A PIL image from a file path, a ``data:image/...;base64,`` URL or bare base64 text."""
    if not isinstance(item, str) or not item:
        raise DataError("an image input is a file path or base64 text")
    if not item.startswith("data:") and len(item) < 4096 and Path(item).is_file():
        return read_image(item)
    try:
        return decode_image(item)
    except DataError as error:
        raise DataError(f"neither an image file nor a base64-encoded image ({error})") from error


def decode_image(item: str, max_pixels: int = MAX_PIXELS) -> Any:
    """A PIL image (RGB) from a ``data:image/...;base64,`` URL or bare base64 text; an image of more than
    ``max_pixels`` pixels is refused before its pixels are decoded (InputError 413)."""
    from PIL import Image

    text = item.split(",", 1)[1] if item.startswith("data:") else item
    try:
        with Image.open(io.BytesIO(base64.b64decode("".join(text.split()), validate=True))) as image:
            if image.width * image.height > max_pixels:
                raise InputError(
                    f"is an image of {image.width} x {image.height} pixels; this server takes at most "
                    f"{max_pixels:,} pixels",
                    413,
                )
            return image.convert("RGB")
    except (
        binascii.Error,
        ValueError,
        OSError,
        Image.DecompressionBombError,
    ) as error:  # OSError: unreadable
        raise DataError(f"not a base64-encoded image ({str(error)[:80]})") from error
