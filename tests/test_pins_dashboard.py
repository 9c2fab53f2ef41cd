"""The dashboard's accepted-step accuracy on a real shadow run: the labels are the
`student_correct` the Distiller logged (judged with the gate's `equivalent=`), not a column
the test writes, and the figures are checked against plain SQL over the log and the report."""

from __future__ import annotations

from typing import Any

from conftest import importable, require
from sqlalchemy import text

import agentkd
from agentkd.report import run_summaries

require(importable("fastapi") and importable("jinja2"),
        "the dashboard tests need fastapi and jinja2: pip install 'agentkd[dashboard]'")

TEACHER, STUDENT = "scripted/teacher", "scripted/student"
# observation -> (the student's samples, the teacher's answer)
WORLD = {
    # accepted; the teacher says it without the article: the same action for the gate
    "You see a desk.": (["Action: go to the desk"] * 3, "Action: go to desk"),
    "You see a lamp.": (["Action: look"] * 3, "Action: look"),  # accepted, right
    "You see a mug.": (["Action: open drawer 1"] * 3, "Action: take mug 1"),  # accepted, wrong
    "You see a door.": (["Action: a", "Action: b", "Action: b"], "Action: open door"),  # deferred
}


def _answer(index: int):
    def answer(messages: list[dict[str, Any]], n: int) -> list[str]:
        chosen = WORLD[messages[-1]["content"]][index]
        return (chosen if isinstance(chosen, list) else [chosen] * n)[:n]
    return answer


def test_accepted_step_accuracy_of_a_shadow_run(scripted, log_url):
    from agentkd.dashboard import Dashboard, Filters

    scripted.scripts[STUDENT] = _answer(0)
    scripted.scripts[TEACHER] = _answer(1)
    kd = agentkd.Distiller(
        teacher=TEACHER, student=STUDENT, mode="distill", log=log_url, run="shadowed",
        cascade={"sampling": "n", "shadow": 1.0},
        equivalent=lambda a, b: a.replace("the ", "") == b.replace("the ", ""))
    for task in ("t1", "t2"):
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Your task is to: x"}]
        with kd.episode_scope(task_id=task) as ep:
            for observation in WORLD:
                messages = [*messages, {"role": "user", "content": observation}]
                reply = kd.completion(messages=messages)
                messages.append({"role": "assistant",
                                 "content": reply.choices[0].message.content})
            ep.finish(success=True)

    with kd.log.engine.connect() as conn:
        by_sql = conn.execute(text(
            "SELECT count(*), sum(student_correct), sum(final_action = teacher_action) "
            "FROM steps WHERE actor = 'student' AND student_correct IS NOT NULL")).one()
    # Per episode: 3 accepted steps labelled, 2 right ('go to the desk' by equivalence).
    assert tuple(by_sql) == (6, 4, 2)  # text equality would say 2 of 6

    page = Dashboard(log_url, refresh_interval_s=0.0).cascade(Filters())
    assert page.extra["labels"].rows == [
        {"run_id": "shadowed", "labelled": 6, "agree": 4, "accuracy": 4 / 6}]
    (summary,) = run_summaries(kd.log)
    assert (summary.labelled_accepted, summary.accepted_accuracy) == (6, 4 / 6)
