"""Helpers of the reliability tests: log invariants, a worker process, secret greps.

`check_log` states what "nothing lost, nothing half-written" means for the SQL log, so every
reliability test checks the same invariants. `worker_main` is a separate process that plays
episodes through a Distiller against a fault server and reports each step it was served (the
durability tests kill it with SIGKILL). Run as ``python tests/reliability_support.py worker
<json args>``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from sqlalchemy import func, select  # noqa: E402

TEACHER, STUDENT = "openai/fault-teacher", "openai/fault-student"
PRICES = {TEACHER: (10.0, 20.0), STUDENT: (1.0, 2.0)}  # USD per Mtok, round for hand checks


def register_prices() -> None:
    import agentkd

    for model, (inp, out) in PRICES.items():
        agentkd.register_price(model, inp, out)


def check_log(log: Any, run_id: str) -> dict[str, int]:
    """Assert the log of `run_id` is whole and consistent; return row counts.

    - every episode's counters (n_steps, teacher_steps) equal its step rows, its step indexes
      are 0..n-1 with no gap or duplicate, its cost equals the sum of its calls;
    - every step's cost equals the sum of its calls, and every step has at least one call
      (a served step always made a request);
    - no call points at a step of another episode; no episode is left 'running'.
    """
    from agentkd.log import Episode, LLMCall, Step

    with log.session() as s:
        episodes = s.scalars(select(Episode).where(Episode.run_id == run_id)).all()
        ids = [e.id for e in episodes]
        steps = s.scalars(select(Step).where(Step.episode_id.in_(ids))).all() if ids else []
        calls = s.scalars(select(LLMCall).where(LLMCall.run_id == run_id)).all()
    by_episode: dict[int, list[Any]] = {}
    for step in steps:
        by_episode.setdefault(step.episode_id, []).append(step)
    calls_of_step: dict[int, list[Any]] = {}
    calls_of_episode: dict[int, list[Any]] = {}
    for call in calls:
        if call.step_id is not None:
            calls_of_step.setdefault(call.step_id, []).append(call)
        if call.episode_id is not None:
            calls_of_episode.setdefault(call.episode_id, []).append(call)
    step_episode = {st.id: st.episode_id for st in steps}
    for call in calls:
        if call.step_id is not None:
            assert step_episode.get(call.step_id) == call.episode_id, f"call {call.id} misfiled"
    for episode in episodes:
        own = sorted(by_episode.get(episode.id, []), key=lambda st: st.idx)
        assert [st.idx for st in own] == list(range(len(own))), (
            f"episode {episode.id}: step indexes {[st.idx for st in own]}")
        assert episode.n_steps == len(own), f"episode {episode.id}: n_steps {episode.n_steps}"
        assert episode.teacher_steps == sum(st.actor == "teacher" for st in own)
        episode_calls = calls_of_episode.get(episode.id, [])
        assert abs(episode.cost_usd - sum(c.cost_usd for c in episode_calls)) < 1e-9, (
            f"episode {episode.id}: cost {episode.cost_usd} vs calls "
            f"{sum(c.cost_usd for c in episode_calls)}")
        assert episode.status != "running", f"episode {episode.id} left running"
        for st in own:
            mine = calls_of_step.get(st.id, [])
            assert mine, f"step {st.id} has no calls"
            assert abs(st.cost_usd - sum(c.cost_usd for c in mine)) < 1e-9
    return {"episodes": len(episodes), "steps": len(steps), "calls": len(calls)}


def count_rows(log: Any, run_id: str) -> tuple[int, int]:
    from agentkd.log import Episode, Step

    with log.session() as s:
        ids = select(Episode.id).where(Episode.run_id == run_id)
        n_steps = s.execute(select(func.count()).select_from(Step)
                            .where(Step.episode_id.in_(ids))).scalar_one()
        n_episodes = s.execute(select(func.count()).select_from(Episode)
                               .where(Episode.run_id == run_id)).scalar_one()
    return int(n_episodes), int(n_steps)


# ---- a worker process ----------------------------------------------------------------------


def worker_main(args: dict[str, Any]) -> None:
    """Play `tasks` (skipping those the run finished when `resume`), `steps` steps each,
    against the fault server at `api_base`; after every served step append
    "task<TAB>idx<TAB>episode_id" to `progress` (the agent's own record of what it got)."""
    import agentkd
    from agentkd.log import TrajectoryLog

    register_prices()
    log = TrajectoryLog(args["log"])
    run_id = args["run"]
    todo = list(args["tasks"])
    if args.get("resume"):
        log.mark_interrupted(run_id)  # what `agentkd bench ... --resume` does first
        done = log.finished_task_ids(run_id)
        todo = [t for t in todo if t not in done]
    kw = {"api_base": args["api_base"], "api_key": "sk-worker-key-0000000000", "timeout": 10}
    kd = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log, run=run_id,
                           teacher_kwargs=kw)
    progress = open(args["progress"], "a", buffering=1)  # noqa: SIM115  (line-buffered)
    delay = float(args.get("delay", 0.0))
    for task in todo:
        with kd.episode_scope(task_id=task, goal=f"goal of {task}") as scope:
            messages = [{"role": "user", "content": f"Your task is to: solve {task}"}]
            for i in range(int(args["steps"])):
                reply = kd.completion(messages=messages)
                progress.write(f"{task}\t{i}\t{scope.episode_id}\n")
                messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                             {"role": "user", "content": f"{task} observation {i}"}]
                if delay:
                    time.sleep(delay)
            scope.finish(success=True)
    progress.close()


# ---- secrets -------------------------------------------------------------------------------


def secret_fragments(secrets: Iterable[str], window: int = 12) -> set[str]:
    """Each secret and every `window`-long piece of it: a partly masked or cut secret is
    still found."""
    pieces: set[str] = set()
    for secret in secrets:
        pieces.add(secret)
        pieces.update(secret[i:i + window] for i in range(0, max(1, len(secret) - window + 1)))
    return pieces


def grep_secrets(blobs: dict[str, bytes | str], secrets: Iterable[str]) -> list[str]:
    """'<artifact>: <fragment>' for every planted secret fragment found in any artifact."""
    pieces = secret_fragments(secrets)
    hits = []
    for name, blob in blobs.items():
        data = blob if isinstance(blob, bytes) else blob.encode("utf-8", "surrogatepass")
        variants = [data, data.replace(b"\\u002d", b"-")]  # JSON-escaped dashes
        for piece in pieces:
            if any(piece.encode() in v for v in variants):
                hits.append(f"{name}: {piece}")
    return sorted(set(hits))


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tally(items: Iterable[str]) -> dict[str, int]:
    return dict(Counter(items))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        worker_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: reliability_support.py worker '<json args>'")
