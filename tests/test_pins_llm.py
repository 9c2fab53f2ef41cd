"""Pins of the call layer (agentkd.llm) by what a provider sees and what the log is billed.

A loopback server answers each request with the next scripted reply (status, body) and counts
requests, so every assertion is an exact number: requests per retry budget and status code,
tokens and dollars over retried attempts (an empty answer's tokens are billed), samples per
``n`` strategy, and secrets that never reach a recorded error.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import agentkd
from agentkd import llm

MODEL = "openai/pin-model"
MSGS = [{"role": "user", "content": "Your task is to: look"}]
KEY = "sk-pin-test-key-1234567890"
# $1 per prompt token, $2 per completion token: a call's cost is its token arithmetic.
PRICE_IN, PRICE_OUT = 1.0, 2.0


def answer(*contents: str, prompt: int = 5, completion: int | None = None,
           logprobs: list[list[tuple[str, float]]] | None = None) -> tuple[int, dict[str, Any]]:
    """A 200 reply with one choice per content and the given usage."""
    choices = []
    for i, text in enumerate(contents):
        choice: dict[str, Any] = {"index": i, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}
        if logprobs is not None:
            choice["logprobs"] = {"content": [{"token": t, "logprob": v, "bytes": None,
                                               "top_logprobs": []} for t, v in logprobs[i]]}
        choices.append(choice)
    used = 2 * len(contents) if completion is None else completion
    return 200, {"id": "chatcmpl-pin", "object": "chat.completion", "created": 0,
                 "model": "pin-model", "choices": choices,
                 "usage": {"prompt_tokens": prompt, "completion_tokens": used,
                           "total_tokens": prompt + used}}


def error(status: int, message: str = "no") -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "invalid_request_error"}}


class ReplyServer:
    """Serves scripted replies in order, then `default(body)`; records every request body."""

    def __init__(self) -> None:
        self.replies: deque[tuple[int, dict[str, Any]]] = deque()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.echo_headers = False  # error bodies that repeat the request's headers
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.bodies.append(body)
                    owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                    status, payload = (owner.replies.popleft() if owner.replies
                                       else answer(*["Action: look"] * int(body.get("n") or 1)))
                if owner.echo_headers:
                    payload = error(status, f"headers were {dict(self.headers)}")[1]
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def script(self, *replies: tuple[int, dict[str, Any]]) -> None:
        self.replies.extend(replies)

    @property
    def requests(self) -> int:
        return len(self.bodies)


@pytest.fixture(scope="module")
def server() -> Iterator[ReplyServer]:
    agentkd.register_price(MODEL, PRICE_IN * 1e6, PRICE_OUT * 1e6)
    srv = ReplyServer()
    yield srv
    srv.httpd.shutdown()


@pytest.fixture
def srv(server: ReplyServer, monkeypatch: pytest.MonkeyPatch) -> ReplyServer:
    import litellm.utils

    # litellm's backoff policy, with its base delay shrunk (0.5 s · 2^k otherwise).
    monkeypatch.setattr(litellm.utils, "INITIAL_RETRY_DELAY", 0.001)
    monkeypatch.setattr(litellm.utils, "JITTER", 0.0)
    server.replies.clear()
    server.bodies.clear()
    server.headers.clear()
    server.echo_headers = False
    return server


def complete(srv: ReplyServer, retries: int = 0, **kwargs: Any) -> llm.CallResult:
    return llm.complete(MODEL, MSGS, role="teacher", retries=retries, api_base=srv.url,
                        api_key=KEY, timeout=10, **kwargs)


# ---- retries: exactly the requests the budget and the status allow ----------------------

@pytest.mark.parametrize(("status", "requests"), [
    (400, 1), (401, 1), (403, 1), (404, 1), (422, 1),  # the request itself is wrong
    (408, 3), (409, 3), (429, 3), (500, 3), (502, 3), (503, 3),  # transient: 1 + 2 retries
])
def test_requests_per_status_with_two_retries(srv, status, requests):
    srv.script(*[error(status)] * 3)
    result = complete(srv, retries=2)
    assert srv.requests == requests
    assert result.response is None and not result.ok
    assert result.messages() == [] and result.token_logprobs() == []
    tried = f" after {requests} attempts" if requests > 1 else ""
    assert result.record.error is not None
    name, _, rest = result.record.error.partition(": ")
    assert name.endswith(tried) and (requests > 1 or " after " not in name)
    assert (result.record.prompt_tokens, result.record.completion_tokens,
            result.record.cost_usd) == (0, 0, 0.0)


def test_non_retryable_400_is_exactly_one_request(srv):
    srv.script(error(400, "bad model parameter"), answer("Action: look"))
    result = complete(srv, retries=5)
    assert srv.requests == 1
    assert result.record.error == "BadRequestError: litellm.BadRequestError: " \
        "OpenAIException - bad model parameter"


@pytest.mark.parametrize(("retries", "requests"), [(0, 1), (1, 2), (3, 4), (-2, 1)])
def test_the_retry_budget_is_the_whole_budget(srv, retries, requests):
    srv.script(*[error(503)] * 6)
    # The agent's own retry kwargs are dropped: litellm's and the SDK's would add requests.
    result = complete(srv, retries=retries, num_retries=4, max_retries=4)
    assert srv.requests == requests and result.response is None


def test_a_transient_error_then_an_answer_is_served(srv):
    srv.script(error(429), error(500), answer("Action: take mug 1", prompt=9, completion=4))
    result = complete(srv, retries=2)
    assert srv.requests == 3 and result.record.error is None
    assert result.messages()[0]["content"] == "Action: take mug 1"
    assert (result.record.prompt_tokens, result.record.completion_tokens) == (9, 4)
    assert result.record.cost_usd == 9 * PRICE_IN + 4 * PRICE_OUT


# ---- billing: every attempt that returned usage is paid -----------------------------------

def empty(prompt: int, completion: int) -> tuple[int, dict[str, Any]]:
    return answer(prompt=prompt, completion=completion)  # 200 with "choices": []


def test_an_empty_answer_then_a_good_one_bills_both(srv):
    srv.script(empty(7, 3), answer("Action: look", prompt=11, completion=5))
    result = complete(srv, retries=1)
    assert srv.requests == 2 and result.ok and result.record.error is None
    assert (result.record.prompt_tokens, result.record.completion_tokens) == (7 + 11, 3 + 5)
    assert result.record.cost_usd == 18 * PRICE_IN + 8 * PRICE_OUT == 34.0


def test_empty_answers_until_the_budget_runs_out_are_billed_and_an_error(srv):
    srv.script(empty(7, 3), empty(6, 1), empty(100, 100))
    result = complete(srv, retries=1)
    assert srv.requests == 2 and result.response is None
    assert result.record.error == ("EmptyResponse after 2 attempts: the provider returned no "
                                   "choices")
    assert (result.record.prompt_tokens, result.record.completion_tokens) == (13, 4)
    assert result.record.cost_usd == 13 * PRICE_IN + 4 * PRICE_OUT


def test_an_empty_answer_without_retries_is_one_billed_request(srv):
    srv.script(empty(7, 3))
    result = complete(srv)
    assert srv.requests == 1
    assert result.record.error == "EmptyResponse: the provider returned no choices"
    assert result.record.cost_usd == 7 * PRICE_IN + 3 * PRICE_OUT


def test_the_record_names_the_call(srv):
    result = complete(srv, n=2)
    r = result.record
    assert (r.role, r.model, r.provider, r.n, r.error) == ("teacher", MODEL, "openai", 2, None)
    assert (r.prompt_tokens, r.completion_tokens, r.cost_usd) == (5, 4, 5 + 8.0)
    assert r.latency_ms > 0
    assert srv.bodies[0]["n"] == 2 and srv.bodies[0]["messages"] == MSGS


# ---- errors never carry a secret ----------------------------------------------------------

def test_a_long_error_is_cut_at_2000_characters(srv):
    srv.script(error(400, "x" * 5000))
    assert len(complete(srv).record.error or "") == 2000


def test_credentials_echoed_by_the_provider_are_scrubbed_from_the_error(srv):
    srv.echo_headers = True
    srv.script(error(400))
    token = "tok-pin-header-abcdef123"
    result = llm.complete(MODEL, MSGS, role="teacher", timeout=10, api_key=KEY,
                          api_base=srv.url.replace("http://", "http://pinuser:pin-pass-42x@"),
                          extra_headers={"X-Auth": f"Bearer {token}"})
    error_text = result.record.error or ""
    assert srv.requests == 1 and "headers were" in error_text
    assert srv.headers[0]["x-auth"] == f"Bearer {token}"  # it was sent, and echoed back
    for secret in (KEY, token):
        assert secret not in error_text
    assert "[REDACTED]" in error_text


# ---- sampling -----------------------------------------------------------------------------

def sample(srv: ReplyServer, n: int, use_n: bool | None, **kwargs: Any) -> llm.Sampled:
    return llm.sample(MODEL, MSGS, n=n, temperature=0.7, use_n=use_n, api_base=srv.url,
                      api_key=KEY, timeout=10, **kwargs)


def test_n_samples_in_one_request(srv):
    srv.script(answer("Action: a", "Action: b", "Action: c"))
    s = sample(srv, 3, True)
    assert srv.requests == 1 and srv.bodies[0]["n"] == 3
    assert srv.bodies[0]["temperature"] == 0.7
    assert [m["content"] for m in s.messages] == ["Action: a", "Action: b", "Action: c"]
    assert len(s.results) == 1 and s.results[0].record.n == 3
    assert s.logprobs == [None, None, None]


def test_the_provider_decides_when_use_n_is_none(srv):
    sample(srv, 3, None)  # openai honours n
    assert srv.requests == 1 and srv.bodies[0]["n"] == 3


def test_parallel_samples_are_n_single_requests(srv):
    s = sample(srv, 3, False)
    assert srv.requests == 3 and all("n" not in b for b in srv.bodies)
    assert [m["content"] for m in s.messages] == ["Action: look"] * 3 and len(s.results) == 3
    assert all(b["temperature"] == 0.7 for b in srv.bodies)


def test_a_provider_that_ignores_n_is_topped_up(srv):
    srv.script(answer("Action: a"))  # asked for 3, gave 1
    s = sample(srv, 3, True)
    assert srv.requests == 3 and [b.get("n") for b in srv.bodies] == [3, None, None]
    assert [m["content"] for m in s.messages] == ["Action: a", "Action: look", "Action: look"]


def test_too_many_choices_are_cut_to_n(srv):
    srv.script(answer("Action: a", "Action: b", "Action: c", "Action: d"))
    s = sample(srv, 2, True)
    assert srv.requests == 1 and [m["content"] for m in s.messages] == ["Action: a", "Action: b"]


def test_a_failed_n_request_is_not_topped_up(srv):
    srv.script(error(400))
    s = sample(srv, 3, True)
    assert srv.requests == 1 and s.messages == [] and s.logprobs == []
    assert len(s.results) == 1 and not s.results[0].ok


def test_one_sample_is_one_plain_request(srv):
    s = sample(srv, 1, True)
    assert srv.requests == 1 and "n" not in srv.bodies[0] and len(s.messages) == 1


def test_sample_never_streams(srv):
    s = sample(srv, 2, False, stream=True)
    assert srv.requests == 2 and len(s.messages) == 2
    assert all(not b.get("stream") for b in srv.bodies)


def test_token_logprobs_come_back_per_sample(srv):
    lp = [[("Action", -0.5), (": a", -0.25)], [("Action", -1.0), (": b", -2.0)]]
    srv.script(answer("Action: a", "Action: b", logprobs=lp))
    s = sample(srv, 2, True, logprobs=True)
    assert srv.bodies[0]["logprobs"] is True
    assert s.logprobs == lp


def test_supports_n_and_logprobs():
    assert llm.supports_n(MODEL) and llm.supports_logprobs(MODEL)
    assert llm.provider_of(MODEL) == "openai"
    assert llm.provider_of("nosuchprovider/some-model") == "nosuchprovider"
    assert llm.provider_of("no-such-bare-model-xyz") is None
    assert not llm.supports_n("nosuchprovider/some-model")
    assert not llm.supports_logprobs("no-such-bare-model-xyz")


# ---- what the first pins left unpinned (mutation testing of agentkd/llm.py) ---------------

def test_every_credential_kwarg_is_registered_as_a_secret():
    from agentkd.secrets import scrub

    llm._protect({"api_base": "http://pinuser:p%40ss-pin-77@127.0.0.1:9/v1",
                  "headers": {"Authorization": "Bearer hdr-pin-token-88", "X-Empty": ""},
                  "extra_headers": {"X-Key": "xk-pin-99"}})
    text = "p@ss-pin-77 hdr-pin-token-88 xk-pin-99 cGludXNlcjpwQHNzLXBpbi03Nw=="
    assert scrub(text).split() == ["[REDACTED]"] * 4  # the password, tokens, basic auth


class _Outcome:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def exception(self) -> BaseException:
        return self.exc


class _State:
    def __init__(self, exc: BaseException | None) -> None:
        self.outcome = _Outcome(exc) if exc is not None else None
        self.attempt_number = 1


class _Response:
    headers = {"retry-after": "7"}


@pytest.mark.parametrize("where", ["response", "litellm_response_headers"])
def test_the_wait_is_the_providers_retry_after(srv, where):
    exc = Exception("429")
    if where == "response":
        exc.response = _Response()  # type: ignore[attr-defined]
    else:
        exc.litellm_response_headers = _Response.headers  # type: ignore[attr-defined]
    assert llm._retry_wait(2)(_State(exc)) == 7.0


def test_without_an_outcome_the_wait_is_litellms_backoff(srv):
    assert llm._retry_wait(2)(_State(None)) == 0.001  # INITIAL_RETRY_DELAY · 2^0, no jitter


def test_latency_is_the_calls_own_duration(srv):
    import time

    start = time.perf_counter()
    result = complete(srv)
    elapsed_ms = (time.perf_counter() - start) * 1000
    assert 0 < result.record.latency_ms <= elapsed_ms


def test_samples_are_the_students_by_default(srv):
    s = llm.sample(MODEL, MSGS, n=2, temperature=0.7, use_n=False, api_base=srv.url,
                   api_key=KEY, timeout=10)
    assert [r.record.role for r in s.results] == ["student", "student"]


def test_an_anthropic_prompt_is_marked_and_warmed_only_when_asked():
    from cacheserver import CacheServer

    model = "anthropic/claude-sonnet-4-5"
    with CacheServer() as server:
        plain = llm.sample(model, MSGS, n=2, temperature=0.7, use_n=False, role="teacher",
                           api_base=server.url, api_key="sk-loopback", max_tokens=20)
        assert "cache_control" not in json.dumps(server.requests)  # the default: no marks
        server.requests.clear()
        warm = llm.sample(model, MSGS, n=2, temperature=0.7, use_n=False, role="teacher",
                          cache_prefix=True, api_base=server.url, api_key="sk-loopback",
                          max_tokens=20)
        assert len(server.requests) == 2 and "cache_control" in json.dumps(server.requests[0])
    assert [r.record.role for r in plain.results + warm.results] == ["teacher"] * 4


def test_a_custom_provider_is_known_before_its_first_call():
    # litellm registers custom providers on their first call: "auto" sampling and logprobs
    # asked before it were answered False, after it True (the first step of a run sent n
    # single requests and no logprobs, the later steps one n request with logprobs).
    from litellm import CustomLLM

    class Fresh(CustomLLM):
        pass

    import litellm

    litellm.custom_provider_map = [*litellm.custom_provider_map,
                                   {"provider": "fresh-pin", "custom_handler": Fresh()}]
    try:
        assert llm.supports_n("fresh-pin/model") and llm.supports_logprobs("fresh-pin/model")
    finally:
        litellm.custom_provider_map = [p for p in litellm.custom_provider_map
                                       if p["provider"] != "fresh-pin"]
