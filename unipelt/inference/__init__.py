"""Using finished runs: evaluate them on any labelled data and predict labels or scores for new texts.

:class:`~unipelt.inference.runs.Run` opens a run folder written by training; :func:`read_inputs` reads the texts
to predict from a table, a plain file or standard input.
"""

from unipelt.inference.runs import Run, read_inputs

__all__ = ["Run", "read_inputs"]
