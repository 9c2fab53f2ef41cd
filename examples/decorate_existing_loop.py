"""Wrap an existing agent loop with agentkd — the agent code itself is unchanged.

Runs offline as is: litellm's `mock_response` stands in for the providers. Delete the two
`*_kwargs` lines and set OPENAI_API_KEY / ANTHROPIC_API_KEY to run it against real models.

    python examples/decorate_existing_loop.py
"""

from __future__ import annotations

import os

# Offline-first: without this, importing litellm (before agentkd) fetches a price map online.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import tempfile
from dataclasses import dataclass
from pathlib import Path

import litellm

import agentkd

TEACHER = "anthropic/claude-sonnet-4-5"
STUDENT = "openai/gpt-4.1-mini"


@dataclass
class Task:
    id: str
    goal: str


# ---- the user's agent: plain litellm, no agentkd inside --------------------------------------
def agent(task: Task, max_steps: int = 3) -> bool:
    messages = [{"role": "system", "content": "Answer with 'Action: <command>'."},
                {"role": "user", "content": f"Your task is to: {task.goal}"}]
    for step in range(max_steps):
        reply = litellm.completion(model=TEACHER, messages=messages)
        action = reply.choices[0].message.content
        messages += [{"role": "assistant", "content": action},
                     {"role": "user", "content": f"Observation {step}: done '{action}'."}]
    return True


def main(workdir: Path) -> list[agentkd.RunSummary]:
    log = f"sqlite:///{workdir / 'agentkd.db'}"
    tasks = [Task("t1", "put a mug in the coffee machine"), Task("t2", "heat an egg")]

    # 1. Collect: the teacher acts; successful episodes become demos.
    collect = agentkd.Distiller(teacher=TEACHER, mode="collect", log=log,
                                demos=workdir / "demos",
                                teacher_kwargs={"mock_response": "Action: go to countertop 1"})
    solve = collect.episode(task_id=lambda task: task.id, goal=lambda task: task.goal,
                            success=lambda ok: ok)(agent)
    for task in tasks:
        solve(task)
    collect.close()

    # 2. Distill: the student acts when its 3 samples agree, the teacher otherwise.
    kd = agentkd.Distiller(
        teacher=TEACHER, student=STUDENT, mode="distill", log=log, demos=workdir / "demos",
        cascade=agentkd.Cascade(samples=3, temperature=0.1, agreement=1.0),
        teacher_kwargs={"mock_response": "Action: go to countertop 1"},
        student_kwargs={"mock_response": "Thought: the mug is on the counter.\n"
                                         "Action: go to countertop 1"},
    )
    solve = kd.episode(task_id=lambda task: task.id, goal=lambda task: task.goal,
                       success=lambda ok: ok)(agent)
    for task in tasks:
        solve(task)

    summaries = agentkd.run_summaries(kd.log)
    for s in summaries:
        print(f"{s.mode:8s} episodes={s.episodes} success={s.success_rate:.2f} "
              f"cost/episode=${s.cost_per_episode:.5f} teacher-call rate="
              f"{s.teacher_call_rate:.0%} relative cost={s.relative_cost:.2f}x")
    return summaries


if __name__ == "__main__":
    main(Path(tempfile.mkdtemp(prefix="agentkd-example-")))
