"""Every file unipelt reads back gives one ``unipelt: error:`` line naming it when it is damaged.

A run folder is assembled here without training (config, labels, a saved checkpoint and tokenizer of the tiny
BERT folder), then one file at a time is truncated, emptied, replaced by JSON of the wrong type or edited to
nonsense, and ``unipelt predict`` must answer with exit status 2 and one line that names the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unipelt.cli import main
from unipelt.errors import UniPELTError


def cli(*args) -> int:
    return main([str(a) for a in args])


def error_line(err: str) -> str:
    """The last line of standard error (progress bars from loading may come before it), checked to be the
    one-line error with no traceback anywhere."""
    assert "Traceback" not in err, err
    line = err.replace("\r", "\n").strip().splitlines()[-1]
    assert line.startswith("unipelt: error:"), err
    return line


@pytest.fixture(scope="module")
def run_folder(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished-looking RTE run of the tiny model: what `unipelt train` leaves, minus the reports."""
    from unipelt.backbones import load_base_model, load_tokenizer
    from unipelt.checkpoint import write_json
    from unipelt.config import UniPELTConfig
    from unipelt.model import UniPELTModel
    from unipelt.training import TrainConfig

    folder = tmp_path_factory.mktemp("bad-files") / "run"
    labels = ["entailment", "not_entailment"]
    config = TrainConfig(model=str(tiny_model_dir), task="rte", method="unipelt", output_dir=str(folder))
    base = load_base_model(tiny_model_dir, "classification", labels=labels)
    UniPELTModel(base, UniPELTConfig.from_preset("unipelt")).save_pretrained(folder / "checkpoint")
    load_tokenizer(tiny_model_dir).save_pretrained(folder / "tokenizer")
    write_json(folder / "config.json", config.to_dict())
    write_json(folder / "labels.json", {"labels": labels, "regression": False, "metric_kind": "rte"})
    return folder


@pytest.fixture
def pairs(tmp_path) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text("A man is sleeping.\tA person rests.\n")
    return path


def test_the_intact_run_folder_predicts(run_folder, pairs, capsys):
    assert cli("predict", run_folder, "--input", pairs) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["label"] in ("entailment", "not_entailment") and record["text_b"] == "A person rests."


FILES = {
    "weights": "checkpoint/unipelt_weights.safetensors",
    "checkpoint config": "checkpoint/unipelt_config.json",
    "labels": "labels.json",
    "run config": "config.json",
    "tokenizer": "tokenizer/tokenizer.json",
    "tokenizer config": "tokenizer/tokenizer_config.json",
}
NONSENSE = {
    "weights": b'{"not": "safetensors"}' + bytes(range(256)) * 4,
    "checkpoint config": b'{"unipelt": {"modules": ["lora"], "lora_rank": "eight"}, "task": {"kind": 3}}',
    "labels": b'{"labels": [1, 2], "regression": "maybe", "metric_kind": 7}',
    "run config": b'{"method": "unipelt", "model": "x", "epochs": "many", "text_columns": "text"}',
    "tokenizer": b'{"version": "1.0", "model": {"type": "Nonsense"}}',
    "tokenizer config": b'{"pad_token": 5, "model_max_length": "long"}',
}
WRONG_TYPE = b"[1, 2, 3]"


def _damage(data: bytes, how: str, file: str) -> bytes:
    return {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "wrong type": WRONG_TYPE,
        "nonsense": NONSENSE[file],
    }[how]


@pytest.mark.parametrize("how", ["truncated", "empty", "wrong type", "nonsense"])
@pytest.mark.parametrize("file", list(FILES))
def test_a_damaged_file_is_one_line_naming_it(run_folder, pairs, tmp_path, capsys, file, how):
    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    path = copy / FILES[file]
    path.write_bytes(_damage(path.read_bytes(), how, file))
    capsys.readouterr()
    assert cli("predict", copy, "--input", pairs) == 2
    err = error_line(capsys.readouterr().err)
    named = str(path) if not file.startswith("tokenizer") else str(path.parent)
    assert named in err, err


def test_a_damaged_task_index_is_one_error_naming_it(tiny_model_dir, tmp_path):
    from unipelt.backbones import load_base_model
    from unipelt.model import UniPELTModel

    model = UniPELTModel(load_base_model(tiny_model_dir, init="random"))
    model.add_task("a", "lora", num_labels=2)
    model.add_task("b", "lora", num_labels=3)
    model.save_pretrained(tmp_path / "multi")
    index = tmp_path / "multi" / "tasks.json"
    good = index.read_bytes()
    for bad in (good[: len(good) // 2], b"", b"[1]", b'{"tasks": "ab"}', b'{"tasks": [1, 2]}'):
        index.write_bytes(bad)
        with pytest.raises(UniPELTError, match="tasks.json"):
            UniPELTModel.from_pretrained(load_base_model(tiny_model_dir, init="random"), tmp_path / "multi")


def test_predict_inputs_that_cannot_be_read(run_folder, tmp_path, capsys):
    cases = {
        "empty.txt": (b"", "no texts"),
        "binary.txt": (b"\xff\xfe\x00\x81 garbage\n", "line 1: byte 0xff is not valid UTF-8"),
        "wrong.jsonl": (b"[1, 2]\n", "line 1: a JSON list, not an object"),
        "missing.jsonl": (b'{"sentence1": "only one"}\n', "no key 'sentence2'"),
        "broken.jsonl": (b'{"sentence1": "a", "sent\n', "line 1: not valid JSON"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        capsys.readouterr()
        assert cli("predict", run_folder, "--input", tmp_path / name) == 2, name
        err = error_line(capsys.readouterr().err)
        assert name in err and message in err, err


def test_pair_task_refuses_one_text_per_line_and_shows_the_expected_input(run_folder, tmp_path, capsys):
    single = tmp_path / "single.txt"
    single.write_text("A man is sleeping.\nThe sky is green.\n")
    assert cli("predict", run_folder, "--input", single) == 2
    err = capsys.readouterr().err
    assert "RTE is a sentence-pair task" in err and "separated by a tab" in err
    assert '{"sentence1": "...", "sentence2": "..."}' in err
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps({"sentence1": "A man sleeps.", "sentence2": "A person rests."}) + "\n")
    assert cli("predict", run_folder, "--input", both) == 0
    assert json.loads(capsys.readouterr().out)["text_b"] == "A person rests."


def test_encoding_of_predict_inputs(run_folder, tmp_path, capsys):
    latin = tmp_path / "excel.txt"
    latin.write_bytes("Caf\u00e9 cr\u00e8me.\tA drink \u2013 hot.\n".encode("cp1252"))
    assert cli("predict", run_folder, "--input", latin) == 2
    assert "--encoding cp1252" in capsys.readouterr().err  # the hint names the flag
    assert cli("predict", run_folder, "--input", latin, "--encoding", "cp1252") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == "Caf\u00e9 cr\u00e8me." and record["text_b"] == "A drink \u2013 hot."
    assert cli("predict", run_folder, "--input", latin, "--encoding", "klingon") == 2
    assert "unknown text encoding 'klingon'" in capsys.readouterr().err


def test_training_files_in_another_encoding(tmp_path):
    from unipelt.cli import build_parser
    from unipelt.cli.train import train_config
    from unipelt.training.run import load_splits

    rows = ["text,label"] + [f"d\u00e9j\u00e0 vu {i} \u20ac,{'pos' if i % 2 else 'neg'}" for i in range(20)]
    (tmp_path / "excel.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))
    args = build_parser().parse_args(
        ["train", "--train", str(tmp_path / "excel.csv"), "--encoding", "cp1252"]
    )
    config = train_config(args)
    assert config.encoding == "cp1252" and config.to_dict()["encoding"] == "cp1252"  # kept in RUN/config.json
    splits = load_splits(config)
    assert {e.text_a for e in splits.train.examples + splits.valid.examples} == {
        f"d\u00e9j\u00e0 vu {i} \u20ac" for i in range(20)
    }
    with pytest.raises(UniPELTError, match=r"excel.csv, line 2: byte 0xe9 is not valid UTF-8"):
        load_splits(
            train_config(build_parser().parse_args(["train", "--train", str(tmp_path / "excel.csv")]))
        )


def test_unsupported_model_kinds_are_one_line_saying_what_is_supported(tmp_path, capsys):
    from transformers import ConvNextConfig, ViTConfig, WhisperConfig

    from unipelt.backbones import check_model

    for name, config in (("convnext", ConvNextConfig()), ("whisper", WhisperConfig())):
        config.save_pretrained(tmp_path / name)
        capsys.readouterr()
        assert cli("params", tmp_path / name) == 2
        err = error_line(capsys.readouterr().err)
        assert len(err) < 400 and "bert" in err and "roberta" in err and "Config," not in err, err
        assert {"convnext": "'convnext' is not supported", "whisper": "(whisper)"}[name] in err, err
    ViTConfig().save_pretrained(tmp_path / "vit")  # an image model unipelt trains, given text: says how
    with pytest.raises(
        UniPELTError, match="is an image model \\(vit\\): train it on images with --task-type"
    ):
        check_model(tmp_path / "vit", "classification")


def _edited(run_folder: Path, tmp_path: Path, **labels_fields) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    data = {
        "labels": ["entailment", "not_entailment"],
        "regression": False,
        "metric_kind": "rte",
        **labels_fields,
    }
    (copy / "labels.json").write_text(json.dumps(data))
    return copy


@pytest.mark.parametrize(
    "fields,says",
    [
        (
            {"labels": ["a", "b", "c"]},
            "labels.json names 3 label(s) but the head in {run}/checkpoint has 2 outputs",
        ),
        ({"labels": ["only"]}, "labels.json names 1 label(s) but the head in {run}/checkpoint has 2 outputs"),
        ({"labels": ["same", "same"]}, "labels.json: the label names 'same' appear more than once"),
        ({"metric_kind": "nonsense"}, "labels.json: unknown metric_kind 'nonsense'"),
        ({"labels": None, "regression": True, "metric_kind": "regression"}, "names 1 label(s) but the head"),
    ],
)
def test_a_label_map_that_does_not_fit_the_checkpoint_is_refused_when_the_run_opens(
    run_folder, pairs, tmp_path, capsys, fields, says
):
    copy = _edited(run_folder, tmp_path, **fields)
    capsys.readouterr()
    assert cli("predict", copy, "--input", pairs) == 2
    assert says.format(run=copy) in error_line(capsys.readouterr().err)


def test_a_deleted_tokenizer_folder_is_named_without_going_to_the_hub(
    run_folder, pairs, tmp_path, capsys, monkeypatch
):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("a run folder must never reach for the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    shutil.rmtree(copy / "tokenizer")
    capsys.readouterr()
    assert cli("predict", copy, "--input", pairs) == 2
    assert f"{copy / 'tokenizer'} is missing or empty" in error_line(capsys.readouterr().err)
    from unipelt.backbones import load_tokenizer

    with pytest.raises(UniPELTError, match="tokenizer folder was deleted"):
        load_tokenizer(copy / "tokenizer", local=True)


def test_damaged_metrics_json_is_named_when_the_run_opens(run_folder, pairs, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    (copy / "metrics.json").write_text("[1, 2]")
    capsys.readouterr()
    assert cli("predict", copy, "--input", pairs) == 2
    assert f"{copy / 'metrics.json'} is not a metrics object" in error_line(capsys.readouterr().err)


def test_a_fine_tuned_run_is_checked_against_its_own_head(
    tiny_model_dir, run_folder, pairs, tmp_path, capsys
):
    from unipelt.backbones import load_base_model

    copy = _edited(run_folder, tmp_path, labels=["a", "b", "c"])
    shutil.rmtree(copy / "checkpoint")
    load_base_model(tiny_model_dir, "classification", labels=["x", "y"]).save_pretrained(copy / "checkpoint")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "method": "ft"}))
    capsys.readouterr()
    assert cli("predict", copy, "--input", pairs) == 2
    assert "labels.json names 3 label(s) but the head" in error_line(capsys.readouterr().err)
