"""First-thought prefix for collection runs (Kang et al., 2025, agent distillation).

Before the teacher's first step of an episode, the teacher is asked for its own plain
chain-of-thought on the task, without the agent's action format; the first paragraph of that
reasoning seeds the first step, which the teacher is asked to open with. Trajectories then
start from the teacher's considered plan instead of a reflex first action, which is what the
paper distils into the student. Only the teacher's request changes: the log keeps the
agent's own messages, so an exported record shows the agent's prompt and the seeded answer.
"""

from __future__ import annotations

import re
from typing import Any

from agentkd import llm
from agentkd.log import CallRecord
from agentkd.retrieval.keys import message_text

COT_INSTRUCTION = ("Think step by step about how to solve this task. Write your reasoning as "
                   "plain prose; do not answer in any action format yet.")
SEED_INSTRUCTION = ("Begin your reply with this first thought, then continue in the required "
                    "format:\nThought: {prefix}")
# The first paragraph is all that is used: stop generating at the first blank line.
_COT_KWARGS = {"max_tokens": 256, "stop": ["\n\n"]}
# Agent kwargs that would shape the plain chain-of-thought into the agent's format.
_DROPPED = ("max_tokens", "max_completion_tokens", "stop", "n", "tools", "tool_choice",
            "response_format", "functions", "function_call")
_THOUGHT_LABEL = re.compile(r"^\s*\**thought\**\s*[:：]\s*", re.IGNORECASE)


def first_paragraph(text: str) -> str:
    """The first non-empty paragraph of `text`, without a leading 'Thought:' label."""
    for paragraph in re.split(r"\n\s*\n", text or ""):
        paragraph = _THOUGHT_LABEL.sub("", paragraph.strip())
        if paragraph:
            return " ".join(paragraph.split())
    return ""


def cot_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task (the agent's first user turn) asked plainly, for free-form reasoning."""
    task = next((message_text(m) for m in messages if m.get("role") == "user"), "")
    return [{"role": "user", "content": f"{task}\n\n{COT_INSTRUCTION}"}]


def seeded(messages: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """`messages` with the seed instruction appended to the latest user turn."""
    out = [dict(m) for m in messages]
    last = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    instruction = SEED_INSTRUCTION.format(prefix=prefix)
    if last is None:
        return [*out, {"role": "user", "content": instruction}]
    out[last]["content"] = f"{message_text(out[last])}\n\n{instruction}"
    return out


def seed_first_thought(teacher: str, messages: list[dict[str, Any]], kwargs: dict[str, Any],
                       *, role: str, retries: int
                       ) -> tuple[list[dict[str, Any]], CallRecord]:
    """(messages for the teacher's first step, the chain-of-thought call's record). When that
    call fails or yields no text, the step goes ahead unseeded; the failure is in the record."""
    plain = {k: v for k, v in kwargs.items() if k not in _DROPPED}
    result = llm.complete(teacher, cot_messages(messages), role=role, retries=retries,
                          **plain, **_COT_KWARGS)
    prefix = first_paragraph(result.messages()[0].get("content") or "") if result.ok else ""
    return (seeded(messages, prefix) if prefix else messages), result.record
