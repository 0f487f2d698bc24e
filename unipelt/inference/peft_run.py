"""``unipelt export RUN --format peft``: a finished run's task as a PEFT adapter folder with a model card.

The task is loaded unmerged (an autopelt plan's folded LoRA pairs stay pairs, with their constant in B), so
what PEFT gets is the task as it runs; :mod:`unipelt.interop.peft_export` refuses what PEFT cannot express.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unipelt.checkpoint import WEIGHTS_NAME, task_folders
from unipelt.errors import UniPELTError
from unipelt.inference.runs import Run
from unipelt.interop.peft_export import WEIGHTS_FILE, save_peft
from unipelt.training.model_card import write_card


def _bytes(folder: Path, name: str) -> int:
    return sum(file.stat().st_size for file in folder.rglob(name))


def export_peft_run(run_folder: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the run's task to ``out`` as PEFT adapter(s) + README.md; returns the files' sizes."""
    from unipelt.backbones import load_base_model
    from unipelt.model import UniPELTModel

    run = Run(run_folder)
    if not run.method.adds_modules:
        raise UniPELTError(f"{run_folder} is a full fine-tuning run: it has no adapter to export to PEFT")
    folders = task_folders(run.folder / "checkpoint")
    if len(folders) != 1:
        raise UniPELTError(f"{run_folder} holds {len(folders)} tasks; a PEFT folder holds one")
    ((name, checkpoint),) = folders.items()
    tokenizer = run.kind.load_preprocessor(run.folder / "tokenizer", local=True)
    base = load_base_model(
        run.config.model,
        run.kind.head,
        labels=run.labels,
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
    )
    model = UniPELTModel(base)
    model.load_task(name, checkpoint, merge_plan=False)
    folder = save_peft(model, name, out, run=str(run_folder))
    write_card(run.folder, folder, peft=True)
    return {
        "folder": str(folder),
        "peft_bytes": _bytes(folder, WEIGHTS_FILE),
        "unipelt_bytes": _bytes(checkpoint, WEIGHTS_NAME),
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
    }
