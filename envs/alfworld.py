"""ALFWorld text games through the real `alfworld` package (textworld PDDL engine).

One `AlfWorldEnv` is one game: it loads the game file directly with `textworld.start`
(no shared gym env id, so parallel tasks can never see each other's state) with alfworld's
own wrappers, including its handcoded expert, whose next action is published through
`current_expert_action`. The game itself is published through `current_game`, so the
`alfworld/*` teacher providers (`agentkd.envs.expert`) can ask it for any teacher's next
action (`teacher_action`): the handcoded expert's, the rescuing expert's (`envs/rescue.py`,
re-read from this game's transcript) or the PDDL planner's (a full-state oracle).
"""

from __future__ import annotations

import contextvars
import json
import os
import random
import re
from pathlib import Path
from typing import Any

from agentkd.envs.rescue import RescueExpert, Task
from agentkd.errors import ConfigError, InputError

SPLITS = {
    "train": "train",
    "valid_seen": "valid_seen",
    "valid_unseen": "valid_unseen",
    "valid_train": "valid_train",
}
TESTED_ALFWORLD_VERSION = "0.4.2"
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alfworld"

# The handcoded expert's next action for the game running in this thread / task.
current_expert_action: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "agentkd_alfworld_expert_action", default=None
)
# The game running in this thread / task, for the teachers that ask it (`teacher_action`).
current_game: contextvars.ContextVar[AlfWorldEnv | None] = contextvars.ContextVar(
    "agentkd_alfworld_game", default=None
)
TEACHERS = ("expert", "rescue", "planner")
"""Who can act next in a game: the handcoded expert, the rescuing expert, the PDDL planner."""
# The admissible commands of that game's current state (for the cascade's equivalence hook).
current_admissible: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "agentkd_alfworld_admissible", default=None
)


def same_admissible_command(a: str, b: str) -> bool:
    """Cascade equivalence: two actions agree when they map to the same admissible command."""
    from agentkd.envs.react import closest_admissible

    admissible = current_admissible.get()
    target = closest_admissible(a, admissible)
    return target is not None and target == closest_admissible(b, admissible)


def admissible_command(action: str) -> bool:
    """Cascade validity: an action is valid when it maps to one of the game's admissible
    commands now (as the reference agent maps it) and does not take an object the task does
    not name; with no list known, every action is.

    No ALFWorld task needs anything but the object it names in hand (the lamp is used, the
    sink, microwave and fridge are places), and taking another one costs the step and the one
    that puts it back: the tuned 135M student's commonest mistake. The task is in the prompt,
    so a reader of the prompt can make this check; the student's such sample is deferred.
    """
    from agentkd.envs.react import closest_admissible

    admissible = current_admissible.get()
    if admissible is None:
        return True
    command = closest_admissible(action, admissible)
    if command is None:
        return False
    game = current_game.get()
    return game is None or not takes_what_the_task_does_not_name(command, game.goal)


def takes_what_the_task_does_not_name(command: str, task: str) -> bool:
    """Whether `command` takes an object `task` does not name ("take candle 1 from shelf 1"
    for "put a clean cloth in countertop.")."""
    from agentkd.envs.react import handled_object

    taken = handled_object(command) if command.startswith("take ") else None
    return taken is not None and taken not in re.findall(r"[a-z]+", task.lower())


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The ALFWorld data folder: `explicit` (--data), else $ALFWORLD_DATA (alfworld's own
    convention), else the bundled ../shared/data/alfworld."""
    if explicit:
        candidates = [Path(explicit)]
    else:
        env = os.environ.get("ALFWORLD_DATA")
        candidates = [Path(env)] if env else []
        candidates.append(_SHARED_DATA)
    for folder in candidates:
        if (folder / "json_2.1.1").is_dir() and (folder / "logic" / "alfred.pddl").is_file():
            return folder.resolve()
    tried = ", ".join(str(c) for c in candidates) or "(nothing)"
    raise ConfigError(
        f"no ALFWorld data found (looked in {tried}). Get it with `pip install alfworld` and "
        f"`alfworld-download`, then set ALFWORLD_DATA to that folder or pass --data."
    )


def list_games(split: str, data: str | os.PathLike[str] | None = None) -> list[Path]:
    """Game files of `split`, sorted so that subsets are reproducible."""
    if split not in SPLITS:
        raise InputError(f"unknown ALFWorld split {split!r}; choose one of {', '.join(SPLITS)}")
    folder = data_dir(data) / "json_2.1.1" / SPLITS[split]
    if not folder.is_dir():
        raise ConfigError(f"ALFWorld split {split!r} is missing: no folder {folder}. "
                          "Run `alfworld-download` to get the full data.")
    games = sorted(folder.glob("*/*/game.tw-pddl"))
    if not games:
        raise ConfigError(f"no games (game.tw-pddl) under {folder}")
    return games


class AlfWorldEnv:
    """One ALFWorld game. `task_id` is the game's folder relative to the split.

    The experts are reproducible: the same game and `seed` give the same expert
    trajectory in any process, whatever else runs beside it.
    """

    def __init__(self, game_file: str | os.PathLike[str], *, seed: int = 0) -> None:
        self.game_file = Path(game_file)
        self.seed = seed
        self._expert_random = random.Random()
        if not self.game_file.is_file():
            raise InputError(f"ALFWorld game file not found: {self.game_file}")
        traj = json.loads((self.game_file.parent / "traj_data.json").read_text())
        self.task_type: str | None = traj.get("task_type")
        self.task_id = f"{self.game_file.parent.parent.name}/{self.game_file.parent.name}"
        self._task = Task.from_traj(traj)
        self._env: Any = None
        self._state: Any = None
        self._goal = ""
        self._rescue: RescueExpert | None = None
        self.history: list[tuple[str, str]] = []
        """(command, feedback) of every step since reset(), whoever chose the command."""
        self._plan: tuple[int, list[str]] | None = None

    def _start(self) -> Any:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import (
            AlfredDemangler,
            AlfredExpert,
            AlfredExpertType,
            AlfredInfos,
        )

        infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True,
                                   extras=["gamefile", "expert_plan"])
        return textworld.start(str(self.game_file), request_infos=infos, wrappers=[
            AlfredDemangler(shuffle=False), AlfredInfos,
            AlfredExpert(expert_type=AlfredExpertType.HANDCODED)])

    @property
    def goal(self) -> str:
        return self._goal

    @property
    def admissible_actions(self) -> list[str] | None:
        if self._state is None:
            return None
        return [a for a in self._state["admissible_commands"] if a != "help"]

    @property
    def expert_action(self) -> str | None:
        plan = self._state["extra.expert_plan"] if self._state is not None else None
        return plan[0] if plan else None

    @property
    def won(self) -> bool:
        return bool(self._state is not None and self._state["won"])

    def teacher_action(self, teacher: str) -> str | None:
        """`teacher`'s next action in the current state (one of TEACHERS); None before
        reset()."""
        if teacher not in TEACHERS:
            raise InputError(f"unknown ALFWorld teacher {teacher!r}; choose one of "
                             f"{', '.join(TEACHERS)}")
        if self._state is None:
            return None
        if teacher == "expert":
            return self.expert_action
        if teacher == "rescue":
            assert self._rescue is not None  # set by reset()
            return self._rescue.act(self.history, self.admissible_actions or [])
        plan = self._planner_plan()
        return plan[0] if plan else "look"  # no plan from here (won, or a dead end)

    def _planner_plan(self) -> list[str]:
        # Planned on demand (0.04-0.4 s a state with fast-downward) and once per state, instead
        # of textworld's `policy_commands`, which would plan after every step of every run.
        if self._plan is None or self._plan[0] != len(self.history):
            pddl = self._env.unwrapped
            self._plan = (len(self.history), pddl._pddl_state.replan(pddl._entity_infos))
        return self._plan[1]

    def _publish(self) -> None:
        current_expert_action.set(self.expert_action)
        current_admissible.set(self.admissible_actions)
        current_game.set(self)

    def reset(self) -> tuple[str, dict[str, Any]]:
        if self._env is None:
            self._env = self._start()
        self._expert_random.seed(f"{self.task_id}:{self.seed}")
        self._expert_draws_from_this_game()
        self._state = self._env.reset()
        text = str(self._state["feedback"]).strip()
        self._goal = text.split("Your task is to:")[-1].strip() if "Your task is to:" in text \
            else ""
        self.history = []
        self._rescue = RescueExpert(self._task, text)
        self._publish()
        return text.replace("-= Welcome to TextWorld, ALFRED! =-", "").strip(), self._info()

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self._state is None:
            raise InputError("call reset() before step()")
        self._expert_draws_from_this_game()
        before = self._env.state
        try:
            self._state, reward, done = self._env.step(action)
        except Exception:
            if self._env.state is before:  # the game itself did not take the step
                raise
            self._state, reward, done = self._state_after_expert_failure()
        feedback = str(self._state["feedback"]).strip()
        self.history.append((action, feedback))
        self._publish()
        return feedback, float(reward), bool(done), self._info()

    def _state_after_expert_failure(self) -> tuple[Any, float, bool]:
        # alfworld's wrapper steps the game, then asks the handcoded expert for its next
        # action; in states a student made the expert can time out or crash (it draws from
        # an empty list of objects of interest). The game did take the step: keep its state
        # instead of losing the episode or replaying the action, and suggest "look", as
        # alfworld itself does when the expert's action is not admissible.
        state = self._env.state
        state["extra.expert_plan"] = ["look"]
        won = bool(state["won"])
        return state, float(won), won or bool(state.get("lost"))

    def _expert_draws_from_this_game(self) -> None:
        # The handcoded expert breaks ties with module-level `random.choice`, so its plan
        # depended on whatever else had drawn from the global generator: the same game was won
        # in 12 steps in one process and lost at the step cap in another. It plans inside
        # reset() and step(), so this game's own seeded generator is swapped in before each.
        from alfworld.agents.expert import handcoded_expert

        handcoded_expert.random = self._expert_random  # type: ignore[assignment]

    def _info(self) -> dict[str, Any]:
        return {"won": self.won, "admissible_actions": self.admissible_actions,
                "expert_action": self.expert_action, "task_type": self.task_type}

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
