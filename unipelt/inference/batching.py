"""Batching: requests that arrive close together (for any tasks) are answered by shared forwards.

Callers (the web server's request handlers) :meth:`~TokenBatcher.submit` their tokenised rows and get a
:class:`concurrent.futures.Future`. One worker thread owns the engine. Two policies:

- :class:`TokenBatcher` (the default): never waits. When the model is free it takes the oldest waiting row and
  fills a forward with waiting rows of the same length bucket (and model group) in arrival order, until the
  forward's padded size (rows x longest row) would pass ``max_tokens``. A lone request runs at once; under load
  the requests that queued during a forward share the next one, and a short row is never padded to a long one
  (lengths in one bucket differ by at most 1.25x above 32 tokens). A request's rows may be spread over several forwards; it
  is answered when its last row is.
- :class:`DynamicBatcher`: the first request of a batch waits up to ``max_wait_ms`` for others, up to
  ``max_batch`` rows of any lengths; with ``batching=False`` every request is run alone. Kept as the baseline
  of the load benchmark.

Both bound the number of requests waiting (``max_queue``): one more raises :class:`Overloaded` (HTTP 429 with
Retry-After, estimated from the recent time per row). An exception in a forward fails the requests in that
forward only; the worker keeps serving.
"""

from __future__ import annotations

import bisect
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from unipelt.inference.http_errors import Overloaded
from unipelt.inference.served_tasks import Row

Forward = Callable[[Sequence[Row], bool], tuple[list[Any], list[dict] | None]]
Observer = Callable[..., None]  # (rows, tasks, real tokens, padded tokens)
BUCKETS = (
    8,
    12,
    16,
    20,
    24,
    28,
    32,
    40,
    48,
    56,
    64,
    80,
    96,
    112,
    128,
    160,
    192,
    224,
    256,
    320,
    384,
    448,
    512,
)
BUCKETS += tuple(640 * 5**i // 4**i for i in range(12))  # 640, 800, 1000, ...: 1.25x apart


def bucket(length: int) -> int:
    """The length bucket of a row: rows of one bucket differ in length by at most 1.25x above 32 tokens (1.5x
    below, where padding costs little)."""
    return bisect.bisect_left(BUCKETS, length)


@dataclass
class Request:
    rows: list[Row]
    gates: bool
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.perf_counter)
    outputs: list[Any] = field(default_factory=list)
    gate_values: list[Any] = field(default_factory=list)
    left: int = 0

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.rows)
        self.gate_values = [None] * len(self.rows)
        self.left = len(self.rows)


class _Pace:
    """Recent seconds of model time per row, for Retry-After."""

    def __init__(self) -> None:
        self.per_row = 0.01

    def update(self, seconds: float, rows: int) -> None:
        self.per_row = 0.8 * self.per_row + 0.2 * seconds / max(1, rows)

    def retry_after(self, rows: int) -> int:
        return max(1, math.ceil(self.per_row * rows))


def _observe(observe: Observer | None, rows: Sequence[Row]) -> None:
    if observe is not None:
        width = max(r.length for r in rows)
        observe(len(rows), len({r.task for r in rows}), sum(r.length for r in rows), width * len(rows))


class TokenBatcher:
    """Length-bucketed batches under a token budget, formed only from what is already waiting."""

    def __init__(
        self,
        forward: Forward,
        max_tokens: int = 1024,
        max_rows: int = 32,
        max_queue: int = 256,
        observe: Observer | None = None,
        group: Callable[[Row], Any] = lambda row: None,
    ) -> None:
        if max_tokens < 1 or max_rows < 1 or max_queue < 1:
            raise ValueError("max_tokens, max_rows and max_queue must be at least 1")
        self.forward, self.max_tokens, self.max_rows, self.max_queue = (
            forward,
            max_tokens,
            max_rows,
            max_queue,
        )
        self.observe, self.group = observe, group
        self._pending: deque[tuple[Request, int]] = deque()  # (request, row index), in arrival order
        self._requests = 0  # submitted and not yet answered
        self._closed = False
        self._ready = threading.Condition()
        self._pace = _Pace()
        self._thread = threading.Thread(target=self._work, name="unipelt-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._requests

    def submit(self, rows: list[Row], gates: bool = False) -> Future:
        """Queue one request's rows; the future gives (outputs, gates or None) in the same order."""
        request = Request(rows, gates)
        with self._ready:
            if self._closed:
                request.future.set_exception(RuntimeError("the batcher has stopped"))
                return request.future
            if self._requests >= self.max_queue:
                raise Overloaded(self._pace.retry_after(len(self._pending)))
            self._requests += 1
            self._pending.extend((request, i) for i in range(len(rows)))
            self._ready.notify()
        return request.future

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker once the rows already queued are answered."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    def _take(self) -> list[tuple[Request, int]]:
        """The oldest waiting row and the waiting rows that fit with it (same group and bucket), in order."""
        chosen: list[tuple[Request, int]] = []
        rest: deque[tuple[Request, int]] = deque()
        key, width = None, 0
        for item in self._pending:
            request, index = item
            if request.future.done():  # failed in an earlier forward: drop its other rows
                continue
            row = request.rows[index]
            row_key = (self.group(row), bucket(row.length))
            wide = max(width, row.length)
            if not chosen:
                key = row_key
            elif row_key != key or len(chosen) >= self.max_rows or wide * (len(chosen) + 1) > self.max_tokens:
                rest.append(item)
                continue
            chosen.append(item)
            width = wide
        self._pending = rest
        return chosen

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:
                    return
                batch = self._take()
            if batch:
                self._run(batch)

    def _run(self, batch: list[tuple[Request, int]]) -> None:
        rows = [request.rows[index] for request, index in batch]
        start = time.perf_counter()
        try:
            outputs, gates = self.forward(rows, any(request.gates for request, _ in batch))
        except BaseException as error:  # noqa: BLE001 - handed to every caller of this forward
            for request in {id(r): r for r, _ in batch}.values():
                if not request.future.done():
                    request.future.set_exception(error)
                    self._answered()
            return
        self._pace.update(time.perf_counter() - start, len(rows))
        _observe(self.observe, rows)
        for j, (request, index) in enumerate(batch):
            request.outputs[index] = outputs[j]
            request.gate_values[index] = gates[j] if gates is not None else None
            request.left -= 1
            if request.left == 0 and not request.future.done():
                request.future.set_result((request.outputs, request.gate_values if request.gates else None))
                self._answered()

    def _answered(self) -> None:
        with self._ready:
            self._requests -= 1


class DynamicBatcher:
    """Wait-and-gather batching (up to ``max_batch`` rows or ``max_wait_ms``), or none at all."""

    def __init__(
        self,
        forward: Forward,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        batching: bool = True,
        observe: Observer | None = None,
        max_queue: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.batching = batching
        self.observe = observe
        self.max_queue = max_queue
        self._pace = _Pace()
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._carry: Request | None = None  # taken from the queue but did not fit in the last batch
        self._thread = threading.Thread(target=self._work, name="unipelt-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, rows: list[Row], gates: bool = False) -> Future:
        """Queue one request's rows; the future gives (outputs, gates or None) in the same order."""
        request = Request(rows, gates)
        if not self._thread.is_alive():
            request.future.set_exception(RuntimeError("the batcher has stopped"))
            return request.future
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(self._pace.retry_after(self._queue.qsize()))
        self._queue.put(request)
        return request.future

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker once the requests already queued are answered."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _next(self, timeout: float | None) -> Request | None:
        if self._carry is not None:
            request, self._carry = self._carry, None
            return request
        return (
            self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        )

    def _gather(self, first: Request) -> list[Request]:
        batch, rows = [first], len(first.rows)
        if not self.batching or rows >= self.max_batch:
            return batch
        deadline = first.arrived + self.max_wait
        while rows < self.max_batch:
            try:
                request = self._next(max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if request is None:  # close(): answer this batch, then stop
                self._queue.put(None)
                break
            if rows + len(request.rows) > self.max_batch:
                self._carry = request
                break
            batch.append(request)
            rows += len(request.rows)
        return batch

    def _work(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch = self._gather(first)
            if len(batch) == 1 and len(first.rows) > self.max_batch:
                self._run_chunked(first)
            else:
                self._run(batch)

    def _run(self, batch: list[Request]) -> None:
        rows = [row for request in batch for row in request.rows]
        want_gates = any(request.gates for request in batch)
        start = time.perf_counter()
        try:
            outputs, gates = self.forward(rows, want_gates)
        except BaseException as error:  # noqa: BLE001 - handed to every caller of this batch
            for request in batch:
                request.future.set_exception(error)
            return
        self._pace.update(time.perf_counter() - start, len(rows))
        _observe(self.observe, rows)
        start = 0
        for request in batch:
            end = start + len(request.rows)
            request.future.set_result(
                (outputs[start:end], gates[start:end] if request.gates and gates is not None else None)
            )
            start = end

    def _run_chunked(self, request: Request) -> None:
        outputs: list[Any] = []
        gates: list[dict] = []
        try:
            for start in range(0, len(request.rows), self.max_batch):
                part = request.rows[start : start + self.max_batch]
                out, values = self.forward(part, request.gates)
                _observe(self.observe, part)
                outputs.extend(out)
                gates.extend(values or [])
        except BaseException as error:  # noqa: BLE001
            request.future.set_exception(error)
            return
        request.future.set_result((outputs, gates if request.gates else None))
