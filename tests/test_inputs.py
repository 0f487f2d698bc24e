"""Inputs decode by one rule wherever they come from (a file, standard input, JSON lines, chats), with one line
and the --encoding hint on bad bytes; predict marks the inputs it had to cut to the run's max_length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unipelt.cli import main
from unipelt.data import load_table
from unipelt.data.chat import read_chat_file
from unipelt.errors import DataError

pytestmark = pytest.mark.slow
BAD = "caf\xe9 au lait\n".encode("latin-1")  # é as one Latin-1 byte: not UTF-8


def unipelt(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "unipelt.cli", *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    rows = ["text,label"] + [f"{'good' if i % 2 else 'bad'} film {i},{i % 2}" for i in range(24)]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    out = folder / "run"
    args = ["train", "--model", tiny_model_dir, "--train", folder / "train.csv", "--out", out, "--method", "lora",
            "--epochs", "1", "--batch-size", "8", "--max-length", "16", "--threads", "1"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    return out


def test_bad_bytes_on_standard_input_are_the_same_one_line_error_as_in_a_file(run, tmp_path):
    (tmp_path / "in.txt").write_bytes(b"fine\n" + BAD)
    from_file = unipelt("predict", run, "--input", tmp_path / "in.txt")
    from_stdin = unipelt("predict", run, "--input", "-", stdin=b"fine\n" + BAD)
    for result, source in ((from_file, str(tmp_path / "in.txt")), (from_stdin, "standard input")):
        err = result.stderr.decode()
        assert result.returncode == 2 and "Traceback" not in err, err
        assert err.strip().splitlines() == [
            f"unipelt: error: {source}, line 2: byte 0xe9 is not valid UTF-8 (the text was read as UTF-8, with "
            "or without a BOM). It is probably in another encoding such as Latin-1 or Windows-1252: pass "
            "--encoding cp1252 (or the text's encoding), or re-save it as UTF-8 (e.g. 'CSV UTF-8' in Excel)."
        ]
    # and the hint works: the same bytes with --encoding latin-1 are read
    fixed = unipelt("predict", run, "--input", "-", "--encoding", "latin-1", stdin=BAD)
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["text"] == "café au lait"


def test_json_lines_tables_and_chats_give_the_same_error(tmp_path):
    (tmp_path / "t.jsonl").write_bytes(
        b'{"text": "ok", "label": 1}\n{"text": "' + BAD.strip() + b'", "label": 0}\n'
    )
    (tmp_path / "chat.jsonl").write_bytes(
        b'{"prompt": "hi", "response": "ok"}\n{"prompt": "' + BAD.strip() + b'"}\n'
    )
    errors = []
    for call in (
        lambda: load_table(tmp_path / "t.jsonl", ["text"], "label"),
        lambda: read_chat_file(tmp_path / "chat.jsonl"),
    ):
        with pytest.raises(DataError) as caught:
            call()
        errors.append(str(caught.value))
    assert errors[0].replace("t.jsonl", "X") == errors[1].replace("chat.jsonl", "X")
    assert "line 2: byte 0xe9 is not valid UTF-8" in errors[0] and "--encoding cp1252" in errors[0]
    assert (
        read_chat_file(tmp_path / "chat.jsonl", need_response=False, encoding="latin-1")[1].prompt_messages[
            0
        ]["content"]
        == "café au lait"
    )


def test_predict_marks_truncated_inputs_in_json_and_table_output(run, tmp_path):
    from transformers import AutoTokenizer

    long = " ".join(f"word{i}" for i in range(300))
    (tmp_path / "in.txt").write_text(f"short text\n{long}\n")
    out = unipelt("predict", run, "--input", tmp_path / "in.txt")
    assert out.returncode == 0, out.stderr.decode()
    short, cut = (json.loads(line) for line in out.stdout.decode().splitlines())
    expected = len(AutoTokenizer.from_pretrained(run / "tokenizer")(long)["input_ids"])
    assert "truncated" not in short and "tokens" not in short
    assert cut["truncated"] is True and cut["tokens"] == expected > 16
    table = unipelt("predict", run, "--input", tmp_path / "in.txt", "--format", "table").stdout.decode()
    first, second = table.splitlines()
    assert "truncated" not in first
    assert second.endswith(f"\t(truncated: {expected} tokens, the first 16 read)")
