"""A streamed provider call: chunks are handed on as they arrive, and the whole answer is
rebuilt afterwards so it is logged and priced like any other call (`agentkd.llm.complete`).

A stream that fails or ends before its first chunk is retried as a plain call through
`agentkd.llm.complete` (its retry budget and backoff), whose answer is then handed on in
one piece; one that fails midway cannot be retried (the client has part of it already).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import litellm

from agentkd import llm
from agentkd.costs import call_cost
from agentkd.gateway.shapes import Delta, delta_of_chunk, deltas_of, usage_of
from agentkd.log import CallRecord
from agentkd.secrets import scrub


def streamed_call(model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any], *,
                  role: str, retries: int, emit: Callable[[Delta], None]) -> llm.CallResult:
    kwargs = {k: v for k, v in kwargs.items()
              if k not in ("stream", "stream_options", "num_retries", "max_retries")}
    record = CallRecord(role=role, model=model, provider=llm.provider_of(model))
    chunks: list[Any] = []
    start = time.perf_counter()
    failure: Exception | None = None
    try:
        for chunk in llm.raw_completion(model=model, messages=messages, stream=True,
                                        stream_options={"include_usage": True},
                                        num_retries=0, max_retries=0, **kwargs):
            chunks.append(chunk)
            delta = delta_of_chunk(chunk)
            if delta is not None:
                emit(delta)
    except Exception as exc:
        failure = exc
    if not chunks:
        result = llm.complete(model, messages, role=role, retries=retries, **kwargs)
        result.record.latency_ms = (time.perf_counter() - start) * 1000
        if result.response is not None:
            for delta in deltas_of(result.response):
                emit(delta)
        return result
    if failure is not None:
        record.error = scrub(f"{type(failure).__name__} after {len(chunks)} streamed chunks: "
                             f"{failure}")[:2000]
    record.latency_ms = (time.perf_counter() - start) * 1000
    built = litellm.stream_chunk_builder(chunks, messages=messages) if chunks else None
    response = built if isinstance(built, litellm.ModelResponse) else None
    if response is not None:
        record.prompt_tokens, record.completion_tokens = usage_of(response)
        record.cost_usd = call_cost(model, record.prompt_tokens, record.completion_tokens)
    if record.error is not None or response is None or not response.choices:
        record.error = record.error or "the provider's stream held no answer"
        return llm.CallResult(None, record)
    return llm.CallResult(response, record)
