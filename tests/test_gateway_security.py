"""The gateway's keys, budgets, loopback guard and secrets, and its /metrics: a non-loopback
bind needs keys; keys are checked (bearer or x-api-key); a key's spending cap answers 402 and
its rate 429, each in the API's own error shape; planted provider and client keys reach
neither the log nor any response nor /metrics; the metrics count what the log holds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import importable, require

require(importable("fastapi") and importable("openai") and importable("anthropic")
        and importable("prometheus_client"),
        "the gateway tests need the gateway extra: pip install -e '.[gateway,dev]'")

import anthropic  # noqa: E402
import httpx  # noqa: E402
import openai  # noqa: E402
from faultserver import FaultServer  # noqa: E402
from gateway_upstream import Upstream, serve_app  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import agentkd  # noqa: E402
from agentkd.cli import app as cli  # noqa: E402
from agentkd.errors import ConfigError  # noqa: E402
from agentkd.gateway import Gateway, GatewayConfig, create_app  # noqa: E402

TEACHER, STUDENT = "openai/sec-teacher", "openai/sec-student"
GATEWAY_KEY = "gwkey-planted-client-1a2b3c4d5e"
PROVIDER_KEY = "pk-planted-provider-9f8e7d6c5b4a"


def answer(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"content": "Action: look"} for _ in range(int(body.get("n") or 1))]


def config(tmp_path: Path, api_base: str, **extra: Any) -> GatewayConfig:
    kwargs = {"api_base": api_base, "api_key_env": "SEC_PROVIDER_API_KEY"}
    return GatewayConfig.model_validate({
        "log": f"sqlite:///{tmp_path / 'sec.db'}",
        "route": [{"teacher": TEACHER, "student": STUDENT, "teacher_kwargs": kwargs,
                   "student_kwargs": kwargs, "teacher_retries": 0}], **extra})


@pytest.fixture(autouse=True)
def provider_key(monkeypatch):
    monkeypatch.setenv("SEC_PROVIDER_API_KEY", PROVIDER_KEY)
    agentkd.register_price(TEACHER, 3.0, 15.0)
    agentkd.register_price(STUDENT, 1.0, 4.0)


def test_non_loopback_bind_needs_keys(tmp_path):
    with pytest.raises(ConfigError, match="not loopback; it needs gateway keys"):
        Gateway(config(tmp_path, "http://127.0.0.1:9", host="0.0.0.0"))
    result = CliRunner().invoke(cli, ["serve", "--teacher", TEACHER, "--mode", "teacher",
                                      "--host", "0.0.0.0", "--log",
                                      f"sqlite:///{tmp_path / 'cli.db'}"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "needs gateway keys ([[key]] entries in --config)" in output
    assert "Traceback" not in output and "agentkd gateway on" not in output


def test_keys_budgets_and_rates_in_each_api_shape(tmp_path):
    keys = [{"name": "rich", "key": GATEWAY_KEY, "max_requests_per_minute": 3},
            {"name": "poor", "key": "gwkey-poor-000000000", "max_usd": 1e-9}]
    with Upstream(answer) as up:
        gw = Gateway(config(tmp_path, up.url, key=keys))
        with serve_app(create_app(gw)) as url:
            ask = [{"role": "user", "content": "hi"}]
            nobody = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong-0000000000",
                                   max_retries=0)
            with pytest.raises(openai.AuthenticationError) as denied:
                nobody.chat.completions.create(model=TEACHER, messages=ask)
            assert denied.value.code == "invalid_api_key"
            assert httpx.get(f"{url}/metrics").status_code == 401
            rich = openai.OpenAI(base_url=f"{url}/v1", api_key=GATEWAY_KEY, max_retries=0)
            for _ in range(3):
                rich.chat.completions.create(model=TEACHER, messages=ask)
            with pytest.raises(openai.RateLimitError) as limited:
                rich.chat.completions.create(model=TEACHER, messages=ask)
            assert limited.value.code == "rate_limit_exceeded"
            poor = anthropic.Anthropic(base_url=url, api_key="gwkey-poor-000000000",
                                       max_retries=0)
            poor.messages.create(model=TEACHER, max_tokens=8, messages=ask)  # crosses the cap
            with pytest.raises(anthropic.APIStatusError) as broke:
                poor.messages.create(model=TEACHER, max_tokens=8, messages=ask)
            assert broke.value.status_code == 402
            assert broke.value.body == {"type": "error", "error": {
                "type": "billing_error", "message": broke.value.body["error"]["message"]}}
            assert "'poor' spent $" in broke.value.body["error"]["message"]
    # 3 + 1 requests reached the upstream (each a 3-sample student call); refused ones none.
    assert sum(up.requests.values()) == 4


def test_loopback_gateway_refuses_a_foreign_host_header(tmp_path):
    with Upstream(answer) as up:
        gw = Gateway(config(tmp_path, up.url))
        with serve_app(create_app(gw)) as url:
            refused = httpx.post(f"{url}/v1/chat/completions", headers={"Host": "evil.example"},
                                 json={"model": TEACHER, "messages": [{"role": "user",
                                                                       "content": "x"}]})
    assert refused.status_code == 403 and refused.json()["error"]["type"] == \
        "authentication_error"


def test_secrets_reach_neither_log_nor_responses_nor_metrics(tmp_path):
    """A provider that echoes credentials into its errors, an agent that pastes its own key
    into a message: neither key is in the log file, any response or /metrics."""
    seen: list[str] = []
    with FaultServer(lambda model, messages, n: [{"content": "Action: look"}] * n) as fault:
        gw = Gateway(config(tmp_path, fault.url,
                            key=[{"name": "me", "key": GATEWAY_KEY}]))
        with serve_app(create_app(gw)) as url:
            auth = {"Authorization": f"Bearer {GATEWAY_KEY}"}
            fault.plan("sec-student", "echo_auth")
            fault.plan("sec-teacher", "echo_auth")
            for content, stream in ((f"my key is {GATEWAY_KEY}", False),
                                    (f"and {PROVIDER_KEY}", True), ("fine", False)):
                r = httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=30, json={
                    "model": TEACHER, "stream": stream,
                    "messages": [{"role": "user", "content": content}]})
                seen.append(r.text + repr(dict(r.headers)))
            seen.append(httpx.get(f"{url}/metrics", headers=auth).text)
    assert fault.injected["echo_auth"] == 2
    assert any("upstream model" in s for s in seen)  # the echoing error was answered
    assert any(PROVIDER_KEY in h.get("authorization", "") for h in fault.headers_seen)
    blobs = [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("sec.db")]
    for secret in (GATEWAY_KEY, PROVIDER_KEY):
        assert not any(secret.encode() in b for b in blobs)
        assert not any(secret in s for s in seen)
    assert any(b"[REDACTED]" in b for b in blobs)


def test_metrics_count_requests_verdicts_and_cost(tmp_path):
    def split(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        n = int(body.get("n") or 1)
        if "split" in body["messages"][-1]["content"] and model == "sec-student":
            return [{"content": f"Action: open {i}"} for i in range(n)]
        return [{"content": "Action: look"} for _ in range(n)]

    with Upstream(split) as up:
        gw = Gateway(config(tmp_path, up.url))
        with serve_app(create_app(gw)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-m-0123456789",
                                   max_retries=0)
            for text in ("one", "two", "split three"):
                client.chat.completions.create(model=TEACHER,
                                               messages=[{"role": "user", "content": text}])
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="no-such-model-here",
                                               messages=[{"role": "user", "content": "x"}])
            text = httpx.get(f"{url}/metrics").text

    def value(name: str, **labels: str) -> float:
        pattern = name + r"\{" + ",".join(f'{k}="{re.escape(v)}"' for k, v in
                                          sorted(labels.items())) + r"\} (\S+)"
        match = re.search(pattern, text)
        assert match, f"{name} {labels} not in /metrics"
        return float(match.group(1))

    assert value("agentkd_gateway_requests_total", api="chat", route=TEACHER,
                 status="200") == 3
    assert value("agentkd_gateway_requests_total", api="chat", route="passthrough",
                 status="404") == 1
    assert value("agentkd_gateway_steps_total", actor="student", route=TEACHER,
                 verdict="student") == 2
    assert value("agentkd_gateway_steps_total", actor="teacher", route=TEACHER,
                 verdict="deferred") == 1
    assert value("agentkd_gateway_teacher_call_rate", route=TEACHER) == pytest.approx(1 / 3)
    assert value("agentkd_gateway_cost_usd_total", route=TEACHER) == pytest.approx(
        gw.log.run_cost(gw.routes[TEACHER].run_id), rel=1e-9)
    assert value("agentkd_gateway_request_seconds_count", api="chat") == 4
    assert "no-such-model-here" not in text
