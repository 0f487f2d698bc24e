"""What `unipelt train` prints and records about a run: macro-F1 beside accuracy, the classes found and label
spellings merged, empty texts, and a summary that does not repeat the validation score when there is no test."""

from __future__ import annotations

import json

import pytest

from unipelt.cli import main

pytestmark = pytest.mark.slow


def test_three_classes_without_a_test_file(tiny_model_dir, tmp_path, capsys):
    rows = ["text,label"]
    for i in range(60):
        label = ["0", "1", "2"][i % 3]
        spelled = {"1": "1.0", "2": "2"}.get(label, label) if i % 2 else label
        rows.append(f"{'' if i == 7 else f'review number {i}'},{spelled}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--train", tmp_path / "train.csv", "--n-valid", "12",
            "--out", out, "--method", "lora", "--epochs", "1", "--batch-size", "8", "--max-length", "32",
            "--threads", "1"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr().out.splitlines()
    printed = printed[next(i for i, line in enumerate(printed) if line.startswith("lora on ")) :]
    metrics = json.loads((out / "metrics.json").read_text())
    valid = metrics["valid"]
    assert printed[0].startswith(
        f"lora on {tmp_path / 'train.csv'}: valid accuracy {100 * valid['accuracy']:.2f}, "
        f"macro-F1 {100 * valid['f1_macro']:.2f} (no test file, "
    )
    assert "(valid " not in printed[0]
    data = metrics["data"]
    assert (
        sum(data["labels"].values()) == 54
    )  # 60 rows less 10% held out for validation and set(data["labels"]) == {"0", "1", "2"}
    assert data["label_spellings"] == {"1": ["1.0"]}
    assert sum(data["empty_texts"].values()) == 1
    assert any(line.startswith("labels (training examples each): 0 (") for line in printed)
    assert "labels written '1.0' were read as '1'" in printed
    assert any(line.startswith("empty texts: 1 in ") for line in printed)
    assert json.loads((out / "labels.json").read_text())["labels"] == ["0", "1", "2"]
