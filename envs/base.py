"""The environment protocol: the smallest interface any text-agent task needs."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Env(Protocol):
    """A text task an agent solves step by step.

    `reset` starts the task and returns (first observation, info); `step` takes one action and
    returns (observation, reward, done, info). `admissible_actions` is the list of valid
    commands where the environment knows it (else None).
    """

    task_id: str
    task_type: str | None

    @property
    def goal(self) -> str: ...

    @property
    def admissible_actions(self) -> list[str] | None: ...

    def reset(self) -> tuple[str, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]: ...

    def close(self) -> None: ...
