"""The gateway under load with a misbehaving upstream, and under HTTP fuzzing.

Faults: the loopback `FaultServer` answers the student and the teacher with a fixed mix of
429s, 5xxs, timeouts, connection resets, malformed and empty bodies while 24 clients send
requests at once. Every request must be answered (served, or a clean error in OpenAI's
shape with an upstream status), and the log must hold exactly the served steps, each once.
Fuzzing: hypothesis sends arbitrary JSON to the three endpoints; nothing but an upstream
failure may answer 5xx (and here the upstream is litellm's `mock_response`: none).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import importable, require

require(importable("fastapi") and importable("openai") and importable("prometheus_client"),
        "the gateway tests need the gateway extra: pip install -e '.[gateway,dev]'")

import httpx  # noqa: E402
from faultserver import FaultServer, agent_responder  # noqa: E402
from gateway_upstream import serve_app  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import agentkd  # noqa: E402
from agentkd.gateway import Gateway, GatewayConfig, create_app  # noqa: E402

TEACHER, STUDENT = "openai/fault-teacher", "openai/fault-student"
# Per 12 requests: 6 normal answers and one of each fault.
MIX = ("ok", "429", "ok", "503", "ok", "reset", "ok", "500", "timeout", "ok", "malformed", "ok")


@pytest.mark.slow  # 72 requests through timeouts and retries: ~20 s on 2 cores
def test_faults_under_concurrent_load_every_request_answered_nothing_lost(tmp_path: Path):
    agentkd.register_price(TEACHER, 3.0, 15.0)
    agentkd.register_price(STUDENT, 0.1, 0.4)
    with FaultServer(agent_responder, hang_s=1.5, retry_after=0) as fault:
        for _ in range(8):
            fault.plan("fault-student", *MIX)
            fault.plan("fault-teacher", *MIX)
        kwargs = {"api_base": fault.url, "api_key": "sk-fault-0123456789", "timeout": 0.75}
        gw = Gateway(GatewayConfig.model_validate({
            "log": f"sqlite:///{tmp_path / 'faults.db'}",
            "route": [{"teacher": TEACHER, "student": STUDENT, "teacher_kwargs": kwargs,
                       "student_kwargs": kwargs, "teacher_retries": 1,
                       "cascade": {"sampling": "n"}}]}))
        with serve_app(create_app(gw)) as url, httpx.Client(timeout=30) as client:
            def request(i: int) -> tuple[int, dict[str, Any], dict[str, str]]:
                r = client.post(f"{url}/v1/chat/completions", json={
                    "model": TEACHER, "stream": i % 3 == 0 and i < 36,
                    "messages": [{"role": "user", "content": f"observation {i}"}]})
                body = (json.loads(r.text) if not r.text.startswith("data:") else
                        {"stream": r.text})
                return r.status_code, body, dict(r.headers)

            with ThreadPoolExecutor(24) as pool:
                answers = list(pool.map(request, range(72)))
    statuses = [status for status, _, _ in answers]
    assert len(answers) == 72
    assert set(statuses) <= {200, 429, 502, 504}, statuses
    assert statuses.count(200) >= 36  # at least the requests the faults spared
    for status, body, _ in answers:
        if status != 200:
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["message"].startswith("upstream model")
        elif "stream" in body:
            assert body["stream"].rstrip().endswith("data: [DONE]")
            assert '"error"' not in body["stream"]
    served = {h["x-agentkd-episode"] for s, _, h in answers if s == 200}
    episodes = gw.log.episodes(gw.routes[TEACHER].run_id)
    steps = [s for e in episodes for s in gw.log.steps(e.id)]
    # Each served request is one step of its own episode, logged once; failed ones none.
    assert len(steps) == statuses.count(200) == len(served)
    assert all(s.idx == 0 for s in steps)
    assert len({s.episode_id for s in steps}) == len(steps)
    for episode in episodes:
        logged = gw.log.steps(episode.id)
        assert episode.n_steps == len(logged)
        calls = gw.log.calls(episode.id)
        assert episode.cost_usd == pytest.approx(sum(c.cost_usd for c in calls), abs=1e-12)
    errors = sum(1 for e in episodes for c in gw.log.calls(e.id) if c.error)
    assert errors > 0 and sum(fault.injected.values()) > 0


_KEYS = ["model", "messages", "stream", "n", "tools", "tool_choice", "max_tokens", "input",
         "system", "temperature", "response_format", "instructions", "stream_options", "text"]
_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 40) | st.floats(
    allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "text", "name", "function", "input",
                         "tool_calls", "id", "arguments", "parameters"]), inner, max_size=4),
    max_leaves=12)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "robot"]),
     "content": st.one_of(st.text(max_size=20), _json)})
_bodies = st.dictionaries(st.sampled_from(_KEYS), _json, max_size=6).flatmap(
    lambda extra: st.fixed_dictionaries({
        "model": st.sampled_from(["openai/fuzz-teacher", "fuzz-unknown", ""]),
        "messages": st.lists(_message, max_size=3),
        "input": st.one_of(st.text(max_size=10), st.lists(_message, max_size=2)),
        "max_tokens": st.integers(-1, 64),
    }).map(lambda base: {**base, **extra}))


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    tmp = tmp_path_factory.mktemp("fuzz")
    answer = {"mock_response": "Action: look"}
    gw = Gateway(GatewayConfig.model_validate({
        "log": f"sqlite:///{tmp / 'fuzz.db'}", "passthrough": False,
        "route": [{"teacher": "openai/fuzz-teacher", "student": "openai/fuzz-student",
                   "teacher_kwargs": answer, "student_kwargs": answer}]}))
    with TestClient(create_app(gw), base_url="http://127.0.0.1") as client:
        yield client


_lock = threading.Lock()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/messages"]),
       body=_bodies, raw=st.booleans())
def test_fuzzed_requests_never_answer_5xx(fuzz_client, path, body, raw):
    content = json.dumps(body).encode() if not raw else json.dumps(body)[:-1].encode()
    with _lock:
        response = fuzz_client.post(path, content=content,
                                    headers={"Content-Type": "application/json"})
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code != 200:
        error = response.json()
        assert (error["error"]["message"] if path != "/v1/messages"
                else error["type"] == "error" and error["error"]["message"])
