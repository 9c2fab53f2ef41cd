"""The Distiller hook: route an agent's long history through BudgetMem before the student sees it.

Contract of `compress_history(messages, query, pipeline, router)`:

- `messages`: the agent's chat messages (litellm/OpenAI dicts). System messages, the first
  user message (the goal) and the last `keep_last` messages (the current observation and what
  led to it) are kept verbatim; everything in between is the *history* that gets compressed.
- `query`: what the memory is processed for; the Distiller passes goal + current observation.
- `pipeline`: an `agentkd.memory.Pipeline`; `router`: a `Router`, a tier name for every
  module ("low"/"mid"/"high"), or a {module: tier} mapping.
- Returns `(new_messages, calls)`. When the history is shorter than `min_history` messages the
  input list is returned unchanged with no calls. Otherwise the history is replaced by ONE user
  message, placed right after the goal, reading "Memory of earlier steps (selected for the
  current step):" followed by the pipeline's processed memory (Summary's output); no answer
  call is made: the student answers. The input list is never mutated.
- `calls` are `CallRecord`s with role "memory": each LLM call the modules made, plus one
  record per module with model ``memory/<module>@<tier>`` and provider ``agentkd.memory``
  carrying the module's non-LLM cost (embedding tokens) and latency, so the log shows the
  tier taken by every module and the sum of the calls' `cost_usd` is the memory's total cost.
  The caller writes them with `TrajectoryLog.record_calls(run_id, episode_id, calls)`.
- Raises `InputError` for malformed messages or an empty query, `ConfigError` for an unknown
  tier; LLM failures do not raise (the module falls back to its rules and the record carries
  the error).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentkd.errors import InputError
from agentkd.log import CallRecord
from agentkd.memory.pipeline import Pipeline, PipelineResult, TierPolicy

MEMORY_HEADER = "Memory of earlier steps (selected for the current step):"


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content
                        if isinstance(p, dict) and p.get("type") == "text")
    if message.get("tool_calls"):
        return str(message["tool_calls"])
    return ""


def history_lines(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """One memory line per history message ('[step 3] assistant: ...'), newlines flattened."""
    return [f"[step {i + 1}] {m.get('role', '?')}: {' '.join(_text(m).split())}"
            for i, m in enumerate(history) if _text(m).strip()]


def module_records(result: PipelineResult) -> list[CallRecord]:
    """The module's own LLM calls plus one tier/cost record per module (see the contract)."""
    records: list[CallRecord] = []
    for m in result.modules:
        if m.module in ("retrieval", "answer"):
            records.extend(m.calls)
            continue
        llm_cost = sum(c.cost_usd for c in m.calls)
        llm_prompt = sum(c.prompt_tokens for c in m.calls)
        records.append(CallRecord(role="memory", model=f"memory/{m.module}@{m.tier}",
                                  provider="agentkd.memory",
                                  prompt_tokens=max(0, m.prompt_tokens - llm_prompt),
                                  cost_usd=max(0.0, m.cost_usd - llm_cost),
                                  latency_ms=m.latency_ms, error=m.error))
        records.extend(m.calls)
    return records


def compress_history(messages: list[dict[str, Any]], query: str, pipeline: Pipeline,
                     router: TierPolicy | str | Mapping[str, str], *, keep_last: int = 2,
                     min_history: int = 4) -> tuple[list[dict[str, Any]], list[CallRecord]]:
    """Replace the middle of `messages` by BudgetMem's processed memory; see the contract above."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not isinstance(query, str) or not query.strip():
        raise InputError("compress_history needs a non-empty query (goal + observation)")
    if keep_last < 0 or min_history < 1:
        raise InputError("keep_last must be >= 0 and min_history >= 1")
    system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    first_user = next((i for i, m in enumerate(rest) if m.get("role") == "user"), None)
    if first_user is None:
        return list(messages), []
    head = rest[: first_user + 1]
    tail_start = max(first_user + 1, len(rest) - keep_last)
    history, tail = rest[first_user + 1: tail_start], rest[tail_start:]
    lines = history_lines(history)
    if len(history) < min_history or not lines:
        return list(messages), []
    result = pipeline.run(query, lines, router, answer=False)
    memory_message = {"role": "user", "content": f"{MEMORY_HEADER}\n{result.context}"}
    return [*system, *head, memory_message, *tail], module_records(result)
