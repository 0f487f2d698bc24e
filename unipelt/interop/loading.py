"""Foreign adapter folders as tasks: recognise the format, build the equivalent task, fill its weights.

:meth:`UniPELTModel.load_task` asks :func:`foreign_reader` first; a folder it does not recognise is read as a
unipelt checkpoint. :func:`start_from` is ``unipelt train --init-from``: the run's method decides the modules
and gates, and the foreign adapter's tensors are the starting point of the modules it has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from unipelt.config import UniPELTConfig
from unipelt.errors import UniPELTError
from unipelt.interop.adapterhub import is_adapterhub_folder, read_adapterhub
from unipelt.interop.peft_import import Imported, is_peft_folder, read_peft

# Format name -> (does this folder hold it, reader). Checked in order; unipelt's own checkpoints are the default.
READERS: dict[str, tuple[Callable[[Path], bool], Callable[[Any, Path], Imported]]] = {
    "peft": (is_peft_folder, read_peft),
    "adapterhub": (is_adapterhub_folder, read_adapterhub),
}


def register_reader(name: str, detect: Callable[[Path], bool], read: Callable[[Any, Path], Imported]) -> None:
    """Make ``load_task`` and ``--init-from`` read another folder format."""
    READERS[name] = (detect, read)


def foreign_format(path: str | Path) -> str | None:
    """The registered format of a folder, or None (a unipelt checkpoint, or nothing readable)."""
    path = Path(path)
    if not path.is_dir():
        return None
    return next((name for name, (detect, _) in READERS.items() if detect(path)), None)


def read_foreign(model: Any, path: str | Path) -> Imported:
    name = foreign_format(path)
    if name is None:
        raise UniPELTError(f"{path} is not a PEFT or AdapterHub adapter folder")
    return READERS[name][1](model, Path(path))


def _build(model: Any, name: str, config: UniPELTConfig, imported: Imported, **task: Any) -> Any:
    head = list(model.arch.head) + [p for p in imported.head_modules if p not in model.arch.head]
    num_labels = task.pop("num_labels", None) or imported.num_labels
    return model.add_task(name, config, num_labels=num_labels, head_modules=head, **task)


def _fill(model: Any, name: str, task: Any, state: dict, source: str) -> None:
    own = task.added_state_dict()
    stray = sorted(set(state) - set(own))
    if stray:
        raise UniPELTError(f"{source}: tensors {stray[:4]} have no place in the equivalent unipelt task")
    model.load_added_state_dict({**own, **state}, task=name, source=source)


def load_foreign(model: Any, name: str, path: str | Path, **task: Any) -> Any:
    """Add task ``name`` holding the adapter of a PEFT or AdapterHub folder (same outputs as there)."""
    imported = read_foreign(model, path)
    built = _build(model, name, imported.config, imported, **task)
    try:
        _fill(model, name, built, imported.state, imported.source)
    except BaseException:
        model.remove_task(name)
        raise
    return built


# Fields of a config that size each module kind: taken from the foreign adapter so its tensors fit.
SIZES = {
    "lora": ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets"),
    "prefix": ("prefix_length",),
    "adapter": ("adapter_size", "adapter_activation"),
}


def start_from(model: Any, name: str, config: UniPELTConfig, path: str | Path, **task: Any) -> Any:
    """Add task ``name`` with the modules and gates of ``config``, started from a foreign adapter's weights.

    The adapter's kinds must be among the method's modules. Under an ungated method the start is the
    adapter exactly; a gated method adds its gates (the gate then scales what was the whole update; a LoRA's
    alpha / r is folded into B so that a gate of 1 is the adapter). A prefix starts as stored vectors (no
    reparameterisation MLP can be recovered from them)."""
    imported = read_foreign(model, path)
    kinds = imported.config.modules
    missing = [k for k in kinds if k not in config.modules]
    if missing:
        raise UniPELTError(
            f"{path} holds {', '.join(missing)}, which the method ({', '.join(config.modules)}) does not "
            "have; choose a method with it (e.g. --method " + missing[0] + ")"
        )
    overrides = {f: getattr(imported.config, f) for k in kinds for f in SIZES.get(k, ())}
    if "ia3" in kinds:
        overrides["ia3_targets"] = imported.config.option("ia3_targets")
    if "prefix" in kinds:
        overrides.update(prefix_reparam=False, prefix_form="concat")  # the imported vectors, as they are
    config = config.replace(**overrides)
    state = dict(imported.state)
    if config.gate != "none":
        scale = imported.config.lora_alpha / imported.config.lora_rank
        state = {k: v * scale if k.endswith("lora_B.weight") else v for k, v in state.items()}
    built = _build(model, name, config, imported, **task)
    try:
        _fill(model, name, built, state, imported.source)
    except BaseException:
        model.remove_task(name)
        raise
    return built
