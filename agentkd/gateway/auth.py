"""Who may call the gateway, and how much: bearer gateway keys, per-key spending caps and
request rates, and the loopback guard.

Bound to loopback with no keys, the gateway is open to local processes only, and a request
must name a loopback Host (a web page cannot reach it through DNS rebinding). Bound to any
other address, keys are mandatory. A key is read from ``Authorization: Bearer <key>`` (the
OpenAI SDKs) or ``x-api-key`` (the Anthropic SDK). Every token a client presents is treated
as a secret from then on (`agentkd.secrets.register_secret`), so it never reaches the log.
Caps are kept per worker process.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agentkd.errors import ConfigError
from agentkd.gateway.config import GatewayKey
from agentkd.gateway.errors import GatewayError
from agentkd.secrets import register_secret

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})
_MAX_REGISTERED = 256  # distinct client tokens remembered as secrets when no keys are set


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """A Host header without its port; IPv6 literals lose their brackets."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass
class KeyState:
    """One key's spending and recent requests in this worker."""

    key: GatewayKey
    spent_usd: float = 0.0
    recent: deque[float] = field(default_factory=deque)


class KeyRing:
    """The configured keys; `check` authenticates and admits a request, `charge` bills it."""

    def __init__(self, keys: list[GatewayKey], host: str) -> None:
        if not keys and not is_loopback(host):
            raise ConfigError(f"agentkd serve is bound to {host}, which is not loopback; it "
                              f"needs gateway keys ([[key]] entries in --config) so that "
                              f"only your clients can spend your provider keys")
        self._states = [KeyState(k) for k in keys]
        self._tokens = [(s.key.token(), s) for s in self._states]
        for token, _ in self._tokens:
            register_secret(token)
        self._loopback = is_loopback(host)
        self._lock = threading.Lock()
        self._registered: set[str] = set()

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def check_host(self, headers: Any) -> None:
        if self._loopback and not self.required and \
                not is_loopback(host_name(headers.get("host", ""))):
            raise GatewayError(403, "authentication", "this gateway serves loopback clients "
                               "only (the Host header names another host); bind it elsewhere "
                               "with gateway keys to serve others")

    @staticmethod
    def presented(headers: Any) -> str | None:
        auth = headers.get("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return headers.get("x-api-key") or None

    def check(self, headers: Any) -> KeyState | None:
        """The caller's key, admitted; raises 401 (no or wrong key), 402 (its spending cap
        reached) or 429 (its request rate)."""
        token = self.presented(headers)
        if not self.required:
            self._remember(token)
            return None
        state = next((s for t, s in self._tokens
                      if token is not None and hmac.compare_digest(t.encode(), token.encode())),
                     None)
        if state is None:
            self._remember(token)
            raise GatewayError(401, "authentication", "missing or unknown gateway key: send "
                               "'Authorization: Bearer <key>' (or 'x-api-key: <key>') with a key "
                               "from the gateway's config", code="invalid_api_key")
        with self._lock:
            key = state.key
            if key.max_usd is not None and state.spent_usd >= key.max_usd:
                raise GatewayError(402, "budget", f"gateway key {key.name!r} spent "
                                   f"${state.spent_usd:.6f} of its ${key.max_usd} cap; raise "
                                   f"max_usd in the gateway config", code="budget_exceeded")
            if key.max_requests_per_minute is not None:
                now = time.monotonic()
                while state.recent and now - state.recent[0] > 60:
                    state.recent.popleft()
                if len(state.recent) >= key.max_requests_per_minute:
                    raise GatewayError(429, "rate_limit", f"gateway key {key.name!r} sent "
                                       f"{key.max_requests_per_minute} requests in the last "
                                       f"minute, its cap; retry later",
                                       code="rate_limit_exceeded")
                state.recent.append(now)
        return state

    def charge(self, state: KeyState | None, usd: float) -> None:
        if state is not None and usd:
            with self._lock:
                state.spent_usd += usd

    def _remember(self, token: str | None) -> None:
        if token and token not in self._registered and len(self._registered) < _MAX_REGISTERED:
            self._registered.add(token)
            register_secret(token)
