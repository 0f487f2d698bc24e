"""eval and predict of a run trained on the user's own table files, through its task kind."""

from __future__ import annotations

import csv
import json

import pytest

from unipelt.cli import main


def _table(path, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def table_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    rows = [(f"this is {w} number {i}", "pos" if w in words[:3] else "neg") for i in range(6) for w in words]
    _table(root / "train.csv", rows)
    _table(root / "test.csv", rows[:12])
    run = root / "run"
    args = ["train", "--model", str(tiny_model_dir), "--train", str(root / "train.csv")]
    args += ["--test", str(root / "test.csv"), "--method", "lora", "--epochs", "1", "--batch-size", "8"]
    assert main([*args, "--max-length", "32", "--threads", "1", "--out", str(run)]) == 0
    return root, run


def test_eval_reads_the_test_file_and_a_given_file_alike(table_run, capsys):
    root, run = table_run
    test = json.loads((run / "metrics.json").read_text())["test"]
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--data", str(root / "test.csv"), "--json"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert own["examples"] == given["examples"] == 12
    assert own["accuracy"] == given["accuracy"] == pytest.approx(test["accuracy"], abs=1e-6)
    assert main(["eval", str(run), "--data", str(root / "test.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(": 12 examples")
    accuracy = next(line for line in printed if line.split()[0] == "accuracy")
    assert float(accuracy.split()[1]) == pytest.approx(100 * test["accuracy"], abs=0.01)


def test_predict_prints_records_and_table_lines_alike(table_run, tmp_path, capsys):
    _, run = table_run
    lines = tmp_path / "texts.txt"
    lines.write_text("this is good number 1\nthis is awful number 2\n")
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(lines)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["this is good number 1", "this is awful number 2"]
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for r in records)
    assert main(["predict", str(run), "--input", str(lines), "--format", "table"]) == 0
    table = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in table] == [r["label"] for r in records]
    assert [float(row[1]) for row in table] == pytest.approx(
        [r["probabilities"][r["label"]] for r in records], abs=1e-4
    )
