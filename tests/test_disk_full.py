"""A disk that fills (or goes read-only) while a run saves: one line saying what was being written, the space left,
and which complete checkpoint `--resume` continues from; exit status 2; the resumed run ends like an
uninterrupted one.

Two ways to fill the disk, both on real `unipelt train` processes: the declared test hook of unipelt/atomic.py
(``UNIPELT_TEST_DISK_FULL_AT``: the write of a chosen path fails with ENOSPC), and, where this process may mount
one, a real 64 MB tmpfs that the test fills up while the run is training.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError
from tiny_runs import tiny_run_config

from unipelt.atomic import DISK_FULL_ENV, disk_errno, writing
from unipelt.errors import DiskFullError
from unipelt.training import train
from unipelt.training.resume import COMPLETE_NAME

pytestmark = pytest.mark.slow


def _args(model: Path, glue: Path, out: Path, epochs: int) -> list[str]:
    return [
        "train", "--model", str(model), "--data-dir", str(glue), "--task", "rte", "--method", "unipelt",
        "--k", "16", "--n-valid", "16", "--epochs", str(epochs), "--batch-size", "8", "--max-length", "64",
        "--threads", "1", "--patience", "10", "--lr", "1e-2", "--out", str(out),
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    if DISK_FULL_ENV not in extra:
        env.pop(DISK_FULL_ENV, None)
    return env


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "unipelt.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env(**env))


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    # progress bars share the terminal line: the error starts where its prefix does
    return [
        line[line.index("unipelt: error:") :] for line in stderr.splitlines() if "unipelt: error:" in line
    ]


def _assert_same_end(resumed_dir: Path, straight: dict) -> None:
    resumed = json.loads((resumed_dir / "metrics.json").read_text())
    assert resumed["steps"] == straight["steps"]
    assert resumed["best_checkpoint_step"] == straight["best_checkpoint_step"]
    for split in ("valid", "test"):
        for name, value in straight[split].items():
            assert resumed[split][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (split, name)


def test_a_full_disk_in_a_checkpoint_save_is_one_line_and_resume_continues_exactly(
    tiny_model_dir, glue_dir, tmp_path
):
    straight = train(tiny_run_config(tiny_model_dir, glue_dir, tmp_path / "straight", epochs=3))
    out = tmp_path / "full"
    args = _args(tiny_model_dir, glue_dir, out, epochs=3)
    failed = _cli(args, **{DISK_FULL_ENV: "*/trainer/checkpoint-4/unipelt"})
    assert failed.returncode == 2
    (line,) = _error_lines(failed.stderr)
    prefix = f"unipelt: error: no space left on the device while writing {out / 'trainer' / 'checkpoint-4' / 'unipelt'} ("
    assert line.startswith(prefix) and " free there); " in line, line
    assert line.endswith(
        f"the last complete checkpoint, {out / 'trainer' / 'checkpoint-2'}, is intact: free some space and run "
        "the same command with --resume to continue from it"
    )
    resumed = _cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'trainer' / 'checkpoint-2'}" in resumed.stderr
    _assert_same_end(out, straight)


def test_a_full_disk_in_the_final_writes_keeps_the_checkpoints_to_resume_from(
    tiny_model_dir, glue_dir, tmp_path
):
    out = tmp_path / "full"
    args = _args(tiny_model_dir, glue_dir, out, epochs=2)
    failed = _cli(args, **{DISK_FULL_ENV: "*/full/metrics.json"})
    assert failed.returncode == 2
    (line,) = _error_lines(failed.stderr)
    assert f"while writing {out / 'metrics.json'} (" in line and "checkpoint-4, is intact" in line, line
    assert _cli([*args, "--resume"]).returncode == 0 and (out / "metrics.json").is_file()


@pytest.fixture
def tmpfs(tmp_path):
    """A real 64 MB file system (needs the right to mount: root in a container, else the test is skipped)."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    for size in (1 << 20, 4096, 1):
        fd = os.open(folder / f"filler-{size}", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * size)
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(fd)


def test_a_really_full_file_system(tiny_model_dir, glue_dir, tmp_path, tmpfs):
    straight = train(tiny_run_config(tiny_model_dir, glue_dir, tmp_path / "straight", epochs=8))
    out = tmpfs / "run"
    args = _args(tiny_model_dir, glue_dir, out, epochs=8)
    command = [sys.executable, "-m", "unipelt.cli", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    mark = out / "trainer" / "checkpoint-4" / COMPLETE_NAME
    deadline = time.monotonic() + 300
    while not mark.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    _fill(tmpfs)  # the disk fills while the run trains: its next write fails with a real ENOSPC
    stderr = process.communicate(timeout=600)[1]
    assert process.returncode == 2, stderr[-3000:]
    (line,) = _error_lines(stderr)
    assert (
        line.startswith("unipelt: error: no space left on the device while writing ")
        and " free there); " in line
    )
    assert "is intact: free some space and run the same command with --resume to continue from it" in line, (
        line
    )
    for filler in tmpfs.glob("filler-*"):
        filler.unlink()
    resumed = _cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_end(out, straight)


def test_how_libraries_report_a_full_disk_is_recognised(tmp_path):
    text = "Error while serializing: I/O error: No space left on device (os error 28)"
    assert disk_errno(SafetensorError(text)) == errno.ENOSPC
    assert (
        disk_errno(SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"))
        is None
    )
    assert disk_errno(OSError(errno.EDQUOT, "Disk quota exceeded")) == errno.EDQUOT
    assert (
        disk_errno(RuntimeError("unexpected pos 434368 vs 434256"), tmp_path) is None
    )  # this disk is not full
    with pytest.raises(OSError) as caught, writing(tmp_path / "weights"):
        raise SafetensorError(text)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(tmp_path / "weights"))
    message = str(DiskFullError.writing(tmp_path / "x", errno.EROFS))
    assert (
        message.startswith(f"the file system is read-only while writing {tmp_path / 'x'} (")
        and "\n" not in message
    )
