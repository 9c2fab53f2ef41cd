"""What every API shape is translated to and from: a `ChatCall` (litellm's completion
arguments) going in, a litellm `ModelResponse` or a stream of `Delta`s coming out.

Each API module (`openai_chat`, `openai_responses`, `anthropic_messages`) parses its request
into a `ChatCall` and renders the answer back in its own shape, whole or as stream events;
streams are rendered from `Delta`s, so a teacher streamed through and a judged student
answer replayed as a stream go through the same encoder.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import litellm


@dataclass
class ChatCall:
    """One request, as litellm's completion takes it."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """One piece of a streamed answer (choice 0): text, tool-call pieces, or the end."""

    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens, on the last delta


class StreamEncoder(Protocol):
    """Turns `Delta`s into one API's server-sent events (already framed as text)."""

    def start(self) -> list[str]: ...

    def feed(self, delta: Delta) -> list[str]: ...

    def end(self) -> list[str]: ...


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event; `data` is JSON-encoded unless it is already text."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def tool_calls_of(message: Any) -> list[dict[str, Any]]:
    """A litellm message's function tool calls as plain dicts."""
    calls = []
    for call in getattr(message, "tool_calls", None) or []:
        fn = getattr(call, "function", None)
        if fn is not None:
            calls.append({"id": call.id, "type": "function",
                          "function": {"name": fn.name, "arguments": fn.arguments or ""}})
    return calls


def message_of(response: litellm.ModelResponse) -> dict[str, Any]:
    """Choice 0's assistant message as a plain dict (content, tool_calls)."""
    message = response.choices[0].message
    return {"role": "assistant", "content": message.content,
            "tool_calls": tool_calls_of(message) or None}


def usage_of(response: litellm.ModelResponse) -> tuple[int, int]:
    usage = getattr(response, "usage", None)
    return (int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0))


def finish_reason_of(response: litellm.ModelResponse) -> str:
    reason = response.choices[0].finish_reason
    if message_of(response)["tool_calls"]:
        return "tool_calls"
    return str(reason or "stop")


def deltas_of(response: litellm.ModelResponse) -> Iterator[Delta]:
    """A whole answer as a stream: its text, each tool call, then the end with its usage."""
    message = message_of(response)
    if message["content"]:
        yield Delta(content=message["content"])
    for i, call in enumerate(message["tool_calls"] or []):
        yield Delta(tool_calls=[ToolCallDelta(i, call["id"], call["function"]["name"],
                                              call["function"]["arguments"])])
    yield Delta(finish_reason=finish_reason_of(response), usage=usage_of(response))


def delta_of_chunk(chunk: Any) -> Delta | None:
    """A litellm stream chunk as a `Delta` (None when it carries nothing for choice 0)."""
    usage = getattr(chunk, "usage", None)
    tokens = ((int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))
              if usage is not None and getattr(usage, "prompt_tokens", None) is not None
              else None)
    choices = getattr(chunk, "choices", None) or []
    choice = next((c for c in choices if getattr(c, "index", 0) == 0), None)
    if choice is None:
        return Delta(usage=tokens) if tokens else None
    delta = choice.delta
    calls = [ToolCallDelta(int(getattr(c, "index", 0) or 0), getattr(c, "id", None),
                           getattr(c.function, "name", None) if c.function else None,
                           (getattr(c.function, "arguments", None) or "") if c.function else "")
             for c in (getattr(delta, "tool_calls", None) or [])]
    result = Delta(content=getattr(delta, "content", None) or "", tool_calls=calls,
                   finish_reason=choice.finish_reason, usage=tokens)
    if not (result.content or result.tool_calls or result.finish_reason or result.usage):
        return None
    return result


def text_of(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
