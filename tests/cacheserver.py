"""A loopback provider that bills like the real ones: OpenAI chat completions and Anthropic
messages on 127.0.0.1, with the usage objects those APIs return, prompt caching included.

litellm talks to it over real HTTP (``openai/<model>`` or ``anthropic/<model>`` with
``api_base=server.url``), so the usage reaches agentkd exactly as litellm parses a provider's.

- OpenAI (``/chat/completions``): usage counts whitespace words; `openai_cached` (a function
  of the prompt token count) fills ``prompt_tokens_details.cached_tokens``, `reasoning`
  ``completion_tokens_details.reasoning_tokens``, and `stated_cost` a gateway's ``usage.cost``.
- Anthropic (``/v1/messages``): a prefix cache like Anthropic's. The prompt is the system
  blocks then the messages' blocks; a block marked ``cache_control`` is a breakpoint. The
  longest prefix ending within `LOOKBACK` blocks before a breakpoint that an earlier request
  cached is read (``cache_read_input_tokens``); the rest up to the last breakpoint is written
  (``cache_creation_input_tokens``) and every breakpoint's prefix cached; what follows is
  ``input_tokens``. Prefixes shorter than `min_cacheable` tokens are never cached, as on
  Anthropic (1024 for Sonnet). `delay_s` holds every answer (to measure latency).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOKBACK = 20
"""Blocks before a breakpoint that Anthropic checks for an earlier cached prefix."""


def words(value: Any) -> int:
    """Tokens of a message content as this server counts them: whitespace words."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(words(part.get("text", "")) for part in value if isinstance(part, dict))
    return 0


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


class CacheServer:
    def __init__(self, *, answer: str = "Thought: go.\nAction: look", min_cacheable: int = 0,
                 openai_cached: Callable[[int], int] | None = None, reasoning: int = 0,
                 stated_cost: float | None = None, delay_s: float = 0.0) -> None:
        self.answer = answer
        self.min_cacheable = min_cacheable
        self.openai_cached = openai_cached
        self.reasoning = reasoning
        self.stated_cost = stated_cost
        self.delay_s = delay_s
        self.cache: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self.usages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CacheServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (quiet)
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                time.sleep(owner.delay_s)
                with owner.lock:
                    owner.requests.append(body)
                    reply = (owner._anthropic(body) if self.path.endswith("/messages")
                             else owner._openai(body))
                    owner.usages.append(reply["usage"])
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _openai(self, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        prompt = sum(words(m.get("content")) for m in body["messages"])
        out = words(self.answer) * n + self.reasoning
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": out,
                                 "total_tokens": prompt + out}
        if self.openai_cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.openai_cached(prompt)}
        if self.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning}
        if self.stated_cost is not None:
            usage["cost"] = self.stated_cost
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": 0, "model": body["model"], "usage": usage,
                "choices": [{"index": i, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": self.answer}}
                            for i in range(n)]}

    def _anthropic(self, body: dict[str, Any]) -> dict[str, Any]:
        blocks = _blocks(body.get("system"))
        for message in body["messages"]:
            blocks += _blocks(message.get("content"))
        sizes = [words(b.get("text", "")) for b in blocks]
        total = sum(sizes)

        def key(end: int) -> str:  # the prefix of blocks[:end]
            return json.dumps([b.get("text") for b in blocks[:end]])

        marks = [i + 1 for i, b in enumerate(blocks) if b.get("cache_control")
                 and sum(sizes[:i + 1]) >= self.min_cacheable]
        hit = max((end for mark in marks for end in range(max(1, mark - LOOKBACK), mark + 1)
                   if key(end) in self.cache), default=0)
        read = sum(sizes[:hit])
        written = sum(sizes[:marks[-1]]) - read if marks and marks[-1] > hit else 0
        self.cache.update(key(mark) for mark in marks)
        out = words(self.answer)
        return {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
                "model": body["model"], "stop_reason": "end_turn", "stop_sequence": None,
                "content": [{"type": "text", "text": self.answer}],
                "usage": {"input_tokens": total - read - written, "output_tokens": out,
                          "cache_creation_input_tokens": written,
                          "cache_read_input_tokens": read}}
