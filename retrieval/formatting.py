"""Formatting retrieved demos into the student's prompt.

The default template puts the windows in the system message under a heading that marks them
as expert examples from similar situations, separate from the live conversation. The
alternative placement inserts them as a user turn just before the latest observation, which
keeps the start of the prompt unchanged between steps (longer reusable prefix cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agentkd.retrieval.store import DemoWindow

DemoTemplate = Callable[[Sequence[DemoWindow]], str]

HEADER = (
    "Expert examples in similar situations (from past successful episodes; they are not "
    "part of the current task, use them as guidance only):"
)


def default_template(windows: Sequence[DemoWindow]) -> str:
    parts = [HEADER]
    for i, window in enumerate(windows, 1):
        lines = [f"## Example {i}", f"Goal: {window.goal}"]
        if window.plan:
            lines.append(f"Plan: {window.plan}")
        for step in window.steps:
            lines.append(f"Observation: {step.observation}")
            if step.reasoning:
                lines.append(f"Thought: {step.reasoning}")
            lines.append(f"Action: {step.action}")
        parts.append("\n".join(lines))
    parts.append("(end of examples)")
    return "\n\n".join(parts)


def inject_demos(messages: list[dict[str, Any]], block: str, placement: str = "system"
                 ) -> list[dict[str, Any]]:
    """A copy of `messages` with the demo `block` added; the input is never modified."""
    if not block:
        return list(messages)
    out = [dict(m) for m in messages]
    if placement == "before_observation":
        last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=len(out))
        out.insert(last_user, {"role": "user", "content": block})
        return out
    first = out[0] if out else {}
    if first.get("role") == "system" and isinstance(first.get("content"), str):
        first["content"] = f"{first['content']}\n\n{block}"
    elif first.get("role") == "system" and isinstance(first.get("content"), list):
        first["content"] = [*first["content"], {"type": "text", "text": block}]
    else:
        out.insert(0, {"role": "system", "content": block})
    return out
