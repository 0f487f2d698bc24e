"""OpenAI-compatible routes for causal-LM tasks: the request's ``model`` names the task.

    GET  /v1/models             the tasks, then the plain base model
    POST /v1/chat/completions   messages -> the task's answer (through the tokenizer's chat template)
    POST /v1/completions        prompt -> its continuation

Both generation routes take ``max_tokens`` (chat also ``max_completion_tokens``), ``temperature``, ``top_p``,
``stop``, ``seed``, ``n`` = 1 and ``stream`` (server-sent events ending in ``data: [DONE]``, with a last
``usage`` chunk when ``stream_options.include_usage``), and answer ``usage`` token counts. Errors use OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``: unknown model 404, a bad parameter or a prompt that
does not fit the context 400. Prompts are tokenised off the event loop; the model runs only in the
scheduler's thread (:mod:`unipelt.inference.scheduler`). A client that goes away, streaming or not, has its
request cancelled and its row freed at the scheduler's next step.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime.
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from unipelt.inference.generation_engine import GenerationEngine
from unipelt.inference.openai_schema import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_answer,
    chat_chunk,
    completion_answer,
    completion_chunk,
    new_id,
    parse,
    usage,
)
from unipelt.inference.scheduler import Sequence
from unipelt.inference.served_tasks import InputError
from unipelt.inference.text_stream import TextStream

DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


class Generation:
    """One request's run through the scheduler, seen from the event loop as (text piece, finish) events."""

    def __init__(self, engine: GenerationEngine, prompt: list[int], task: str | None, body: Any) -> None:
        self.engine, self.prompt = engine, prompt
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.text = TextStream(engine.tokenizer, body.stops())
        params = engine.params(
            prompt, body.limit(), body.temperature, body.top_p, body.seed, ignore_eos=body.ignore_eos
        )
        self.sequence = Sequence(prompt, task, params, self._emit)
        self.finish: str | None = None

    def _emit(self, kind: str, value: Any) -> None:  # called from the scheduler's thread
        with contextlib.suppress(RuntimeError):  # the event loop is gone (server shutting down)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def usage(self) -> dict[str, int]:
        return usage(len(self.prompt), len(self.sequence.generated))

    async def pieces(self, gone: Callable[[], Any] | None = None) -> AsyncIterator[str]:
        """Text pieces as they become final; ``self.finish`` is set at the end. Leaving early (a client gone,
        a cancelled task) cancels the request in the scheduler."""
        self.engine.scheduler.submit(self.sequence)
        checked = time.monotonic()
        try:
            while self.finish is None:
                if gone is not None and time.monotonic() - checked >= DISCONNECT_POLL_S:
                    if await gone():
                        return
                    checked = time.monotonic()
                try:
                    kind, value = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:  # noqa: UP041 - Python 3.10 raises its own class
                    continue
                if kind == "token":
                    piece, stopped = self.text.push(value)
                    if stopped:
                        self.finish = "stop"
                    if piece:
                        yield piece
                elif kind == "finish":
                    piece = self.text.finish()
                    self.finish = "stop" if value == "cancelled" else value
                    if piece:
                        yield piece
                else:
                    raise ApiError(500, str(value), code="generation_failed")
        finally:  # a no-op for a request the scheduler has finished; else its row is freed at once
            self.engine.scheduler.cancel(self.sequence)


def scheduler_metrics(registry: Any, scheduler: Any) -> None:
    """Expose the scheduler's state in a Prometheus registry: running and waiting requests, and counters of
    steps, prompt and generated tokens, cancelled requests and failed forwards."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Any:
            yield GaugeMetricFamily(
                "unipelt_generation_running", "Requests holding a row", value=scheduler.running
            )
            yield GaugeMetricFamily(
                "unipelt_generation_waiting", "Requests waiting for a row", value=len(scheduler.waiting)
            )
            for key, value in dict(scheduler.stats).items():
                yield CounterMetricFamily(
                    f"unipelt_generation_{key}", f"Generation {key} so far", value=value
                )

    registry.register(Collector())


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def openai_router(engine: GenerationEngine, observe: Callable[[str, int, float], None] | None = None) -> Any:
    """The routes above for ``engine``'s tasks. ``observe(task, status, seconds)`` is told of every answer."""
    from fastapi import APIRouter, Request

    router = APIRouter(tags=["OpenAI-compatible"])
    created = int(time.time())
    generate = Completions(engine, observe)

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The servable models: one per task, then the plain base model."""
        owner = {name: "unipelt" for name in engine.tasks}
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": owner.get(name, "base")}
                for name in engine.models
            ],
        }

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        """OpenAI's chat completion: ``model`` names a task (or the base model)."""
        return await generate(request, ChatRequest, True)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Any:
        """OpenAI's (legacy) text completion: ``model`` names a task (or the base model)."""
        return await generate(request, CompletionRequest, False)

    return router


class Completions:
    """One chat or text completion request: read and check it, tokenise its prompt off the event loop, run it
    through the scheduler, answer whole or streamed; every answer (error or not) is told to ``observe``."""

    def __init__(self, engine: GenerationEngine, observe: Callable[[str, int, float], None] | None) -> None:
        self.engine, self.observe = engine, observe

    def note(self, model: str, status: int, start: float) -> None:
        if self.observe is not None:
            self.observe(model, status, time.perf_counter() - start)

    async def __call__(self, request: Any, schema: type, chat: bool) -> Any:
        start = time.perf_counter()
        model = ""
        try:
            body = await self.read(request, schema)
            model = body.model
            request.state.task = model  # the request log and /metrics count it under its task
            run = await self.start(body, chat)
            if body.stream:
                return StreamingResponse(
                    _stream(run, body, chat, self.note, start), media_type="text/event-stream"
                )
            text = "".join([p async for p in run.pieces(request.is_disconnected)])
            if run.finish is None:  # the client went away
                self.note(model, 499, start)
                return JSONResponse({}, status_code=499)
            answer = chat_answer if chat else completion_answer
            self.note(model, 200, start)
            return answer(new_id("chatcmpl" if chat else "cmpl"), model, text, run.finish, run.usage())
        except ApiError as error:
            self.note(model, error.status, start)
            return JSONResponse(error.body(), status_code=error.status)

    @staticmethod
    async def read(request: Any, schema: type) -> Any:
        """The request body as ``schema`` (400 for JSON that is not, OpenAI's error shape for bad fields)."""
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the body is not valid JSON: {error}") from None
        return parse(schema, data)

    async def start(self, body: Any, chat: bool) -> Generation:
        """The request's generation, its prompt tokenised: an unknown model is a 404, a prompt that does not
        fit the context a 400."""
        engine = self.engine
        try:
            task = engine.task_of(body.model)
        except InputError as error:
            raise ApiError(error.status, str(error), "model", "model_not_found") from None
        param = "messages" if chat else "prompt"
        try:
            if chat:
                messages = [{"role": m.role, "content": m.text()} for m in body.messages]
                prompt = await asyncio.to_thread(engine.chat_prompt, messages)
            else:
                prompt = await asyncio.to_thread(engine.text_prompt, body.text())
        except InputError as error:
            raise ApiError(error.status, str(error), param) from None
        try:
            return Generation(engine, prompt, task, body)
        except InputError as error:
            raise ApiError(error.status, str(error), param, "context_length_exceeded") from None


async def _stream(run: Generation, body: Any, chat: bool, note: Callable, start: float) -> AsyncIterator[str]:
    """Server-sent events of one generation: first piece, more pieces, the finish, usage if asked, [DONE]."""
    ident, model = new_id("chatcmpl" if chat else "cmpl"), body.model

    def chunk(piece: str, finish: str | None, first: bool = False) -> str:
        if not chat:
            return _sse(completion_chunk(ident, model, piece, finish))
        delta = {"role": "assistant", "content": piece} if first else ({"content": piece} if piece else {})
        return _sse(chat_chunk(ident, model, delta, finish))

    status = 499  # until it completes: a client that leaves mid-stream
    try:
        if chat:
            yield chunk("", None, first=True)
        async for piece in run.pieces():
            yield chunk(piece, None)
        yield chunk("", run.finish)
        if body.wants_usage():
            last = chat_chunk(ident, model, {}, None) if chat else completion_chunk(ident, model, "", None)
            yield _sse({**last, "choices": [], "usage": run.usage()})
        status = 200
    except ApiError as error:
        status = error.status
        yield _sse(error.body())
    finally:
        note(model, status, start)
    yield "data: [DONE]\n\n"
