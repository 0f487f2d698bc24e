"""Reading image classification data: a folder per class, imagefolder metadata, a table of paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unipelt.data.images import is_image_source, load_images, read_image
from unipelt.data.sampling import k_shot_split
from unipelt.errors import DataError


def _png(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(path)


def test_a_folder_per_class_reads_labels_in_numeric_order(tmp_path):
    for label in ("10", "2", "cat"):
        for i in range(3):
            _png(tmp_path / "train" / label / f"{i}.png", 10 * i)
    (tmp_path / "train" / "2" / "notes.txt").write_text("not an image")
    data = load_images(tmp_path / "train")
    assert data.label_list == ["2", "10", "cat"]
    assert len(data) == 9
    assert {data.label_list[e.label] for e in data if "/10/" in e.path} == {"10"}
    assert is_image_source(tmp_path / "train") and not is_image_source(tmp_path / "train" / "2" / "notes.txt")
    train, valid = k_shot_split(data.examples, 4, seed=1, n_valid=2)
    assert len(train) == 4 and len(valid) == 2 and not {e.path for e in train} & {e.path for e in valid}


def test_other_splits_use_the_training_labels_and_refuse_new_ones(tmp_path):
    for split, labels in (("train", ("a", "b")), ("test", ("b",)), ("bad", ("c",))):
        for label in labels:
            _png(tmp_path / split / label / "0.png", 5)
    train = load_images(tmp_path / "train")
    test = load_images(tmp_path / "test", labels=train.label_list)
    assert test.label_list == ["a", "b"] and test.examples[0].label == 1
    with pytest.raises(DataError, match="labels not in the training data: c"):
        load_images(tmp_path / "bad", labels=train.label_list)


def test_imagefolder_metadata_and_tables_of_paths(tmp_path):
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png", 40 * i)
    (tmp_path / "imgs" / "metadata.jsonl").write_text(
        "".join(
            json.dumps({"file_name": f"{i}.png", "label": "odd" if i % 2 else "even"}) + "\n"
            for i in range(4)
        )
    )
    data = load_images(tmp_path / "imgs")
    assert data.label_list == ["even", "odd"] and [e.label for e in data] == [0, 1, 0, 1]
    (tmp_path / "rows.csv").write_text("picture,kind\nimgs/0.png,x\nimgs/1.png,y\n")
    table = load_images(tmp_path / "rows.csv", path_column="picture", label_column="kind")
    assert table.label_list == ["x", "y"] and table.examples[1].path.endswith("1.png")
    (tmp_path / "missing.csv").write_text("image,label\nimgs/9.png,x\n")
    with pytest.raises(DataError, match="9.png does not exist"):
        load_images(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="no column 'image'"):
        load_images(tmp_path / "rows.csv")


def test_a_file_that_is_not_an_image_is_one_line(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        read_image(tmp_path / "x.png")
    with pytest.raises(DataError, match="no such image folder"):
        load_images(tmp_path / "nowhere")
