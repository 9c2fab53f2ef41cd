"""`bench --ray`: the checks made before any game (fast), and real ALFWorld games on a local Ray
head with a PostgreSQL log (slow): results equal to one process's, and an actor killed
mid-episode costing a replay, never a second finished episode or a lost call."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import postgres_schema, require
from sqlalchemy import func, select
from typer.testing import CliRunner

import agentkd
from agentkd.cli import app
from agentkd.envs import ray_runner
from agentkd.envs.bench import BenchConfig, EpisodeOutcome, run_bench
from agentkd.log import LLMCall, Step, TrajectoryLog

GIB = 2**30


def node(cpus: float, memory_gib: float, gpus: float = 0) -> dict[str, Any]:
    """A node as `ray.nodes()` describes it."""
    return {"Alive": True, "Resources": {"CPU": cpus, "memory": memory_gib * GIB, "GPU": gpus}}


def bench(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["bench", "alfworld", "--mode", "teacher", *args])
    return result.exit_code, result.output


def test_without_the_extra_ray_says_how_to_install_it(terminal: io.StringIO,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, _ = bench(["--episodes", "1", "--ray", "auto", "--log",
                     f"sqlite:///{tmp_path / 'log.db'}"])
    shown = " ".join(terminal.getvalue().split())
    assert code == 2
    assert shown.startswith("error:") and "pip install 'agentkd[ray]'" in shown, shown


def test_a_sqlite_log_on_a_multi_node_cluster_is_refused_before_anything_runs(
        terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The cluster is injected: two nodes, as `ray.nodes()` would list them.
    monkeypatch.setattr(ray_runner, "connect", lambda address: None)
    monkeypatch.setattr(ray_runner, "alive_nodes", lambda ray: [node(2, 4), node(2, 4)])
    db = tmp_path / "log.db"
    code, _ = bench(["--episodes", "1", "--ray", "auto", "--log", f"sqlite:///{db}"])
    shown = " ".join(terminal.getvalue().split())
    assert code == 2 and shown.startswith("error:"), shown
    assert "2 nodes" in shown and "postgresql+psycopg://" in shown, shown
    assert not db.exists()  # refused before the log was opened


def test_the_log_must_fit_the_cluster() -> None:
    ray_runner.check_log("sqlite:///log.db", nodes=1)
    ray_runner.check_log("postgresql+psycopg://u:p@db:5432/agentkd", nodes=8)
    with pytest.raises(agentkd.ConfigError, match="cluster has 3 nodes.*SQLite file log.db"):
        ray_runner.check_log("sqlite:///log.db", nodes=3)
    with pytest.raises(agentkd.ConfigError, match="in-memory SQLite"):
        ray_runner.check_log("sqlite://", nodes=1)


def test_actors_declare_resources_and_must_fit_a_node() -> None:
    config = BenchConfig(mode="teacher", ray="auto", ray_cpus=2, ray_memory_mb=1536,
                         ray_gpus=0.5)
    options = ray_runner.actor_options(config)
    assert options == {"num_cpus": 2, "memory": 1536 * 2**20, "num_gpus": 0.5}
    # Slots per node: the scarcest resource decides (CPUs, memory, GPUs).
    assert ray_runner.check_fits(options, [node(8, 16, 1), node(4, 1.6, 1)]) == 2 + 1
    with pytest.raises(agentkd.ConfigError, match="asks for 2 CPUs, 1536 MB, 0.5 GPUs"):
        ray_runner.check_fits(options, [node(8, 16, 0)])
    # No GPU asked for: a GPU-less node holds actors.
    assert ray_runner.check_fits(ray_runner.actor_options(
        BenchConfig(mode="teacher", ray="auto")), [node(2, 8)]) == 2
    assert ray_runner.default_memory_mb(config) == ray_runner.BASE_MEMORY_MB


@pytest.mark.parametrize(("change", "message"), [
    ({"ray": "somewhere"}, "expected auto"),
    ({"ray_cpus": 0}, "--ray-cpus must be > 0"),
    ({"ray_gpus": -1}, "--ray-gpus must be >= 0"),
    ({"ray_memory_mb": 0}, "--ray-memory-mb must be >= 1"),
])
def test_bad_ray_options_are_named(change: dict[str, Any], message: str) -> None:
    config = BenchConfig(mode="teacher", **{"ray": "auto", **change})
    with pytest.raises(agentkd.InputError, match=message):
        ray_runner.check_options(config)
    ray_runner.check_options(BenchConfig(mode="teacher", ray="ray://10.0.0.1:10001"))


# ---- a real cluster ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head on loopback with 2 CPUs and no dashboard; the driver (this process) joins it."""
    # Found, not imported: Ray reads its settings once, at import.
    require(importlib.util.find_spec("ray"), "Ray is not installed: pip install 'agentkd[ray]'")
    # Token authentication, as Ray does by default, with a token of this test's own: the head
    # and this process (the driver) share it through the environment, set before Ray is
    # imported.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}
    saved = {name: os.environ.get(name) for name in auth}
    os.environ.update(auth)
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1",
                    "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        yield address
    finally:
        import ray

        ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def pg_log() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL server: this test's log and nothing else."""
    with postgres_schema("ray") as url:
        yield url


def _totals(log: TrajectoryLog, run_id: str) -> dict[str, Any]:
    episodes = log.episodes(run_id)
    with log.session() as s:
        calls = s.execute(select(func.count(), func.coalesce(func.sum(LLMCall.cost_usd), 0.0))
                          .where(LLMCall.run_id == run_id)).one()
        steps = s.execute(select(func.count()).where(
            Step.episode_id.in_([e.id for e in episodes]))).scalar_one()
    return {"episodes": episodes, "calls": calls[0], "call_cost": calls[1], "steps": steps}


@pytest.mark.slow
@pytest.mark.postgres
def test_real_games_on_ray_match_one_process(ray_head: str, pg_log: str) -> None:
    games = ["--split", "valid_seen", "--episodes", "3", "--max-steps", "30", "--log", pg_log]
    code, output = bench([*games, "--run", "on-ray", "--ray", ray_head, "--json"])
    assert code == 0, output
    ray_outcomes = {e.task_id: (e.status, e.n_steps, e.cost_usd)
                    for e in TrajectoryLog(pg_log).episodes("on-ray")}
    code, output = bench([*games, "--run", "one-process"])
    assert code == 0, output
    log = TrajectoryLog(pg_log)
    here = {e.task_id: (e.status, e.n_steps, e.cost_usd) for e in log.episodes("one-process")}
    # Same games, same expert: the same wins, steps and cost, whoever played them.
    assert len(ray_outcomes) == 3 and ray_outcomes == here
    totals = _totals(log, "on-ray")
    assert totals["calls"] == totals["steps"] == sum(e.n_steps for e in totals["episodes"])
    assert totals["call_cost"] == pytest.approx(sum(e.cost_usd for e in totals["episodes"]))


def _kill_actors_mid_episode(log: TrajectoryLog, run_id: str) -> int:
    """Wait until an episode of `run_id` has served a step, then kill every actor of the run."""
    import ray

    deadline = time.monotonic() + 120
    while not any(e.status == "running" and e.n_steps >= 1 for e in log.episodes(run_id)):
        assert time.monotonic() < deadline, "no episode got under way"
        time.sleep(0.2)
    named = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"agentkd:{run_id}:")]
    for name in named:
        ray.kill(ray.get_actor(name))
    return len(named)


@pytest.mark.slow
@pytest.mark.postgres
def test_an_actor_killed_mid_episode_costs_a_replay_not_a_second_finish(
        ray_head: str, pg_log: str) -> None:
    run_id = "killed-actors"
    log = TrajectoryLog(pg_log)
    outcomes: list[EpisodeOutcome] = []
    killed: list[int] = []

    def on_episode(outcome: EpisodeOutcome) -> None:
        outcomes.append(outcome)
        if not killed:  # once, while the other actor is mid-game
            killed.append(_kill_actors_mid_episode(log, run_id))

    config = BenchConfig(mode="teacher", split="valid_seen", episodes=4, max_steps=30,
                         log=pg_log, run=run_id, ray=ray_head, workers=2)
    run_bench(config, on_episode=on_episode)
    assert killed and killed[0] >= 1
    played = [e.task_id for e in log.episodes(run_id)]
    finished = Counter(e.task_id for e in log.episodes(run_id)
                       if e.status in ("success", "failure"))
    interrupted = [e for e in log.episodes(run_id) if e.status == "interrupted"]
    # Every game finished exactly once; each killed attempt is on record as interrupted.
    assert len(finished) == 4 and set(finished.values()) == {1}
    assert sorted(o.task_id for o in outcomes) == sorted(finished)
    assert interrupted and all(e.n_steps >= 1 and e.task_id in finished for e in interrupted)
    assert len(played) == 4 + len(interrupted)
    assert all(o.node for o in outcomes)
    # The log's totals are the sum of its calls, the killed attempts' calls included.
    totals = _totals(log, run_id)
    assert totals["calls"] == totals["steps"] == sum(e.n_steps for e in totals["episodes"])
    assert totals["call_cost"] == pytest.approx(sum(e.cost_usd for e in totals["episodes"]))
    assert log.run_cost(run_id) == pytest.approx(totals["call_cost"])


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_driver_resumes_without_replaying_finished_games(ray_head: str,
                                                                  pg_log: str) -> None:
    ray = ray_runner.connect(ray_head)  # this process watches the cluster
    run_id = "killed-driver"
    argv = ["agentkd", "bench", "alfworld", "--mode", "teacher", "--episodes", "3",
            "--max-steps", "30", "--log", pg_log, "--run", run_id, "--ray", ray_head,
            "--workers", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "agentkd.cli", *argv[1:]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = TrajectoryLog(pg_log)
    deadline = time.monotonic() + 300
    while not log.finished_task_ids(run_id):
        assert driver.poll() is None and time.monotonic() < deadline, "no game finished"
        time.sleep(0.2)
    driver.kill()
    driver.wait()
    # Ray ends a dead driver's actors (they share its fate); resume once they are gone.
    while any(a["name"].startswith(f"agentkd:{run_id}:")
              for a in ray.util.list_named_actors(all_namespaces=True)):
        assert time.monotonic() < deadline, "the dead driver's actors live on"
        time.sleep(0.2)
    before = log.finished_task_ids(run_id)
    _, outcomes = run_bench(BenchConfig(mode="teacher", split="valid_seen", episodes=3,
                                        max_steps=30, log=pg_log, run=run_id, ray=ray_head,
                                        resume=True))
    assert before and not before & {o.task_id for o in outcomes}
    finished = Counter(e.task_id for e in log.episodes(run_id)
                       if e.status in ("success", "failure"))
    assert len(finished) == 3 and set(finished.values()) == {1}
    assert all(e.status != "running" for e in log.episodes(run_id))
