"""Forward-pass timing on this machine: inference ratios to the base model, and the per-unit latency table.

Timings interleave the models rep by rep (base, model A, model B, base, ...) and take the median, so a burst
of load from other processes hits every model alike; on a shared machine the ratios are still noisy to a few
percent, which the reports say. Inputs are random token ids with no padding, the shape given (batch x length).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from unipelt.running.loop import model_device

SHAPES = ((1, 128), (32, 128))


def random_batch(
    vocab_size: int, batch: int, length: int, seed: int = 0, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Random token ids (the same for a seed on every device) and a full attention mask, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(6, vocab_size), (batch, length), generator=generator).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _timed(call: Callable[[dict[str, torch.Tensor]], Any], inputs: dict[str, torch.Tensor]) -> float:
    """Seconds of one call; on a GPU the queued kernels are waited for before and after."""
    cuda = inputs["input_ids"].is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    call(inputs)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _reps(batch: int, length: int) -> tuple[int, int]:
    """(warm-up, timed) repetitions: more for small, fast shapes."""
    tokens = batch * length
    if tokens <= 256:
        return 5, 40
    if tokens <= 1024:
        return 3, 15
    return 2, 7


@torch.inference_mode()
def median_times(
    models: dict[str, Callable[[dict[str, torch.Tensor]], Any]],
    inputs: dict[str, torch.Tensor],
    reps: int | None = None,
    warmup: int | None = None,
) -> dict[str, float]:
    """Median seconds of one forward per model, measured interleaved."""
    default_warmup, timed = _reps(*inputs["input_ids"].shape)
    timed = reps or timed
    warmup = default_warmup if warmup is None else warmup
    for _ in range(warmup):
        for call in models.values():
            call(inputs)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(timed):
        for name, call in models.items():
            samples[name].append(_timed(call, inputs))
    return {name: statistics.median(values) for name, values in samples.items()}


def inference_ratios(
    base: torch.nn.Module,
    models: dict[str, torch.nn.Module],
    vocab_size: int,
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    reps: dict[str, tuple[int, int]] | None = None,
) -> dict[str, dict[str, float]]:
    """Per shape ``"BxT"``: base milliseconds and each model's time as a ratio to the base model's, with inputs
    on the base model's device.

    ``reps`` may set (warm-up, timed) repetitions per shape, e.g. ``{"32x128": (1, 3)}`` on a slow machine."""
    device = model_device(base)
    calls = {"base": lambda batch: base(**batch)}
    for name, model in models.items():
        calls[name] = lambda batch, _model=model: _model(**batch)
    result = {}
    for batch, length in shapes:
        warmup, timed = (reps or {}).get(f"{batch}x{length}", (None, None))
        times = median_times(calls, random_batch(vocab_size, batch, length, device=device), timed, warmup)
        result[f"{batch}x{length}"] = {
            "base_ms": round(1000 * times["base"], 3),
            **{name: round(times[name] / times["base"], 4) for name in models},
        }
    return result
