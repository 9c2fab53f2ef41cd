"""OpenAI Chat Completions (``POST /v1/chat/completions``): request → `ChatCall`, answer →
``chat.completion`` JSON or ``chat.completion.chunk`` server-sent events."""

from __future__ import annotations

from typing import Any

import litellm
from pydantic import BaseModel, ConfigDict, Field

from agentkd.gateway.shapes import (
    ChatCall,
    Delta,
    finish_reason_of,
    new_id,
    now,
    sse,
    tool_calls_of,
    usage_of,
)

# Sampling and output options forwarded to litellm as they are; others are dropped.
_FORWARDED = ("n", "tools", "tool_choice", "response_format", "temperature", "top_p",
              "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty",
              "frequency_penalty", "logprobs", "top_logprobs", "parallel_tool_calls", "user",
              "logit_bias", "reasoning_effort")


class ChatRequest(BaseModel):
    """The fields the gateway reads; any other field is accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1, le=16)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    parallel_tool_calls: bool | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    reasoning_effort: str | None = None


def parse(body: dict[str, Any]) -> ChatCall:
    request = ChatRequest.model_validate(body)
    params = {name: getattr(request, name) for name in _FORWARDED
              if getattr(request, name) is not None}
    include_usage = bool((request.stream_options or {}).get("include_usage"))
    return ChatCall(request.model, request.messages, params, request.stream, include_usage)


def render(response: litellm.ModelResponse, model: str) -> dict[str, Any]:
    """The ``chat.completion`` object; `model` is the name the client asked for."""
    prompt, completion = usage_of(response)
    choices = []
    for i, choice in enumerate(response.choices):
        message = choice.message
        tool_calls = tool_calls_of(message)
        choices.append({
            "index": i,
            "message": {"role": "assistant", "content": message.content, "refusal": None,
                        **({"tool_calls": tool_calls} if tool_calls else {})},
            "finish_reason": "tool_calls" if tool_calls else (choice.finish_reason or "stop"),
            "logprobs": None})
    if choices:
        choices[0]["finish_reason"] = finish_reason_of(response)
    return {"id": response.id or new_id("chatcmpl-"), "object": "chat.completion",
            "created": now(), "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


class ChatStream:
    """``chat.completion.chunk`` events, one id for the whole answer; usage last when asked
    (``stream_options.include_usage``), then ``[DONE]``."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id, self.created, self.model = new_id("chatcmpl-"), now(), model
        self.include_usage = include_usage
        self.usage: tuple[int, int] | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                 "logprobs": None}]})

    def start(self) -> list[str]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, delta: Delta) -> list[str]:
        events = []
        if delta.content:
            events.append(self._chunk({"content": delta.content}))
        if delta.tool_calls:
            events.append(self._chunk({"tool_calls": [
                {"index": c.index, **({"id": c.id, "type": "function"} if c.id else {}),
                 "function": {**({"name": c.name} if c.name else {}),
                              "arguments": c.arguments}}
                for c in delta.tool_calls]}))
        if delta.finish_reason:
            events.append(self._chunk({}, delta.finish_reason))
        if delta.usage:
            self.usage = delta.usage
        return events

    def end(self) -> list[str]:
        events = []
        if self.include_usage:
            prompt, completion = self.usage or (0, 0)
            events.append(sse({"id": self.id, "object": "chat.completion.chunk",
                               "created": self.created, "model": self.model, "choices": [],
                               "usage": {"prompt_tokens": prompt,
                                         "completion_tokens": completion,
                                         "total_tokens": prompt + completion}}))
        return [*events, sse("[DONE]")]
