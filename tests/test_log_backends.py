"""The log on real backends: several processes writing one run (SQLite WAL and PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest
from sqlalchemy import func, select

import agentkd
from agentkd.log import Episode, LLMCall, Step

TEACHER = "openai/gpt-4o-mini"  # priced in litellm's bundled map; mock_response: no network
STEPS = 40


def _worker(url: str, run_id: str, worker: int) -> int:
    kd = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=url, run=run_id,
                           teacher_kwargs={"mock_response": f"Action: step of worker {worker}"})
    for episode in range(2):
        with kd.episode_scope(task_id=f"w{worker}-e{episode}") as scope:
            messages = [{"role": "user", "content": f"task {worker}"}]
            for i in range(STEPS // 2):
                reply = kd.completion(messages=messages)
                messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                             {"role": "user", "content": f"obs {i}"}]
            scope.finish(success=True)
    return worker


def _hammer(url: str, processes: int = 4) -> None:
    run_id = f"concurrent-{uuid.uuid4().hex[:8]}"
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        assert sorted(pool.map(_worker, [url] * processes, [run_id] * processes,
                               range(processes))) == list(range(processes))
    log = agentkd.TrajectoryLog(url)
    with log.session() as s:
        episodes = s.scalars(select(Episode).where(Episode.run_id == run_id)).all()
        assert len(episodes) == 2 * processes
        assert all(e.status == "success" and e.n_steps == STEPS // 2 for e in episodes)
        ids = [e.id for e in episodes]
        steps = s.execute(select(Step.episode_id, Step.idx).where(Step.episode_id.in_(ids))).all()
        assert len(steps) == len(set(steps)) == processes * STEPS  # none lost, none duplicated
        calls = s.execute(select(func.count(), func.sum(LLMCall.cost_usd))
                          .where(LLMCall.run_id == run_id)).one()
        assert calls[0] == processes * STEPS
        assert calls[1] == pytest.approx(sum(e.cost_usd for e in episodes))
    (summary,) = agentkd.run_summaries(log, run_ids=[run_id])
    assert summary.episodes == 2 * processes and summary.success_rate == 1.0


def test_processes_share_one_sqlite_log(tmp_path):
    _hammer(f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.postgres
def test_processes_share_one_postgres_log():
    url = os.environ.get("AGENTKD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("AGENTKD_TEST_POSTGRES_URL is not set: scripts/test.sh starts PostgreSQL "
                    "and sets it")
    _hammer(url, processes=6)
