"""Several `agentkd serve` workers share one PostgreSQL log; one is killed with SIGKILL
under load: the log stays consistent (every episode's counters match its steps and calls,
every served request is in it once) and the other workers go on serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import importable, postgres_schema, require

require(importable("fastapi") and importable("psycopg") and importable("prometheus_client"),
        "the worker test needs the gateway and postgres extras")

import httpx  # noqa: E402
from gateway_upstream import Upstream, bench_responder  # noqa: E402
from sqlalchemy import text  # noqa: E402

from agentkd.log import TrajectoryLog  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test server (AGENTKD_TEST_POSTGRES_URL)."""
    with postgres_schema("gw") as url:
        yield url


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workers(pid: int) -> list[int]:
    """The uvicorn worker processes under `pid` (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "spawn_main"], capture_output=True,
                         text=True)
    return [int(p) for p in out.stdout.split()]


def test_workers_share_a_postgres_log_and_survive_a_killed_worker(tmp_path, pg_url):
    port = _free_port()
    with Upstream(bench_responder, latency_s=0.02) as up:
        kwargs = f'{{ api_base = "{up.url}", api_key = "sk-workers-0123456789" }}'
        (tmp_path / "gw.toml").write_text(
            f'log = "{pg_url}"\nport = {port}\n\n[[route]]\nteacher = "openai/wk-teacher"\n'
            f'student = "openai/wk-student"\nteacher_kwargs = {kwargs}\n'
            f'student_kwargs = {kwargs}\ncascade = {{ sampling = "n" }}\n')
        server = subprocess.Popen(
            [sys.executable, "-m", "agentkd.cli", "serve", "--config",
             str(tmp_path / "gw.toml"), "--workers", "2"], cwd=ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 400  # workers start in a minute on a busy machine
            while len(_workers(server.pid)) < 2 or not _healthy(url):
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
            answers: list[tuple[int, str | None]] = []
            lock = threading.Lock()
            killed: list[int] = []

            def request(i: int) -> None:
                try:
                    r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                        "model": "openai/wk-teacher",
                        "messages": [{"role": "user", "content": f"observation {i}"}]})
                    result = (r.status_code, r.headers.get("x-agentkd-episode"))
                except httpx.HTTPError:
                    result = (-1, None)  # in flight on the killed worker
                with lock:
                    answers.append(result)
                    if len(answers) == 60 and not killed:
                        killed.append(_workers(server.pid)[0])
                        os.kill(killed[0], signal.SIGKILL)

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(request, range(180)))
            after = [httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                "model": "openai/wk-teacher",
                "messages": [{"role": "user", "content": f"after {i}"}]}).status_code
                for i in range(12)]
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=90)
            except subprocess.TimeoutExpired:  # a worker uvicorn restarted, still importing
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
    assert killed and after == [200] * 12
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {200, -1} and statuses.count(200) >= 150
    log = TrajectoryLog(pg_url, create=False)
    with log.session() as s:
        runs = [r for (r,) in s.execute(text("SELECT id FROM runs WHERE mode = 'distill'"))]
    assert len(runs) == 1  # every worker wrote the same run
    episodes = log.episodes(runs[0])
    by_task: dict[str, list[Any]] = {}
    for episode in episodes:
        by_task.setdefault(episode.task_id, []).append(episode)
        steps, calls = log.steps(episode.id), log.calls(episode.id)
        assert episode.n_steps == len(steps)
        assert episode.teacher_steps == sum(st.actor == "teacher" for st in steps)
        assert episode.cost_usd == pytest.approx(sum(c.cost_usd for c in calls), abs=1e-12)
        assert all(c.step_id in {st.id for st in steps} for c in calls if c.error is None)
    for status, key in answers:
        if status == 200:
            (episode,) = by_task[key]  # each served request: in the log, once
            assert episode.n_steps == 1
    log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
