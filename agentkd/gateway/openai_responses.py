"""OpenAI Responses (``POST /v1/responses``, the OpenAI Agents SDK's default): input items →
`ChatCall` (``function_call`` items become tool calls, ``function_call_output`` items tool
messages), answer → a ``response`` object or its stream events (response.created …
response.completed). The gateway keeps no conversation state: ``previous_response_id`` is
refused, the client sends the whole input (the Agents SDK does by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import litellm
from pydantic import BaseModel, ConfigDict, Field

from agentkd.gateway.errors import bad_request
from agentkd.gateway.shapes import (
    ChatCall,
    Delta,
    message_of,
    new_id,
    now,
    sse,
    usage_of,
)


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    stream: bool = False


def _part(i: int, j: int, part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text", "refusal"):
        return {"type": "text", "text": str(part.get("text") or part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url") or part.get("file_id") or ""
        return {"type": "image_url", "image_url": {"url": str(url)}}
    raise bad_request(f"input[{i}].content[{j}] has type {kind!r}; supported: input_text, "
                      f"output_text, input_image", f"input[{i}].content[{j}]")


def _content(i: int, content: Any) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"input[{i}].content must be a string or a list of parts",
                          f"input[{i}].content")
    parts = [_part(i, j, p) for j, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(f"input[{i}].role must be user, assistant, system or "
                                  f"developer, got {role!r}", f"input[{i}].role")
            messages.append({"role": role, "content": _content(i, item.get("content"))})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id")), "type": "function",
                    "function": {"name": str(item.get("name")),
                                 "arguments": str(item.get("arguments") or "")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls of one assistant turn
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id")),
                             "content": output if isinstance(output, str)
                             else _content(i, output)})
        elif kind == "reasoning":
            continue  # the model's own reasoning summary: not forwarded
        else:
            raise bad_request(f"input[{i}] has type {kind!r}; supported: message, "
                              f"function_call, function_call_output", f"input[{i}].type")
    return messages


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise bad_request(f"tools[{i}] has type {tool.get('type')!r}; the gateway serves "
                              f"function tools only", f"tools[{i}].type")
        out.append({"type": "function", "function": {
            "name": tool.get("name"), "description": tool.get("description") or "",
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}})
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": str(choice.get("name"))}}
    raise bad_request(f"tool_choice {choice!r} is not supported; use auto, none, required or "
                      f"{{'type': 'function', 'name': ...}}", "tool_choice")


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format") or {}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {
            "name": fmt.get("name", "response"), "schema": fmt.get("schema") or {},
            "strict": bool(fmt.get("strict"))}}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    return None


def parse(body: dict[str, Any]) -> ChatCall:
    request = ResponsesRequest.model_validate(body)
    if request.previous_response_id:
        raise bad_request("previous_response_id is not supported: the gateway keeps no "
                          "conversation state; send the whole input (the OpenAI Agents SDK "
                          "does unless told otherwise)", "previous_response_id")
    items = ([{"role": "user", "content": request.input}] if isinstance(request.input, str)
             else request.input)
    messages = _messages(items)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    params: dict[str, Any] = {}
    if request.tools:
        params["tools"] = _tools(request.tools)
    if request.tool_choice is not None and request.tools:
        params["tool_choice"] = _tool_choice(request.tool_choice)
    if request.text and (fmt := _response_format(request.text)):
        params["response_format"] = fmt
    for name, target in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                         ("top_p", "top_p"), ("parallel_tool_calls", "parallel_tool_calls")):
        if getattr(request, name) is not None:
            params[target] = getattr(request, name)
    return ChatCall(request.model, messages, params, request.stream, include_usage=True)


@dataclass
class _Output:
    """The answer's output items as they build up."""

    text: str = ""
    text_id: str = ""
    calls: list[dict[str, Any]] | None = None

    def items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if self.text:
            items.append({"type": "message", "id": self.text_id or new_id("msg_"),
                          "status": "completed", "role": "assistant",
                          "content": [{"type": "output_text", "text": self.text,
                                       "annotations": [], "logprobs": []}]})
        for call in self.calls or []:
            items.append({**call, "status": "completed"})
        return items


def _response(model: str, output: list[dict[str, Any]], usage: tuple[int, int],
              status: str, response_id: str) -> dict[str, Any]:
    prompt, completion = usage
    return {"id": response_id, "object": "response", "created_at": now(), "model": model,
            "status": status, "output": output, "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "temperature": None, "top_p": None,
            "max_output_tokens": None, "text": {"format": {"type": "text"}},
            "usage": {"input_tokens": prompt, "output_tokens": completion,
                      "total_tokens": prompt + completion,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def render(response: litellm.ModelResponse, model: str) -> dict[str, Any]:
    message = message_of(response)
    calls = [{"type": "function_call", "id": new_id("fc_"), "call_id": c["id"],
              "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
             for c in message["tool_calls"] or []]
    output = _Output(text=message["content"] or "", calls=calls)
    return _response(model, output.items(), usage_of(response), "completed", new_id("resp_"))


class ResponsesStream:
    """The Responses stream events, numbered; text and each function call are output items
    opened when they start and closed (with their final value) when the next begins."""

    def __init__(self, model: str) -> None:
        self.model, self.id = model, new_id("resp_")
        self.seq = 0
        self.output = _Output(calls=[])
        self.open: tuple[str, int] | None = None  # ("text" | "call", output index)
        self.index = -1
        self.usage = (0, 0)

    def _event(self, kind: str, **fields: Any) -> str:
        self.seq += 1
        return sse({"type": kind, "sequence_number": self.seq, **fields}, kind)

    def start(self) -> list[str]:
        shell = _response(self.model, [], (0, 0), "in_progress", self.id)
        return [self._event("response.created", response=shell),
                self._event("response.in_progress", response=shell)]

    def _close(self) -> list[str]:
        if self.open is None:
            return []
        kind, index = self.open
        self.open = None
        if kind == "text":
            part = {"type": "output_text", "text": self.output.text, "annotations": []}
            item = self.output.items()[0]
            return [self._event("response.output_text.done", item_id=self.output.text_id,
                                output_index=index, content_index=0, text=self.output.text,
                                logprobs=[]),
                    self._event("response.content_part.done", item_id=self.output.text_id,
                                output_index=index, content_index=0, part=part),
                    self._event("response.output_item.done", output_index=index, item=item)]
        assert self.output.calls is not None
        call = self.output.calls[-1]
        return [self._event("response.function_call_arguments.done", item_id=call["id"],
                            output_index=index, arguments=call["arguments"]),
                self._event("response.output_item.done", output_index=index,
                            item={**call, "status": "completed"})]

    def feed(self, delta: Delta) -> list[str]:
        events: list[str] = []
        assert self.output.calls is not None
        if delta.content:
            if self.open is None or self.open[0] != "text":
                events += self._close()
                self.index += 1
                self.open = ("text", self.index)
                self.output.text_id = new_id("msg_")
                events += [
                    self._event("response.output_item.added", output_index=self.index,
                                item={"type": "message", "id": self.output.text_id,
                                      "status": "in_progress", "role": "assistant",
                                      "content": []}),
                    self._event("response.content_part.added", item_id=self.output.text_id,
                                output_index=self.index, content_index=0,
                                part={"type": "output_text", "text": "", "annotations": []})]
            self.output.text += delta.content
            events.append(self._event("response.output_text.delta",
                                      item_id=self.output.text_id, output_index=self.index,
                                      content_index=0, delta=delta.content, logprobs=[]))
        for piece in delta.tool_calls:
            if piece.id or self.open is None or self.open[0] != "call":
                events += self._close()
                self.index += 1
                self.open = ("call", self.index)
                call = {"type": "function_call", "id": new_id("fc_"),
                        "call_id": piece.id or new_id("call_"), "name": piece.name or "",
                        "arguments": ""}
                self.output.calls.append(call)
                events.append(self._event("response.output_item.added", output_index=self.index,
                                          item={**call, "status": "in_progress"}))
            call = self.output.calls[-1]
            if piece.arguments:
                call["arguments"] += piece.arguments
                events.append(self._event("response.function_call_arguments.delta",
                                          item_id=call["id"], output_index=self.index,
                                          delta=piece.arguments))
        if delta.usage:
            self.usage = delta.usage
        return events

    def end(self) -> list[str]:
        events = self._close()
        final = _response(self.model, self.output.items(), self.usage, "completed", self.id)
        return [*events, self._event("response.completed", response=final)]
