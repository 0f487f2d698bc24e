"""The HTTP server: many tasks on one backbone behind one small JSON API, with Prometheus metrics.

    GET  /health        {"status": "ok", "runtime": ..., "tasks": n} (never needs the API key)
    GET  /v1/tasks      every task: name, kind, labels, inputs (single / pair / words), metric and score from
                        the run's metrics.json, parameter counts
    POST /v1/predict    {"task": name, "inputs": [...], "gates": false} -> {"task", "predictions": [...]}:
                        {"label", "probabilities"} or {"score"} per text (pair) or base64 image, tags and
                        entity spans per sentence of a tagging task (what an input is and how it is answered
                        is the task kind's: :mod:`unipelt.kinds`); "gates" per input when asked; over-long
                        texts are cut to the run's max_length and flagged with "truncated": true and their
                        full token count
    GET  /metrics       Prometheus text format: responses by route, task and status, latency, batch sizes
    GET  /docs, /openapi.json: the typed schema of all of the above, every status code documented

Every error is one JSON object in the route's shape (:mod:`unipelt.inference.http_errors`); the API key,
request ids, counting and logging of every request are middleware (:mod:`unipelt.inference.http_guard`), so
routes mounted with :func:`mount` (the OpenAI-compatible ones) get them too. Limits: the body size (413 before
parsing), inputs per request (413), characters per text (413, checked before tokenising), texts that are not
UTF-8 (422), and the number of waiting requests (429 with Retry-After). Inputs are tokenised in a thread pool,
never on the event loop; the model runs only in the batcher's worker thread
(:mod:`unipelt.inference.batching`), which shares forwards between concurrent requests of any tasks.
"""

# No `from __future__ import annotations`: FastAPI reads the request model from the handler's annotation.
import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import WithJsonSchema

from unipelt.inference.batching import DynamicBatcher, TokenBatcher
from unipelt.inference.http_errors import (
    ApiError,
    ErrorShape,
    ErrorShapes,
    install_error_handlers,
    server_error,
)
from unipelt.inference.http_guard import Guard, Metrics
from unipelt.inference.serve_schema import (
    Health,
    PredictRequest,
    PredictResponse,
    TaskList,
    error_responses,
    predict_schema,
)
from unipelt.inference.served_tasks import InputError

BATCHING = ("tokens", "wait", "none")


@dataclass
class ServeOptions:
    """How a server batches, what it takes, and whom it lets in."""

    batching: str = (
        "tokens"  # tokens: token-budget batches, never waiting; wait: the max_wait_ms policy; none
    )
    max_batch_tokens: int = 1024  # padded tokens (rows x longest row) per forward, tokens policy
    max_batch: int = 32  # rows per forward
    max_wait_ms: float = 5.0  # wait policy only
    max_inputs: int = 64  # inputs per request
    max_body_bytes: int = 1_000_000
    max_text_chars: int = 20_000
    max_queue: int = 256  # requests waiting for the model; more: 429
    tokenizer_threads: int = 2
    api_key: str | None = None
    public_metrics: bool = False
    cors_origins: Sequence[str] = ()
    log_inputs: bool = False

    def __post_init__(self) -> None:
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, not {self.batching!r}")


def make_batcher(engine: Any, options: ServeOptions, metrics: Metrics) -> Any:
    if options.batching == "tokens":
        return TokenBatcher(
            engine.forward,
            max_tokens=options.max_batch_tokens,
            max_rows=options.max_batch,
            max_queue=options.max_queue,
            observe=metrics.observe_batch,
            group=getattr(engine, "group", lambda row: None),
        )
    return DynamicBatcher(
        engine.forward,
        max_batch=options.max_batch,
        max_wait_ms=options.max_wait_ms,
        batching=options.batching == "wait",
        observe=metrics.observe_batch,
        max_queue=options.max_queue,
    )


def mount(app: FastAPI, router: APIRouter, error_shape: ErrorShape = server_error) -> None:
    """Add ``router``'s routes to the server; errors on their paths (the guard's 401 and 413 included) are
    answered in ``error_shape``. The API key, request ids, metrics and logs apply to them as to every route."""
    before = len(app.router.routes)
    app.include_router(router)
    app.state.error_shapes.add(app.router.routes[before:], error_shape)
    app.openapi_schema = None  # the schema is rebuilt with the new routes


def create_app(
    engine: Any,
    options: ServeOptions | None = None,
    routers: Sequence[tuple[APIRouter, ErrorShape]] = (),
    on_shutdown: Sequence[Callable[[], None]] = (),
) -> FastAPI:
    """A FastAPI app answering ``engine``'s tasks, plus each of ``routers`` mounted with its error shape (see
    :func:`mount`); the batcher's worker thread starts now and stops on shutdown, after each of
    ``on_shutdown``."""
    from contextlib import asynccontextmanager

    options = options or ServeOptions()
    metrics = Metrics()
    batcher = make_batcher(engine, options, metrics)
    tokenizers = ThreadPoolExecutor(options.tokenizer_threads, thread_name_prefix="unipelt-tokenize")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for stop in on_shutdown:
            stop()
        batcher.close()
        tokenizers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="unipelt",
        description="Many UniPELT tasks on one frozen backbone.",
        lifespan=lifespan,
    )
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics
    app.state.options, app.state.error_shapes = options, ErrorShapes()
    install_error_handlers(app, app.state.error_shapes)
    app.add_middleware(
        Guard,
        shapes=app.state.error_shapes,
        metrics=metrics,
        routes=app.router,
        api_key=options.api_key,
        public_metrics=options.public_metrics,
        log_inputs=options.log_inputs,
        max_body_bytes=options.max_body_bytes,
    )
    if options.cors_origins:  # outermost: a browser's preflight carries no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    mount(app, encoder_routes(engine, batcher, metrics, options, tokenizers))
    for router, shape in routers:
        mount(app, router, shape)
    install_security_schema(app, options)
    return app


def encoder_routes(
    engine: Any, batcher: Any, metrics: Metrics, options: ServeOptions, tokenizers: ThreadPoolExecutor
) -> APIRouter:
    """/health, /v1/tasks, /v1/predict and /metrics."""
    router = APIRouter()
    keyed = (401,) if options.api_key else ()
    info_routes(router, engine, batcher, metrics, options)
    answer = Predictor(engine, batcher, metrics, options, tokenizers)
    body_schema = predict_schema(
        {name: task.schema_item(options.max_text_chars) for name, task in engine.tasks.items()},
        options.max_inputs,
        gates=answer.has_gates,
    )
    Body = Annotated[PredictRequest, WithJsonSchema(body_schema)]

    @router.post(
        "/v1/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=error_responses(400, *keyed, 404, 413, 422, 429, 500),
    )
    async def predict(body: Body, request: Request) -> Any:
        """Answers for a batch of inputs of one task."""
        return await answer(body, request)

    return router


def info_routes(
    router: APIRouter, engine: Any, batcher: Any, metrics: Metrics, options: ServeOptions
) -> None:
    """/health, /v1/tasks and /metrics on ``router``."""
    keyed = (401,) if options.api_key else ()
    metrics_keyed = keyed if not options.public_metrics else ()

    @router.get("/health", response_model=Health, responses=error_responses(500))
    async def health() -> dict[str, Any]:
        """Whether the server is up; open to all, even with an API key."""
        return {"status": "ok", "runtime": engine.runtime, "tasks": len(engine.tasks)}

    @router.get("/v1/tasks", response_model=TaskList, responses=error_responses(*keyed, 500))
    async def tasks() -> dict[str, Any]:
        """The served tasks: kind, labels, input shape, score of the run."""
        return {"tasks": [task.describe() for task in engine.tasks.values()]}

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **error_responses(*metrics_keyed, 500)},
    )
    async def prometheus() -> Response:
        """Prometheus metrics of every response, the batches and the queue."""
        from prometheus_client import CONTENT_TYPE_LATEST

        metrics.queue.set(batcher.waiting)
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)


class Predictor:
    """POST /v1/predict: checks a request against the server's limits and its task's kind, encodes it in the
    tokenizer threads, waits for the batcher's answer, and writes the task's answers."""

    def __init__(
        self,
        engine: Any,
        batcher: Any,
        metrics: Metrics,
        options: ServeOptions,
        tokenizers: ThreadPoolExecutor,
    ) -> None:
        self.engine, self.batcher, self.metrics = engine, batcher, metrics
        self.options, self.tokenizers = options, tokenizers
        self.has_gates = getattr(engine, "has_gates", True)

    async def __call__(self, body: PredictRequest, request: Request) -> dict[str, Any]:
        state = request.state
        state.task, state.rows = body.task, len(body.inputs)
        if self.options.log_inputs:
            state.inputs = body.inputs
        task = self.task_of(body, state)
        try:
            task.check(body.inputs, self.options.max_text_chars)
            loop = asyncio.get_running_loop()
            rows = await loop.run_in_executor(self.tokenizers, task.encode, body.inputs)
        except InputError as error:
            raise ApiError(error.status, str(error)) from None
        try:
            outputs, gates = await asyncio.wrap_future(self.batcher.submit(rows, body.gates))
        except ApiError:
            raise
        except Exception as error:  # noqa: BLE001 - the model failed on this batch; the server stays up
            raise ApiError(500, f"prediction failed: {type(error).__name__}: {error}") from None
        predictions = [task.answer(out, row) for out, row in zip(outputs, rows)]
        if gates is not None:
            for record, values in zip(predictions, gates):
                record["gates"] = values
        self.metrics.inputs.labels(body.task).inc(len(rows))
        return {"task": body.task, "predictions": predictions}

    def task_of(self, body: PredictRequest, state: Any) -> Any:
        """The request's task, once the request is within the server's limits (else an ApiError)."""
        tasks = self.engine.tasks
        task = tasks.get(body.task)
        if task is None:
            state.task = ""  # no label per unknown name in /metrics
            raise ApiError(
                404, f"unknown task {body.task!r}; this server has: {', '.join(tasks)}", tasks=list(tasks)
            )
        if not body.inputs:
            raise ApiError(400, "inputs is empty: give at least one text")
        if len(body.inputs) > self.options.max_inputs:
            raise ApiError(
                413,
                f"{len(body.inputs)} inputs is more than this server takes in one request "
                f"({self.options.max_inputs}); split the request",
            )
        if body.gates and not self.has_gates:
            raise ApiError(
                400, f"the {self.engine.runtime} runtime does not report gate values; ask without gates"
            )
        return task


def install_security_schema(app: FastAPI, options: ServeOptions) -> None:
    """With an API key, /openapi.json declares bearer authentication on every operation but /health's."""
    if not options.api_key:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        for path, operations in schema.get("paths", {}).items():
            if path == "/health" or (path == "/metrics" and options.public_metrics):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
