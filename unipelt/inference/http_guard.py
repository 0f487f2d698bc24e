"""What every request goes through, whichever route answers it: a request id, the API key, the count in
/metrics and one log line.

:class:`Guard` is ASGI middleware, so routes mounted later (the OpenAI-compatible ones included) get all of it
without code of their own:

- ``X-Request-ID``: the client's (when it is a short token) or a new one, on the response and in the log line;
- ``Authorization: Bearer KEY`` on every path but ``/health`` (and ``/metrics`` when it is public), compared in
  constant time; a missing or wrong key is a 401 in the route's error shape;
- every response counted by route, task and status, with its latency, in :class:`Metrics`;
- an exception that escapes a route becomes a 500 in the route's shape (logged with its traceback), never a
  bare text page or a reset connection;
- one log line per request (``unipelt.serve`` logger): id, method, path, status, task, rows, latency; the
  request's inputs only with ``log_inputs``.

A route tells the guard its task, row count and inputs through ``request.state`` (``task``, ``rows``,
``inputs``), which lives in the ASGI scope.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match

from unipelt.inference.http_errors import ErrorShapes, error_response, leaf_routes

LOG = logging.getLogger("unipelt.serve")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
OPEN_PATHS = frozenset({"/health"})


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created gauges only add noise to a scrape
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "unipelt_requests",
            "Responses by route, task and status (every response, errors included)",
            ["route", "task", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "unipelt_request_errors", "Responses with an error status", ["status"], registry=self.registry
        )
        self.inputs = Counter("unipelt_inputs", "Inputs answered, by task", ["task"], registry=self.registry)
        self.latency = Histogram(
            "unipelt_request_latency_seconds",
            "Time from receiving a request to the end of its answer",
            ["route", "task"],
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
        self.padding = Counter(
            "unipelt_batch_tokens",
            "Token slots of model forwards: real or padding",
            ["kind"],
            registry=self.registry,
        )
        self.queue = Gauge("unipelt_queue_requests", "Requests waiting for the model", registry=self.registry)

    def observe_batch(self, rows: int, tasks: int, real: int = 0, padded: int = 0) -> None:
        self.batch_rows.observe(rows)
        self.batch_tasks.observe(tasks)
        if padded:
            self.padding.labels("real").inc(real)
            self.padding.labels("padding").inc(padded - real)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def key_matches(header: str | None, key: str) -> bool:
    """Whether an Authorization header carries ``Bearer key``; constant time in the key's content."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), key.encode("utf-8"))


def body_limit_message(limit: int | None) -> str:
    return f"the request body is larger than this server takes ({limit} bytes, --max-body-bytes)"


def route_template(routes: Sequence[BaseRoute], scope: dict[str, Any]) -> str:
    """The path template of the route that answers ``scope`` (a bounded label for metrics), or "other"."""
    routes = leaf_routes(routes)
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", "other")
    for route in routes:  # the path exists but not for this method
        if route.matches(scope)[0] is Match.PARTIAL:
            return getattr(route, "path", "other")
    return "other"


class Guard:
    """ASGI middleware: request id, API key, metrics, logs and the last-resort 500 for every HTTP request."""

    def __init__(
        self,
        app: Any,
        *,
        shapes: ErrorShapes,
        metrics: Metrics,
        routes: Any,
        api_key: str | None = None,
        public_metrics: bool = False,
        log_inputs: bool = False,
        max_body_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.shapes = shapes
        self.metrics = metrics
        self.routes = routes  # the app's router: routes mounted later are seen too
        self.api_key = api_key or None
        self.open_paths = OPEN_PATHS | ({"/metrics"} if public_metrics else set())
        self.log_inputs = log_inputs

    def protected(self, path: str) -> bool:
        return self.api_key is not None and path not in self.open_paths

    def too_large(self, content_length: str | None) -> bool:
        """Whether the declared body size is over the limit: answered 413 before a byte of it is read."""
        if self.max_body_bytes is None or content_length is None:
            return False
        try:
            return int(content_length) > self.max_body_bytes
        except ValueError:
            return False

    def limited(self, receive: Any) -> Any:
        """``receive`` that stops a body (sent without a length) as soon as it passes the limit."""
        if self.max_body_bytes is None:
            return receive
        from starlette.exceptions import HTTPException

        total = 0

        async def receive_limited() -> dict[str, Any]:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body_bytes:
                    raise HTTPException(413)  # FastAPI passes it on as it is: our handler words it
            return message

        return receive_limited

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = [500]
        started = [False]

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            if self.protected(scope["path"]) and not key_matches(headers.get("authorization"), self.api_key):
                response = error_response(
                    scope,
                    self.shapes,
                    401,
                    "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send_with_id)
            elif self.too_large(headers.get("content-length")):
                response = error_response(scope, self.shapes, 413, body_limit_message(self.max_body_bytes))
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, self.limited(receive), send_with_id)
        except Exception as error:  # noqa: BLE001 - the last resort: answer 500, keep the connection sane
            LOG.exception("request %s failed: %s: %s", request_id, type(error).__name__, error)
            if started[0]:
                raise
            response = error_response(
                scope, self.shapes, 500, f"internal error: {type(error).__name__} (request id {request_id})"
            )
            await response(scope, receive, send_with_id)
        finally:
            self.record(scope, state, status[0], time.perf_counter() - start)

    def record(self, scope: dict[str, Any], state: dict[str, Any], status: int, seconds: float) -> None:
        route = route_template(self.routes.routes, scope)
        task = str(state.get("task", ""))
        self.metrics.requests.labels(route, task, str(status)).inc()
        self.metrics.latency.labels(route, task).observe(seconds)
        if status >= 400:
            self.metrics.errors.labels(str(status)).inc()
        line = (
            f"request {state['request_id']} {scope['method']} {scope['path']} status={status} task={task or '-'} "
            f"rows={state.get('rows', 0)} latency_ms={seconds * 1e3:.1f}"
        )
        if self.log_inputs and "inputs" in state:
            line += f" inputs={json.dumps(state['inputs'], ensure_ascii=True)[:2000]}"
        LOG.info(line)
