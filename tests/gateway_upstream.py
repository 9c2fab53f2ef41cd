"""Loopback servers for the gateway's tests and benchmark.

`Upstream` is an OpenAI-compatible chat-completions server (asyncio, uvicorn in a thread)
with a fixed latency, answers from a responder, streaming (``stream: true`` as real SSE
chunks, usage last) and a fault plan (``429``, ``500``, ``503``, ``timeout``). Token usage
counts whitespace words, so costs are exact. `serve_app` (`agentkd.gateway.server.running`)
runs any ASGI app (the gateway) on a free loopback port in a thread.

    with Upstream(responder) as up, serve_app(create_app(gateway)) as url:
        ...                                  # point the gateway at up.url, clients at url
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

Responder = Callable[[str, dict[str, Any]], list[dict[str, Any]]]


def look_responder(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sample answers ``Action: look``."""
    return [{"content": "Thought: look around first.\nAction: look"}
            for _ in range(int(body.get("n") or 1))]


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(len(str(p.get("text", "")).split()) for p in value if isinstance(p, dict))
    return 0


def usage(messages: list[dict[str, Any]], answers: list[dict[str, Any]]) -> tuple[int, int]:
    """(prompt, completion) tokens as the upstream bills them."""
    prompt = sum(_words(m.get("content")) for m in messages)
    completion = sum(_words(a.get("content")) + 5 * len(a.get("tool_calls") or [])
                     for a in answers)
    return prompt, completion


class Upstream:
    def __init__(self, responder: Responder = look_responder, *, latency_s: float = 0.0,
                 hang_s: float = 5.0) -> None:
        self.responder, self.latency_s, self.hang_s = responder, latency_s, hang_s
        self.requests: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []
        self._plan: dict[str, deque[str]] = {}
        self._lock = threading.Lock()
        self._url: str | None = None
        self._serving: contextlib.ExitStack | None = None

    @property
    def url(self) -> str:
        assert self._url is not None, "enter the Upstream first"
        return f"{self._url}/v1"

    def plan(self, model: str, *faults: str) -> None:
        with self._lock:
            self._plan.setdefault(model, deque()).extend(faults)

    def _fault(self, model: str) -> str:
        with self._lock:
            self.requests[model] += 1
            plan = self._plan.get(model)
            return plan.popleft() if plan else "ok"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "GET":
            await _send(send, 200, {"requests": dict(self.requests)})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw or b"{}")
        model = str(body.get("model"))
        with self._lock:
            self.bodies.append(body)
            self.headers_seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        fault = self._fault(model)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        if fault in ("429", "500", "503", "timeout"):
            status = 504 if fault == "timeout" else int(fault)
            await _send(send, status, {"error": {"message": f"upstream fault {fault}",
                                                 "type": "server_error"}},
                        [(b"retry-after", b"0")] if fault == "429" else [])
            return
        answers = self.responder(model, body)
        prompt, completion = usage(body.get("messages") or [], answers)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
        if not body.get("stream"):
            await _send(send, 200, {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": i, "message": {"role": "assistant", **a},
                             "finish_reason": "tool_calls" if a.get("tool_calls") else "stop"}
                            for i, a in enumerate(answers)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for chunk in _chunks(answers[0], prompt, completion,
                             bool((body.get("stream_options") or {}).get("include_usage"))):
            data = {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, **chunk}
            await send({"type": "http.response.body", "more_body": True,
                        "body": f"data: {json.dumps(data)}\n\n".encode()})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    def __enter__(self) -> Upstream:
        self._serving = contextlib.ExitStack()
        self._url = self._serving.enter_context(serve_app(self))
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._serving is not None
        self._serving.close()


def _chunks(answer: dict[str, Any], prompt: int, completion: int,
            include_usage: bool) -> Iterator[dict[str, Any]]:
    """One answer as OpenAI stream chunks: a word per chunk, each tool call in two."""
    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield choice({"role": "assistant", "content": ""})
    words = (answer.get("content") or "").split(" ")
    for i, word in enumerate(words if answer.get("content") else []):
        yield choice({"content": word if i == 0 else " " + word})
    for i, call in enumerate(answer.get("tool_calls") or []):
        args = call["function"]["arguments"]
        yield choice({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                      "function": {"name": call["function"]["name"],
                                                   "arguments": args[: len(args) // 2]}}]})
        yield choice({"tool_calls": [{"index": i, "function": {
            "arguments": args[len(args) // 2:]}}]})
    yield choice({}, "tool_calls" if answer.get("tool_calls") else "stop")
    if include_usage:
        yield {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                        "total_tokens": prompt + completion}}


async def _send(send: Any, status: int, payload: dict[str, Any],
                headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": data})


def serve_app(app: Any) -> contextlib.AbstractContextManager[str]:
    """Any ASGI app on a free loopback port; yields its base URL (no /v1)."""
    from agentkd.gateway.server import running  # here: the benchmark's upstream needs none

    return running(app)


def bench_responder(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark's agent: the teacher names a command; the student's samples agree,
    except on requests whose text ends in 7 (one in ten), where they split."""
    n = int(body.get("n") or 1)
    text = str(body["messages"][-1].get("content", ""))
    if "student" in model and text.endswith("7"):
        return [{"content": f"Action: open drawer {i}"} for i in range(n)]
    return [{"content": "Thought: the map says so.\nAction: go to desk 1"} for _ in range(n)]


def main() -> None:
    """Serve `Upstream(bench_responder)` on a port until killed; prints ``PORT <n>``."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    config = uvicorn.Config(Upstream(bench_responder, latency_s=args.latency_ms / 1000),
                            host="127.0.0.1", port=args.port, log_level="error", backlog=4096)
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"PORT {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
