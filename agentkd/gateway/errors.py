"""The gateway's errors: one `GatewayError` (an HTTP status, a kind, a message) and its two
renderings, OpenAI's ``{"error": {...}}`` and Anthropic's ``{"type": "error", ...}``.

Whatever goes wrong while serving a request ends as a `GatewayError` (`from_exception`):
bad input 400, a missing or wrong key 401, an unknown model 404, a spent budget 402, a rate
limit 429, a failing provider 502 (timeouts 504, its rate limits 429). Messages pass through
`agentkd.secrets.scrub`; no traceback ever reaches a client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agentkd.errors import AgentKDError, BudgetExceeded, InputError, TeacherError
from agentkd.secrets import scrub

# kind → (OpenAI error type, Anthropic error type)
_TYPES = {
    "invalid_request": ("invalid_request_error", "invalid_request_error"),
    "authentication": ("authentication_error", "authentication_error"),
    "not_found": ("invalid_request_error", "not_found_error"),
    "budget": ("insufficient_quota", "billing_error"),
    "rate_limit": ("rate_limit_error", "rate_limit_error"),
    "upstream": ("upstream_error", "api_error"),
    "timeout": ("timeout_error", "timeout_error"),
    "server": ("server_error", "api_error"),
}
# litellm's exception class names (as the call log's error text starts) → (status, kind).
_UPSTREAM = {
    "BadRequestError": (400, "invalid_request"),
    "ContextWindowExceededError": (400, "invalid_request"),
    "UnsupportedParamsError": (400, "invalid_request"),
    "UnprocessableEntityError": (400, "invalid_request"),
    "ContentPolicyViolationError": (400, "invalid_request"),
    "NotFoundError": (404, "not_found"),
    "RateLimitError": (429, "rate_limit"),
    "Timeout": (504, "timeout"),
}
_ERROR_NAME = re.compile(r"\b([A-Z][A-Za-z]+)\b")


@dataclass
class GatewayError(Exception):
    """An answer that is an error: `status`, a `kind` (keys of `_TYPES`), a message that
    says what is wrong and how to fix it, and the request field at fault, if one is."""

    status: int
    kind: str
    message: str
    param: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        self.message = scrub(self.message)
        super().__init__(self.message)

    def openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES[self.kind][0],
                          "param": self.param, "code": self.code or self.kind}}

    def anthropic(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": _TYPES[self.kind][1],
                                           "message": self.message}}


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param=param)


def upstream_error(model: str, error: str) -> GatewayError:
    """A provider's failure, from the error text `agentkd.llm` logged for the call."""
    first = (error or "unknown error").splitlines()[0]
    names = _ERROR_NAME.findall(first)
    status, kind = next((_UPSTREAM[n] for n in names if n in _UPSTREAM), (502, "upstream"))
    if kind == "not_found":
        # The provider does not know the model: the gateway's config names it wrongly.
        status, kind = 502, "upstream"
    return GatewayError(status, kind, f"upstream model {model!r} failed: {first}",
                        code="upstream_" + kind if kind != "upstream" else "upstream_error")


def from_exception(exc: BaseException, model: str) -> GatewayError:
    """The `GatewayError` for anything raised while serving a request for `model`."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, BudgetExceeded):
        return GatewayError(402, "budget", str(exc), code="budget_exceeded")
    if isinstance(exc, TeacherError):
        return upstream_error(model, str(exc).split(": ", 1)[-1])
    if isinstance(exc, InputError):
        return bad_request(str(exc), param="messages")
    if isinstance(exc, AgentKDError):
        return GatewayError(500, "server", f"the gateway is misconfigured: {exc}")
    # Anything else is a bug in the gateway: say so without its details (they may hold
    # request content); the type name is enough to find it in the server's log.
    return GatewayError(500, "server", f"internal error ({type(exc).__name__}) while serving "
                        f"model {model!r}; the request was not served")
