"""Pull the action out of a model response, and normalise it for comparison.

The default extractor tries, in order: tool calls (canonical JSON of name + arguments), a
ReAct ``Action: ...`` line, a ``> command`` line, and finally the last non-empty line.
Users with another output format pass their own `ActionExtractor`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

ActionExtractor = Callable[[dict[str, Any]], str | None]
"""Maps an assistant message (``{"content": ..., "tool_calls": ...}``) to its action, or None."""

# The two line shapes that carry an action; retrieval.collect strips them from reasoning.
ACTION_LINE = re.compile(r"^\s*\**action\**\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
PROMPT_LINE = re.compile(r"^\s*>\s*(.+?)\s*$", re.MULTILINE)
_END_PUNCT = " \t\r\n.,;:!?\"'`*"


def normalize_action(action: str) -> str:
    """Lower-case, collapse whitespace and strip punctuation at both ends."""
    return re.sub(r"\s+", " ", action).strip(_END_PUNCT).lower()


def _tool_call_action(tool_calls: list[Any] | tuple[Any, ...]) -> str | None:
    canon = []
    for call in tool_calls:
        if isinstance(call, dict):
            fn = call.get("function", call)
        else:
            fn = getattr(call, "function", None)
        if fn is None:
            return None
        name = fn.get("name") if isinstance(fn, dict) else getattr(fn, "name", None)
        raw = fn.get("arguments") if isinstance(fn, dict) else getattr(fn, "arguments", None)
        try:
            args = json.loads(raw) if isinstance(raw, str) else (raw or {})
        except json.JSONDecodeError:
            # Truncated or invalid JSON arguments are no action: such a sample cannot agree.
            return None
        canon.append({"name": name, "arguments": args})
    return json.dumps(canon, sort_keys=True, separators=(",", ":"))


def default_extractor(message: dict[str, Any]) -> str | None:
    tool_calls = message.get("tool_calls")
    if tool_calls:
        # Anything but a list of calls is a malformed message (a provider bug, a fuzzer): no
        # action, so the sample cannot agree, rather than an error that ends the step.
        return _tool_call_action(tool_calls) if isinstance(tool_calls, list | tuple) else None
    content = message.get("content") or ""
    if not isinstance(content, str):
        return None
    matches = ACTION_LINE.findall(content)
    if matches:
        return str(matches[-1])
    matches = PROMPT_LINE.findall(content)
    if matches:
        return str(matches[-1])
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    return lines[-1] if lines else None


def extract_action(message: dict[str, Any], extractor: ActionExtractor = default_extractor
                   ) -> str | None:
    """The normalised action of `message`, or None when it carries none."""
    return canonical_action(extractor(message))


def canonical_action(raw: str | None) -> str | None:
    """An extractor's raw output as compared by the gate: normalised text, or the canonical
    JSON of tool calls as is; None when nothing is left."""
    if raw is None:
        return None
    action = raw if is_tool_calls(raw) else normalize_action(raw)
    return action or None


def is_tool_calls(action: str) -> bool:
    """Whether a canonical action is tool calls (their canonical JSON), not text."""
    return action.startswith("[{")
