"""What the machine is doing while the cost benchmarks run: peak memory of a workload, CPU used by other
processes, hypervisor steal, and a description of the hardware and package versions to store with the numbers.

Like :mod:`timing`, this imports only ``torch`` and the standard library, so every venv can use it.

* memory: :func:`measure_peak` (peak RSS delta on CPU through ``/proc/self/clear_refs`` + ``VmHWM``, or
  ``torch.cuda.max_memory_allocated`` delta on GPU); run it in a fresh process per method
  (:func:`run_json_child` / :func:`emit_child_result`) so that allocator caches of other methods do not hide
  the peak;
* load: :func:`foreign_cpu_s`, :func:`cpu_steal_s` and :func:`wait_for_quiet` say how busy the machine was
  around a timing loop; :func:`machine_info` describes it.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import torch

CHILD_MARKER = "@@TIMING_CHILD_RESULT@@"

__all__ = [
    "CHILD_MARKER",
    "cpu_steal_s",
    "current_rss_mb",
    "emit_child_result",
    "foreign_cpu_s",
    "machine_info",
    "measure_peak",
    "peak_rss_mb",
    "reset_peak_rss",
    "run_json_child",
    "wait_for_quiet",
]


# --------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """Resident set size now, in MiB (``VmRSS``; falls back to the peak where /proc is missing)."""
    kb = _status_kb("VmRSS")
    return kb / 1024.0 if kb is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Uses ``VmHWM`` (resettable with :func:`reset_peak_rss`) where Linux provides it, else
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS; never reset).
    """
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process; False if not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(
    workload: Callable[[], object],
    device: str | torch.device = "cpu",
) -> dict[str, float | str | bool]:
    """Run ``workload`` once and report the memory it needed beyond what was already allocated.

    CPU: ``peak_mb`` = peak RSS during the workload minus RSS before it (``baseline_mb``); the peak counter
    is reset first (``peak_reset`` False means it could not be, so the peak also covers earlier phases such as
    model loading).  GPU: the same with ``torch.cuda.memory_allocated`` / ``max_memory_allocated``.
    Call it in a fresh process per method (see :func:`run_json_child`).
    """
    dev = torch.device(device)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
        workload()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
        return {
            "kind": "cuda_max_memory_allocated",
            "baseline_mb": base,
            "peak_abs_mb": peak,
            "peak_mb": peak - base,
            "peak_reset": True,
        }
    base = current_rss_mb()
    was_reset = reset_peak_rss()
    workload()
    peak = peak_rss_mb()
    return {
        "kind": "rss_vmhwm" if was_reset else "rss_ru_maxrss",
        "baseline_mb": base,
        "peak_abs_mb": peak,
        "peak_mb": max(0.0, peak - base),
        "peak_reset": was_reset,
    }


def emit_child_result(result: Mapping[str, object]) -> None:
    """Print ``result`` as the one JSON line that :func:`run_json_child` picks up."""
    print(CHILD_MARKER + json.dumps(result), flush=True)


ROOT = Path(__file__).resolve().parents[1]


def entry_point() -> list[str]:
    """The command that starts the running benchmark again (``python -m benchmarks.NAME``), for child processes."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is None:
        raise RuntimeError(
            "run the benchmarks as modules from the repository root: python -m benchmarks.NAME"
        )
    return [sys.executable, "-m", spec.name]


def child_env() -> dict[str, str]:
    """This process's environment with the repository root on PYTHONPATH (children import ``benchmarks``)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def run_json_child(
    argv: Sequence[str], timeout: float | None = None, env: Mapping[str, str] | None = None
) -> dict:
    """Run ``argv`` in a fresh process and return the dict it printed with :func:`emit_child_result`.

    Raises ``RuntimeError`` (with the tail of stderr) if the child fails or prints no result.
    """
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER) :])
    raise RuntimeError(f"child {argv!r} exited {proc.returncode} without a result:\n{proc.stderr[-3000:]}")


# --------------------------------------------------------------------------------------------- context
def _proc_stat_cpu() -> list[int] | None:
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return [int(x) for x in fields[1:]]
    except (OSError, ValueError):
        return None


def foreign_cpu_s() -> float | None:
    """Cumulative CPU seconds (all cores) used by processes OTHER than this one; None if unknown.

    System-wide busy time from /proc/stat (user, nice, system, irq, softirq) minus this process's own user +
    system time.  Take the difference around a timing loop: on a shared machine, other processes competing for
    the cores make multi-threaded torch timings slow and erratic, and this says by how much they ran.
    """
    t = _proc_stat_cpu()
    if t is None or len(t) < 7:
        return None
    busy = (t[0] + t[1] + t[2] + t[5] + t[6]) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy - (own.user + own.system)


def wait_for_quiet(
    max_wait_s: float = 0.0, threshold_cores: float = 0.25, window_s: float = 2.0
) -> float | None:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold_cores`` cores.

    Samples :func:`foreign_cpu_s` over ``window_s`` windows; returns the last measured foreign load in cores
    (None where /proc is missing).  ``max_wait_s == 0`` measures one window and returns at once.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        a = foreign_cpu_s()
        time.sleep(window_s)
        b = foreign_cpu_s()
        if a is None or b is None:
            return None
        load = max(0.0, (b - a) / window_s)
        if load < threshold_cores or time.monotonic() >= deadline:
            return load


def cpu_steal_s() -> float | None:
    """Cumulative CPU time (seconds, all cores) stolen by the hypervisor, from /proc/stat; None if unknown.

    Take the difference around a timing loop: a large value means the host was busy and timings are noisy.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(packages: Sequence[str] = ("transformers", "adapters", "peft")) -> dict[str, object]:
    """Machine / software context to store next to the numbers (versions of ``packages`` if installed)."""
    info: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for pkg in packages:
        v = _version(pkg)
        if v is not None:
            info[pkg] = v
    return info
