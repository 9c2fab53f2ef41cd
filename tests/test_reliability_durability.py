"""Durability: SIGKILL mid-episode, resume, and many concurrent writers (SQLite WAL, PostgreSQL).

- A worker process is killed with SIGKILL in the middle of an episode. Every step it had been
  served (it notes each one as the agent receives it) is in the log; resuming marks the
  episode 'interrupted' (`TrajectoryLog.mark_interrupted`, as `agentkd bench --resume` does),
  plays the unfinished tasks, and duplicates nothing.
- The same through the real CLI: `agentkd bench alfworld` on real games, killed, `--resume`d.
- 8 processes × 1,000 steps into one run, started together: no row lost or duplicated.

All of it spawns processes (each imports agentkd), so it is marked `slow`; the PostgreSQL
variants are marked `postgres` too and need AGENTKD_TEST_POSTGRES_URL (scripts/test.sh).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from faultserver import FaultServer
from reliability_support import check_log
from sqlalchemy import func, select

import agentkd
from agentkd.log import Episode, LLMCall, Step

HERE = Path(__file__).parent
ROOT = HERE.parent


def _pg_url() -> str:
    url = os.environ.get("AGENTKD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("AGENTKD_TEST_POSTGRES_URL is not set: scripts/test.sh starts PostgreSQL "
                    "and sets it")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def log_url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'durable.db'}" if request.param == "sqlite" else _pg_url()


def _env() -> dict[str, str]:
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}


def _worker(args: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "reliability_support.py"), "worker",
                             json.dumps(args)], env=_env(), cwd=ROOT)


def _progress(file: Path) -> list[tuple[str, int, int]]:
    if not file.exists():
        return []
    rows = []
    for line in file.read_text().splitlines():
        task, idx, episode = line.split("\t")
        rows.append((task, int(idx), int(episode)))
    return rows


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the worker exited early ({proc.returncode})"
        assert time.monotonic() < deadline, "timed out waiting for the worker"
        time.sleep(0.02)


def _steps_of(log: agentkd.TrajectoryLog, run_id: str) -> list[tuple[int, int]]:
    with log.session() as s:
        ids = select(Episode.id).where(Episode.run_id == run_id)
        return [tuple(r) for r in s.execute(select(Step.episode_id, Step.idx)
                                            .where(Step.episode_id.in_(ids)))]


@pytest.mark.slow
def test_kill_9_mid_episode_loses_no_served_step_and_resume_completes(log_url, tmp_path):
    run_id = f"kill9-{uuid.uuid4().hex[:8]}"
    tasks = [f"t{i}" for i in range(5)]
    progress = tmp_path / "progress.tsv"
    with FaultServer() as srv:
        args = {"log": log_url, "run": run_id, "tasks": tasks, "steps": 12,
                "api_base": srv.url, "progress": str(progress), "delay": 0.05}
        proc = _worker(args)
        try:
            _wait_for(lambda: sum(t == "t2" for t, _, _ in _progress(progress)) >= 4, proc)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        log = agentkd.TrajectoryLog(log_url)
        served = _progress(progress)
        logged = set(_steps_of(log, run_id))
        # Every step the agent had received is in the log.
        missing = [(t, i) for t, i, ep in served if (ep, i) not in logged]
        assert missing == [], missing
        before = {e.task_id: e.status for e in log.episodes(run_id)}
        assert before["t0"] == before["t1"] == "success" and before["t2"] == "running"
        killed_episode = next(e.id for e in log.episodes(run_id) if e.task_id == "t2")
        kept = sum(1 for ep, _ in logged if ep == killed_episode)
        assert kept >= 4

        # Resume: the dead worker's episode is marked interrupted, unfinished tasks replayed.
        resumed = _worker({**args, "resume": True, "delay": 0.0})
        assert resumed.wait(timeout=300) == 0
    episodes = log.episodes(run_id)
    statuses = sorted((e.task_id, e.status, e.n_steps) for e in episodes)
    assert statuses == [("t0", "success", 12), ("t1", "success", 12),
                        ("t2", "interrupted", kept), ("t2", "success", 12),
                        ("t3", "success", 12), ("t4", "success", 12)]
    steps = _steps_of(log, run_id)
    assert len(steps) == len(set(steps)) == 5 * 12 + kept  # nothing duplicated
    check_log(log, run_id)
    (summary,) = agentkd.run_summaries(log, run_ids=[run_id])
    assert summary.episodes == 5 and summary.success_rate == 1.0  # the interrupted one aside
    print(f"\nkill -9 ({log_url.split(':')[0]}): {len(served)} steps served before the kill, "
          f"0 lost; {kept} kept in the interrupted episode; resume played "
          f"{len(tasks) - 2} tasks; {len(steps)} steps, none duplicated")


# ---- the real CLI on real ALFWorld games ------------------------------------------------------

_SLOW_EXPERT = (
    "import sys, time\n"
    "from agentkd.envs.expert import AlfWorldExpert\n"
    "_orig = AlfWorldExpert.completion\n"
    "def _slow(self, *a, **k):\n"
    "    time.sleep(0.2)\n"
    "    return _orig(self, *a, **k)\n"
    "AlfWorldExpert.completion = _slow\n"
    "from agentkd.cli import app\n"
    "app(sys.argv[1:])\n"
)


@pytest.mark.slow
def test_kill_9_the_bench_cli_then_resume(log_url, tmp_path):
    """`agentkd bench alfworld` killed mid-game, then `--resume`: the killed game is replayed,
    finished games are not, and the interrupted episode keeps its steps."""
    run_id = f"bench-kill9-{uuid.uuid4().hex[:8]}"
    argv = ["bench", "alfworld", "--mode", "teacher", "--split", "valid_seen", "--episodes",
            "3", "--log", log_url, "--run", run_id, "--max-steps", "30"]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXPERT, *argv], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = None

    def mid_second_game() -> bool:
        nonlocal log
        try:
            log = log or agentkd.TrajectoryLog(log_url)
            eps = log.episodes(run_id)
        except Exception:  # the run row may not exist yet
            return False
        return len(eps) >= 2 and eps[1].status == "running" and eps[1].n_steps >= 3

    try:
        _wait_for(mid_second_game, proc, timeout=300)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert log is not None
    first, second = log.episodes(run_id)[:2]
    assert first.status == "success" and second.status == "running"
    kept = len(log.steps(second.id))
    assert kept >= 3

    done = subprocess.run([sys.executable, "-m", "agentkd.cli", *argv, "--resume", "--json"],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 games already done" in " ".join(done.stdout.split())  # the first game only
    episodes = log.episodes(run_id)
    finished = [e for e in episodes if e.status != "interrupted"]
    assert [e.status for e in episodes].count("interrupted") == 1
    assert len(finished) == len({e.task_id for e in finished}) == 3
    assert log.steps(second.id) and len(log.steps(second.id)) == kept  # untouched
    check_log(log, run_id)


# ---- concurrent writers -------------------------------------------------------------------


def test_processes_racing_to_open_a_new_log_and_start_one_run(tmp_path, monkeypatch):
    # Deterministic stand-ins for the races that several processes starting one run at once
    # hit (and that made tests/test_log_backends.py flaky): the loser of CREATE TABLE sees
    # "already exists"; the loser of the run-row insert sees an IntegrityError.
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    from agentkd.log import Base

    url = f"sqlite:///{tmp_path / 'race.db'}"
    real_create = Base.metadata.create_all
    lost = {"create": 0, "get": 0}

    def create_all_losing_once(*args, **kwargs):
        real_create(*args, **kwargs)
        if not lost["create"]:
            lost["create"] += 1
            raise OperationalError("CREATE TABLE runs", {}, Exception("table runs already exists"))

    monkeypatch.setattr(Base.metadata, "create_all", create_all_losing_once)
    a = agentkd.TrajectoryLog(url)
    assert lost["create"] == 1
    a.ensure_run("r", mode="teacher", teacher="t", student=None)
    real_get = Session.get

    def stale_get(self, *args, **kwargs):  # our read happened before the winner's insert
        lost["get"] += 1
        return None if lost["get"] == 1 else real_get(self, *args, **kwargs)

    monkeypatch.setattr(Session, "get", stale_get)
    b = agentkd.TrajectoryLog(url)
    assert b.ensure_run("r", mode="teacher", teacher="t", student=None) == "r"
    lost["get"] = 0
    with pytest.raises(agentkd.ConfigError, match="already exists in the log with mode 'teacher'"):
        b.ensure_run("r", mode="distill", teacher="t", student="s")
    monkeypatch.undo()

    def create_all_failing(*args, **kwargs):  # a real failure is reported, not retried
        lost["create"] += 1
        raise OperationalError("CREATE TABLE runs", {}, Exception("disk I/O error"))

    monkeypatch.setattr(Base.metadata, "create_all", create_all_failing)
    with pytest.raises(agentkd.ConfigError, match="cannot open the log .* disk I/O error"):
        agentkd.TrajectoryLog(url)
    assert lost["create"] == 2


WRITERS, EPISODES, STEPS = 8, 10, 100  # 8 processes × 1,000 steps


def _writer(url: str, run_id: str, worker: int, barrier) -> None:
    kd = agentkd.Distiller(teacher="openai/gpt-4o-mini", mode="teacher", log=url, run=run_id,
                           teacher_kwargs={"mock_response": "Action: look"})
    barrier.wait(timeout=300)  # everyone writes at once
    for e in range(EPISODES):
        with kd.episode_scope(task_id=f"w{worker}-e{e}") as scope:
            messages = [{"role": "user", "content": f"task of w{worker}-e{e}"}]
            for i in range(STEPS):
                kd.completion(messages=[*messages, {"role": "user",
                                                    "content": f"w{worker}-e{e}-s{i}"}])
            scope.finish(success=True)


def _hammer(url: str) -> None:
    run_id = f"writers-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(url, run_id, w, barrier)) for w in range(WRITERS)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=1800)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    elapsed = time.perf_counter() - start
    log = agentkd.TrajectoryLog(url)
    total = WRITERS * EPISODES * STEPS
    with log.session() as s:
        ids = select(Episode.id).where(Episode.run_id == run_id)
        observations = [r[0] for r in s.execute(select(Step.observation)
                                                .where(Step.episode_id.in_(ids)))]
        keys = s.execute(select(Step.episode_id, Step.idx).where(Step.episode_id.in_(ids))).all()
        n_calls = s.execute(select(func.count()).select_from(LLMCall)
                            .where(LLMCall.run_id == run_id)).scalar_one()
    expected = {f"w{w}-e{e}-s{i}" for w in range(WRITERS) for e in range(EPISODES)
                for i in range(STEPS)}
    lost = len(expected - set(observations))
    duplicated = len(observations) - len(set(observations))
    print(f"\n{WRITERS} writers × {EPISODES * STEPS} steps into {url.split(':')[0]}: "
          f"{len(observations)} steps in {elapsed:.0f} s, {lost} lost, {duplicated} duplicated")
    assert lost == 0 and duplicated == 0 and len(observations) == total
    assert len(keys) == len(set(keys)) == total and n_calls == total
    counts = check_log(log, run_id)
    assert counts["episodes"] == WRITERS * EPISODES
    assert all(e.status == "success" and e.n_steps == STEPS for e in log.episodes(run_id))


@pytest.mark.slow
def test_eight_processes_write_one_sqlite_file(tmp_path):
    _hammer(f"sqlite:///{tmp_path / 'writers.db'}")


@pytest.mark.slow
@pytest.mark.postgres
def test_eight_processes_write_one_postgres_run():
    _hammer(_pg_url())
