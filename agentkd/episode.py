"""Episode scopes: which episode the current thread or asyncio task is in.

A scope is entered with `Distiller.episode_scope(...)` or the `@Distiller.episode` decorator.
It carries the episode's identity (task id, goal, optional plan), its step counter and the
conversation seen so far, so each step logs only the turns that are new.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentkd.distiller import Distiller

_current: contextvars.ContextVar[EpisodeScope | None] = contextvars.ContextVar(
    "agentkd_episode", default=None
)


def current_episode() -> EpisodeScope | None:
    """The episode scope active in this thread / asyncio task, if any."""
    return _current.get()


def messages_hash(messages: list[dict[str, Any]]) -> str:
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class EpisodeScope:
    """One live episode. Call `finish` to record its outcome."""

    distiller: Distiller
    run_id: str
    episode_id: int
    task_id: str
    goal: str | None = None
    plan: str | None = None
    task_type: str | None = None
    steps: int = 0
    cost_usd: float = 0.0
    success: bool | None = None
    reward: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    acted: set[tuple[str, str]] = field(default_factory=set)
    """(observation, action) pairs already acted on in this episode: a repeat is a loop."""
    taken: Counter[str] = field(default_factory=Counter)
    """How many times each action was taken in this episode, by anyone."""
    _seen_count: int = 0
    _seen_hash: str = field(default="")
    _token: contextvars.Token[EpisodeScope | None] | None = None

    def finish(self, success: bool | None = None, reward: float | None = None,
               **info: Any) -> None:
        """Record the outcome (and any JSON-able `info`); written when the scope closes."""
        self.success = success
        self.reward = reward
        self.info.update(info)
        self.finished = True

    def new_turns(self, messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
        """(hash of all messages, the turns not seen at the previous step).

        When the agent rewrote its history instead of appending, all turns are new.
        """
        full_hash = messages_hash(messages)
        seen = self._seen_count
        if 0 < seen <= len(messages) and messages_hash(messages[:seen]) == self._seen_hash:
            delta = messages[seen:]
        else:
            delta = messages
        self._seen_count, self._seen_hash = len(messages), full_hash
        return full_hash, delta

    def _enter(self) -> None:
        self._token = _current.set(self)

    def _exit(self) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
