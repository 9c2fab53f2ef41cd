"""Turning logged teacher episodes into demos.

Only successful episodes become demos unless `include_failed` is set (for analysis only).
A step's observation is the latest user turn it saw, its action is the logged final action,
and its reasoning is the rest of the teacher's answer (the ReAct "Thought").
"""

from __future__ import annotations

import re
from collections.abc import Collection

from sqlalchemy import select

from agentkd.cascades.actions import ACTION_LINE, PROMPT_LINE
from agentkd.log import Episode, Step, TrajectoryLog
from agentkd.retrieval.keys import message_text
from agentkd.retrieval.store import DemoEpisode, DemoStep, DemoStore

_THOUGHT_PREFIX = re.compile(r"^\s*\**thought\**\s*[:：]\s*", re.IGNORECASE)


def split_reasoning(text: str | None) -> str:
    """The teacher's reasoning: its answer without the action line and 'Thought:' label."""
    if not text:
        return ""
    return _THOUGHT_PREFIX.sub("", PROMPT_LINE.sub("", ACTION_LINE.sub("", text))).strip()


def demo_episode_from_log(log: TrajectoryLog, episode: Episode,
                          actors: Collection[str] | None = None) -> DemoEpisode | None:
    """The demo form of a logged episode, or None when it has no usable step.

    `actors` keeps only the steps those actors served (e.g. ``{"teacher"}`` for the
    teacher's rescues in a distill episode); None keeps every step.
    """
    steps: list[Step] = log.steps(episode.id)
    demo_steps = [
        DemoStep(observation=s.observation or "", action=s.final_action or "",
                 reasoning=split_reasoning(s.final_text))
        for s in steps if s.final_action and (actors is None or s.actor in actors)
    ]
    goal = episode.goal
    if not goal:
        first = next((m for s in steps for m in s.new_messages if m.get("role") == "user"), None)
        goal = message_text(first) if first else ""
    if not demo_steps or not goal:
        return None
    return DemoEpisode(goal=goal, plan=episode.plan or "", steps=demo_steps,
                       task_id=episode.task_id, task_type=episode.task_type,
                       source=f"{episode.run_id}#{episode.id}", success=bool(episode.success),
                       cost_usd=episode.cost_usd)


def demos_from_log(log: TrajectoryLog, run_id: str, store: DemoStore, *,
                   include_failed: bool = False, actors: Collection[str] | None = None,
                   batch: int = 64) -> int:
    """Add the episodes of `run_id` to `store` (their steps by `actors`, all when None);
    returns how many were added.

    Episodes already in the store (same source) are skipped, so rebuilding is idempotent.
    """
    with log.session() as s:
        query = select(Episode).where(Episode.run_id == run_id).order_by(Episode.id)
        if not include_failed:
            query = query.where(Episode.success.is_(True))
        episodes = list(s.scalars(query))
    known = store.sources()
    added = 0
    for lo in range(0, len(episodes), batch):  # embedded and committed `batch` at a time
        demos = [d for d in (demo_episode_from_log(log, e, actors)
                              for e in episodes[lo:lo + batch])
                 if d is not None and d.source not in known]
        store.add_many(demos)
        added += len(demos)
    store.flush()
    return added
