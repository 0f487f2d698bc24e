"""Continuous batching: one thread owns the model and runs every generation request, of any task, in steps.

Each step of the scheduler's loop

1. drops rows whose client went away (or that a stop text ended) and frees their slots at once;
2. runs one decoding forward per lane over all running rows: one new token per row, each row with its own
   position, task (the per-row ``task=[...]`` routing of :class:`~unipelt.model.UniPELTModel`, so every row
   gets its own LoRA, adapters, prefix and gates) and its own part of a :class:`RowCache`; finished rows leave;
3. prefills waiting requests with what is left of the step's token budget, each alone in its own cache (a long
   prompt in chunks over several steps); a prefilled request samples its first token and joins the running
   rows at the next step.

Rows of the plain base model (no task) run in a lane of their own under ``model.disabled()``. Caps:
``max_rows`` requests hold a row (prefilling or decoding) at once, and a step feeds at most ``max_step_tokens``
tokens through the model (decoding rows count one each). Greedy answers equal each request's answer alone:
masked cache columns get zero attention weight, and a request's prefix never enters the cache (it is added
inside attention, see :mod:`unipelt.inject.attention`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from unipelt.errors import UniPELTError
from unipelt.inference.row_cache import RowCache


@dataclass(frozen=True)
class Params:
    """How one request generates: at most ``max_tokens`` new tokens, ending early on any of ``stop_ids``;
    greedy when ``temperature`` is 0, else sampled with temperature and top-p from a generator seeded by
    ``seed`` (a fresh random seed when None)."""

    max_tokens: int
    stop_ids: frozenset[int] = frozenset()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(eq=False)
class Sequence:
    """One request as the scheduler sees it. ``emit(kind, value)`` is called from the scheduler's thread with
    ("token", id), then once ("finish", "stop" | "length" | "cancelled") or ("error", message)."""

    prompt: list[int]
    task: str | None  # None: the plain base model
    params: Params
    emit: Callable[[str, Any], None]
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: int = 0  # prompt tokens prefilled so far
    cache: DynamicCache | None = None
    generator: torch.Generator | None = None
    last: int | None = None  # the newest token, not yet in the cache


def pick_token(logits: torch.Tensor, params: Params, generator: torch.Generator | None) -> int:
    """The next token from one row's logits (V,): arg-max, or a draw from the temperature / top-p softmax."""
    if params.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1:
        ordered, order = probs.sort(descending=True)
        before = ordered.cumsum(0) - ordered  # mass of the tokens ranked above each one
        ordered = ordered.masked_fill(before >= params.top_p, 0)
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator))


class Lane:
    """Running rows that share one forward per step: the task rows, or the plain base model's rows."""

    def __init__(self, base: bool) -> None:
        self.base = base
        self.rows: list[Sequence] = []
        self.cache = RowCache()

    def keep(self, rows: list[Sequence]) -> None:
        index = {id(s): i for i, s in enumerate(self.rows)}
        self.cache.keep([index[id(s)] for s in rows])
        self.rows = rows


class Scheduler:
    """Owns ``model`` in one worker thread and generates for every submitted :class:`Sequence`."""

    def __init__(
        self, model: Any, max_rows: int = 16, max_step_tokens: int = 512, device: Any = None
    ) -> None:
        if max_rows < 1 or max_step_tokens <= max_rows:
            raise UniPELTError(
                f"continuous batching needs --max-running-rows >= 1 and --max-step-tokens above it "
                f"(got {max_rows} and {max_step_tokens})"
            )
        self.model, self.max_rows, self.max_step_tokens = model, max_rows, max_step_tokens
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.lanes = {False: Lane(False), True: Lane(True)}
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.stats = {"steps": 0, "tokens": 0, "prompt_tokens": 0, "cancelled": 0, "errors": 0}
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="unipelt-generation", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ thread-safe API

    def submit(self, sequence: Sequence) -> Sequence:
        if sequence.params.max_tokens < 1:
            raise UniPELTError("max_tokens must be at least 1")
        if sequence.params.temperature > 0:
            sequence.generator = torch.Generator()
            if sequence.params.seed is not None:
                sequence.generator.manual_seed(sequence.params.seed)
            else:
                sequence.generator.seed()
        with self._wake:
            if self._closed:
                raise UniPELTError("the generation scheduler is shut down")
            self.waiting.append(sequence)
            self._wake.notify()
        return sequence

    def cancel(self, sequence: Sequence) -> None:
        """Free the request's row at the next step (its client went away, or a stop text ended it)."""
        with self._wake:
            sequence.cancelled = True
            self._wake.notify()

    @property
    def running(self) -> int:
        """Requests holding a row: decoding or being prefilled."""
        return sum(len(lane.rows) for lane in self.lanes.values()) + len(self.prefilling)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # ---------------------------------------------------------------------------------- the loop

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self.waiting and not self.running:
                    self._wake.wait()
                if self._closed:
                    break
                self._drop_cancelled()
                while self.waiting and self.running < self.max_rows:
                    self.prefilling.append(self.waiting.popleft())
            with torch.inference_mode():
                self._step()
        for sequence in [
            *self.waiting,
            *self.prefilling,
            *(s for lane in self.lanes.values() for s in lane.rows),
        ]:
            sequence.emit("error", "the server is shutting down")

    def _drop_cancelled(self) -> None:
        for queue in (self.waiting, self.prefilling):
            gone = [s for s in queue if s.cancelled]
            for sequence in gone:
                queue.remove(sequence)
                self._finish(sequence, "cancelled")
        for lane in self.lanes.values():
            if any(s.cancelled for s in lane.rows):
                for sequence in [s for s in lane.rows if s.cancelled]:
                    self._finish(sequence, "cancelled")
                lane.keep([s for s in lane.rows if not s.cancelled])

    def _finish(self, sequence: Sequence, reason: str) -> None:
        sequence.cache = None
        if reason == "cancelled":
            self.stats["cancelled"] += 1
        sequence.emit("finish", reason)

    def _step(self) -> None:
        decoded = 0
        for lane in self.lanes.values():
            if lane.rows:
                decoded += len(lane.rows)
                self._guarded(lane.rows, lambda lane=lane: self._decode(lane), lane)
        budget = self.max_step_tokens - decoded
        for sequence in list(self.prefilling):
            if budget <= 0:
                break
            chunk = min(len(sequence.prompt) - sequence.done, budget)
            budget -= chunk
            self._guarded([sequence], lambda s=sequence, n=chunk: self._prefill(s, n), None)
        self.stats["steps"] += 1

    def _guarded(self, rows: list[Sequence], work: Callable[[], None], lane: Lane | None) -> None:
        """Run one forward's work; if the model fails, those rows end with the error and the server goes on."""
        try:
            work()
        except Exception as error:  # noqa: BLE001 - one failed forward must not stop the scheduler
            self.stats["errors"] += 1
            for sequence in rows:
                sequence.emit("error", f"generation failed: {type(error).__name__}: {error}")
            if lane is not None:
                lane.rows, lane.cache = [], RowCache()
            else:
                self.prefilling = [s for s in self.prefilling if s not in rows]

    def _forward(self, base: bool, tasks: list[str], **inputs: Any) -> torch.Tensor:
        """Logits of the last position of each row (B, V), through the rows' tasks or the plain base model."""
        routed = {} if base or not hasattr(self.model, "tasks") else {"task": tasks}
        context = self.model.disabled() if base and hasattr(self.model, "disabled") else nullcontext()
        with context:
            output = self.model(**inputs, use_cache=True, logits_to_keep=1, **routed)
        return output.logits[:, -1].float()

    def _prefill(self, sequence: Sequence, chunk: int) -> None:
        start = sequence.done
        ids = torch.tensor([sequence.prompt[start : start + chunk]], device=self.device)
        if sequence.cache is None:
            sequence.cache = DynamicCache()
        logits = self._forward(
            sequence.task is None,
            [sequence.task],
            input_ids=ids,
            position_ids=torch.arange(start, start + chunk, device=self.device)[None],
            cache=sequence.cache,
        )
        sequence.done += chunk
        self.stats["prompt_tokens"] += chunk
        if sequence.done < len(sequence.prompt):
            return
        self.prefilling.remove(sequence)
        if self._take(sequence, logits[0]):
            lane = self.lanes[sequence.task is None]
            lane.cache.add(sequence.cache, len(sequence.prompt))
            lane.rows.append(sequence)
        sequence.cache = None

    def _decode(self, lane: Lane) -> None:
        rows = lane.rows
        mask = lane.cache.step_mask()
        positions = torch.tensor([[len(s.prompt) + len(s.generated) - 1] for s in rows], device=self.device)
        logits = self._forward(
            lane.base,
            [s.task for s in rows],
            input_ids=torch.tensor([[s.last] for s in rows], device=self.device),
            attention_mask=mask,
            position_ids=positions,
            cache=lane.cache.cache,
        )
        lane.cache.stepped(mask)
        going = [s for s, row in zip(rows, logits) if self._take(s, row)]
        if len(going) != len(rows):
            lane.keep(going)

    def _take(self, sequence: Sequence, logits: torch.Tensor) -> bool:
        """Pick the sequence's next token and report it; False when the sequence has ended."""
        token = pick_token(logits, sequence.params, sequence.generator)
        if token in sequence.params.stop_ids:
            self._finish(sequence, "stop")
            return False
        sequence.generated.append(token)
        sequence.last = token
        self.stats["tokens"] += 1
        sequence.emit("token", token)
        if len(sequence.generated) >= sequence.params.max_tokens:
            self._finish(sequence, "length")
            return False
        return True
