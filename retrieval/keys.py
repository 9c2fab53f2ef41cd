"""Retrieval keys: what a step is looked up by (goal, optional plan, current observation).

The default reads them off raw chat messages: goal = first user turn, observation = latest
user turn. The episode's own goal/plan (when given to the scope) override the guesses. Users
with other conventions pass a `KeyFunction`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepKey:
    goal: str
    observation: str
    plan: str = ""


KeyFunction = Callable[[list[dict[str, Any]]], StepKey]


def message_text(message: dict[str, Any]) -> str:
    """Text of a chat message; multi-part content keeps its text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def default_key(messages: list[dict[str, Any]]) -> StepKey:
    user_turns = [message_text(m) for m in messages if m.get("role") == "user"]
    if not user_turns:
        return StepKey(goal="", observation="")
    return StepKey(goal=user_turns[0], observation=user_turns[-1])
