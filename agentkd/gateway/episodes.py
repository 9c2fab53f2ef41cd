"""Which episode a request belongs to, across HTTP requests.

An agent names its episode with ``X-Agentkd-Episode`` (and optionally ``X-Agentkd-Task``,
``X-Agentkd-Goal``); without that header, a request whose messages continue a conversation
the gateway answered (the earlier messages, then that answer, then new turns) joins that
conversation's episode, and any other request opens a new one. Either way the response names
the episode in ``X-Agentkd-Episode``, so the client can end it with
``POST /agentkd/episodes/{id}/finish``; an episode with no request for `idle_timeout_s`
is closed (status ``done``, no outcome).

Episodes live in the worker process that opened them; with several workers, a client that
names its episode should reach the same worker (sticky sessions) or it becomes one episode
per worker in the log.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentkd.gateway.errors import bad_request
from agentkd.gateway.shapes import text_of

if TYPE_CHECKING:
    from agentkd.distiller import Distiller
    from agentkd.episode import EpisodeScope

_MAX_HEADER = 512


@dataclass(frozen=True)
class EpisodeHeaders:
    episode: str | None = None
    task: str | None = None
    goal: str | None = None

    @classmethod
    def read(cls, headers: Any) -> EpisodeHeaders:
        values = {}
        for name in ("episode", "task", "goal"):
            value = headers.get(f"x-agentkd-{name}")
            if value is not None and (not value.strip() or len(value) > _MAX_HEADER):
                raise bad_request(f"header X-Agentkd-{name.title()} must be 1 to {_MAX_HEADER} "
                                  f"characters", f"X-Agentkd-{name.title()}")
            values[name] = value.strip() if value else None
        return cls(**values)


@dataclass
class LiveEpisode:
    """An open episode: its scope in the Distiller, and a lock so its steps come one at a
    time (each step's index is the previous one's plus one)."""

    key: str
    distiller: Distiller
    scope: EpisodeScope
    last_used: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    prefixes: set[str] = field(default_factory=set)
    closed: bool = False


def _canonical(message: dict[str, Any]) -> str:
    """A message as clients echo it back: role, text and tool calls (name and parsed
    arguments); ids and formatting differences between SDKs are left out."""
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        raw = fn.get("arguments")
        try:
            args = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
        except json.JSONDecodeError:
            args = raw
        calls.append([fn.get("name"), args])
    role = message.get("role")
    return json.dumps([role, text_of(message.get("content")).strip(), calls], sort_keys=True,
                      ensure_ascii=False, default=str)


def prefix_hashes(messages: list[dict[str, Any]]) -> list[str]:
    """Hash of each prefix: entry i covers messages[:i + 1]."""
    out, digest = [], hashlib.sha256()
    for message in messages:
        digest.update(_canonical(message).encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
        out.append(digest.copy().hexdigest())
    return out


class Episodes:
    """The open episodes of one worker, found by header or by conversation prefix."""

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], LiveEpisode] = {}  # (teacher, key)
        self._by_prefix: dict[tuple[str, str], LiveEpisode] = {}  # (teacher, prefix hash)

    def __len__(self) -> int:
        return len(self._by_key)

    def resolve(self, distiller: Distiller, headers: EpisodeHeaders,
                messages: list[dict[str, Any]]) -> LiveEpisode:
        """The episode this request is a step of, opened when there is none."""
        teacher = distiller.teacher
        with self._lock:
            live: LiveEpisode | None = None
            if headers.episode is not None:
                live = self._by_key.get((teacher, headers.episode))
            else:
                hashes = prefix_hashes(messages)
                # The longest earlier exchange this conversation continues (it ends with the
                # assistant answer the gateway gave).
                for end in range(len(messages) - 1, 0, -1):
                    if messages[end - 1].get("role") != "assistant":
                        continue
                    live = self._by_prefix.get((teacher, hashes[end - 1]))
                    if live is not None:
                        break
            if live is None or live.closed:
                key = headers.episode or f"ep-{uuid.uuid4().hex[:16]}"
                scope = distiller.open_episode(headers.task or key, goal=headers.goal)
                live = LiveEpisode(key, distiller, scope, time.monotonic())
                self._by_key[(teacher, key)] = live
            live.last_used = time.monotonic()
            return live

    def answered(self, live: LiveEpisode, messages: list[dict[str, Any]],
                 answer: dict[str, Any]) -> None:
        """Remember the conversation up to `answer`, so its continuation finds `live`."""
        digest = prefix_hashes([*messages, answer])[-1]
        with self._lock:
            if live.closed:
                return
            self._by_prefix[(live.distiller.teacher, digest)] = live
            live.prefixes.add(digest)
            live.last_used = time.monotonic()

    def take(self, key: str) -> list[LiveEpisode]:
        """Remove and return the open episodes named `key` (one per route at most)."""
        with self._lock:
            found = [live for (_, k), live in self._by_key.items() if k == key]
            for live in found:
                self._forget(live)
            return found

    def drop(self, live: LiveEpisode) -> None:
        with self._lock:
            self._forget(live)

    def idle(self, now: float | None = None) -> list[LiveEpisode]:
        """Remove and return the episodes idle for longer than the timeout."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [live for live in self._by_key.values()
                     if now - live.last_used > self.idle_timeout_s and not live.lock.locked()]
            for live in stale:
                self._forget(live)
            return stale

    def all(self) -> list[LiveEpisode]:
        with self._lock:
            found = list(self._by_key.values())
            for live in found:
                self._forget(live)
            return found

    def _forget(self, live: LiveEpisode) -> None:
        live.closed = True
        teacher = live.distiller.teacher
        self._by_key.pop((teacher, live.key), None)
        for digest in live.prefixes:
            if self._by_prefix.get((teacher, digest)) is live:
                del self._by_prefix[(teacher, digest)]
