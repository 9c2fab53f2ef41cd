"""Pins of agentkd/costs.py that mutation testing found missing: a call's cost without cache
writes, litellm's own per-token prices, reasoning tokens carried into litellm's usage."""

from __future__ import annotations

import litellm
import pytest

from agentkd.costs import TokenUsage, call_cost, price_per_token

CLAUDE = "anthropic/claude-sonnet-4-5"


def _entry(model: str) -> dict:
    return litellm.model_cost[model.split("/", 1)[1]]


def test_a_call_without_cache_tokens_is_billed_at_the_input_price():
    # Anthropic bills a cache write at 1.25x the input price: one token written by default
    # would show up in the cost.
    entry = _entry(CLAUDE)
    assert entry["cache_creation_input_token_cost"] != entry["input_cost_per_token"]
    assert call_cost(CLAUDE, 1000, 10) == pytest.approx(
        1000 * entry["input_cost_per_token"] + 10 * entry["output_cost_per_token"], rel=1e-12)


def test_price_per_token_is_litellms():
    entry = _entry(CLAUDE)
    assert price_per_token(CLAUDE) == (entry["input_cost_per_token"],
                                       entry["output_cost_per_token"])
    assert price_per_token("nosuchprovider/no-model") is None


def test_reasoning_tokens_reach_litellms_usage():
    usage = TokenUsage(prompt_tokens=10, completion_tokens=8, reasoning_tokens=5).litellm_usage()
    assert usage.completion_tokens_details.reasoning_tokens == 5
    assert TokenUsage(10, 8).litellm_usage().completion_tokens_details is None
