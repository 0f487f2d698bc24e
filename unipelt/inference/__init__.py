"""Using finished runs: evaluate them on any labelled data and predict labels or scores for new texts.

:class:`~unipelt.inference.runs.Run` opens a run folder written by training; :func:`read_inputs` reads the texts
to predict from a table, a plain file or standard input.
"""

from unipelt.data.inputs import read_inputs
from unipelt.inference.runs import Run

__all__ = ["Run", "read_inputs"]
