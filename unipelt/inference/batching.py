"""Dynamic batching: requests that arrive close together (for any tasks) are answered by one forward.

Callers (the web server's request handlers) :meth:`DynamicBatcher.submit` their tokenised rows and get a
:class:`concurrent.futures.Future`. One worker thread owns the engine: it takes the oldest waiting request,
then keeps taking requests until the batch holds ``max_batch`` rows or ``max_wait_ms`` have passed since the
first one arrived, runs ONE forward over all their rows (mixed tasks included) and hands each caller its own
slice of the results. With ``batching=False`` every request is run alone (the baseline of the load
benchmark). A request larger than ``max_batch`` is run alone, in chunks of ``max_batch`` rows.

An exception in a forward fails the futures of that batch only; the worker keeps serving.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from unipelt.inference.served_tasks import Row

Forward = Callable[[Sequence[Row], bool], tuple[list[Any], list[dict] | None]]
Observer = Callable[[int, int], None]  # (rows in the batch, tasks in the batch)


@dataclass
class Request:
    rows: list[Row]
    gates: bool
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """A queue of requests and the one worker thread that answers them in batches."""

    def __init__(
        self,
        forward: Forward,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        batching: bool = True,
        observe: Observer | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.batching = batching
        self.observe = observe
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._carry: Request | None = None  # taken from the queue but did not fit in the last batch
        self._thread = threading.Thread(target=self._work, name="unipelt-batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: list[Row], gates: bool = False) -> Future:
        """Queue one request's rows; the future gives (outputs, gates or None) in the same order."""
        request = Request(rows, gates)
        if not self._thread.is_alive():
            request.future.set_exception(RuntimeError("the batcher has stopped"))
        else:
            self._queue.put(request)
        return request.future

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker once the requests already queued are answered."""
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------ worker

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
        try:
            outputs, gates = self.forward(rows, want_gates)
        except BaseException as error:  # noqa: BLE001 - handed to every caller of this batch
            for request in batch:
                request.future.set_exception(error)
            return
        if self.observe is not None:
            self.observe(len(rows), len({row.task for row in rows}))
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
                if self.observe is not None:
                    self.observe(len(part), len({row.task for row in part}))
                outputs.extend(out)
                gates.extend(values or [])
        except BaseException as error:  # noqa: BLE001
            request.future.set_exception(error)
            return
        request.future.set_result((outputs, gates if request.gates else None))
