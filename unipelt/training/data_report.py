"""What a run found in its data, for the run summary: the classes and how often each occurs in training, label
spellings that were read as one class (``1.0`` as ``1``), and texts that were empty.

The numbers go into ``metrics.json`` under ``data`` and are printed by ``unipelt train``, so a label column that
was not what the user thought (a third class from a typo, numbers written two ways) shows before the scores do.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from unipelt.data import TaskData, TokenData


def data_report(splits: Any) -> dict[str, Any]:
    """``labels`` (training count per class name), ``label_spellings`` (name -> other spellings read as it)
    and ``empty_texts`` (split -> count, only splits that have any)."""
    named = [
        (name, data)
        for name, data in (("train", splits.train), ("valid", splits.valid), ("test", splits.test))
    ]
    tables = [
        (name, data) for name, data in named if isinstance(data, TaskData) and not isinstance(data, TokenData)
    ]
    report: dict[str, Any] = {}
    if splits.label_list is not None and not isinstance(splits.train, TokenData):
        counts = Counter(example.label for example in splits.train.examples)
        report["labels"] = {name: counts.get(i, 0) for i, name in enumerate(splits.label_list)}
    spellings: dict[str, list[str]] = {}
    for _, data in tables:
        for label, written in data.spellings.items():
            spellings.setdefault(label, [])
            spellings[label] += [w for w in written if w not in spellings[label]]
    if spellings:
        report["label_spellings"] = spellings
    empty = {name: data.empty_texts for name, data in tables if data.empty_texts}
    if empty:
        report["empty_texts"] = empty
    return report


def describe(report: dict[str, Any]) -> list[str]:
    """The report as lines for the run summary (none when there is nothing to say beyond the classes)."""
    lines = []
    if "labels" in report:
        found = ", ".join(f"{name} ({count})" for name, count in report["labels"].items())
        lines.append(f"labels (training examples each): {found}")
    for label, written in report.get("label_spellings", {}).items():
        lines.append(f"labels written {', '.join(map(repr, written))} were read as {label!r}")
    if report.get("empty_texts"):
        where = ", ".join(f"{count} in {split}" for split, count in report["empty_texts"].items())
        lines.append(f"empty texts: {where} (the model sees only its special tokens for them)")
    return lines
