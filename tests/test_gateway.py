"""`agentkd serve` with real clients: the openai SDK (sync, async, streaming, tool calls) and
curl against a running gateway whose teacher and student are a loopback upstream; the log
holds the episodes, steps, verdicts and costs the upstream billed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import importable, require

require(importable("fastapi") and importable("openai") and importable("prometheus_client"),
        "the gateway tests need the gateway extra: pip install -e '.[gateway,dev]'")

import openai  # noqa: E402
from gateway_upstream import Upstream, serve_app, usage  # noqa: E402

import agentkd  # noqa: E402
from agentkd.gateway import Gateway, GatewayConfig, create_app  # noqa: E402
from agentkd.log import LLMCall  # noqa: E402

TEACHER, STUDENT, OTHER = "openai/gw-teacher", "openai/gw-student", "openai/gw-other"
PRICES = {TEACHER: (3.0, 15.0), STUDENT: (0.1, 0.4), OTHER: (1.0, 2.0)}
UPSTREAM_KEY = "sk-upstream-provider-key-0123456789"
TEACHER_ANSWER = "Thought: I know the way here.\nAction: go to desk 1"
TOOL_CALL = {"id": "call_7", "type": "function",
             "function": {"name": "act", "arguments": '{"command": "open drawer 2"}'}}


def responder(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Students agree unless the last user turn says 'split'; with tools, everyone calls
    `act`."""
    n = int(body.get("n") or 1)
    last = next((m.get("content") for m in reversed(body["messages"])
                 if m.get("role") in ("user", "tool")), "")
    if body.get("tools"):
        return [{"content": None, "tool_calls": [TOOL_CALL]} for _ in range(n)]
    if model == "gw-teacher":
        return [{"content": TEACHER_ANSWER} for _ in range(n)]
    if model == "gw-other":
        return [{"content": "passed through"} for _ in range(n)]
    if "split" in str(last):
        return [{"content": f"Action: open drawer {i}"} for i in range(n)]
    return [{"content": "Thought: the desk.\nAction: go to desk 1"} for _ in range(n)]


@pytest.fixture(scope="module")
def upstream():
    for model, (inp, out) in PRICES.items():
        agentkd.register_price(model, inp, out)
    with Upstream(responder) as up:
        yield up


def make_config(tmp_path: Path, upstream: Upstream, **route: Any) -> GatewayConfig:
    kwargs = {"api_base": upstream.url, "api_key": UPSTREAM_KEY}
    return GatewayConfig.model_validate({
        "log": f"sqlite:///{tmp_path / 'gw.db'}",
        "route": [{"teacher": TEACHER, "student": STUDENT, "mode": "distill",
                   "aliases": ["teacher-alias"], "teacher_kwargs": kwargs,
                   "student_kwargs": kwargs, "teacher_retries": 0, **route}],
        "upstream": {OTHER: kwargs}})


@pytest.fixture
def gateway(tmp_path, upstream):
    gw = Gateway(make_config(tmp_path, upstream))
    with serve_app(create_app(gw)) as url:
        gw.url = url  # type: ignore[attr-defined]
        yield gw


def billed(model: str, body: dict[str, Any]) -> float:
    """What the upstream's answer to `body` costs at the test prices."""
    prompt, completion = usage(body["messages"], responder(model.split("/")[1], body))
    inp, out = PRICES[model]
    return (prompt * inp + completion * out) / 1e6


def bodies_for(upstream: Upstream, model: str, since: int) -> list[dict[str, Any]]:
    return [b for b in upstream.bodies[since:] if b["model"] == model.split("/")[1]]


def client(gw: Gateway, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-client-key-abcdef", max_retries=0,
                         **kwargs)


def test_sync_client_episode_by_conversation_prefix(gateway, upstream):
    since = len(upstream.bodies)
    oai = client(gateway)
    history = [{"role": "system", "content": "You are in a room."},
               {"role": "user", "content": "Your task: find the desk."}]
    first = oai.chat.completions.with_raw_response.create(model=TEACHER, messages=history)
    answer = first.parse()
    assert first.headers["x-agentkd-actor"] == "student"
    assert first.headers["x-agentkd-verdict"] == "student"
    assert answer.choices[0].message.content == "Thought: the desk.\nAction: go to desk 1"
    assert answer.model == TEACHER
    episode = first.headers["x-agentkd-episode"]
    # The agent appends the answer and the next observation: the same episode.
    history += [{"role": "assistant", "content": answer.choices[0].message.content},
                {"role": "user", "content": "The drawers split your attention."}]
    second = oai.chat.completions.with_raw_response.create(model="teacher-alias",
                                                           messages=history)
    assert second.headers["x-agentkd-episode"] == episode
    assert second.headers["x-agentkd-actor"] == "teacher"
    assert second.headers["x-agentkd-verdict"] == "deferred"
    assert second.parse().choices[0].message.content == TEACHER_ANSWER
    # A new conversation is a new episode.
    third = oai.chat.completions.with_raw_response.create(model=TEACHER, messages=history[:2])
    assert third.headers["x-agentkd-episode"] != episode

    import httpx

    done = httpx.post(f"{gateway.url}/agentkd/episodes/{episode}/finish",
                      json={"success": True, "reward": 1.0})
    assert done.status_code == 200
    again = httpx.post(f"{gateway.url}/agentkd/episodes/{episode}/finish", json={})
    assert again.status_code == 404 and "no open episode" in again.json()["error"]["message"]

    log = gateway.log
    run = gateway.routes[TEACHER].run_id
    first_ep, second_ep = log.episodes(run)
    assert (first_ep.status, first_ep.success, first_ep.reward) == ("success", True, 1.0)
    assert second_ep.status == "running" and second_ep.n_steps == 1
    steps = log.steps(first_ep.id)
    assert [(s.idx, s.verdict, s.actor) for s in steps] == [(0, "student", "student"),
                                                           (1, "deferred", "teacher")]
    students = bodies_for(upstream, STUDENT, since)
    teachers = bodies_for(upstream, TEACHER, since)
    assert [b["n"] for b in students] == [3, 3, 3] and len(teachers) == 1
    assert steps[0].cost_usd == pytest.approx(billed(STUDENT, students[0]), abs=1e-12)
    assert steps[1].cost_usd == pytest.approx(
        billed(STUDENT, students[1]) + billed(TEACHER, teachers[0]), abs=1e-12)
    assert first_ep.cost_usd == pytest.approx(steps[0].cost_usd + steps[1].cost_usd, abs=1e-12)
    assert [(c.role, c.model) for c in log.calls(first_ep.id)] == [
        ("student", STUDENT), ("student", STUDENT), ("teacher", TEACHER)]


def test_headers_name_the_episode_and_async_client_gets_tool_calls(gateway, upstream):
    import asyncio

    async def agent() -> list[Any]:
        oai = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="sk-x-123456",
                                 max_retries=0)
        tools = [{"type": "function", "function": {
            "name": "act", "parameters": {"type": "object",
                                          "properties": {"command": {"type": "string"}}}}}]
        headers = {"X-Agentkd-Episode": "job-42", "X-Agentkd-Task": "task-9",
                   "X-Agentkd-Goal": "open the drawer"}
        out = []
        for turn in ("Where is the drawer?", "Again, please."):
            out.append(await oai.chat.completions.create(
                model=TEACHER, messages=[{"role": "user", "content": turn}], tools=tools,
                tool_choice="auto", extra_headers=headers))
        return out

    first, second = asyncio.run(agent())
    for answer in (first, second):
        call = answer.choices[0].message.tool_calls[0]
        assert (call.function.name, json.loads(call.function.arguments)) == (
            "act", {"command": "open drawer 2"})
        assert answer.choices[0].finish_reason == "tool_calls"
    (episode,) = gateway.log.episodes(gateway.routes[TEACHER].run_id)
    assert (episode.task_id, episode.goal, episode.n_steps) == ("task-9", "open the drawer", 2)
    steps = gateway.log.steps(episode.id)
    assert [s.verdict for s in steps] == ["student", "student"]
    assert steps[0].final_action == '[{"arguments":{"command":"open drawer 2"},"name":"act"}]'
    # The tools reached the student: it was asked with them.
    assert all(b.get("tools") for b in upstream.bodies[-2:])


def _stream(gw: Gateway, messages: list[dict[str, Any]]) -> tuple[Any, list[Any]]:
    oai = client(gw)
    with oai.chat.completions.with_streaming_response.create(
            model=TEACHER, messages=messages, stream=True,
            stream_options={"include_usage": True}) as raw:
        return raw.headers, list(raw.parse())


def test_streaming_student_after_judging_teacher_streamed_through(gateway, upstream):
    since = len(upstream.bodies)
    headers, chunks = _stream(gateway, [{"role": "user", "content": "Find the desk."}])
    assert (headers["x-agentkd-actor"], headers["x-agentkd-verdict"]) == ("student", "student")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Thought: the desk.\nAction: go to desk 1"
    assert chunks[-1].usage is not None and not chunks[-1].choices

    headers, chunks = _stream(gateway, [{"role": "user", "content": "split, then decide"}])
    assert (headers["x-agentkd-actor"], headers["x-agentkd-verdict"]) == ("teacher", "deferred")
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert "".join(pieces) == TEACHER_ANSWER
    assert len(pieces) == len(TEACHER_ANSWER.split(" "))  # word by word, as the upstream sent
    teacher_body = bodies_for(upstream, TEACHER, since)[0]
    assert teacher_body["stream"] is True
    prompt, completion = usage(teacher_body["messages"], [{"content": TEACHER_ANSWER}])
    assert chunks[-1].usage.prompt_tokens == prompt
    assert chunks[-1].usage.completion_tokens == completion
    episodes = gateway.log.episodes(gateway.routes[TEACHER].run_id)
    teacher_calls = [c for e in episodes for c in gateway.log.calls(e.id) if c.role == "teacher"]
    assert [(c.prompt_tokens, c.completion_tokens) for c in teacher_calls] == [
        (prompt, completion)]
    assert teacher_calls[0].cost_usd == pytest.approx(billed(TEACHER, teacher_body), abs=1e-12)


def test_passthrough_models_and_health(gateway, upstream):
    oai = client(gateway)
    raw = oai.chat.completions.with_raw_response.create(
        model=OTHER, messages=[{"role": "user", "content": "hello there"}], n=2)
    answer = raw.parse()
    assert [c.message.content for c in answer.choices] == ["passed through"] * 2
    assert raw.headers["x-agentkd-actor"] == "passthrough"
    with gateway.log.session() as s:
        (call,) = s.query(LLMCall).filter(LLMCall.run_id == gateway.passthrough_run).all()
    assert (call.role, call.model, call.episode_id, call.n) == ("passthrough", OTHER, None, 2)
    body = bodies_for(upstream, OTHER, 0)[-1]
    assert call.cost_usd == pytest.approx(billed(OTHER, body), abs=1e-12)
    assert sorted(m.id for m in oai.models.list()) == sorted([TEACHER, "teacher-alias", OTHER])
    import httpx

    assert httpx.get(f"{gateway.url}/health").json()["status"] == "ok"


def test_errors_in_openai_shape(gateway, upstream):
    oai = client(gateway)
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="no-such-provider-model",
                                    messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=TEACHER, messages=[{"role": "robot", "content": "x"}])
    assert "role 'robot'" in bad.value.message
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=TEACHER, messages=[], temperature=9)
    upstream.plan("gw-student", "500")
    upstream.plan("gw-teacher", "429")
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model=TEACHER, messages=[{"role": "user", "content": "a"}])
    assert "upstream model 'openai/gw-teacher' failed" in limited.value.message
    upstream.plan("gw-student", "503")
    upstream.plan("gw-teacher", "503")
    with pytest.raises(openai.APIStatusError) as down:
        oai.chat.completions.create(model=TEACHER, messages=[{"role": "user", "content": "b"}])
    assert down.value.status_code == 502
    for error in (missing.value, bad.value, limited.value, down.value):
        assert "Traceback" not in str(error.body) and UPSTREAM_KEY not in str(error.body)


def test_upstream_timeout_is_504(tmp_path, upstream):
    kwargs = {"api_base": upstream.url, "api_key": UPSTREAM_KEY, "timeout": 0.5}
    gw = Gateway(make_config(tmp_path, upstream, mode="teacher", student=None,
                             teacher_kwargs=kwargs))
    upstream.hang_s = 2.0
    upstream.plan("gw-teacher", "timeout")
    with serve_app(create_app(gw)) as url:
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-x-123456", max_retries=0)
        with pytest.raises(openai.APIStatusError) as slow:
            oai.chat.completions.create(model=TEACHER,
                                        messages=[{"role": "user", "content": "c"}])
    assert slow.value.status_code == 504 and "Timeout" in slow.value.message


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_example(gateway):
    """The README's curl example, verbatim but for the port."""
    command = (f"curl -s {gateway.url}/v1/chat/completions -H 'Content-Type: application/json' "
               f"-d '{{\"model\": \"{TEACHER}\", \"messages\": [{{\"role\": \"user\", "
               f"\"content\": \"Where is the desk?\"}}]}}'")
    out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30,
                         check=True)
    answer = json.loads(out.stdout)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "Thought: the desk.\nAction: go to desk 1"


def test_idle_episodes_are_closed(tmp_path, upstream):
    gw = Gateway(make_config(tmp_path, upstream).model_copy(update={"idle_timeout_s": 0.3}))
    with serve_app(create_app(gw)) as url:
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-idle-0123456", max_retries=0)
        oai.chat.completions.create(model=TEACHER, messages=[{"role": "user", "content": "a"}],
                                    extra_headers={"X-Agentkd-Episode": "idle-1"})
        (episode,) = gw.log.episodes(gw.routes[TEACHER].run_id)
        assert episode.status == "running"
        import time

        deadline = time.monotonic() + 10  # the sweeper runs every timeout/4
        while gw.log.episode(episode.id).status == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        closed = gw.log.episode(episode.id)
        assert (closed.status, closed.success, closed.n_steps) == ("done", None, 1)
        # The same header now opens a new episode.
        oai.chat.completions.create(model=TEACHER, messages=[{"role": "user", "content": "b"}],
                                    extra_headers={"X-Agentkd-Episode": "idle-1"})
        assert [e.task_id for e in gw.log.episodes(gw.routes[TEACHER].run_id)] == ["idle-1"] * 2


def test_serve_command_refuses_bad_configs_clearly(tmp_path):
    from typer.testing import CliRunner

    from agentkd.cli import app as cli

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["serve", *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    assert "name a teacher (--teacher MODEL) or a config file" in run()
    assert f"no gateway config at {tmp_path / 'nope.toml'}" in run(
        "--config", str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text('[[route]]\nteacher = "openai/x"\nmode = "sometimes"\n')
    assert f"{bad}: route.0: Value error, unknown mode 'sometimes'; choose one of" in run(
        "--config", str(bad))
    bad.write_text('[[key]]\nname = "k"\n')
    assert "key.0: Value error, key 'k' needs exactly one of 'key' or 'key_env'" in run(
        "--config", str(bad), "--teacher", TEACHER, "--mode", "teacher")
