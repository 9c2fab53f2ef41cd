"""The reference ReAct agent used by benchmarks and examples.

It is an ordinary agent loop — it calls `litellm.completion(model=<teacher>, ...)` exactly as
a user's agent would and knows nothing of agentkd; wrap it with `@kd.episode` to distil it.
Each step the model answers "Thought: ...\\nAction: <command>". The prompt stays short: only
the latest observation lists the admissible commands, and only the last `history` exchanges
are kept. Every observation after the first restates the task: a small model reads the
object to fetch next to the commands it chooses from, not a thousand tokens up (the tuned
135M student took the wrong object 111 times in 32 games when the task was only at the top).
`PROMPT_VERSION` names this layout; data and students made with another one do not mix.
The action is mapped to the closest admissible command when the environment lists them (one
that handles an object only to a command on that object); an action that matches none is
sent as is (ALFWorld answers "Nothing happens.") and counted as invalid.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import litellm

from agentkd.cascades.actions import default_extractor, normalize_action
from agentkd.envs.base import Env
from agentkd.retrieval.keys import StepKey, default_key

# The command shapes are ALFWorld 0.4.2's (its expert says "move X to Y", not "put X in Y"):
# a prompt that names another verb sends the student off the admissible list.
SYSTEM_PROMPT = (
    "You are an agent in a household text game. Each turn, reply with one short thought and "
    "one action, exactly in this format:\n"
    "Thought: <one short sentence>\n"
    "Action: <one command from the admissible commands>\n"
    "Commands look like: go to <place>, take <obj> from <place>, move <obj> to <place>, "
    "open <x>, close <x>, clean <obj> with <sink>, heat <obj> with <microwave>, "
    "cool <obj> with <fridge>, use <lamp>, examine <x>, look, inventory."
)
MATCH_CUTOFF = 0.6  # below this similarity an action is not a typo of any admissible command


# Small models chain commands ("go to desk 1, take mug 1 from desk 1"); the game takes one.
# No ALFWorld command holds a separator, so a chain splits into its commands safely.
_CLAUSES = re.compile(r"\s*(?:[,;]|\bthen\b|\band\b)\s*")


def closest_admissible(action: str, admissible: list[str] | None) -> str | None:
    """The admissible command `action` most plausibly meant, or None.

    A chain of commands means the first of them that matches a command (the game runs one
    command a turn).
    """
    if not admissible:
        return None
    by_normal = {normalize_action(a): a for a in admissible}
    for clause in _CLAUSES.split(action):
        match = _closest(normalize_action(clause), by_normal) if clause.strip() else None
        if match is not None:
            return match
    return None


def _closest(normal: str, by_normal: dict[str, str]) -> str | None:
    if normal in by_normal:
        return by_normal[normal]
    handled = handled_object(normal)
    if handled is not None:  # only commands on the same object are typos of it
        by_normal = {n: a for n, a in by_normal.items() if handled_object(n) == handled}
    match = difflib.get_close_matches(normal, list(by_normal), n=1, cutoff=MATCH_CUTOFF)
    return by_normal[match[0]] if match else None


# A reply that handles an object maps only to a command on that object. "take book 1 from
# coffeetable 1" where a box lies is otherwise closest to "take box 1 ...": the agent picks up
# what the task does not name and spends two steps putting it back (the tuned 135M student's
# commonest mistake, measured in loop_arms' "wrong takes"). Unmapped, the reply is invalid and
# the cascade defers it; a reply naming another place still maps (a cheap exploration step).
_OBJECT_VERBS = frozenset({"take", "move", "put", "heat", "cool", "clean", "slice"})


def handled_object(normal: str) -> str | None:
    """The object type a command handles ("book" in "take book 1 from desk 1"), else None."""
    words = normal.split()
    if len(words) < 2 or words[0] not in _OBJECT_VERBS:
        return None
    return words[1].rstrip("0123456789")


PROMPT_VERSION = 2
"""1: the task only in the first observation; 2: restated after every later observation."""

_OBSERVATION = "Observation: "
_ADMISSIBLE = "\nAdmissible commands: "
_TASK = "Your task is to:"
_REMINDER = f"\n{_TASK} "


def task_of(first_observation: str) -> str | None:
    """The task sentence of an episode's first observation (None if it states none)."""
    _, found, task = first_observation.rpartition(_TASK)
    return task.split(_ADMISSIBLE)[0].strip() or None if found else None


def format_observation(observation: str, admissible: list[str] | None = None,
                       task: str | None = None) -> str:
    """A user turn of the agent: the observation, the admissible commands when the
    environment lists them, and the task restated when given."""
    text = f"{_OBSERVATION}{observation}"
    if admissible:
        text += f"{_ADMISSIBLE}{', '.join(admissible)}"
    if task:
        text += f"{_REMINDER}{task}"
    return text


def listed_admissible(user_turn: str) -> list[str]:
    """The admissible commands `format_observation` listed in a user turn ([] if none)."""
    _, found, listed = user_turn.rpartition(_ADMISSIBLE)
    listed = listed.split("\n")[0]  # the task restated after the list is not a command
    return listed.split(", ") if found and listed else []


def react_key(messages: list[dict[str, Any]]) -> StepKey:
    """The retrieval key of a step of this agent: the task sentence and the latest
    observation without its list of admissible commands.

    The list names every object and place in the room, so left in the key it would match
    rooms rather than situations, and left in a stored demo it would cost hundreds of prompt
    tokens per demo step while telling the student nothing about the expert's choice.
    """
    key = default_key(messages)
    goal = task_of(key.goal) or key.goal
    observation = key.observation.split(_ADMISSIBLE)[0].split(_REMINDER)[0]
    return StepKey(goal=goal, observation=observation.removeprefix(_OBSERVATION).strip())


@dataclass
class EpisodeResult:
    """What one episode of the reference agent did."""

    task_id: str
    success: bool
    steps: int
    invalid_actions: int
    actions: list[str] = field(default_factory=list)


def _prompt(first: str, turns: list[tuple[str, str]], latest: str, admissible: list[str] | None,
            history: int) -> list[dict[str, Any]]:
    task = task_of(first)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT},
                                      {"role": "user", "content": first}]
    for reply, observation in turns[-history:]:
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": format_observation(observation, task=task)}]
    if turns:
        messages[-1] = {"role": "user",
                        "content": format_observation(latest, admissible, task)}
    else:  # the first observation states the task itself
        messages[-1] = {"role": "user", "content": format_observation(first, admissible)}
    return messages


def react_agent(env: Env, model: str, *, max_steps: int = 50, max_tokens: int = 60,
                history: int = 12, first_observation: str | None = None,
                **completion_kwargs: Any) -> EpisodeResult:
    """Run one episode of `env` with `model`; returns the outcome.

    Pass `first_observation` when the caller already reset the environment.
    """
    if history < 1:
        raise ValueError("history must keep at least the latest exchange (history >= 1)")
    if first_observation is None:
        first_observation, _ = env.reset()
    info: dict[str, Any] = {}
    turns: list[tuple[str, str]] = []
    observation = first_observation
    actions: list[str] = []
    invalid = 0
    done = False
    for _ in range(max_steps):
        messages = _prompt(first_observation, turns, observation, env.admissible_actions, history)
        reply = litellm.completion(model=model, messages=messages, max_tokens=max_tokens,
                                   stop=["\nObservation:"], **completion_kwargs)
        text = reply.choices[0].message.content or ""
        raw = default_extractor({"content": text}) or ""
        command = closest_admissible(raw, env.admissible_actions)
        if command is None:
            invalid += 1
            command = normalize_action(raw) or "look"
        actions.append(command)
        observation, _reward, done, info = env.step(command)
        turns.append((text.strip(), observation))
        if done:
            break
    return EpisodeResult(task_id=env.task_id, success=bool(info.get("won", done)),
                         steps=len(actions), invalid_actions=invalid, actions=actions)
