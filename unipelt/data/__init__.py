"""Task data: GLUE in its TSV layout, the user's own CSV/TSV/JSONL tables, the K-shot protocol, tokenisation.

Everything here turns raw files into one small typed form (:class:`TaskData`, a list of :class:`Example`) so the
trainer never has to know where the data came from. Every data problem a user can fix is raised as
:class:`~unipelt.errors.DataError` naming the file, the line and what to do about it.

The modules, one concern each: :mod:`~unipelt.data.examples` (the typed form), :mod:`~unipelt.data.files`
(line-numbered readers shared by the others), :mod:`~unipelt.data.glue` (task table, GLUE TSVs, Hub fallback),
:mod:`~unipelt.data.tables` (the user's files and their labels), :mod:`~unipelt.data.conll` (tagged sentences
for token classification), :mod:`~unipelt.data.token_align` (words to sub-tokens), :mod:`~unipelt.data.sampling`
(the paper's K-shot split) and :mod:`~unipelt.data.tokenize`. Import from ``unipelt.data``: the names below are
the API.
"""

from unipelt.data.conll import TokenData, TokenExample, is_token_file, load_hub_tokens, load_tokens
from unipelt.data.examples import Example, Label, TaskData
from unipelt.data.glue import DATA_DIR_ENV, GLUE_TASKS, GlueTask, glue_task, is_glue_task, load_glue
from unipelt.data.sampling import k_shot_split
from unipelt.data.tables import load_table
from unipelt.data.token_align import AlignmentReport, tokenize_tagged
from unipelt.data.tokenize import in_length_order, tokenize_examples

__all__ = [
    "DATA_DIR_ENV",
    "GLUE_TASKS",
    "AlignmentReport",
    "Example",
    "GlueTask",
    "Label",
    "TaskData",
    "TokenData",
    "TokenExample",
    "glue_task",
    "in_length_order",
    "is_glue_task",
    "is_token_file",
    "k_shot_split",
    "load_glue",
    "load_hub_tokens",
    "load_table",
    "load_tokens",
    "tokenize_examples",
    "tokenize_tagged",
]
