"""Costs that match the provider's invoice: one test per usage shape, each over real HTTP to a
loopback provider (tests/cacheserver.py) through litellm, so the usage object is the one litellm
builds from that provider's JSON. Every expected cost is the provider's documented formula with
its published prices, written out here independently of litellm's price map.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cacheserver import CacheServer, words
from conftest import postgres_schema

import agentkd
from agentkd import llm
from agentkd.costs import TokenUsage, call_cost, cost_mismatch, price_usage, register_price
from agentkd.log import CallRecord, LLMCall, StepRecord, TrajectoryLog

M = 1e-6  # USD per million tokens → per token
PROMPT = [{"role": "system", "content": "You act in a text world. " * 300},
          {"role": "user", "content": "Observation: you are in the kitchen. " * 20}]
PROMPT_TOKENS = sum(words(m["content"]) for m in PROMPT)
ANSWER = "Thought: go.\nAction: look"
ANSWER_TOKENS = words(ANSWER)


def call(server: CacheServer, model: str, messages: list[dict[str, Any]] = PROMPT,
         **kwargs: Any) -> CallRecord:
    result = llm.complete(model, messages, role="student", api_base=server.url,
                          api_key="sk-loopback", **kwargs)
    assert result.ok, result.record.error
    return result.record


def test_openai_cached_tokens_are_billed_at_the_cached_input_price() -> None:
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens.
    with CacheServer(openai_cached=lambda prompt: prompt - 7) as server:
        record = call(server, "openai/gpt-4o-mini")
    cached = PROMPT_TOKENS - 7
    assert (record.prompt_tokens, record.cached_tokens, record.cache_write_tokens,
            record.completion_tokens, record.reasoning_tokens) == \
        (PROMPT_TOKENS, cached, 0, ANSWER_TOKENS, 0)
    expected = 7 * 0.15 * M + cached * 0.075 * M + ANSWER_TOKENS * 0.60 * M
    assert abs(record.cost_usd - expected) <= 1e-12
    uncached = PROMPT_TOKENS * 0.15 * M + ANSWER_TOKENS * 0.60 * M
    assert record.uncached_cost_usd is not None
    assert abs(record.uncached_cost_usd - uncached) <= 1e-12
    assert record.provider_cost_usd is None


def test_anthropic_cache_writes_then_reads_the_marked_prefix() -> None:
    # claude-sonnet-4-5: $3 input, $3.75 5-minute cache write, $0.30 cache read, $15 output.
    system = PROMPT[0]["content"]
    marked = [{"role": "system", "content": [
        {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]}, PROMPT[1]]
    prefix, rest = words(system), words(PROMPT[1]["content"])
    with CacheServer() as server:
        first = call(server, "anthropic/claude-sonnet-4-5", marked, max_tokens=50)
        second = call(server, "anthropic/claude-sonnet-4-5", marked, max_tokens=50)
        assert server.usages[0]["cache_creation_input_tokens"] == prefix
        assert server.usages[1]["cache_read_input_tokens"] == prefix
    assert (first.prompt_tokens, first.cached_tokens, first.cache_write_tokens) == \
        (prefix + rest, 0, prefix)
    assert (second.prompt_tokens, second.cached_tokens, second.cache_write_tokens) == \
        (prefix + rest, prefix, 0)
    out = ANSWER_TOKENS * 15 * M
    assert abs(first.cost_usd - (rest * 3 * M + prefix * 3.75 * M + out)) <= 1e-12
    assert abs(second.cost_usd - (rest * 3 * M + prefix * 0.30 * M + out)) <= 1e-12
    for record in (first, second):
        assert record.uncached_cost_usd is not None
        assert abs(record.uncached_cost_usd - ((prefix + rest) * 3 * M + out)) <= 1e-12


def test_reasoning_tokens_are_billed_as_completion_tokens() -> None:
    # o4-mini: $1.10 input, $4.40 output per million; reasoning tokens are output tokens.
    with CacheServer(reasoning=120) as server:
        record = call(server, "openai/o4-mini")
    assert (record.completion_tokens, record.reasoning_tokens) == (ANSWER_TOKENS + 120, 120)
    expected = PROMPT_TOKENS * 1.10 * M + (ANSWER_TOKENS + 120) * 4.40 * M
    assert abs(record.cost_usd - expected) <= 1e-12
    assert record.uncached_cost_usd == record.cost_usd


def test_a_provider_stated_cost_is_logged_beside_ours(caplog: pytest.LogCaptureFixture) -> None:
    ours = PROMPT_TOKENS * 0.15 * M + ANSWER_TOKENS * 0.60 * M
    with CacheServer(stated_cost=round(ours, 9)) as server:
        agrees = call(server, "openai/gpt-4o-mini")
    assert agrees.provider_cost_usd == round(ours, 9)
    assert abs(agrees.cost_usd - ours) <= 1e-12
    assert not cost_mismatch(agrees.cost_usd, agrees.provider_cost_usd)
    with CacheServer(stated_cost=ours * 2) as server, caplog.at_level("WARNING"):
        disagrees = call(server, "openai/gpt-4o-mini")
    assert disagrees.provider_cost_usd == ours * 2
    assert abs(disagrees.cost_usd - ours) <= 1e-12  # ours stays ours
    assert cost_mismatch(disagrees.cost_usd, disagrees.provider_cost_usd)
    assert "billed a call to openai/gpt-4o-mini" in caplog.text


def test_registered_cache_prices_are_litellms() -> None:
    register_price("openai/private-deploy", 2.0, 8.0, cache_read_per_mtok=0.5,
                   cache_write_per_mtok=2.5)
    with CacheServer(openai_cached=lambda prompt: 100) as server:
        record = call(server, "openai/private-deploy")
    expected = (PROMPT_TOKENS - 100) * 2.0 * M + 100 * 0.5 * M + ANSWER_TOKENS * 8.0 * M
    assert abs(record.cost_usd - expected) <= 1e-12
    written = call_cost("openai/private-deploy", 1000, 10, cached_tokens=300,
                        cache_write_tokens=200)
    assert abs(written - (500 * 2.0 * M + 300 * 0.5 * M + 200 * 2.5 * M + 10 * 8.0 * M)) \
        <= 1e-12
    # Re-registered without cache prices, cached tokens cost the input price again.
    register_price("openai/private-deploy", 2.0, 8.0)
    assert abs(call_cost("openai/private-deploy", 1000, 10, cached_tokens=300)
               - (1000 * 2.0 * M + 10 * 8.0 * M)) <= 1e-12


def test_register_price_refuses_negative_cache_prices() -> None:
    with pytest.raises(agentkd.ConfigError, match="cache_read=-1"):
        register_price("openai/bad", 1.0, 1.0, cache_read_per_mtok=-1)


def test_unpriced_model_costs_nothing_with_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        priced = price_usage("nowhere/unknown-model-x", TokenUsage(10, 5, cached_tokens=3))
    assert (priced.cost_usd, priced.uncached_cost_usd) == (0.0, 0.0)
    assert any("no price known" in str(w.message) for w in caught)


def test_usage_sums_over_retries() -> None:
    a = TokenUsage(10, 2, 4, 1, 0, None) + TokenUsage(20, 3, 0, 0, 1, 0.5)
    assert a == TokenUsage(30, 5, 4, 1, 1, 0.5)


def _old_log(path: Path) -> str:
    """A log written before the cache columns: drop them from a fresh one."""
    url = f"sqlite:///{path}"
    TrajectoryLog(url).close()
    with sqlite3.connect(path) as db:
        for column in ("cached_tokens", "cache_write_tokens", "reasoning_tokens",
                       "uncached_cost_usd", "provider_cost_usd"):
            db.execute(f"ALTER TABLE llm_calls DROP COLUMN {column}")
        db.execute("INSERT INTO runs (id, mode, teacher, config, created_at) "
                   "VALUES ('old', 'teacher', 't', '{}', '2026-01-01')")
        db.execute("INSERT INTO llm_calls (run_id, role, model, n, prompt_tokens, "
                   "completion_tokens, cost_usd, latency_ms, created_at) VALUES "
                   "('old', 'teacher', 't', 1, 10, 2, 0.5, 1.0, '2026-01-01')")
    return url


def test_an_old_log_opens_and_gains_the_cache_columns(tmp_path: Path) -> None:
    url = _old_log(tmp_path / "old.db")
    log = TrajectoryLog(url)
    episode = log.start_episode("old", "task")
    log.record_step(episode, "old", StepRecord(idx=0, prompt_hash="h", new_messages=[],
                                               verdict="teacher_only", actor="teacher"),
                    [CallRecord(role="teacher", model="t", provider="p", prompt_tokens=100,
                                completion_tokens=3, cached_tokens=80, cache_write_tokens=5,
                                reasoning_tokens=1, cost_usd=0.1, uncached_cost_usd=0.2,
                                provider_cost_usd=0.11)])
    with log.session() as s:
        rows = s.query(LLMCall).order_by(LLMCall.id).all()
    assert [(r.cached_tokens, r.cache_write_tokens, r.reasoning_tokens, r.uncached_cost_usd,
             r.provider_cost_usd) for r in rows] == [(None,) * 5, (80, 5, 1, 0.2, 0.11)]
    log.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema("costs") as url:
        yield url


@pytest.mark.postgres
def test_an_old_postgres_log_gains_the_cache_columns(pg_url: str) -> None:
    from sqlalchemy import create_engine, inspect, text

    log = TrajectoryLog(pg_url)
    log.close()
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE llm_calls DROP COLUMN cached_tokens"))
    TrajectoryLog(pg_url).close()
    columns = {c["name"] for c in inspect(engine).get_columns("llm_calls")}
    engine.dispose()
    assert {"cached_tokens", "cache_write_tokens", "provider_cost_usd"} <= columns
