"""AppWorld tasks through the `appworld` package, under the same `Env` protocol.

An action is Python code the agent wants to run against the AppWorld APIs; the observation
is its output. The episode ends when the code marks the task complete
(`apis.supervisor.complete_task(...)`), and success is AppWorld's own evaluation. AppWorld's
data cannot be downloaded here; without it every entry point raises a clear error that says
how to install it.
"""

from __future__ import annotations

import os
from typing import Any

from agentkd.errors import ConfigError, InputError

SPLITS = ("train", "dev", "test_normal", "test_challenge")
_INSTALL_HINT = ("pip install appworld && appworld install && appworld download data "
                 "(then set APPWORLD_ROOT to the folder holding data/)")


def _appworld() -> Any:
    try:
        import appworld
    except ImportError:
        raise ConfigError(f"the appworld package is not installed: {_INSTALL_HINT}") from None
    return appworld


def list_tasks(split: str) -> list[str]:
    """Task ids of an AppWorld split."""
    if split not in SPLITS:
        raise InputError(f"unknown AppWorld split {split!r}; choose one of {', '.join(SPLITS)}")
    appworld = _appworld()
    try:
        return list(appworld.load_task_ids(split))
    except FileNotFoundError as exc:
        root = os.environ.get("APPWORLD_ROOT", "(APPWORLD_ROOT unset)")
        raise ConfigError(f"AppWorld data not found under {root}: {exc}. {_INSTALL_HINT}"
                          ) from None


class AppWorldEnv:
    """One AppWorld task; `experiment` names AppWorld's output folder for this run."""

    admissible_actions: list[str] | None = None  # any Python code is a valid action

    def __init__(self, task_id: str, *, experiment: str = "agentkd") -> None:
        self.task_id = task_id
        self.task_type: str | None = "appworld"
        self.experiment = experiment
        self._world: Any = None
        self._goal = ""

    @property
    def goal(self) -> str:
        return self._goal

    def reset(self) -> tuple[str, dict[str, Any]]:
        appworld = _appworld()
        self.close()
        try:
            self._world = appworld.AppWorld(task_id=self.task_id,
                                            experiment_name=self.experiment)
        except FileNotFoundError as exc:
            raise ConfigError(f"AppWorld task {self.task_id!r} not found: {exc}. "
                              f"{_INSTALL_HINT}") from None
        task = self._world.task
        supervisor = task.supervisor
        self._goal = str(task.instruction)
        observation = (f"Supervisor: {supervisor.first_name} {supervisor.last_name} "
                       f"({supervisor.email})\nTask: {self._goal}")
        return observation, {"task_type": self.task_type}

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self._world is None:
            raise InputError("call reset() before step()")
        output = str(self._world.execute(action))
        done = bool(self._world.task_completed())
        reward = 0.0
        info: dict[str, Any] = {}
        if done:
            evaluation = self._world.evaluate().to_dict()
            info["evaluation"] = evaluation
            info["won"] = bool(evaluation.get("success"))
            reward = 1.0 if info["won"] else 0.0
        return output, reward, done, info

    def close(self) -> None:
        if self._world is not None:
            self._world.close()
            self._world = None
