"""The one typed form every data source is turned into: :class:`Example` rows inside a :class:`TaskData`.

GLUE files, the Hub fallback and the user's own tables all end up here, so the trainer, the metrics and the
inference code never need to know where the data came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

Label = int | float | None


@dataclass(frozen=True)
class Example:
    """One input: one or two texts and a class id (classification), a float (regression) or None (unlabelled)."""

    text_a: str
    text_b: str | None
    label: Label


@dataclass(frozen=True)
class TaskData:
    """Examples plus what the model head needs to know about their labels.

    ``label_list`` gives the name of each class id (``None`` for regression), so the head size and the
    ``id2label`` map come from the data and never from a guess. ``spellings`` maps a class name to the other
    ways the file wrote it (``1.0`` and ``+1`` for ``1``), so a run can say which labels it merged.
    """

    examples: list[Example]
    label_list: list[str] | None
    regression: bool
    source: str
    spellings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty_texts(self) -> int:
        """How many examples have an empty (or all-blank) text: the model sees only special tokens for them."""
        return sum(
            1
            for e in self.examples
            if isinstance(e, Example)
            and (not e.text_a.strip() or (e.text_b is not None and not e.text_b.strip()))
        )

    @property
    def num_labels(self) -> int:
        """Size of the output head: 1 for regression, else the number of classes."""
        return 1 if self.regression else len(self.label_list or [])

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]
