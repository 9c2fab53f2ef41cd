"""The LLM call layer: every request agentkd makes goes through litellm here.

It times each call, reads token usage, prices it (`agentkd.costs`), scrubs errors, and
samples a model N times: one request with ``n=N`` where the provider supports it (the prompt
is then billed once), otherwise N concurrent requests.

Prompt caching (`sample(cache_prefix=True)`): Anthropic-family models cache only the prefixes
marked with ``cache_control``, so the system message (with any demos in it) and, for several
samples, the whole prompt are marked (`mark_cache_prefix`), and the samples are sent one
first, the rest once it has answered: the first writes the prompt to the cache (Anthropic
bills that at 1.25x the input price) and the others read it (0.1x), where N concurrent
requests would each pay for the whole prompt, or for writing it. The price is latency: two
round trips instead of one.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import litellm
import tenacity
from litellm.utils import _should_retry, calculate_retry_after

from agentkd.cascades.signals import TokenLogprobs, choice_token_logprobs
from agentkd.costs import NOTHING, Priced, price_response
from agentkd.log import CallRecord
from agentkd.secrets import register_secret, scrub

# Captured before agentkd.intercept patches litellm, so our own calls are never intercepted.
raw_completion = litellm.completion
raw_acompletion = litellm.acompletion

# Providers we know honour n (litellm's supported-params table misses custom providers).
_N_PROVIDERS = {"openai", "azure", "hosted_vllm", "local", "alfworld", "text-completion-openai"}
# Providers we know return token logprobs (`local` computes them itself).
_LOGPROB_PROVIDERS = {"openai", "azure", "hosted_vllm", "local"}
_SECRET_KWARGS = ("api_key", "aws_secret_access_key", "aws_session_token", "azure_ad_token")
# Providers serving Claude, whose prompt cache reads only prefixes marked with cache_control.
_CLAUDE_HOSTS = {"bedrock", "bedrock_converse", "vertex_ai", "vertex_ai_beta"}
CACHE_CONTROL = {"type": "ephemeral"}


@dataclass
class CallResult:
    """A finished call: the response (None on error) and what it cost."""

    response: litellm.ModelResponse | None
    record: CallRecord

    @property
    def ok(self) -> bool:
        return self.response is not None

    def messages(self) -> list[dict[str, Any]]:
        """Assistant messages of all choices, as plain dicts."""
        if self.response is None:
            return []
        return [choice.message.model_dump() for choice in self.response.choices]

    def token_logprobs(self) -> list[TokenLogprobs | None]:
        """Per choice, its tokens' log-probabilities (None where the provider gave none)."""
        if self.response is None:
            return []
        return [choice_token_logprobs(choice) for choice in self.response.choices]


class Sampled(NamedTuple):
    """What `sample` returns: the sampled messages, each one's token logprobs (None where
    the provider returned none), and every call made."""

    messages: list[dict[str, Any]]
    logprobs: list[TokenLogprobs | None]
    results: list[CallResult]


def provider_of(model: str) -> str | None:
    try:
        return str(litellm.get_llm_provider(model)[1])
    except Exception:  # unknown providers raise BadRequestError; custom ones may not be registered
        return model.split("/", 1)[0] if "/" in model else None


def _supports(model: str, param: str, known: set[str]) -> bool:
    provider = provider_of(model)
    if provider in known:
        return True
    try:
        # litellm learns the providers of `litellm.custom_provider_map` on their first call;
        # registered now, the first step of a process is told what the later ones are.
        litellm.utils.custom_llm_setup()
        params = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception:
        return False
    return bool(params and param in params)


def supports_n(model: str) -> bool:
    return _supports(model, "n", _N_PROVIDERS)


def supports_logprobs(model: str) -> bool:
    return _supports(model, "logprobs", _LOGPROB_PROVIDERS)


def caches_marked_prefix(model: str) -> bool:
    """True for Anthropic-family models: their prompt cache needs ``cache_control`` marks."""
    provider = provider_of(model)
    return provider == "anthropic" or (provider in _CLAUDE_HOSTS and "claude" in model.lower())


def _blocks(content: Any) -> list[Any]:
    return content if isinstance(content, list) else []


def _marked(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        blocks: list[Any] = [{"type": "text", "text": content}]
    elif isinstance(content, list) and content and isinstance(content[-1], dict):
        blocks = [dict(block) if isinstance(block, dict) else block for block in content]
    else:  # nothing to mark (no content, or a tool call)
        return message
    blocks[-1] = {**blocks[-1], "cache_control": CACHE_CONTROL}
    return {**message, "content": blocks}


def mark_cache_prefix(messages: list[dict[str, Any]], *, whole_prompt: bool = False
                      ) -> list[dict[str, Any]]:
    """`messages` with the stable prefix marked for the prompt cache (a copy).

    Marked: the last system message (instructions, and demos in the system placement), and
    with `whole_prompt` the last message too, so that later samples of the same prompt read
    all of it. Messages that already carry a ``cache_control`` mark are the caller's own
    layout and are returned unchanged.
    """
    if any("cache_control" in m or any(isinstance(block, dict) and "cache_control" in block
                                       for block in _blocks(m.get("content")))
           for m in messages):
        return messages
    out = list(messages)
    systems = [i for i, m in enumerate(out) if m.get("role") == "system"]
    marks = {systems[-1]} if systems else set()
    if whole_prompt and out:
        marks.add(len(out) - 1)
    for i in marks:
        out[i] = _marked(out[i])
    return out


def _protect(kwargs: dict[str, Any]) -> None:
    for name in _SECRET_KWARGS:
        value = kwargs.get(name)
        if isinstance(value, str):
            register_secret(value)
    for name in ("api_base", "base_url"):  # http://user:password@host: httpx sends basic auth
        url = urlsplit(kwargs.get(name) or "") if isinstance(kwargs.get(name), str) else None
        if url is not None and url.password:
            register_secret(unquote(url.password))
            register_secret(base64.b64encode(
                f"{unquote(url.username or '')}:{unquote(url.password)}".encode()).decode())
    for name in ("extra_headers", "headers"):  # both may be given; litellm merges them
        headers = kwargs.get(name)
        for value in (headers.values() if isinstance(headers, dict) else ()):
            if isinstance(value, str):
                register_secret(value)
                register_secret(value.split()[-1] if value.split() else "")  # "Bearer <tok>"


class EmptyResponse(Exception):
    """The provider answered 200 with no choices (retryable, like a 5xx)."""


def _retryable(exc: BaseException) -> bool:
    """Worth another attempt: timeouts, connection errors, 408/409/429/5xx, empty answers."""
    if isinstance(exc, EmptyResponse | litellm.Timeout | litellm.APIConnectionError):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and _should_retry(status)


def _retry_wait(retries: int) -> Any:
    """litellm's backoff: the provider's Retry-After (up to 60 s), else 0.5 s · 2^k + jitter."""

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or getattr(exc, "litellm_response_headers",
                                                                None)
        return float(calculate_retry_after(remaining_retries=retries - state.attempt_number + 1,
                                           max_retries=retries, response_headers=headers))

    return wait


def complete(model: str, messages: list[dict[str, Any]], *, role: str, retries: int = 0,
             **kwargs: Any) -> CallResult:
    """One call to `model`; errors are captured in the record, not raised.

    A failed request is retried up to `retries` times when the failure is transient
    (`_retryable`), waiting as litellm does between attempts. `retries` is the whole budget:
    litellm's and the provider SDK's own retries are switched off for each attempt (left on,
    ``num_retries=N`` makes up to 2N+1 requests to an OpenAI-compatible provider, the last N
    without backoff). Retry kwargs the caller passes (`num_retries`, `max_retries`) are
    dropped for the same reason.
    """
    _protect(kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("num_retries", "max_retries")}
    n = int(kwargs.get("n") or 1)
    record = CallRecord(role=role, model=model, provider=provider_of(model), n=n)
    spent: list[Priced] = [NOTHING]  # over all attempts (empty answers are billed)

    def attempt() -> Any:
        response = raw_completion(model=model, messages=messages, num_retries=0,
                                  max_retries=0, **kwargs)
        spent[0] += price_response(model, response)
        if not response.choices:
            raise EmptyResponse("the provider returned no choices")
        return response

    start = time.perf_counter()
    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(max(0, retries) + 1),
                                 retry=tenacity.retry_if_exception(_retryable),
                                 wait=_retry_wait(retries), reraise=True)
    try:
        response = retrying(attempt)
    except Exception as exc:
        response = None
        attempts = retrying.statistics.get("attempt_number", 1)
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        record.error = scrub(f"{type(exc).__name__}{tried}: {exc}")[:2000]
    record.latency_ms = (time.perf_counter() - start) * 1000
    _fill(record, spent[0])
    return CallResult(response, record)


def _fill(record: CallRecord, priced: Priced) -> None:
    """Write a call's billed tokens and costs into its record."""
    usage = priced.usage
    record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    record.cached_tokens, record.cache_write_tokens = usage.cached_tokens, usage.cache_write_tokens
    record.reasoning_tokens = usage.reasoning_tokens
    record.cost_usd, record.uncached_cost_usd = priced.cost_usd, priced.uncached_cost_usd
    record.provider_cost_usd = usage.provider_cost


def sample(model: str, messages: list[dict[str, Any]], *, n: int, temperature: float,
           role: str = "student", use_n: bool | None = None, cache_prefix: bool = False,
           **kwargs: Any) -> Sampled:
    """`n` samples of `model`'s answer: the sampled messages, their token logprobs (when
    ``logprobs=True`` is passed and the provider returns them) and every call made.

    `use_n` forces (True) or forbids (False) the single ``n`` request; None asks litellm.
    Providers that silently ignore ``n`` (e.g. ``llama_cpp.server``) are topped up with
    single requests, so the caller always gets `n` samples unless calls fail.
    `cache_prefix`: for models that cache only marked prefixes (`caches_marked_prefix`),
    mark the prompt (`mark_cache_prefix`) and send single requests one first, then the rest
    once it has answered, so they read the prompt from the cache it wrote.
    """
    kwargs = {k: v for k, v in kwargs.items() if k not in ("n", "temperature", "stream")}
    results: list[CallResult] = []
    samples: list[dict[str, Any]] = []
    logprobs: list[TokenLogprobs | None] = []

    def collect(result: CallResult, keep: int) -> None:
        results.append(result)
        samples.extend(result.messages()[:keep])
        logprobs.extend(result.token_logprobs()[:keep])

    warm_first = cache_prefix and caches_marked_prefix(model)
    if warm_first:
        messages = mark_cache_prefix(messages, whole_prompt=n > 1)
    if n > 1 and (supports_n(model) if use_n is None else use_n):
        collect(complete(model, messages, role=role, n=n, temperature=temperature, **kwargs), n)
    elif n > 1 and warm_first:
        collect(complete(model, messages, role=role, temperature=temperature, **kwargs), 1)
    missing = n - len(samples)
    if missing > 0 and not (results and not results[0].ok):
        with ThreadPoolExecutor(max_workers=missing) as pool:
            # Each request runs in a copy of the caller's context (providers may read it).
            call = functools.partial(complete, model, messages, role=role,
                                     temperature=temperature, **kwargs)
            futures = [pool.submit(contextvars.copy_context().run, call)
                       for _ in range(missing)]
            for future in futures:
                collect(future.result(), 1)
    return Sampled(samples, logprobs, results)
