"""Token classification end to end through the command line, on a tiny BERT and a CoNLL file made here:
training lowers the loss, eval scores the test file, predicted spans round-trip through eval, imbalance options
are saved with the run, bad files give one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from seqeval.metrics.sequence_labeling import get_entities
from test_token_classification import sentences, write_conll

from unipelt.cli import main
from unipelt.metrics import entity_metrics

pytestmark = pytest.mark.slow
FAST = ["--batch-size", "16", "--max-length", "32", "--threads", "1"]


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ner")
    return {
        "train": write_conll(folder / "train.conll", sentences(160, seed=1)),
        "test": write_conll(folder / "test.conll", sentences(30, seed=2)),
    }


@pytest.fixture(scope="module")
def ner_run(tiny_model_dir, ner_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ner"
    code = cli(
        "train", "--model", tiny_model_dir, "--train", ner_files["train"], "--test", ner_files["test"],
        "--method", "unipelt", "--lr", "1e-2", "--epochs", "6", "--out", out, *FAST,
    )  # fmt: skip
    assert code == 0
    return out


def test_training_lowers_the_loss_and_reports_entity_f1(ner_run):
    log = [json.loads(line) for line in (ner_run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) >= 3 and losses[-1] < 0.7 * losses[0]
    metrics = json.loads((ner_run / "metrics.json").read_text())
    assert metrics["metric"] == "f1" and metrics["task_type"] == "token-classification"
    assert {"f1", "precision", "recall", "accuracy", "f1_PER", "f1_LOC", "f1_ORG"} <= set(metrics["test"])
    assert metrics["test"]["f1"] > 0.3
    assert metrics["alignment"]["train"]["words_cut"] == 0
    labels = json.loads((ner_run / "labels.json").read_text())
    assert labels["labels"] == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert (ner_run / "gates.json").is_file()


def test_eval_matches_training_and_predict_round_trips(ner_run, ner_files, tmp_path, capsys):
    capsys.readouterr()
    assert cli("eval", ner_run, "--json") == 0
    scores = json.loads(capsys.readouterr().out)
    trained = json.loads((ner_run / "metrics.json").read_text())["test"]
    assert scores["f1"] == pytest.approx(trained["f1"], abs=1e-6) and scores["words_cut"] == 0

    gold = sentences(30, seed=2)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps({"tokens": tokens}) for tokens, _ in gold))
    assert cli("predict", ner_run, "--input", inputs) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["tokens"] for r in records] == [tokens for tokens, _ in gold]
    for record in records:
        expected = [(k, s, e + 1) for k, s, e in get_entities(record["tags"])]
        assert [(e["type"], e["start"], e["end"]) for e in record["entities"]] == expected
        assert all(e["text"] == " ".join(record["tokens"][e["start"] : e["end"]]) for e in record["entities"])
        assert all(0 < e["score"] <= 1 for e in record["entities"])
    # predict and eval agree: scoring the predictions against the gold tags gives eval's F1
    predicted = entity_metrics([tags for _, tags in gold], [r["tags"] for r in records])
    assert predicted["f1"] == pytest.approx(scores["f1"], abs=1e-6)
    # and the predicted spans, written back as a CoNLL file, are what the model predicts again: F1 100
    echo = write_conll(tmp_path / "echo.conll", [(r["tokens"], r["tags"]) for r in records if r["entities"]])
    assert cli("eval", ner_run, "--data", echo, "--json") == 0
    assert json.loads(capsys.readouterr().out)["f1"] == 1.0

    plain = tmp_path / "plain.txt"
    plain.write_text("John Smith visited Paris\n")
    assert cli("predict", ner_run, "--input", plain, "--format", "table") == 0
    line = capsys.readouterr().out.strip()
    assert line.replace("[", "").split() and "John" in line


def test_gates_command_redraws_the_heatmap(ner_run, capsys):
    (ner_run / "gates.png").unlink()
    assert cli("gates", ner_run) == 0
    assert (ner_run / "gates.png").read_bytes()[:4] == b"\x89PNG"


def test_imbalance_options_are_saved_with_the_run(tiny_model_dir, ner_files, tmp_path):
    out = tmp_path / "weighted"
    code = cli(
        "train", "--model", tiny_model_dir, "--train", ner_files["train"], "--method", "lora",
        "--class-weights", "balanced", "--oversample", "--epochs", "1", "--out", out, *FAST,
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    weights = metrics["class_weights"]
    assert len(weights) == 7 and weights[0] == min(weights)  # O is the most common tag: the lightest
    assert metrics["train_examples"] > 144  # 160 minus the validation tenth, then oversampled
    meta = json.loads((out / "checkpoint" / "unipelt_config.json").read_text())
    assert meta["task"]["class_weights"] == pytest.approx(weights)  # the task checkpoint keeps them


def test_sentence_classification_with_weights_for_ft(tiny_model_dir, tmp_path):
    rows = ["text\tlabel"] + [f"good film {i}\tpos" for i in range(6)] + [f"bad {i}\tneg" for i in range(30)]
    table = tmp_path / "skewed.tsv"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "ft"
    code = cli(
        "train", "--model", tiny_model_dir, "--train", table, "--method", "ft", "--class-weights", "1,5",
        "--oversample", "--epochs", "1", "--out", out, *FAST,
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_weights"] == [1.0, 5.0] and metrics["task_type"] == "classification"
    assert "f1_macro" in metrics["valid"] and "accuracy" in metrics["valid"]


def test_bad_tagged_files_are_one_line_errors(tiny_model_dir, ner_files, tmp_path, capsys):
    other = write_conll(tmp_path / "other.conll", [(["Acme", "rises"], ["B-COMPANY", "O"])])
    code = cli(
        "train", "--model", tiny_model_dir, "--train", ner_files["train"], "--valid", other,
        "--out", tmp_path / "x", *FAST,
    )  # fmt: skip
    assert code == 2
    assert "tags not seen in training: B-COMPANY" in capsys.readouterr().err
    broken = tmp_path / "broken.conll"
    broken.write_text("John B-PER\nSmith\n")
    assert cli("train", "--model", tiny_model_dir, "--train", broken, "--out", tmp_path / "y", *FAST) == 2
    assert "broken.conll, line 2: 1 column, but line 1 has 2" in capsys.readouterr().err


def test_the_baseline_is_the_commonest_tag_on_every_word(ner_run, ner_files):
    from unipelt.data import load_tokens

    metrics = json.loads((ner_run / "metrics.json").read_text())
    labels = json.loads((ner_run / "labels.json").read_text())["labels"]
    test = load_tokens(ner_files["test"], -1, labels)
    words = [test.label_list[i] for example in test.examples for i in example.tags]
    baseline = metrics["majority_class"]["test"]
    assert baseline["f1"] == 0.0  # every word "O": no entity found
    assert baseline["accuracy"] == pytest.approx(words.count("O") / len(words))
