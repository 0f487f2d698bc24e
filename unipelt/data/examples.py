"""The one typed form every data source is turned into: :class:`Example` rows inside a :class:`TaskData`.

GLUE files, the Hub fallback and the user's own tables all end up here, so the trainer, the metrics and the
inference code never need to know where the data came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
    ``id2label`` map come from the data and never from a guess.
    """

    examples: list[Example]
    label_list: list[str] | None
    regression: bool
    source: str

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
