"""An OpenAI-compatible chat-completions server on 127.0.0.1 that misbehaves on command.

Tests point litellm at it with ``openai/<model>`` and ``api_base=server.url``; every request is
a real HTTP request over loopback, so the whole client stack (litellm, the openai SDK, httpx)
sees real timeouts, status codes, resets and broken bodies.

    with FaultServer() as server:
        server.plan("student", "503", "reset")       # the next two student requests fail
        server.always("teacher", "429")              # every teacher request fails
        ...
        server.injected                               # Counter of faults served, by kind

Faults (`FAULTS`):

- ``timeout``    hold the request for `hang_s` seconds (past the client's timeout), then drop it;
- ``429``        Too Many Requests with ``Retry-After: <retry_after>``;
- ``500`` / ``503``  server errors with an OpenAI-style JSON error body;
- ``reset``      read the request, send half a response, then reset the connection (RST);
- ``malformed``  200 with a body that is not JSON;
- ``empty``      200 with ``"choices": []``;
- ``truncated_tool``  200 whose tool call carries JSON arguments cut off mid-string;
- ``echo_auth``  500 whose error message echoes the request's Authorization and other
                 credential headers (a provider that leaks keys into its errors);
- ``ok``         a normal answer (useful inside a plan).

Answers come from `responder(model, messages, n)`, returning n assistant messages (dicts with
``content`` and optionally ``tool_calls``). Token usage counts whitespace words.

Run as a script (``python tests/faultserver.py [--responder agent]``) it serves in normal
mode until killed and prints ``PORT <n>`` on its first line; the soak benchmark uses it so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("timeout", "429", "500", "503", "reset", "malformed", "empty", "truncated_tool",
          "echo_auth")
Responder = Callable[[str, list[dict[str, Any]], int], list[dict[str, Any]]]
_CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")


def default_responder(model: str, messages: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Every sample answers ``Action: look``."""
    return [{"content": "Thought: look around first.\nAction: look"} for _ in range(n)]


def agent_responder(model: str, messages: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """A stand-in agent world: the teacher names a command derived from the latest
    observation; the student agrees with itself except on about one observation in ten, where
    its samples split (so the cascade defers to the teacher)."""
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    text = last if isinstance(last, str) else json.dumps(last)
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=4).digest(),
                       "little")
    command = f"go to place {h % 40}"
    if "teacher" in model:
        return [{"content": f"Thought: I know the way.\nAction: {command}"} for _ in range(n)]
    if h % 10 == 0:
        return [{"content": f"Thought: maybe.\nAction: open drawer {i}"} for i in range(n)]
    return [{"content": f"Thought: the examples say so.\nAction: {command}"} for _ in range(n)]


RESPONDERS: dict[str, Responder] = {"default": default_responder, "agent": agent_responder}


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(p.get("text", "")) for p in value if isinstance(p, dict))
    return 0


class FaultServer:
    """See the module docstring. Thread-safe; start/stop or use as a context manager."""

    def __init__(self, responder: Responder = default_responder, *, hang_s: float = 5.0,
                 retry_after: float = 1.0, port: int = 0) -> None:
        self.responder = responder
        self.hang_s = hang_s
        self.retry_after = retry_after
        self._port = port
        self._lock = threading.Lock()
        self._plans: dict[str, deque[str]] = defaultdict(deque)
        self._always: dict[str, str] = {}
        self._stop = threading.Event()
        self.requests: Counter[str] = Counter()       # requests received, by model
        self.injected: Counter[str] = Counter()       # faults served, by kind
        self.served_ok: Counter[str] = Counter()      # normal answers, by model
        self.log: list[tuple[float, str, str]] = []   # (time, model, fault or "ok")
        self.headers_seen: list[dict[str, str]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- control -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The api_base to give litellm."""
        return f"http://127.0.0.1:{self.port}/v1"

    def plan(self, model: str, *faults: str) -> None:
        """Serve `faults` to the next requests for `model`, in order ("ok" = a normal answer)."""
        for fault in faults:
            if fault != "ok" and fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self._lock:
            self._plans[model].extend(faults)

    def always(self, model: str, fault: str | None) -> None:
        """Serve `fault` to every request for `model` once its plan is used up (None: stop)."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self._lock:
            if fault is None:
                self._always.pop(model, None)
            else:
                self._always[model] = fault

    def clear(self, model: str | None = None) -> None:
        """Drop the plans and standing faults (of `model`, or all); counters stay."""
        with self._lock:
            for table in (self._plans, self._always):
                for key in [k for k in table if model is None or k == model]:
                    del table[key]

    def reset(self) -> None:
        """Forget plans, standing faults and counters."""
        with self._lock:
            self._plans.clear()
            self._always.clear()
            self.requests.clear()
            self.injected.clear()
            self.served_ok.clear()
            self.log.clear()
            self.headers_seen.clear()

    def times(self, model: str) -> list[float]:
        """When each request for `model` arrived (monotonic seconds)."""
        with self._lock:
            return [t for t, m, _ in self.log if m == model]

    def _next_fault(self, model: str) -> str:
        with self._lock:
            self.requests[model] += 1
            plan = self._plans.get(model)
            fault = plan.popleft() if plan else self._always.get(model, "ok")
            if fault == "ok":
                self.served_ok[model] += 1
            else:
                self.injected[fault] += 1
            self.log.append((time.monotonic(), model, fault))
            return fault

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _Server(("127.0.0.1", self._port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="faultserver")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # clients hanging up mid-request are part of the game here


class _Handler(BaseHTTPRequestHandler):
    owner: FaultServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real providers do

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
        return

    def do_GET(self) -> None:  # noqa: N802
        self._send_json(200, {"object": "list", "data": []})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "request body is not JSON",
                                            "type": "invalid_request_error"}})
            return
        owner = self.owner
        with owner._lock:
            owner.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        model = str(body.get("model", "?"))
        fault = owner._next_fault(model)
        try:
            self._serve(fault, model, body)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up first (e.g. its timeout)

    def _serve(self, fault: str, model: str, body: dict[str, Any]) -> None:
        owner = self.owner
        if fault == "timeout":
            owner._stop.wait(owner.hang_s)
            self._reset()
            return
        if fault == "429":
            self._send_json(429, {"error": {"message": "Rate limit reached, retry later",
                                            "type": "rate_limit_error", "code": "rate_limit"}},
                            headers={"Retry-After": f"{owner.retry_after:g}"})
            return
        if fault in ("500", "503"):
            self._send_json(int(fault), {"error": {"message": f"upstream failure {fault}",
                                                   "type": "server_error"}})
            return
        if fault == "echo_auth":
            leaked = {k: v for k, v in self.headers.items()
                      if k.lower() in _CREDENTIAL_HEADERS or k.lower().startswith("x-")}
            self._send_json(500, {"error": {
                "message": f"internal error while authorising {leaked} "
                           f"(Authorization: {self.headers.get('Authorization')})",
                "type": "server_error"}})
            return
        if fault == "reset":
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 4096\r\n\r\n{\"id\": \"chatcmpl-")
            self.wfile.write(head)
            self.wfile.flush()
            self._reset()
            return
        if fault == "malformed":
            self._send_raw(200, b'{"id": "chatcmpl-x", "choices": [{"message": {"content": "Act')
            return
        n = int(body.get("n") or 1)
        messages = body.get("messages") or []
        if fault == "empty":
            answers: list[dict[str, Any]] = []
        elif fault == "truncated_tool":
            answers = [{"content": None, "tool_calls": [{
                "id": f"call_{i}", "type": "function",
                "function": {"name": "act", "arguments": '{"command": "go to desk'}}]}
                for i in range(n)]
        else:
            answers = owner.responder(model, messages, n)
        prompt_tokens = sum(_words(m.get("content")) for m in messages)
        completion_tokens = sum(_words(a.get("content")) + 5 * len(a.get("tool_calls") or [])
                                for a in answers)
        self._send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": i, "finish_reason": "tool_calls" if a.get("tool_calls")
                         else "stop", "message": {"role": "assistant", **a}}
                        for i, a in enumerate(answers)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    def _send_json(self, status: int, payload: dict[str, Any],
                   headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashing proxy would."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fault server in normal mode.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--responder", choices=sorted(RESPONDERS), default="default")
    args = parser.parse_args()
    server = FaultServer(RESPONDERS[args.responder], port=args.port).start()
    print(f"PORT {server.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
