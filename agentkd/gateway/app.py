"""The gateway's HTTP app (FastAPI): the three APIs' endpoints over one `Gateway`, plus
``/v1/models``, ``/health``, ``/metrics`` and ``/agentkd/episodes/{id}/finish``.

Every endpoint answers in its API's own shape, errors included (`agentkd.gateway.errors`):
an exception never reaches the client as a traceback. A streamed answer starts once it is
known who answers: a student's after its samples are judged (then replayed as a stream), a
teacher's with its first chunk from the provider (then streamed through). Its response
headers carry the verdict (``X-Agentkd-Actor``, ``X-Agentkd-Verdict``) and the episode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentkd.gateway import anthropic_messages, openai_chat, openai_responses
from agentkd.gateway.episodes import EpisodeHeaders
from agentkd.gateway.errors import GatewayError, bad_request, from_exception
from agentkd.gateway.service import Gateway, Outcome
from agentkd.gateway.shapes import ChatCall, Delta, StreamEncoder, deltas_of, sse


@dataclass(frozen=True)
class Api:
    """One API shape: how its requests parse, its answers render, its streams and errors."""

    name: str
    parse: Callable[[dict[str, Any]], ChatCall]
    render: Callable[[Any, str], dict[str, Any]]
    stream: Callable[[ChatCall], StreamEncoder]
    error: Callable[[GatewayError], dict[str, Any]]
    stream_error: Callable[[GatewayError], str]


CHAT = Api("chat", openai_chat.parse, openai_chat.render,
           lambda c: openai_chat.ChatStream(c.model, c.include_usage),
           GatewayError.openai, lambda e: sse(e.openai()))
RESPONSES = Api("responses", openai_responses.parse, openai_responses.render,
                lambda c: openai_responses.ResponsesStream(c.model),
                GatewayError.openai,
                lambda e: sse({"type": "error", "code": e.code or e.kind, "message": e.message,
                               "param": e.param, "sequence_number": 0}, "error"))
MESSAGES = Api("messages", anthropic_messages.parse, anthropic_messages.render,
               lambda c: anthropic_messages.MessagesStream(c.model),
               GatewayError.anthropic, lambda e: sse(e.anthropic(), "error"))


class FinishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    success: bool | None = None
    reward: float | None = None
    info: dict[str, Any] = {}


class _QueueSink:
    """Hands a worker thread's stream items to the event loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[Any, ...]]
                 ) -> None:
        self.loop, self.queue = loop, queue

    def put(self, *item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def begin(self, headers: dict[str, str]) -> None:
        self.put("begin", headers)

    def delta(self, delta: Delta) -> None:
        self.put("delta", delta)


def _validation_error(exc: ValidationError) -> GatewayError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return bad_request(f"invalid request: {where}: {first['msg']}", where)


async def _body(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, "invalid_request", f"request body is over {limit} bytes")
    raw = await request.body()
    if len(raw) > limit:
        raise GatewayError(413, "invalid_request", f"request body is over {limit} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def create_app(gateway: Gateway) -> FastAPI:
    """The ASGI app serving `gateway` (one per worker process)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep(gateway))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.get_running_loop().run_in_executor(None, gateway.shutdown)

    app = FastAPI(title="agentkd gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error = GatewayError(exc.status_code, "not_found" if exc.status_code == 404
                             else "invalid_request",
                             f"{request.method} {request.url.path}: {exc.detail}")
        api = MESSAGES if request.url.path.startswith("/v1/messages") else CHAT
        return JSONResponse(api.error(error), status_code=exc.status_code)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(gateway.pool, fn, *args)

    async def handle(request: Request, api: Api) -> Response:
        start = time.perf_counter()
        state = {"status": 200, "route": "unknown"}

        def done() -> None:
            gateway.metrics.requests.labels(api.name, state["route"], str(state["status"])).inc()
            gateway.metrics.latency.labels(api.name).observe(time.perf_counter() - start)
            gateway.metrics.episodes.set(len(gateway.episodes))

        model = "?"
        try:
            gateway.keys.check_host(request.headers)
            key = gateway.keys.check(request.headers)
            body = await _body(request, gateway.config.max_body_bytes)
            try:
                call = api.parse(body)
            except ValidationError as exc:
                raise _validation_error(exc) from None
            model = call.model
            state["route"] = gateway.route_label(call.model)
            headers = EpisodeHeaders.read(request.headers)
            if not call.stream:
                outcome: Outcome = await run(gateway.serve, call, headers, key)
                done()
                return JSONResponse(api.render(outcome.response, call.model),
                                    headers=outcome.headers())
            return await _stream(api, call, headers, key, state, done)
        except Exception as exc:
            error = from_exception(exc, model)
            state["status"] = error.status
            done()
            return JSONResponse(api.error(error), status_code=error.status)

    async def _stream(api: Api, call: ChatCall, headers: EpisodeHeaders, key: Any,
                      state: dict[str, Any], done: Callable[[], None]) -> Response:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        sink = _QueueSink(loop, queue)

        def serve() -> None:
            try:
                sink.put("done", gateway.serve(call, headers, key, sink))
            except BaseException as exc:  # handed to the client as an error, never lost
                sink.put("error", exc)

        loop.run_in_executor(gateway.pool, serve)
        first = await queue.get()
        if first[0] == "error":
            raise first[1]
        answer = first[1] if first[0] == "begin" else first[1].headers()

        async def events() -> AsyncIterator[str]:
            encoder = api.stream(call)
            for event in encoder.start():
                yield event
            item = first
            try:
                while True:
                    if item[0] == "delta":
                        for event in encoder.feed(item[1]):
                            yield event
                    elif item[0] == "done":
                        if not item[1].streamed:
                            for delta in deltas_of(item[1].response):
                                for event in encoder.feed(delta):
                                    yield event
                        for event in encoder.end():
                            yield event
                        return
                    elif item[0] == "error":
                        error = from_exception(item[1], call.model)
                        state["status"] = error.status
                        yield api.stream_error(error)
                        return
                    item = await queue.get()
            finally:
                done()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**answer, "Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, CHAT)

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        return await handle(request, RESPONSES)

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await handle(request, MESSAGES)

    async def guarded(request: Request, api: Api,
                      answer: Callable[[], Awaitable[Response]]) -> Response:
        try:
            gateway.keys.check_host(request.headers)
            gateway.keys.check(request.headers)
            return await answer()
        except Exception as exc:
            error = from_exception(exc, "?")
            return JSONResponse(api.error(error), status_code=error.status)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        async def answer() -> Response:
            return JSONResponse({"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "agentkd"}
                for name in gateway.model_names()]})
        return await guarded(request, CHAT, answer)

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok", "routes": sorted(gateway.routes),
                             "open_episodes": len(gateway.episodes)})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        async def answer() -> Response:
            return Response(gateway.metrics.render(),
                            media_type="text/plain; version=0.0.4; charset=utf-8")
        return await guarded(request, CHAT, answer)

    @app.post("/agentkd/episodes/{episode}/finish")
    async def finish(request: Request, episode: str) -> Response:
        async def answer() -> Response:
            body = await _body(request, 1_000_000)
            try:
                outcome = FinishRequest.model_validate(body)
            except ValidationError as exc:
                raise _validation_error(exc) from None
            ids = await run(gateway.finish, episode, outcome.success, outcome.reward,
                            outcome.info)
            return JSONResponse({"episode": episode, "finished": ids})
        return await guarded(request, CHAT, answer)

    return app


async def _sweep(gateway: Gateway) -> None:
    """Close idle episodes now and then (a quarter of the timeout, at most every 5 s)."""
    interval = min(5.0, gateway.config.idle_timeout_s / 4)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(Exception):  # a log hiccup: the next sweep tries again
            await loop.run_in_executor(gateway.pool, gateway.close_idle)
