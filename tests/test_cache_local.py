"""The local llama.cpp backend reports the prompt tokens it reused from its KV cache as cached
tokens, and agentkd prices them at the local cache-read price (slow: loads SmolLM2-135M)."""

from __future__ import annotations

import os

import pytest

from agentkd import llm
from agentkd import local_models as lm

SMOL = "local/smollm2-135m"
SYSTEM = {"role": "system", "content": "You are a helpful assistant in a text world. " * 20}
M = 1e-6


def _prefix(a: list[int], b: list[int]) -> int:
    return len(os.path.commonprefix([a, b]))


@pytest.mark.slow
def test_a_second_call_sharing_a_prefix_reports_it_cached() -> None:
    pytest.importorskip("llama_cpp")
    try:
        lm.model_path(SMOL)
    except lm.ConfigError as exc:
        pytest.skip(str(exc))
    llama = lm.get_llama(SMOL)
    llama.reset()  # whatever an earlier test left in the context is not this test's prefix
    first = llm.complete(SMOL, [SYSTEM, {"role": "user", "content": "Say hello."}],
                         role="student", max_tokens=4, temperature=0.0)
    held = [int(t) for t in llama._input_ids]  # the first prompt and its answer
    second = llm.complete(SMOL, [SYSTEM, {"role": "user", "content": "Name a colour."}],
                          role="student", max_tokens=4, temperature=0.0)
    prompt = second.record.prompt_tokens
    tokens = [int(t) for t in llama._input_ids[:prompt]]  # the second prompt, as llama.cpp saw it
    shared = _prefix(held, tokens)
    assert first.record.cached_tokens == 0
    assert 0 < shared < prompt
    assert second.record.cached_tokens == shared
    timing = second.response._hidden_params["local_timings"][0]  # type: ignore[union-attr]
    assert timing["prompt_eval_tokens"] == prompt - shared  # llama.cpp's own counter agrees
    # smollm2-135m: $0.01 input, $0.001 reused (a tenth), $0.02 output per million tokens.
    out = second.record.completion_tokens
    expected = (prompt - shared) * 0.01 * M + shared * 0.001 * M + out * 0.02 * M
    assert abs(second.record.cost_usd - expected) <= 1e-12
    assert second.record.uncached_cost_usd is not None
    assert abs(second.record.uncached_cost_usd - (prompt * 0.01 * M + out * 0.02 * M)) <= 1e-12
