"""The gateway with the SDKs agents are written in: the anthropic SDK (messages, streaming,
tool use), the openai SDK's Responses API (whole and streamed), langchain-openai's
ChatOpenAI, and an openai-agents Agent with a function tool; each run's episodes, steps and
verdicts in the log are checked exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import importable, require

require(all(importable(m) for m in ("fastapi", "openai", "anthropic", "langchain_openai",
                                    "agents", "prometheus_client")),
        "the SDK tests need the gateway extra and the dev SDKs: pip install -e '.[gateway,dev]'")

import anthropic  # noqa: E402
import openai  # noqa: E402
from gateway_upstream import Upstream, serve_app  # noqa: E402

import agentkd  # noqa: E402
from agentkd.gateway import Gateway, GatewayConfig, create_app  # noqa: E402

TEACHER, STUDENT = "openai/sdk-teacher", "openai/sdk-student"
WEATHER_ARGS = {"city": "Paris"}


def responder(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A tool result is answered in words; with tools offered, the first tool is called;
    otherwise the teacher and the (agreeing) student answer in one line each. Asking for
    'disagree' splits the student's samples."""
    n = int(body.get("n") or 1)
    messages = body["messages"]
    last = messages[-1]
    if last.get("role") == "tool":
        return [{"content": f"The tool said: {last['content']}"} for _ in range(n)]
    if body.get("tools"):
        name = body["tools"][0]["function"]["name"]
        return [{"content": None, "tool_calls": [{
            "id": "call_w1", "type": "function",
            "function": {"name": name, "arguments": json.dumps(WEATHER_ARGS)}}]}
            for _ in range(n)]
    if model == "sdk-teacher":
        return [{"content": "Teacher says hello."} for _ in range(n)]
    if "disagree" in json.dumps(last.get("content")):
        return [{"content": f"Maybe {i}."} for i in range(n)]
    return [{"content": "Student says hello."} for _ in range(n)]


@pytest.fixture(scope="module")
def upstream():
    agentkd.register_price(TEACHER, 3.0, 15.0)
    agentkd.register_price(STUDENT, 0.1, 0.4)
    with Upstream(responder) as up:
        yield up


@pytest.fixture
def gateway(tmp_path: Path, upstream: Upstream):
    kwargs = {"api_base": upstream.url, "api_key": "sk-upstream-0123456789abcdef"}
    gw = Gateway(GatewayConfig.model_validate({
        "log": f"sqlite:///{tmp_path / 'sdk.db'}",
        "route": [{"teacher": TEACHER, "student": STUDENT, "teacher_kwargs": kwargs,
                   "student_kwargs": kwargs, "teacher_retries": 0}]}))
    with serve_app(create_app(gw)) as url:
        gw.url = url  # type: ignore[attr-defined]
        yield gw


def logged(gw: Gateway) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per episode: its status and its steps' (verdict, actor)."""
    log = gw.log
    return [(e.status, [(s.verdict, s.actor) for s in log.steps(e.id)])
            for e in log.episodes(gw.routes[TEACHER].run_id)]


def test_anthropic_sdk_messages_streaming_and_tool_use(gateway):
    client = anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-client-0123456789",
                                 max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=TEACHER, max_tokens=64, system="Be brief.",
        messages=[{"role": "user", "content": "Say hello."}])
    message = raw.parse()
    assert raw.headers["x-agentkd-verdict"] == "student"
    assert [b.text for b in message.content] == ["Student says hello."]
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 9

    with client.messages.stream(model=TEACHER, max_tokens=64, messages=[
            {"role": "user", "content": "Please disagree."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Teacher says hello." and final.content[0].text == text

    tools = [{"name": "get_weather", "description": "Weather in a city.",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    history: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(model=TEACHER, max_tokens=64, tools=tools, messages=history)
    (use,) = first.content
    assert (use.type, use.name, use.input, first.stop_reason) == (
        "tool_use", "get_weather", WEATHER_ARGS, "tool_use")
    history += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                              "content": "sunny"}]}]
    with client.messages.stream(model=TEACHER, max_tokens=64, tools=tools,
                                messages=history) as stream:
        answer = stream.get_final_message()
    assert answer.content[0].text == "The tool said: sunny"
    assert logged(gateway) == [("running", [("student", "student")]),
                               ("running", [("deferred", "teacher")]),
                               ("running", [("student", "student"), ("student", "student")])]

    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nowhere-model", max_tokens=8,
                               messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=TEACHER, max_tokens=0,
                               messages=[{"role": "user", "content": "x"}])


def test_openai_responses_api_whole_and_streamed(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-c-0123456789",
                           max_retries=0)
    response = client.responses.create(model=TEACHER, instructions="Be brief.",
                                       input="Say hello.")
    assert response.output_text == "Student says hello."
    assert response.usage.output_tokens == 9
    events = list(client.responses.create(model=TEACHER, input="Please disagree.",
                                          stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Teacher says hello."
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Teacher says hello."
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    with pytest.raises(openai.BadRequestError) as stateful:
        client.responses.create(model=TEACHER, input="x", previous_response_id="resp_1")
    assert "previous_response_id" in stateful.value.message
    assert logged(gateway) == [("running", [("student", "student")]),
                               ("running", [("deferred", "teacher")])]


def test_langchain_chat_openai(gateway):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=TEACHER, base_url=f"{gateway.url}/v1", api_key="sk-lc-0123456789",
                     max_retries=0)
    assert llm.invoke("Say hello.").content == "Student says hello."
    assert "".join(c.content for c in llm.stream("Please disagree.")) == "Teacher says hello."

    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    tooled = llm.bind_tools([get_weather])
    history: list[Any] = [HumanMessage("Weather in Paris?")]
    first = tooled.invoke(history)
    (call,) = first.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", WEATHER_ARGS)
    history += [first, ToolMessage("sunny", tool_call_id=call["id"])]
    assert tooled.invoke(history).content == "The tool said: sunny"
    assert logged(gateway) == [("running", [("student", "student")]),
                               ("running", [("deferred", "teacher")]),
                               ("running", [("student", "student"), ("student", "student")])]


def test_openai_agents_agent_with_a_function_tool(gateway):
    from agents import (
        Agent,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="sk-ag-0123456789",
                                max_retries=0)
    agent = Agent(name="weather", instructions="Answer with the tool.",
                  model=OpenAIResponsesModel(model=TEACHER, openai_client=client),
                  tools=[get_weather])
    result = Runner.run_sync(agent, "Weather in Paris?")
    assert calls == ["Paris"]
    assert result.final_output == "The tool said: sunny in Paris"
    # The tool call and the answer after it continue one conversation: one episode.
    assert logged(gateway) == [("running", [("student", "student"), ("student", "student")])]
