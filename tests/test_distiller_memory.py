"""BudgetMem inside the Distiller: long history compressed before the student sees it."""

from __future__ import annotations

import agentkd
from agentkd.memory import Pipeline
from agentkd.memory.integration import MEMORY_HEADER

TEACHER, STUDENT = "scripted/teacher", "scripted/student"


def test_student_sees_compressed_history_and_memory_calls_are_logged(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: open drawer 1"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="student", log=log_url,
                           memory=Pipeline(), memory_router="low")
    messages = [{"role": "system", "content": "You act."},
                {"role": "user", "content": "Your task is to: find the key"}]
    for i in range(8):
        messages += [{"role": "assistant", "content": f"Action: go to drawer {i}"},
                     {"role": "user", "content": f"You arrive at drawer {i}. It is empty."}]
    with kd.episode_scope(task_id="m") as ep:
        kd.completion(messages=messages)
    (model, received, _) = scripted.received[-1]
    assert model == STUDENT
    assert len(received) < len(messages)
    assert any(MEMORY_HEADER in str(m["content"]) for m in received)
    assert received[-1] == messages[-1] and received[1] == messages[1]
    calls = kd.log.calls(ep.episode_id)
    memory_models = {c.model for c in calls if c.role == "memory"}
    assert memory_models and all(m.endswith("@low") for m in memory_models)
    (step,) = kd.log.steps(ep.episode_id)
    assert step.cost_usd == sum(c.cost_usd for c in calls)
