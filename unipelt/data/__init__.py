"""Task data: GLUE, the user's own tables, the K-shot protocol, tokenisation (being split into modules)."""

from unipelt.data.glue import (
    DATA_DIR_ENV,
    GLUE_TASKS,
    Example,
    GlueTask,
    Label,
    TaskData,
    glue_task,
    is_glue_task,
    k_shot_split,
    load_glue,
    load_table,
    tokenize_examples,
)

__all__ = [
    "DATA_DIR_ENV",
    "GLUE_TASKS",
    "Example",
    "GlueTask",
    "Label",
    "TaskData",
    "glue_task",
    "is_glue_task",
    "k_shot_split",
    "load_glue",
    "load_table",
    "tokenize_examples",
]
