"""Shared timing helpers for the cost benchmarks (ours and the peers'): inputs, interleaved timing, workloads.

This module imports only ``torch``, the standard library and :mod:`machine` (same folder), so it can be used from
our venv (transformers 5.x) and from ``benchmarks/.venv-adapters`` (adapters 1.3.0 + transformers 4.57) alike.
The cost scripts in this folder put the folder on ``sys.path`` and import it as ``timing``.

Protocol (the same for every library measured):

* inputs: :func:`make_batch` (seeded random token ids, full length, no padding, all-ones attention mask);
* latency: :func:`time_interleaved` runs the callables of all methods in the same process, round-robin,
  with the order rotated each round, so that slow drifts of the machine hit every method alike; report the
  :func:`median` (or :func:`summarize`).  On a machine shared with other jobs, :func:`time_until_clean` adds
  rounds until each method has enough calls during which no other process used the CPU (multi-threaded
  torch slows down several-fold when another process takes a core);
* inference: :func:`inference_fn` (``torch.inference_mode``, caller puts the model in eval mode);
* training: :func:`train_step_fn` (zero_grad, forward, loss, backward, optimizer step);
* memory and the machine's load: :mod:`machine`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from benchmarks.machine import foreign_cpu_s

__all__ = [
    "count_params",
    "inference_fn",
    "is_clean",
    "make_batch",
    "median",
    "set_threads",
    "summarize",
    "synchronize",
    "time_interleaved",
    "time_until_clean",
    "train_step_fn",
]


# --------------------------------------------------------------------------------------------- setup
def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (``None`` or <= 0: all visible cores) and return it."""
    if n is None or n <= 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return torch.get_num_threads()


def make_batch(
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    *,
    seed: int = 0,
    num_labels: int | None = None,
    device: str | torch.device = "cpu",
    cls_id: int | None = 101,
    sep_id: int | None = 102,
) -> dict[str, torch.Tensor]:
    """Deterministic model inputs: ``input_ids`` and ``attention_mask`` (and ``labels`` if ``num_labels``).

    Token ids are drawn uniformly from ``[1000, vocab_size)`` with a seeded CPU generator (so every library
    and every device gets the same ids); the first/last positions hold ``cls_id``/``sep_id`` when given.
    ``num_labels == 1`` gives float regression targets in [0, 5); ``>= 2`` integer class labels.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab_size - 1), vocab_size, (batch_size, seq_len), generator=gen)
    if cls_id is not None and cls_id < vocab_size:
        ids[:, 0] = cls_id
    if sep_id is not None and sep_id < vocab_size:
        ids[:, -1] = sep_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if num_labels is not None:
        if num_labels == 1:
            batch["labels"] = torch.rand(batch_size, generator=gen) * 5.0
        else:
            batch["labels"] = torch.randint(0, num_labels, (batch_size,), generator=gen)
    return {k: v.to(device) for k, v in batch.items()}


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------------------------- timing
def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    *,
    sync: Callable[[], None] | None = None,
    rotate: bool = True,
    noise_out: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time several callables round-robin in one process; return seconds per call for each name.

    Each callable is first run ``warmup`` times (untimed, also round-robin).  Then ``repeats`` rounds follow;
    in each round every callable runs once, timed with ``time.perf_counter`` (``sync`` is called before
    starting and before stopping the clock, e.g. ``torch.cuda.synchronize``).  With ``rotate`` the order is
    shifted by one each round, so no method always follows the same neighbour.  If ``noise_out`` is given it
    receives, per name and call, the CPU seconds that OTHER processes used during that call
    (:func:`foreign_cpu_s`; NaN where unknown).
    """
    names = list(fns)
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        _one_round(fns, names, r if rotate else 0, sync, times, noise_out)
    return times


def _one_round(fns, names, offset, sync, times, noise_out) -> None:
    k = offset % len(names) if names else 0
    for name in names[k:] + names[:k]:
        sync()
        f0 = foreign_cpu_s() if noise_out is not None else None
        t0 = time.perf_counter()
        fns[name]()
        sync()
        times[name].append(time.perf_counter() - t0)
        if noise_out is not None:
            f1 = foreign_cpu_s()
            noise_out.setdefault(name, []).append(
                f1 - f0 if f0 is not None and f1 is not None else float("nan")
            )


def is_clean(seconds: float, foreign_s: float, max_foreign_cores: float = 0.15) -> bool:
    """Whether a call of ``seconds`` ran (nearly) alone: other processes used under ``max_foreign_cores``
    cores on average, or at most one 10 ms clock tick (the resolution of /proc/stat) for short calls."""
    if foreign_s != foreign_s:  # NaN: unknown, count as clean
        return True
    return foreign_s <= max(0.0105, max_foreign_cores * seconds)


def time_until_clean(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    *,
    max_rounds: int | None = None,
    max_foreign_cores: float = 0.15,
    sync: Callable[[], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[bool]]]:
    """Like :func:`time_interleaved`, but on a shared machine: keep adding interleaved rounds until every
    callable has ``repeats`` calls during which other processes stayed (nearly) idle (:func:`is_clean`), or
    ``max_rounds`` (default ``4 * repeats``) rounds were run.

    Returns ``(times, clean)``: all timings per name, and per call whether it was clean.  Use
    ``[t for t, c in zip(times[n], clean[n]) if c]`` for the clean sample.
    """
    names = list(fns)
    sync = sync or (lambda: None)
    max_rounds = max_rounds if max_rounds is not None else 4 * repeats
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    noise: dict[str, list[float]] = {name: [] for name in names}
    r = 0
    while r < max(repeats, max_rounds):
        _one_round(fns, names, r, sync, times, noise)
        r += 1
        clean = {n: [is_clean(t, f, max_foreign_cores) for t, f in zip(times[n], noise[n])] for n in names}
        if r >= repeats and all(sum(c) >= repeats for c in clean.values()):
            break
    clean = {n: [is_clean(t, f, max_foreign_cores) for t, f in zip(times[n], noise[n])] for n in names}
    return times, clean


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(xs))


def summarize(xs: Sequence[float]) -> dict[str, float]:
    """``{"median", "p25", "p75", "min", "max", "n"}`` of a list of timings (seconds)."""
    xs = sorted(float(x) for x in xs)
    if len(xs) >= 2:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        p25, p75 = q[0], q[2]
    else:
        p25 = p75 = xs[0]
    return {"median": median(xs), "p25": p25, "p75": p75, "min": xs[0], "max": xs[-1], "n": len(xs)}


def inference_fn(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> Callable[[], object]:
    """A no-argument callable running one forward pass under ``torch.inference_mode`` (labels dropped).

    The caller is responsible for ``model.eval()``.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def run() -> object:
        with torch.inference_mode():
            return model(**inputs)

    return run


def _loss_from_output(out: object, labels: torch.Tensor | None) -> torch.Tensor:
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, dict):
        loss = out.get("loss")
    if loss is not None:
        return loss
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, (tuple, list)) else out
    if labels is not None and logits.dim() == 2 and logits.shape[-1] > 1 and not labels.is_floating_point():
        return torch.nn.functional.cross_entropy(logits.float(), labels)
    if labels is not None and labels.is_floating_point():
        return torch.nn.functional.mse_loss(logits.float().view(-1), labels.float().view(-1))
    return logits.float().pow(2).mean()


def train_step_fn(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> Callable[[], float]:
    """A no-argument callable doing one training step; returns the loss as a float.

    Step = ``optimizer.zero_grad(set_to_none=True)``, ``model(**batch)``, loss (the model's own ``loss`` when
    ``labels`` are in the batch and the model computes it; else cross-entropy / MSE on the logits),
    ``backward()``, ``optimizer.step()``.  ``loss.item()`` synchronises the device.  The caller puts the
    model in train mode and builds the optimizer over the trainable parameters only.
    """
    labels = batch.get("labels")

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        out = model(**batch)
        loss = _loss_from_output(out, labels)
        loss.backward()
        optimizer.step()
        return float(loss.detach().item())

    return step


def count_params(model: torch.nn.Module, exclude: Sequence[str] = ()) -> dict[str, int]:
    """``{"total", "trainable"}`` parameter counts; names containing any ``exclude`` substring are skipped."""
    total = trainable = 0
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or any(s in name for s in exclude):
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return {"total": total, "trainable": trainable}
