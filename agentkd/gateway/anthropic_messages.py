"""Anthropic Messages (``POST /v1/messages``): request → `ChatCall` (content blocks become chat
messages: ``tool_use`` → tool calls, ``tool_result`` → tool messages), answer → a ``message``
object or its stream events (message_start … message_stop)."""

from __future__ import annotations

import json
from typing import Any, Literal

import litellm
from pydantic import BaseModel, ConfigDict, Field

from agentkd.gateway.errors import bad_request
from agentkd.gateway.shapes import (
    ChatCall,
    Delta,
    finish_reason_of,
    message_of,
    new_id,
    sse,
    text_of,
    usage_of,
)

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "content_filter": "refusal"}


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    else:
        url = str(source.get("url", ""))
    return {"type": "image_url", "image_url": {"url": url}}


def _turns(i: int, message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages (tool results first, as separate turns)."""
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise bad_request(f"messages[{i}].role must be 'user' or 'assistant', got {role!r}",
                          f"messages[{i}].role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"messages[{i}].content must be a string or a list of content "
                          f"blocks", f"messages[{i}].content")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image" and role == "user":
            parts.append(_image_part(block))
        elif kind == "tool_use" and role == "assistant":
            tool_calls.append({"id": str(block.get("id")), "type": "function", "function": {
                "name": str(block.get("name")),
                "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and role == "user":
            result = block.get("content")
            out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")),
                        "content": text_of(result) if isinstance(result, list)
                        else str(result or "")})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own reasoning: not part of the conversation we forward
        else:
            raise bad_request(f"messages[{i}].content[{j}] has type {kind!r}, which a "
                              f"{role} message cannot carry here (text, image, tool_use, "
                              f"tool_result)", f"messages[{i}].content[{j}]")
    if parts or tool_calls:
        only_text = all(p["type"] == "text" for p in parts)
        body: Any = "".join(p["text"] for p in parts) if only_text else parts
        turn: dict[str, Any] = {"role": role, "content": body if parts else None}
        if tool_calls:
            turn["tool_calls"] = tool_calls
        out.append(turn)
    return out


def _tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": str(choice.get("name"))}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        raise bad_request(f"tool_choice.type must be auto, any, tool or none, got {kind!r}",
                          "tool_choice")
    return mapped


def parse(body: dict[str, Any]) -> ChatCall:
    request = MessagesRequest.model_validate(body)
    messages: list[dict[str, Any]] = []
    if request.system:
        system = request.system if isinstance(request.system, str) else text_of(request.system)
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(request.messages):
        messages.extend(_turns(i, message))
    params: dict[str, Any] = {"max_tokens": request.max_tokens}
    if request.tools:
        params["tools"] = [{"type": "function", "function": {
            "name": t.get("name"), "description": t.get("description", ""),
            "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}}
            for t in request.tools]
    if request.tool_choice:
        params["tool_choice"] = _tool_choice(request.tool_choice)
    for name, target in (("stop_sequences", "stop"), ("temperature", "temperature"),
                         ("top_p", "top_p")):
        if getattr(request, name) is not None:
            params[target] = getattr(request, name)
    return ChatCall(request.model, messages, params, request.stream, include_usage=True)


def _tool_input(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {}


def render(response: litellm.ModelResponse, model: str) -> dict[str, Any]:
    message = message_of(response)
    content: list[dict[str, Any]] = []
    if message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message["tool_calls"] or []:
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": _tool_input(call["function"]["arguments"])})
    prompt, completion = usage_of(response)
    return {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": _STOP_REASONS.get(finish_reason_of(response), "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion}}


class MessagesStream:
    """Anthropic's stream: message_start, a content block per text run or tool call
    (start, deltas, stop), message_delta with the stop reason and usage, message_stop."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.block: int = -1
        self.block_kind: Literal["text", "tool"] | None = None
        self.tool_index: int | None = None
        self.stop_reason = "end_turn"
        self.usage = (0, 0)

    def start(self) -> list[str]:
        return [sse({"type": "message_start", "message": {
            "id": new_id("msg_"), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}, "message_start")]

    def _close_block(self) -> list[str]:
        if self.block_kind is None:
            return []
        self.block_kind = None
        return [sse({"type": "content_block_stop", "index": self.block}, "content_block_stop")]

    def _open(self, kind: Literal["text", "tool"], block: dict[str, Any]) -> list[str]:
        events = self._close_block()
        self.block += 1
        self.block_kind = kind
        return [*events, sse({"type": "content_block_start", "index": self.block,
                              "content_block": block}, "content_block_start")]

    def _delta(self, delta: dict[str, Any]) -> str:
        return sse({"type": "content_block_delta", "index": self.block, "delta": delta},
                   "content_block_delta")

    def feed(self, delta: Delta) -> list[str]:
        events: list[str] = []
        if delta.content:
            if self.block_kind != "text":
                events += self._open("text", {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": delta.content}))
        for call in delta.tool_calls:
            if self.block_kind != "tool" or call.index != self.tool_index:
                self.tool_index = call.index
                events += self._open("tool", {"type": "tool_use", "id": call.id or new_id(
                    "toolu_"), "name": call.name or "", "input": {}})
            if call.arguments:
                events.append(self._delta({"type": "input_json_delta",
                                           "partial_json": call.arguments}))
        if delta.finish_reason:
            self.stop_reason = _STOP_REASONS.get(delta.finish_reason, "end_turn")
        if delta.usage:
            self.usage = delta.usage
        return events

    def end(self) -> list[str]:
        return [*self._close_block(),
                sse({"type": "message_delta",
                     "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                     "usage": {"input_tokens": self.usage[0],
                               "output_tokens": self.usage[1]}}, "message_delta"),
                sse({"type": "message_stop"}, "message_stop")]
