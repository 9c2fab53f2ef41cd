"""Cache-aware sampling: the cascade's N student samples against a loopback provider that bills
like Anthropic (tests/cacheserver.py: prefix cache, writes at 1.25x, reads at 0.1x the input
price), measured from the log: with `Cascade(cache_prefix=True)` the N samples of a step cost
at most 1.3x one uncached prompt, where without it they cost N x."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from cacheserver import CacheServer

import agentkd
from agentkd import llm

STUDENT = "anthropic/claude-sonnet-4-5"
INSTRUCTIONS = "You act in a household text world; answer with Thought and Action. " * 120
STEPS, SAMPLES, DELAY_S = 6, 3, 0.2


def _episode(scripted: Any, server: CacheServer, log_url: str, cache_prefix: bool
             ) -> tuple[list[list[Any]], list[float]]:
    """One distill episode of STEPS steps: the student calls of each step, in order, and
    each step's latency (ms)."""
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(
        teacher="scripted/teacher", student=STUDENT, mode="distill", log=log_url,
        run=f"cache-{cache_prefix}", cascade={"samples": SAMPLES, "cache_prefix": cache_prefix},
        student_kwargs={"api_base": server.url, "api_key": "sk-loopback", "max_tokens": 50})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "Your task is to: put a clean mug on the desk."}]
    with kd.episode_scope(task_id="mug", goal="put a clean mug on the desk") as ep:
        for i in range(STEPS):
            messages.append({"role": "user", "content": f"Observation: you see drawer {i}."})
            reply = kd.completion(messages=messages)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        ep.finish(success=True)
    (episode,) = kd.log.episodes(kd.run_id)
    by_step: dict[int, list[Any]] = defaultdict(list)
    for call in kd.log.calls(episode.id):
        if call.role == "student":
            by_step[call.step_id].append(call)
    logged = kd.log.steps(episode.id)
    kd.log.close()
    return [by_step[step.id] for step in logged], [step.latency_ms for step in logged]


def _ratios(steps: list[list[Any]]) -> list[float]:
    """Per step: what its N samples cost over one uncached prompt (one sample, no cache)."""
    return [sum(c.cost_usd for c in calls) / calls[0].uncached_cost_usd for calls in steps]


def test_n_samples_cost_at_most_1_3x_one_prompt_with_the_prefix_cached(
        scripted: Any, log_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with CacheServer(min_cacheable=1024, delay_s=DELAY_S) as server:
        cached, slow = _episode(scripted, server, log_url, cache_prefix=True)
        marked = [r for r in server.requests if "cache_control" in str(r)]
        assert len(marked) == len(server.requests) == STEPS * SAMPLES
    with CacheServer(min_cacheable=1024, delay_s=DELAY_S) as server:
        plain, fast = _episode(scripted, server, log_url, cache_prefix=False)
        assert not any("cache_control" in str(r) for r in server.requests)
    assert all(len(calls) == SAMPLES for calls in cached + plain)
    with_cache, without = _ratios(cached), _ratios(plain)
    assert without == pytest.approx([float(SAMPLES)] * STEPS, abs=1e-12)  # N x: no cache
    # Step 1 writes the prompt once (1.25x) and reads it twice (0.1x each); later steps
    # read the earlier prompt and write only the turns since.
    assert with_cache[0] < 1.5
    assert max(with_cache[1:]) <= 1.3
    assert sum(sum(c.cost_usd for c in s) for s in cached) <= \
        1.3 * sum(s[0].uncached_cost_usd for s in cached)
    # Sample 1 is sent alone: the others wait for it (the latency trade-off).
    first, rest = cached[1][0], cached[1][1:]
    assert first.cache_write_tokens > 0 and all(c.cache_write_tokens == 0 for c in rest)
    assert all(c.cached_tokens == c.prompt_tokens for c in rest)
    assert min(slow) >= 2 * DELAY_S * 1000  # two round trips per step
    with capsys.disabled():
        print(f"\nN={SAMPLES} samples over one uncached prompt, per step: cache_prefix "
              f"{[round(r, 3) for r in with_cache]}, without {[round(r, 3) for r in without]}; "
              f"median step latency at {DELAY_S * 1000:.0f} ms per request: "
              f"{sorted(slow)[STEPS // 2]:.0f} ms vs {sorted(fast)[STEPS // 2]:.0f} ms")


def test_mark_cache_prefix_marks_system_and_last_message_only_once() -> None:
    messages = [{"role": "system", "content": "rules"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"}, {"role": "user", "content": "go"}]
    marked = llm.mark_cache_prefix(messages, whole_prompt=True)
    assert marked[0]["content"] == [{"type": "text", "text": "rules",
                                     "cache_control": {"type": "ephemeral"}}]
    assert marked[3]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert marked[1:3] == messages[1:3] and messages[0]["content"] == "rules"  # a copy
    assert llm.mark_cache_prefix(marked, whole_prompt=True) is marked  # the caller's own marks
    assert llm.mark_cache_prefix(messages)[3] == messages[3]
    assert llm.caches_marked_prefix("anthropic/claude-haiku-4-5")
    assert llm.caches_marked_prefix("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0")
    assert not llm.caches_marked_prefix("openai/gpt-4o-mini")
