"""The HTTP server: many tasks on one backbone behind one small JSON API, with Prometheus metrics.

    GET  /health        {"status": "ok", "runtime": ..., "tasks": n}
    GET  /v1/tasks      every task: name, labels (or regression), inputs (single / pair), metric and score
                        from the run's metrics.json, parameter counts
    POST /v1/predict    {"task": name, "inputs": [text | [text_a, text_b], ...], "gates": false}
                        -> {"task", "predictions": [{"label", "probabilities"} | {"score"}, ...]}, plus
                        "gates" per input ({layer: {site: value}}) when asked; over-long texts are cut to the
                        run's max_length and flagged with "truncated": true and their full token count
    GET  /metrics       Prometheus text format: requests by task and status, latency histogram, batch sizes

A bad request is answered, never raised into the server: unknown task 404 (listing the tasks), malformed JSON
or a missing / mistyped field 422 (naming the field), empty inputs 400, more than ``max_inputs`` 413, one text
for a pair task 400. Inputs are tokenised in the request's handler; the model runs only in the batcher's worker
thread (:mod:`unipelt.inference.batching`), which gathers concurrent requests of any tasks into one forward.
"""

# No `from __future__ import annotations`: FastAPI reads the request model from the handler's annotation.
import asyncio
import time
from typing import Any

from unipelt.inference.batching import DynamicBatcher
from unipelt.inference.served_tasks import InputError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created gauges only add noise to a scrape

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "unipelt_requests",
            "Prediction requests by task and status",
            ["task", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "unipelt_request_errors",
            "Requests answered with an error, by status",
            ["status"],
            registry=self.registry,
        )
        self.inputs = Counter("unipelt_inputs", "Inputs predicted, by task", ["task"], registry=self.registry)
        self.latency = Histogram(
            "unipelt_request_latency_seconds",
            "Time from receiving a prediction request to its answer",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "unipelt_batch_rows", "Rows per model forward", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_tasks = Histogram(
            "unipelt_batch_tasks",
            "Distinct tasks per model forward",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def observe_batch(self, rows: int, tasks: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_tasks.observe(tasks)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _field_errors(errors: list[dict[str, Any]]) -> str:
    """One line naming each bad field (or where the JSON broke) and what is wrong with it."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            position = error.get("loc", ("body", "?"))[-1]
            parts.append(f"malformed JSON at character {position}: {error.get('ctx', {}).get('error', '')}")
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"field {where!r}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(
    engine: Any,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    batching: bool = True,
    max_inputs: int = 64,
    generation: Any = None,
) -> Any:
    """A FastAPI app answering ``engine``'s tasks; its batcher's worker thread starts now and stops on shutdown.
    With ``generation`` (a :class:`~unipelt.inference.generation_engine.GenerationEngine`) it also serves
    that engine's causal-LM tasks on the OpenAI-compatible routes of :mod:`unipelt.inference.openai_api`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, Field, field_validator

    metrics = Metrics()
    batcher = DynamicBatcher(
        engine.forward,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        batching=batching,
        observe=metrics.observe_batch,
    )

    class PredictRequest(BaseModel):
        task: str = Field(description="a task name from GET /v1/tasks")
        inputs: list[Any] = Field(description="texts, or [text_a, text_b] pairs for pair tasks")
        gates: bool = Field(False, description="also return each input's gate values per layer")

        @field_validator("inputs")
        @classmethod
        def texts(cls, inputs: list[Any]) -> list[Any]:
            for i, item in enumerate(inputs):
                ok = isinstance(item, str) or (
                    isinstance(item, list) and 1 <= len(item) <= 2 and all(isinstance(t, str) for t in item)
                )
                if not ok:
                    raise ValueError(f"inputs[{i}] must be a text or a list of two texts, not {item!r:.60}")
            return inputs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()
        if generation is not None:
            generation.close()

    app = FastAPI(title="unipelt", lifespan=lifespan)
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics

    def fail(status: int, message: str, task: str = "", **extra: Any) -> JSONResponse:
        metrics.errors.labels(str(status)).inc()
        metrics.requests.labels(task, str(status)).inc()
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return fail(422, _field_errors(list(error.errors())), fields=_fields(error.errors()))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "runtime": engine.runtime, "tasks": len(engine.tasks)}

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": [task.describe() for task in engine.tasks.values()]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict")
    async def predict(body: PredictRequest) -> Any:
        start = time.perf_counter()
        task = engine.tasks.get(body.task)
        if task is None:
            return fail(
                404,
                f"unknown task {body.task!r}; this server has: {', '.join(engine.tasks)}",
                tasks=list(engine.tasks),
            )
        if not body.inputs:
            return fail(400, "inputs is empty: give at least one text", body.task)
        if len(body.inputs) > max_inputs:
            return fail(
                413,
                f"{len(body.inputs)} inputs is more than this server takes in one request "
                f"({max_inputs}); split the request",
                body.task,
            )
        if body.gates and not getattr(engine, "has_gates", True):
            return fail(
                400, f"the {engine.runtime} runtime does not report gate values; ask without gates", body.task
            )
        try:
            rows = task.encode(body.inputs)
        except InputError as error:
            return fail(error.status, str(error), body.task)
        try:
            outputs, gates = await asyncio.wrap_future(batcher.submit(rows, body.gates))
        except Exception as error:  # noqa: BLE001 - the model failed on this batch; the server stays up
            return fail(500, f"prediction failed: {type(error).__name__}: {error}", body.task)
        predictions = [task.answer(out, row) for out, row in zip(outputs, rows)]
        if gates is not None:
            for record, values in zip(predictions, gates):
                record["gates"] = values
        metrics.requests.labels(body.task, "200").inc()
        metrics.inputs.labels(body.task).inc(len(rows))
        metrics.latency.labels(body.task).observe(time.perf_counter() - start)
        return {"task": body.task, "predictions": predictions}

    if generation is not None:
        from unipelt.inference.openai_api import openai_router, scheduler_metrics

        def observe(task: str, status: int, seconds: float) -> None:
            metrics.requests.labels(task, str(status)).inc()
            if status >= 400:
                metrics.errors.labels(str(status)).inc()
            else:
                metrics.latency.labels(task).observe(seconds)

        scheduler_metrics(metrics.registry, generation.scheduler)
        app.include_router(openai_router(generation, observe))
    return app


def _fields(errors: Any) -> list[str]:
    return sorted({".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body" for e in errors})
