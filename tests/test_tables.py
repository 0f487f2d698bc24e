"""The user's tables: duplicate columns refused, labels read by meaning in every format, empty texts counted,
and (property-based) any table written by a standard writer reads back as exactly its rows or one DataError."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unipelt.data import load_table
from unipelt.data.tables import label_name
from unipelt.errors import DataError


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("two.csv", "text,label,text\na,1,b\nc,0,d\n", "column 'text' 2 times (columns 1, 3)"),
        ("two.tsv", "label\ttext\tlabel\n1\ta\t0\n0\tb\t1\n", "column 'label' 2 times (columns 1, 3)"),
        ("two.jsonl", '{"text": "a", "label": 1, "label": 0}\n', "line 1: key 'label' appears twice"),
    ],
)
def test_a_column_named_twice_is_refused(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_table(tmp_path / name, ["text"], "label")


def test_a_duplicate_of_a_column_that_is_not_used_is_harmless(tmp_path):
    (tmp_path / "t.csv").write_text("note,text,label,note\nx,a,1,y\nx,b,0,y\n")
    assert [e.label for e in load_table(tmp_path / "t.csv", ["text"], "label")] == [1, 0]


def test_equal_numbers_are_one_label_in_every_format(tmp_path):
    spellings = ["1", "1.0", "0", "0.0", "+1", "01", "1e0", "0.00"]
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"t{i},{s}\n" for i, s in enumerate(spellings)))
    (tmp_path / "t.tsv").write_text(
        "text\tlabel\n" + "".join(f"t{i}\t{s}\n" for i, s in enumerate(spellings))
    )
    values = [1, 1.0, "0", 0.0, "+1", "01", "1e0", 0]
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"text": f"t{i}", "label": v}) + "\n" for i, v in enumerate(values))
    )
    for name in ("t.csv", "t.tsv", "t.jsonl"):
        data = load_table(tmp_path / name, ["text"], "label")
        assert data.label_list == ["0", "1"], name
        assert [e.label for e in data] == [1, 1, 0, 0, 1, 1, 1, 0], name
    assert load_table(tmp_path / "t.csv", ["text"], "label").spellings == {
        "1": ["1.0", "+1", "01", "1e0"],
        "0": ["0.0", "0.00"],
    }


def test_numeric_labels_sort_by_value_and_a_run_label_list_matches_by_value(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,10\nb,2\nc,0.5\nd,-1\n")
    data = load_table(tmp_path / "t.csv", ["text"], "label")
    assert data.label_list == ["-1", "0.5", "2", "10"]
    # a label list written with other spellings (an older run's labels.json) still maps by value
    again = load_table(tmp_path / "t.csv", ["text"], "label", label_list=["-1.0", "0.50", "2.0", "10"])
    assert [e.label for e in again] == [3, 2, 1, 0]


def test_empty_texts_are_counted(tmp_path):
    (tmp_path / "t.csv").write_text('text,label\n"",a\n  ,b\nfine,a\n')
    data = load_table(tmp_path / "t.csv", ["text"], "label")
    assert len(data) == 3 and data.empty_texts == 2


# ---- property: any table a standard writer produces reads back exactly, or is one DataError -----------------

_WORDS = ["pos", "neg", " pos", "Neutral", "ja", "né", "x,y", 'say "hi"', "日本"]
_NUMBERS = ["0", "1", "1.0", "01", "+1", "-1", "0.5", ".5", "0.50", "2e0", "10", "1e1"]
_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12
) | st.sampled_from(
    ["", " ", 'a "quoted" word', "two\nlines", "crlf\r\nline", "tab\there", "a,b", "\ufeffbom"]
)
_LABEL = st.sampled_from(_WORDS + _NUMBERS) | st.integers(-3, 12) | st.sampled_from([1.0, 0.5, -1.0])


def _meaning(value) -> object:
    """What a label means, computed independently of the reader: a number's value, else the stripped text."""
    text = str(value).strip()
    try:
        return Decimal(text)
    except ArithmeticError:
        return text


def _write(rows, fmt: str, bom: bool, crlf: bool) -> str:
    end = "\r\n" if crlf else "\n"
    if fmt == "jsonl":
        body = "".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + end for t, y in rows)
    else:
        out = io.StringIO()
        # a lone CR is a line break to every CSV reader unless quoted, and QUOTE_MINIMAL quotes only fields
        # holding the line terminator: quote every field, so the file written is unambiguous
        writer = csv.writer(out, lineterminator=end, quoting=csv.QUOTE_ALL) if fmt == "csv" else None
        if writer is not None:
            writer.writerows([("text", "label"), *[(t, y) for t, y in rows]])
            body = out.getvalue()
        else:  # TSV has no quoting: a tab or line break cannot be inside a field
            body = end.join("\t".join(map(str, r)) for r in [("text", "label"), *rows]) + end
    return ("\ufeff" if bom else "") + body


def _tsv_safe(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(_TEXT, _LABEL), min_size=1, max_size=8),
    fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_any_written_table_reads_back_exactly_or_is_one_data_error(tmp_path: Path, rows, fmt, bom, crlf):
    if fmt == "tsv":
        rows = [(_tsv_safe(t), _tsv_safe(str(y))) for t, y in rows]
    elif fmt == "csv":
        rows = [(t, str(y)) for t, y in rows]
    path = tmp_path / f"table.{fmt}"
    path.write_bytes(_write(rows, fmt, bom, crlf).encode("utf-8"))
    try:
        data = load_table(path, ["text"], "label")
    except DataError as error:
        message = str(error)
        assert "\n" not in message.strip() and str(path) in message
        # the only tables refused here are the ones that cannot be read as classification data
        blank_label = any(not str(y).strip() for _, y in rows)
        kept = [r for r in rows if fmt == "jsonl" or str(r[0]).strip() or str(r[1]).strip()]
        one_class = len({_meaning(y) for _, y in rows}) < 2
        assert blank_label or one_class or not kept, message
        return
    # CSV and TSV drop wholly blank lines; all other rows come back in order with their text unchanged
    expected = [r for r in rows if fmt == "jsonl" or r[0].strip() or str(r[1]).strip()]
    assert [e.text_a for e in data] == [t for t, _ in expected]
    meanings = [_meaning(y) for _, y in expected]
    names = data.label_list
    assert len(names) == len(set(meanings))
    for example, meaning in zip(data, meanings):
        assert _meaning(names[example.label]) == meaning
    # equal meanings share an id and different ones do not
    ids = {}
    for example, meaning in zip(data, meanings):
        assert ids.setdefault(meaning, example.label) == example.label
    assert data.empty_texts == sum(1 for t, _ in expected if not t.strip())


@pytest.mark.parametrize(
    "value,name",
    [
        (1, "1"),
        (1.0, "1"),
        ("1.0", "1"),
        (" 2 ", "2"),
        ("-0.0", "0"),
        ("0.50", "0.5"),
        (True, "true"),
        ("pos", "pos"),
        ("1e40", "1E+40"),
    ],
)
def test_label_names(value, name):
    assert label_name(value) == name
