"""Every error the server answers, in one JSON shape per group of routes, whoever raised it.

The server's own routes answer ``{"error": "one line", ...}`` (plus ``fields`` or ``tasks`` where they help);
routes mounted with :func:`mount` may choose another shape, such as OpenAI's ``{"error": {"message", "type",
"param", "code"}}`` for OpenAI-compatible routes. The shape is picked from the request's path, so errors raised
before a route runs (a missing API key, a body over the size limit, FastAPI's own validation and parsing
errors, an unknown method) come back in the shape the client of that route expects.

Handlers raise :class:`ApiError`; FastAPI's and Starlette's exceptions are translated by the handlers that
:func:`install_error_handlers` registers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match

ErrorShape = Callable[[int, str, dict[str, Any]], dict[str, Any]]
"""(HTTP status, one-line message, extra fields) -> the JSON body of the error."""

RETRY_AFTER = "Retry-After"


class ApiError(Exception):
    """An answer with an error ``status``: ``message`` is one line for the client; ``extra`` adds fields (the
    server's shape) or fills ``param`` / ``code`` (OpenAI's); ``headers`` go on the response."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


class Overloaded(ApiError):
    """The request queue is full: 429, and when to come back."""

    def __init__(self, retry_after: int, message: str = "") -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(
            429,
            message or f"the server is busy (request queue full); retry in {retry_after} s",
            headers={RETRY_AFTER: str(retry_after)},
        )


def server_error(status: int, message: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The server's own shape: ``{"error": message, **extra}``."""
    return {"error": message, **extra}


OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(status: int, message: str, extra: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's shape, which its client reads: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = extra.get("code")
    if code is None and status == 401:
        code = "invalid_api_key"
    return {"error": {"message": message, "type": kind, "param": extra.get("param"), "code": code}}


def leaf_routes(routes: Sequence[Any]) -> list[Any]:
    """The routes themselves, with routers included by ``include_router`` opened up (FastAPI keeps an included
    router as one route object)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(leaf_routes(inner.routes) if inner is not None else [route])
    return out


class ErrorShapes:
    """Which error shape answers a request: the shape of the first registered route that matches its path
    (whatever its method), else the server's own."""

    def __init__(self, default: ErrorShape = server_error) -> None:
        self.default = default
        self._routes: list[tuple[BaseRoute, ErrorShape]] = []

    def add(self, routes: Sequence[BaseRoute], shape: ErrorShape) -> None:
        self._routes.extend((route, shape) for route in leaf_routes(routes))

    def for_scope(self, scope: dict[str, Any]) -> ErrorShape:
        probe = {**scope, "type": "http"}
        for route, shape in self._routes:
            match, _ = route.matches(probe)
            if match is not Match.NONE:
                return shape
        return self.default


def error_response(
    scope: dict[str, Any], shapes: ErrorShapes, status: int, message: str, headers=None, **extra: Any
):
    """A JSONResponse in the shape of ``scope``'s route."""
    from starlette.responses import JSONResponse

    body = shapes.for_scope(scope)(status, message, extra)
    return JSONResponse(body, status_code=status, headers=headers or None)


def validation_message(errors: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """(one line naming each bad field, or where the JSON broke; the bad fields' dotted names)."""
    parts, fields = [], set()
    for error in errors:
        if error.get("type") == "json_invalid":
            position = (error.get("loc") or ("body", "?"))[-1]
            parts.append(f"malformed JSON at character {position}: {error.get('ctx', {}).get('error', '')}")
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        fields.add(where)
        parts.append(f"field {where!r}: {error.get('msg', 'invalid')}")
    return "; ".join(parts), sorted(fields)


def parse_failure(error: BaseException) -> str:
    """Why FastAPI could not read a body (it reports only 'There was an error parsing the body')."""
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not valid UTF-8 (byte {cause.start}); send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "the JSON body is nested too deeply"
    if isinstance(cause, (json.JSONDecodeError, ValueError)):
        return f"the request body is not valid JSON: {str(cause).splitlines()[0]}"
    return "the request body could not be read"


def install_error_handlers(app: Any, shapes: ErrorShapes) -> None:
    """Render ApiError, FastAPI's validation errors and Starlette's HTTP errors in the route's shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return error_response(
            request.scope, shapes, error.status, error.message, error.headers, **error.extra
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        message, fields = validation_message(list(error.errors()))
        extra: dict[str, Any] = {"fields": fields} if shapes.for_scope(request.scope) is server_error else {}
        if fields and shapes.for_scope(request.scope) is not server_error:
            extra["param"] = fields[0]
        return error_response(request.scope, shapes, 422, message, **extra)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        status = error.status_code
        if status == 400 and error.__cause__ is not None:
            message = parse_failure(error)
        elif status == 413:
            message = "the request body is larger than this server takes (--max-body-bytes)"
        elif status == 404:
            message = f"no route {request.url.path!r}; see /docs for the routes of this server"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        return error_response(request.scope, shapes, status, message, dict(error.headers or {}))
