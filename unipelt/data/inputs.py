"""What ``predict`` reads: texts (a table with a run's text columns, a file of plain lines, or standard input)
or sentences to tag (JSON lines with ``tokens``, a CoNLL file, or plain lines)."""

from __future__ import annotations

from pathlib import Path

from unipelt.data.conll import JSONL_SUFFIXES, TokenExample, load_tokens
from unipelt.data.examples import Example
from unipelt.data.files import input_lines
from unipelt.data.tables import load_table
from unipelt.errors import UniPELTError


def read_inputs(
    source: str, text_columns: list[str], encoding: str = "utf-8", task: str | None = None
) -> list[Example]:
    """Texts to predict: a CSV/TSV/JSONL file with ``text_columns``, or plain lines from a file or '-'.

    With two text columns (a sentence-pair task such as RTE) each plain line must hold the two texts separated
    by a tab: a line with one text is refused, since the model would silently score it against an empty second
    text. With one column a whole line is one text. ``task`` names the task in that message.
    """
    if source != "-" and Path(source).suffix.lower() in (".csv", ".tsv", ".jsonl"):
        return load_table(source, text_columns, None, encoding=encoding).examples
    if source != "-" and not Path(source).is_file():
        raise UniPELTError(f"input file not found: {source}")
    lines = input_lines(source, encoding)
    pair = len(text_columns) == 2
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not pair:
            examples.append(Example(line, None, None))
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            a, b = text_columns
            raise UniPELTError(
                f"{'standard input' if source == '-' else source}, line {number}: {task or 'this run'} is a "
                f"sentence-pair task, so each line needs two texts separated by a tab (found "
                f"{len(parts)} field{'s' if len(parts) != 1 else ''}), e.g. 'A man is sleeping.<TAB>A person "
                f'rests.\'; or give a .jsonl file with both fields per line: {{"{a}": "...", "{b}": "..."}}'
            )
        examples.append(Example(parts[0], parts[1], None))
    if not examples:
        raise UniPELTError(f"no texts to predict in {source!r}")
    return examples


def read_sentences(source: str, tag_column: int = -1, encoding: str = "utf-8") -> list[TokenExample]:
    """Sentences to tag: JSON lines with ``tokens``, a CoNLL file (its first column), or plain text lines from a
    file or '-' (one sentence a line, words split on whitespace); files in ``encoding``."""
    suffix = Path(source).suffix.lower()
    if source != "-" and (
        suffix in JSONL_SUFFIXES or suffix in (".conll", ".iob", ".iob2", ".bio", ".bioes")
    ):
        return load_tokens(source, tag_column, labelled=False, encoding=encoding).examples
    if source != "-" and not Path(source).is_file():
        raise UniPELTError(f"input file not found: {source}")
    lines = input_lines(source, encoding)
    sentences = [
        TokenExample(tuple(line.split()), None, i) for i, line in enumerate(lines, 1) if line.strip()
    ]
    if not sentences:
        raise UniPELTError(f"no sentences to tag in {source!r}")
    return sentences
