"""Scrubbing of API keys and other secrets from anything agentkd writes or raises.

Secrets arrive in environment variables, in call kwargs (`api_key=`, headers) and inside
provider error messages, and an agent may paste one into its own messages (an observation
echoing `env`, a tool output, a config file). We never log kwargs at all; every free text
that reaches an exception goes through `scrub`, and every value written to the SQL log or a
demo store goes through `scrub_value` at the write boundary (`agentkd.log`,
`agentkd.retrieval.store`).
"""

from __future__ import annotations

import os
import re
from typing import Any

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
# Well-known key shapes (OpenAI, Anthropic, Google, AWS, HF, bearer headers, URL passwords).
# A key prefix starts a word: agent content is scrubbed too, and "desk-lamp_12345" is no key.
_SECRET_SHAPES = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"\bAKIA[0-9A-Z]{12,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    # HTTP basic auth (base64 of user:password), e.g. echoed by a provider's error page
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)[A-Za-z0-9+/]{6,}=*"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|authorization|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"),
    re.compile(r"(://[^:/@\s]+:)[^@/\s]+(@)"),
]
REDACTED = "[REDACTED]"
_MIN_SECRET = 6  # shorter values are not treated as secrets: they would match everywhere
_extra_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Treat `value` as a secret from now on (e.g. an `api_key=` kwarg seen in a call)."""
    if value and len(value) >= _MIN_SECRET:
        _extra_secrets.add(value)


def _env_secrets() -> list[str]:
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET]


def _known_secrets() -> list[str]:
    # Longest first, so a secret containing another is replaced whole.
    return sorted({*_env_secrets(), *_extra_secrets}, key=len, reverse=True)


def scrub(text: str) -> str:
    """Return `text` with every known secret replaced by ``[REDACTED]``."""
    return _scrub(text, _known_secrets())


def scrub_value(value: Any) -> Any:
    """`value` with `scrub` applied to every string inside it (dicts, lists and tuples are
    walked; dict keys too). Other values are returned as they are.

    The secrets are looked up once per call, so scrubbing a whole step costs one scan of
    the environment however many strings it holds.
    """
    return _scrub_value(value, _known_secrets())


def _scrub_value(value: Any, known: list[str]) -> Any:
    if isinstance(value, str):
        return _scrub(value, known)
    if isinstance(value, dict):
        return {_scrub_value(k, known): _scrub_value(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, known) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub_value(v, known) for v in value)
    return value


def _scrub(text: str, known: list[str]) -> str:
    if not text or len(text) < _MIN_SECRET:  # shorter than any secret or key shape
        return text
    for value in known:
        text = text.replace(value, REDACTED)
    for shape in _SECRET_SHAPES:
        if shape.groups == 2:
            text = shape.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
        elif shape.groups == 1:
            text = shape.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = shape.sub(REDACTED, text)
    return text
