"""The LLM call layer: every request agentkd makes goes through litellm here.

It times each call, reads token usage, prices it (`agentkd.costs`), scrubs errors, and
samples a model N times: one request with ``n=N`` where the provider supports it (the prompt
is then billed once), otherwise N concurrent requests.
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import litellm

from agentkd.costs import call_cost
from agentkd.log import CallRecord
from agentkd.secrets import register_secret, scrub

# Captured before agentkd.intercept patches litellm, so our own calls are never intercepted.
raw_completion = litellm.completion
raw_acompletion = litellm.acompletion

# Providers we know honour n (litellm's supported-params table misses custom providers).
_N_PROVIDERS = {"openai", "azure", "hosted_vllm", "local", "alfworld", "text-completion-openai"}
_SECRET_KWARGS = ("api_key", "aws_secret_access_key", "aws_session_token", "azure_ad_token")


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


def provider_of(model: str) -> str | None:
    try:
        return str(litellm.get_llm_provider(model)[1])
    except Exception:  # unknown providers raise BadRequestError; custom ones may not be registered
        return model.split("/", 1)[0] if "/" in model else None


def supports_n(model: str) -> bool:
    provider = provider_of(model)
    if provider in _N_PROVIDERS:
        return True
    try:
        params = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception:
        return False
    return bool(params and "n" in params)


def _protect(kwargs: dict[str, Any]) -> None:
    for name in _SECRET_KWARGS:
        value = kwargs.get(name)
        if isinstance(value, str):
            register_secret(value)
    for value in (kwargs.get("extra_headers") or kwargs.get("headers") or {}).values():
        if isinstance(value, str):
            register_secret(value)


def complete(model: str, messages: list[dict[str, Any]], *, role: str,
             **kwargs: Any) -> CallResult:
    """One request to `model`; errors are captured in the record, not raised."""
    _protect(kwargs)
    n = int(kwargs.get("n") or 1)
    record = CallRecord(role=role, model=model, provider=provider_of(model), n=n)
    start = time.perf_counter()
    try:
        response = raw_completion(model=model, messages=messages, **kwargs)
    except Exception as exc:
        record.latency_ms = (time.perf_counter() - start) * 1000
        record.error = scrub(f"{type(exc).__name__}: {exc}")[:2000]
        return CallResult(None, record)
    record.latency_ms = (time.perf_counter() - start) * 1000
    usage = getattr(response, "usage", None)
    record.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    record.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    record.cost_usd = call_cost(model, record.prompt_tokens, record.completion_tokens)
    if not response.choices:
        record.error = "EmptyResponse: the provider returned no choices"
        return CallResult(None, record)
    return CallResult(response, record)


def sample(model: str, messages: list[dict[str, Any]], *, n: int, temperature: float,
           role: str = "student", use_n: bool | None = None,
           **kwargs: Any) -> tuple[list[dict[str, Any]], list[CallResult]]:
    """`n` samples of `model`'s answer; returns the sampled messages and every call made.

    `use_n` forces (True) or forbids (False) the single ``n`` request; None asks litellm.
    Providers that silently ignore ``n`` (e.g. ``llama_cpp.server``) are topped up with
    single requests, so the caller always gets `n` samples unless calls fail.
    """
    kwargs = {k: v for k, v in kwargs.items() if k not in ("n", "temperature", "stream")}
    results: list[CallResult] = []
    samples: list[dict[str, Any]] = []
    if n > 1 and (supports_n(model) if use_n is None else use_n):
        first = complete(model, messages, role=role, n=n, temperature=temperature, **kwargs)
        results.append(first)
        samples.extend(first.messages()[:n])
    missing = n - len(samples)
    if missing > 0 and not (results and not results[0].ok):
        with ThreadPoolExecutor(max_workers=missing) as pool:
            # Each request runs in a copy of the caller's context (providers may read it).
            futures = [pool.submit(contextvars.copy_context().run, complete, model, messages,
                                   role=role, temperature=temperature, **kwargs)
                       for _ in range(missing)]
            for future in futures:
                result = future.result()
                results.append(result)
                samples.extend(result.messages()[:1])
    return samples, results
