"""Files and folders written atomically: a crash while writing leaves the old version or the new one, never a
half-written file. Files are written into a fresh sibling, flushed to disk and renamed into place.

A full, over-quota or read-only disk under any write here (or in a block wrapped in :func:`writing`) comes out as
one ``OSError`` with its errno and the path being written, whichever library wrote (safetensors and torch.save
report it in their own ways), so the command line can say in one line what failed and where. Tests set ``UNIPELT_TEST_DISK_FULL_AT`` to a glob of a path
written here (``*/checkpoint-4/unipelt``) to make that write fail with ``ENOSPC``, as a full disk would; unset
(always, outside tests) it costs one dictionary look-up per write.

A leaf module (standard library only) so that any layer can write its files without loading
torch.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

DISK_FULL_ENV = "UNIPELT_TEST_DISK_FULL_AT"
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""A full disk, a used-up quota, a read-only file system: what no retry fixes and the user must."""


def disk_errno(error: BaseException, path: str | Path | None = None) -> int | None:
    """ENOSPC, EDQUOT or EROFS when ``error`` comes from a full, over-quota or read-only disk, else None.

    Safetensors reports the OS error only in its text (``I/O error: No space left on device (os error 28)``);
    torch.save raises a
    RuntimeError that does not say why (``file write failed``, ``unexpected pos ...``), so for that one the
    file system of ``path`` is asked whether it is read-only or has less than 1 MiB left."""
    if isinstance(error, OSError):
        return error.errno if error.errno in DISK_ERRNOS else None
    text = str(error)
    match = re.search(r"\(os error (\d+)\)|Os \{ code: (\d+)", text)
    if match:
        code = int(match.group(1) or match.group(2))
        return code if code in DISK_ERRNOS else None
    if path is not None and isinstance(error, RuntimeError):
        for folder in (Path(path), *Path(path).parents):
            with contextlib.suppress(OSError):
                stat = os.statvfs(folder)
                if stat.f_flag & os.ST_RDONLY:
                    return errno.EROFS
                return errno.ENOSPC if stat.f_bavail * stat.f_frsize < 1 << 20 else None
    return None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Run a block that writes ``path``: a full, over-quota or read-only disk under it, however the library
    that wrote reported it, comes out as an ``OSError`` with that errno and the path being written."""
    try:
        yield
    except Exception as error:
        code = disk_errno(error, path)
        if code is None or (isinstance(error, OSError) and error.filename):
            raise
        raise OSError(code, os.strerror(code), str(path)) from error


def _test_disk_full(path: Path) -> None:
    """The test hook of the module docstring: fail this write as a full disk would."""
    pattern = os.environ.get(DISK_FULL_ENV)
    if pattern and fnmatch.fnmatch(str(path), pattern):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_directory(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` and then move tmp_dir to ``target`` in one rename."""
    target = Path(target).resolve()
    with writing(target):
        return _atomic_directory(target, write)


def _atomic_directory(target: Path, write: Callable[[Path], None]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _test_disk_full(target)
        write(tmp)
        for file in tmp.iterdir():
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        _fsync_dir(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success flush, fsync and rename it into place."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            _test_disk_full(path)
            with os.fdopen(fd, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small file via a temporary sibling and a rename."""
    with atomic_file(path) as handle:
        handle.write(text)


def write_json(path: str | Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
