"""Scrubbing of API keys and other secrets from anything agentkd writes or raises.

Secrets arrive in environment variables, in call kwargs (`api_key=`, headers) and inside
provider error messages. We never log kwargs at all, and every free text that reaches the
log, the reports or an exception goes through `scrub` first.
"""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
# Well-known key shapes (OpenAI, Anthropic, Google, AWS, HF, bearer headers, URL passwords).
_SECRET_SHAPES = [
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"AKIA[0-9A-Z]{12,}"),
    re.compile(r"hf_[A-Za-z0-9]{20,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    # HTTP basic auth (base64 of user:password), e.g. echoed by a provider's error page
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)[A-Za-z0-9+/]{6,}=*"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|authorization|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"),
    re.compile(r"(://[^:/@\s]+:)[^@/\s]+(@)"),
]
REDACTED = "[REDACTED]"
_extra_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Treat `value` as a secret from now on (e.g. an `api_key=` kwarg seen in a call)."""
    if value and len(value) >= 6:
        _extra_secrets.add(value)


def _env_secrets() -> list[str]:
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6]


def scrub(text: str) -> str:
    """Return `text` with every known secret replaced by ``[REDACTED]``."""
    if not text:
        return text
    for value in sorted({*_env_secrets(), *_extra_secrets}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for shape in _SECRET_SHAPES:
        if shape.groups == 2:
            text = shape.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
        elif shape.groups == 1:
            text = shape.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = shape.sub(REDACTED, text)
    return text
